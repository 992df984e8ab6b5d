"""The remote store: content-addressed environments under SLURM_DEPLOYMENT_BASE_PATH on a cluster.

A deploy is: one probe (is it there already? which platform is the edge node?), then, only if
needed, under a remote lock: lay the environment out here for its final remote path, ask which
package groups the cluster lacks, upload one bundle of exactly those (resumable SFTP), and let a
short sh script hard-link the environment together beside its final path and rename it into
place. A kill -9 anywhere leaves either no environment or the complete one; a concurrent deploy
of the same environment waits on the lock and then finds it done.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pixi_deploy.errors import StoreError
from pixi_deploy.pack.fetch import DownloadCache, artifacts_of
from pixi_deploy.pack.layout import check_environment_path, lay_out_prefix
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.store import remote_scripts as sh
from pixi_deploy.store.groups import Plan, plan
from pixi_deploy.store.layout import StoreLayout, check_name
from pixi_deploy.store.metadata import METADATA_NAME, DeploymentMetadata
from pixi_deploy.tarwriter import TarWriter
from pixi_deploy.transport import (
    CommandResult,
    LineStream,
    RemoteCommandError,
    Transport,
    get_transport,
    sh_c,
)
from pixi_deploy.transport.connection import _PLATFORMS
from pixi_deploy.workspace import ResolvedEnvironment, Workspace


@dataclass
class TransferReport:
    """What a deploy moved: tests and benchmarks assert on it."""

    groups_total: int = 0
    groups_sent: int = 0
    bundle_bytes: int = 0
    environment_part_bytes: int = 0


class RemoteStore:
    def __init__(self, transport: Transport, base: str | None = None) -> None:
        self.transport = transport
        chosen = base or transport.base_path
        if not chosen:
            raise StoreError(
                "no deployment base path on the cluster",
                "set SLURM_DEPLOYMENT_BASE_PATH (e.g. ~/pixi-deploy or /project/envs)",
            )
        self.base = check_environment_path(transport.expand_path(chosen).rstrip("/") or "/")
        self.layout = StoreLayout(self.base)
        self.last_transfer = TransferReport()

    @property
    def target(self) -> str:
        s = self.transport.settings
        return f"ssh://{s.user + '@' if s.user else ''}{s.host}:{s.port}"

    # -- deploy -------------------------------------------------------------------------------
    def deploy(
        self,
        workspace: Workspace,
        environment: str | None = None,
        platform: str | None = None,
        *,
        name: str | None = None,
        cache: DownloadCache | None = None,
        reporter: Reporter | None = None,
    ) -> DeploymentMetadata:
        reporter = reporter or NullReporter()
        if name:
            check_name(name)
        cache = cache or DownloadCache()
        resolved, existing = self._probe(workspace, environment, platform)
        if existing is None:
            existing = self._deploy_locked(resolved, cache, reporter)
        else:
            self.last_transfer = TransferReport()
            reporter.step(
                f"environment {resolved.short_hash} is already on the cluster: nothing to move"
            )
        if name:
            self.transport.run_script(
                sh.NAME, [self.base, name, self.layout.name_target(name, resolved.short_hash)]
            )
            existing.name = name
        return existing

    def _probe(
        self, workspace: Workspace, environment: str | None, platform: str | None
    ) -> tuple[ResolvedEnvironment, DeploymentMetadata | None]:
        """One round trip: the edge node's platform and, if present, the deployed metadata."""
        auto = platform in (None, "", "auto")
        candidates = (
            [
                workspace.resolve(environment, p)
                for p in _locked_linux_platforms(workspace, environment)
            ]
            if auto
            else [workspace.resolve(environment, platform)]
        )
        args = [self.base] + [x for r in candidates for x in (r.platform, r.short_hash)]
        out = self._run(sh.PROBE, args).stdout
        head, _, found = out.partition("\036")
        uname = tuple(head.split()[:2])
        detected = _PLATFORMS.get((uname[0], uname[1])) if len(uname) == 2 else None
        if auto:
            if detected is None:
                raise StoreError(
                    f"the edge node reports `{head.strip()}`, which pixi-deploy cannot target"
                )
            chosen = next((r for r in candidates if r.platform == detected), None)
            if chosen is None:
                locked = ", ".join(r.platform for r in candidates) or "none"
                raise StoreError(
                    f"the cluster is {detected} but pixi.lock has no packages for it (locked: {locked})",
                    f"run `pixi workspace platform add {detected}` and `pixi lock`, or pass -p",
                )
        else:
            chosen = candidates[0]
        if found:
            found_platform, _, text = found.partition("\n")
            if found_platform == chosen.platform:
                metadata = DeploymentMetadata.from_json(
                    text, "the cluster's deployment_metadata.json"
                )
                metadata.reused = True
                return chosen, metadata
        return chosen, None

    def _deploy_locked(
        self, resolved: ResolvedEnvironment, cache: DownloadCache, reporter: Reporter
    ) -> DeploymentMetadata:
        key = resolved.short_hash
        final = self.layout.env(key)
        lock = self.transport.iter_lines(["sh", "-c", sh.LOCK, "sh", self.base, key])
        try:
            reporter.step(
                f"taking the cluster's lock for environment {key} (waits if another deploy builds it)"
            )
            state = _first_line(lock, self.base)
            if state == "present":  # another deploy finished it while we waited
                text = self.transport.read_bytes(f"{final}/{METADATA_NAME}").decode()
                metadata = DeploymentMetadata.from_json(text, f"{final}/{METADATA_NAME}")
                metadata.reused = True
                return metadata
            with tempfile.TemporaryDirectory(prefix="pixi-deploy-stage-") as tmp:
                return self._build_and_send(resolved, final, Path(tmp), cache, reporter)
        finally:
            lock.close()

    def _build_and_send(
        self,
        resolved: ResolvedEnvironment,
        final: str,
        tmp: Path,
        cache: DownloadCache,
        reporter: Reporter,
    ) -> DeploymentMetadata:
        prefix = tmp / "prefix"
        artifacts = artifacts_of(resolved)
        cached = cache.fetch_all(artifacts, reporter)
        reporter.step(f"laying out {len(artifacts)} packages for {final} ({resolved.platform})")
        lay_out_prefix(
            list(resolved.conda_records),
            {a.filename: cached[a] for a in artifacts if a.kind == "conda"},
            [cached[a] for a in artifacts if a.kind == "pypi"],
            staging=prefix,
            final=Path(final),
            platform=resolved.platform,
            python_version=resolved.python_version,
            cache_dir=cache.root / "extracted",
            environment=resolved.name,
        )
        metadata = DeploymentMetadata.for_environment(resolved, final, self.target)
        metadata.write(prefix / METADATA_NAME)
        layout_plan = plan(prefix, final)
        keys = [g.key for g in layout_plan.groups]
        missing = set(
            self._run(sh.MISSING, [self.base], input="\n".join(keys) + "\n").stdout.split()
        )
        bundle = tmp / "bundle.tar"
        _write_bundle(bundle, prefix, layout_plan, missing)
        digest = hashlib.sha256(f"{resolved.lock_hash}{sorted(missing)}".encode()).hexdigest()[:16]
        remote_bundle = f"{self.base}/uploads/{resolved.short_hash}-{digest}.tar"
        size = bundle.stat().st_size
        reporter.step(
            f"sending {len(missing)} of {len(keys)} package groups + environment files ({size / 1e6:.1f} MB)"
        )
        with reporter.task("upload", size) as advance:
            done = [0]

            def progress(sent: int, total: int) -> None:
                advance(sent - done[0])
                done[0] = sent

            self.transport.upload(bundle, remote_bundle, progress=progress)
        self._finalize([self.base, resolved.short_hash, remote_bundle, *keys])
        self.last_transfer = TransferReport(len(keys), len(missing), size, layout_plan.env.size)
        reporter.step(f"deployed environment {resolved.short_hash} at {final}")
        return metadata

    def _finalize(self, args: list[str]) -> None:
        """Run under the transport's watchdog: if we die, the edge node stops building too."""
        errors: list[str] = []
        status = self.transport.stream(sh_c(sh.FINALIZE, args), lambda line: None, errors.append)
        if status != 0:
            detail = errors[-1] if errors else f"exit status {status}"
            raise _store_error_text(detail, self.base)

    def _run(self, script: str, args: list[str], input: str | None = None) -> CommandResult:
        try:
            return self.transport.run_script(script, args, input=input)
        except RemoteCommandError as error:
            raise _store_error(error, self.base) from error

    # -- list / prune ---------------------------------------------------------------------------
    def deployments(self) -> list[DeploymentMetadata]:
        return self._listing()[0]

    def names(self) -> dict[str, str]:
        return self._listing()[1]

    def _listing(self) -> tuple[list[DeploymentMetadata], dict[str, str]]:
        out = self._run(sh.LIST, [self.base]).stdout
        envs_part, _, names_part = out.partition("\035\n")
        found = [
            DeploymentMetadata.from_json(chunk, "a deployment_metadata.json on the cluster")
            for chunk in envs_part.split("\036")
            if chunk.strip()
        ]
        found.sort(key=lambda m: m.created, reverse=True)
        names = {}
        for line in names_part.splitlines():
            if "\t" in line:
                link, target = line.split("\t", 1)
                names[link] = target.rstrip("/").rsplit("/", 1)[-1]
        return found, names

    def prune(self, keep: int) -> list[str]:
        named = set(self.names().values())
        doomed = [
            d.deployment_path.rsplit("/", 1)[-1]
            for d in self.deployments()[keep:]
            if d.deployment_path.rsplit("/", 1)[-1] not in named
        ]
        removed = self._run(sh.PRUNE, [self.base, *doomed]).stdout.split()
        return [self.layout.env(k) for k in removed]


