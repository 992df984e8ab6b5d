"""The remote store: content-addressed environments under SLURM_DEPLOYMENT_BASE_PATH on a cluster.

A deploy is: one probe (is it there already? which platform is the edge node?), then, only if
needed, under a remote lock: lay the environment out here for its final remote path, ask which
package groups the cluster lacks, upload one bundle of exactly those (resumable SFTP), and let a
short sh script hard-link the environment together beside its final path and rename it into
place. A kill -9 anywhere leaves either no environment or the complete one; a concurrent deploy
of the same environment waits on the lock and then finds it done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pixi_deploy.errors import PackError, StoreError
from pixi_deploy.pack.direct import DeferredPayload
from pixi_deploy.pack.fetch import DownloadCache
from pixi_deploy.pack.layout import check_environment_path, lay_out_environment
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.scratch import prune_abandoned
from pixi_deploy.store import remote_scripts as sh
from pixi_deploy.store.bundle import stream_bundle
from pixi_deploy.store.groups import Plan, plan
from pixi_deploy.store.image import check_format
from pixi_deploy.store.layout import StoreLayout, check_name
from pixi_deploy.store.metadata import METADATA_NAME, DeploymentMetadata
from pixi_deploy.store.payloads import (
    EarlySender,
    PayloadGroup,
    payload_groups,
    payload_key,
    shares,
    stream_payloads,
)
from pixi_deploy.target import TargetFacts, check_target
from pixi_deploy.transport import (
    CommandResult,
    ConnectionLostError,
    LineStream,
    RemoteCommandError,
    Transport,
    sh_c,
)
from pixi_deploy.transport.connection import _PLATFORMS
from pixi_deploy.workspace import ResolvedEnvironment, Workspace, check_environment_name

MAX_ATTEMPTS = 4
#: Concurrent payload streams (each its own `zstd | tar -x` on the cluster).
PAYLOAD_STREAMS = 2
#: Local layouts live in CACHE/staging/deploy-* (scratch folders, see scratch.py).
STAGING_PREFIX = "deploy-"


@dataclass(frozen=True)
class _Prepared:
    prefix: Path
    plan: Plan
    metadata: DeploymentMetadata
    payloads: list[PayloadGroup]
    sent_early: set[str]  # payload keys handed to the early streams while laying out
    early_bytes: int

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.payloads] + [g.key for g in self.plan.groups]


@dataclass
class TransferReport:
    """What a deploy moved: tests and benchmarks assert on it."""

    groups_total: int = 0
    groups_sent: int = 0
    bundle_bytes: int = 0  # bytes that crossed the connection (after compression)
    environment_part_bytes: int = 0
    raw_payloads_sent: int = 0  # of groups_sent: conda payloads shipped as they are


class RemoteStore:
    def __init__(
        self,
        transport: Transport,
        base: str | None = None,
        *,
        compress: bool | None = None,
        raw_payloads: bool | None = None,
    ) -> None:
        """``compress``: zstd on the wire; None = when the cluster has `zstd` (fast links may
        prefer False: compression costs CPU on both ends). ``raw_payloads``: ship conda
        payloads as they are (store/payloads.py); None = when the cluster has GNU tar and zstd."""
        self.transport = transport
        self.compress = compress
        self.raw_payloads = raw_payloads
        chosen = base or transport.base_path
        if not chosen:
            raise StoreError(
                "no deployment base path on the cluster",
                "set SLURM_DEPLOYMENT_BASE_PATH (e.g. ~/pixi-deploy or /project/envs)",
            )
        self.base = check_environment_path(transport.expand_path(chosen).rstrip("/") or "/")
        self.layout = StoreLayout(self.base)
        self.last_transfer = TransferReport()
        self._remote_zstd = False
        self._remote_gnu_tar = False
        #: What the login node provides (glibc, kernel), as its last probe reported it.
        self.facts = TargetFacts("the cluster's login node")

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
        prepare: Callable[[ResolvedEnvironment], ResolvedEnvironment] | None = None,
        prepare_changes_identity: bool = True,
        format: str | None = None,
    ) -> DeploymentMetadata:
        """``prepare`` turns the locked environment into the one shipped (`api.Preparation`).
        When it may change the environment's identity (building path dependencies, injecting
        files), the platform is detected first (one more round trip) and the prepared
        environment is probed for; otherwise the probe asks for the locked one and only the
        chosen platform's environment is prepared."""
        reporter = reporter or NullReporter()
        image = check_format(format) == "squashfs"
        if name:
            check_name(name)
        cache = cache or DownloadCache()
        # here, not only in scratch_folder: a deploy that finds its environment already on the
        # cluster lays nothing out, and would otherwise never clean what killed deploys left
        prune_abandoned(cache.root / "staging", STAGING_PREFIX)
        early = prepare if prepare_changes_identity else None
        if early is not None and platform in (None, "", "auto"):
            platform = self.transport.platform()
        resolved, existing = self._probe(workspace, environment, platform, early)
        if prepare is not None and early is None:
            prepared = prepare(resolved)
            if prepared.lock_hash != resolved.lock_hash:  # it did change: ask for that one
                resolved, existing = self._probe(
                    workspace, environment, prepared.platform, lambda _: prepared
                )
            resolved = prepared
        check_target(resolved.virtual_packages, self.facts, _what(resolved))
        if image:
            from pixi_deploy.store.remote_image import ImageDeploy  # it builds on this module

            existing = ImageDeploy(self, resolved, existing, cache, reporter).run()
        elif existing is None:
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
        self,
        workspace: Workspace,
        environment: str | None,
        platform: str | None,
        prepare: Callable[[ResolvedEnvironment], ResolvedEnvironment] | None = None,
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
        if prepare is not None:
            candidates = [prepare(c) for c in candidates]
        args = [self.base] + [x for r in candidates for x in (r.platform, r.short_hash)]
        out = self._run(sh.PROBE, args).stdout
        head, _, found = out.partition("\036")
        head_lines = head.splitlines()
        uname = tuple(head_lines[0].split()[:2]) if head_lines else ()
        self._remote_zstd = "zstd=yes" in head_lines
        self._remote_gnu_tar = "gnutar=yes" in head_lines
        reported = dict(line.split("=", 1) for line in head_lines[1:] if "=" in line)
        self.facts = TargetFacts.reported(
            f"the cluster's login node ({self.target})",
            uname_s=uname[0] if uname else "",
            glibc_line=reported.get("glibc", ""),
            kernel=reported.get("kernel", ""),
        )
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
        """Under the cluster's lock; a dropped connection re-takes it and resumes the transfer."""
        key = resolved.short_hash
        final = self.layout.env(key)
        with cache.scratch("staging", STAGING_PREFIX, remove_in_background=True) as tmp:
            prepared: _Prepared | None = None
            for attempt in range(1, MAX_ATTEMPTS + 1):
                lock = self.transport.iter_lines(["sh", "-c", sh.LOCK, "sh", self.base, key])
                try:
                    reporter.step(
                        f"taking the cluster's lock for {key} (waits while another deploy builds it)"
                    )
                    if first_line(lock, self.base) == "present":  # another deploy finished it
                        text = self.transport.read_bytes(f"{final}/{METADATA_NAME}").decode()
                        metadata = DeploymentMetadata.from_json(text, f"{final}/{METADATA_NAME}")
                        metadata.reused = True
                        return metadata
                    if prepared is None:
                        try:
                            prepared = self._prepare(resolved, final, tmp, cache, reporter)
                        except PackError:  # a package refused: what was sent of it goes too
                            self._run(sh.DISCARD, [self.base, key])
                            raise
                    return self._send(resolved, prepared, reporter)
                except ConnectionLostError:
                    if attempt == MAX_ATTEMPTS:
                        raise
                    reporter.step("the connection dropped; reconnecting to resume where it stopped")
                finally:
                    lock.close()
        raise AssertionError("unreachable")

    def _prepare(
        self,
        resolved: ResolvedEnvironment,
        final: str,
        tmp: Path,
        cache: DownloadCache,
        reporter: Reporter,
    ) -> _Prepared:
        """Lay the environment out here, for its final path on the cluster, and group it.

        When the cluster can unpack conda payloads itself (GNU tar and zstd), those are left
        packed and shipped as they are (store/payloads.py); only what differs per prefix is
        laid out here."""
        prefix = tmp / "prefix"
        raw = self._remote_zstd and self._remote_gnu_tar and self.raw_payloads is not False
        sent_early: set[str] = set()
        before = self.transport.stats.bytes_uploaded
        with reporter.task("upload", None) as advance:
            sender, wanted = self._early_sender(resolved, advance) if raw else (None, set())
            if wanted:
                reporter.step(f"uploading {len(wanted)} missing packages while laying out")

            def send_early(payload: DeferredPayload) -> None:
                key = payload_key(payload.record)
                if sender is not None and key in wanted and key not in sent_early:
                    sent_early.add(key)
                    sender.add(PayloadGroup(key, payload))

            try:
                deferred = lay_out_environment(
                    resolved,
                    cache,
                    staging=prefix,
                    final=Path(final),
                    reporter=reporter,
                    defer_payloads=raw,
                    on_deferred=send_early,
                )
            finally:
                if sender is not None:
                    sender.close()
        metadata = DeploymentMetadata.for_environment(resolved, final, self.target)
        metadata.write(prefix / METADATA_NAME)
        shipped_raw = {
            f"{d.record.name.normalized}-{d.record.version}-{d.record.build}" for d in deferred
        }
        return _Prepared(
            prefix,
            plan(prefix, final, shipped_raw),
            metadata,
            payload_groups(deferred),
            sent_early,
            self.transport.stats.bytes_uploaded - before,
        )

    def _send(
        self, resolved: ResolvedEnvironment, prepared: _Prepared, reporter: Reporter
    ) -> DeploymentMetadata:
        key = resolved.short_hash
        keys = prepared.keys
        listed = self._run(sh.MISSING, [self.base, key], input="\n".join(keys) + "\n").stdout
        missing = set(listed.split())
        sending = [g for g in prepared.plan.groups if g.key in missing]
        raw = [p for p in prepared.payloads if p.key in missing]
        total = sum(g.size for g in sending) + sum(p.size for p in raw) + prepared.plan.env.size
        use_zstd = self._remote_zstd if self.compress is None else self.compress
        compression = "zstd" if use_zstd else "none"
        reporter.step(
            f"sending {len(sending) + len(raw)} of {len(keys)} package groups + environment "
            f"files ({total / 1e6:.1f} MB{', zstd' if compression == 'zstd' or raw else ''})"
        )
        before = self.transport.stats.bytes_uploaded
        with reporter.task("upload", total) as advance:
            streams = shares(raw, missing, PAYLOAD_STREAMS)
            with ThreadPoolExecutor(len(streams) or 1) as pool:
                jobs = [pool.submit(self._send_payloads, key, share, advance) for share in streams]
                for job in jobs:
                    self._check(job.result())
            result = self.transport.pipe(
                ["sh", "-c", sh.RECEIVE, "sh", self.base, key, compression],
                lambda write: stream_bundle(
                    write, prepared.prefix, prepared.plan, missing, compression, advance
                ),
            )
        self._check(result)
        self._finalize([self.base, key, *keys])
        raw_sent = len(prepared.sent_early | {p.key for p in raw})
        self.last_transfer = TransferReport(
            len(keys),
            len(sending) + raw_sent,
            prepared.early_bytes + self.transport.stats.bytes_uploaded - before,
            prepared.plan.env.size,
            raw_sent,
        )
        reporter.step(f"deployed environment {key} at {prepared.metadata.deployment_path}")
        return prepared.metadata

    def _early_sender(
        self, resolved: ResolvedEnvironment, advance: Callable[[int], None]
    ) -> tuple[EarlySender | None, set[str]]:
        """Payload keys follow from the lock alone, so the cluster can be asked which it lacks
        before anything is laid out, and those be sent while the rest is (one round trip)."""
        key = resolved.short_hash
        candidates = [payload_key(r) for r in resolved.conda_records]
        listed = self._run(sh.MISSING, [self.base, key], input="\n".join(candidates) + "\n")
        wanted = set(listed.stdout.split())
        if not wanted:
            return None, wanted

        def start(groups: Iterable[PayloadGroup]) -> None:
            self._check(self._send_payloads(key, groups, advance))

        return EarlySender(start, PAYLOAD_STREAMS), wanted

    def _send_payloads(
        self, key: str, groups: Iterable[PayloadGroup], advance: Callable[[int], None]
    ) -> CommandResult:
        return self.transport.pipe(
            ["sh", "-c", sh.RECEIVE_PAYLOADS, "sh", self.base, key],
            lambda write: stream_payloads(write, groups, advance),
        )

    def _check(self, result: CommandResult) -> None:
        if result.exit_status != 0:
            detail = result.stderr.strip().splitlines()[-1:] or [
                f"exit status {result.exit_status}"
            ]
            raise store_error_text(detail[0], self.base)

    def _finalize(self, args: list[str]) -> None:
        """Run under the transport's watchdog: if we die, the edge node stops building too."""
        errors: list[str] = []
        status = self.transport.stream(sh_c(sh.FINALIZE, args), lambda line: None, errors.append)
        if status != 0:
            detail = errors[-1] if errors else f"exit status {status}"
            raise store_error_text(detail, self.base)

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


def _what(resolved: ResolvedEnvironment) -> str:
    return f"environment '{resolved.name}' ({resolved.platform})"


def first_line(lines: LineStream, base: str) -> str:
    errors: list[str] = []
    for stream, line in lines.follow():
        if stream == "stdout":
            return line.strip()
        errors.append(line)
    detail = errors[-1] if errors else "the lock command ended early"
    raise store_error_text(detail, base)


def _store_error(error: RemoteCommandError, base: str) -> StoreError:
    text = (error.stderr or str(error)).strip().splitlines()
    return store_error_text(text[-1] if text else str(error), base)


def store_error_text(detail: str, base: str) -> StoreError:
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
    env_name = check_environment_name(
        environment or workspace.config.get("environment") or "default"
    )
    locked = workspace.locked_environments().get(env_name)
    if locked is None:
        workspace.resolve(env_name, None)  # raises the clear "unknown environment" error
        return []
    return [p for p in locked if p.startswith("linux-")] or locked