def _write_bundle(path: Path, prefix: Path, layout_plan: Plan, missing: set[str]) -> None:
    with path.open("wb") as out:
        tar = TarWriter(out)
        for group in layout_plan.groups:
            if group.key not in missing:
                continue
            dirs: set[str] = set()
            for file in group.files:
                parent = file.rel.rsplit("/", 1)[0] if "/" in file.rel else ""
                while parent and parent not in dirs:
                    dirs.add(parent)
                    parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
            tar.add_dir(f"groups/{group.key}")
            for d in sorted(dirs):
                tar.add_dir(f"groups/{group.key}/{d}")
            for file in group.files:
                tar.add_file(
                    f"groups/{group.key}/{file.rel}", prefix / file.rel, file.size, file.mode
                )
        env = layout_plan.env
        tar.add_dir("env")
        for d in env.dirs:
            tar.add_dir(f"env/{d}")
        for file in env.files:
            tar.add_file(f"env/{file.rel}", prefix / file.rel, file.size, file.mode)
        for rel, target in env.symlinks.items():
            tar.add_symlink(f"env/{rel}", target)
        tar.close()


def _first_line(lines: LineStream, base: str) -> str:
    errors: list[str] = []
    for stream, line in lines.follow():
        if stream == "stdout":
            return line.strip()
        errors.append(line)
    detail = errors[-1] if errors else "the lock command ended early"
    raise _store_error_text(detail, base)


def _store_error(error: RemoteCommandError, base: str) -> StoreError:
    text = (error.stderr or str(error)).strip().splitlines()
    return _store_error_text(text[-1] if text else str(error), base)


def _store_error_text(detail: str, base: str) -> StoreError:
    if "No space left" in detail or "Disk quota" in detail:
        return StoreError(
            f"the cluster has no space left under {base}",
            "free space or pick another SLURM_DEPLOYMENT_BASE_PATH",
        )
    if "Permission denied" in detail or "not writable" in detail or "Read-only" in detail:
        return StoreError(
            f"cannot write under {base} on the cluster",
            "pick a SLURM_DEPLOYMENT_BASE_PATH you can write to",
        )
    return StoreError(f"the cluster could not complete the deploy: {detail}")


def _locked_linux_platforms(workspace: Workspace, environment: str | None) -> list[str]:
    env_name = environment or workspace.config.get("environment") or "default"
    locked = workspace.locked_environments().get(env_name)
    if locked is None:
        workspace.resolve(env_name, None)  # raises the clear "unknown environment" error
        return []
    return [p for p in locked if p.startswith("linux-")] or locked


def remote_store_from_env() -> RemoteStore:
    return RemoteStore(get_transport())


def deploy_ssh(
    workspace: Workspace,
    environment: str | None,
    platform: str | None,
    *,
    name: str | None = None,
    cache: DownloadCache | None = None,
    reporter: Reporter | None = None,
) -> DeploymentMetadata:
    store = remote_store_from_env()
    return store.deploy(workspace, environment, platform, name=name, cache=cache, reporter=reporter)
