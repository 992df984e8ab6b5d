"""activate.sh reproduces what `pixi shell-hook` sets, in every install path.

The expected values are pixi's, from its documentation and its own tests (prefix-dev/pixi:
``docs/reference/environment_variables.md``; ``crates/pixi_core/src/workspace/environment.rs``
``test_activation``/``test_activation_env_priority``; ``crates/pixi_core/src/activation.rs``;
rattler_shell's Activator for the order): pixi's variables, then the packages' activate.d, then
the manifest's scripts (features in the environment's order, default feature last, a feature's
most specific target replacing its generic list), then the manifest's env (most specific target
over generic, an earlier feature over a later one), expanded in the shell.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.activation import activated, make_activation_workspace
from pixi_deploy import api
from pixi_deploy.activation import CARRIED_DIR, ManifestActivation, read_manifest_activation
from pixi_deploy.errors import PackError
from pixi_deploy.workspace import load_workspace


def test_activate_sh_sets_what_pixi_sets(tmp_path: Path) -> None:
    workspace = make_activation_workspace(tmp_path)
    meta = api.deploy(
        manifest_path=workspace,
        environment="cuda",
        platform="linux-64",
        base=tmp_path / "store",
        cache_dir=tmp_path / "cache",
    )
    prefix = meta.deployment_path
    got = activated(meta.activate_script)
    carried = f"{prefix}/{CARRIED_DIR}"
    assert got["CONDA_PREFIX"] == prefix
    assert got["PATH"] == f"{prefix}/bin:/usr/bin:/bin"
    assert got["CONDA_SHLVL"] == "1"
    assert got["PIXI_PROJECT_NAME"] == "acttest"
    assert got["PIXI_ENVIRONMENT_NAME"] == "cuda"
    assert got["PIXI_ENVIRONMENT_PLATFORMS"] == "linux-64"
    assert got["CONDA_DEFAULT_ENV"] == "acttest:cuda"  # "<project>:<env>" for named envs
    assert got["PIXI_PROMPT"] == "(acttest:cuda) "
    # no project here (a store, not the checkout): the scripts the environment carries
    assert got["PIXI_PROJECT_ROOT"] == carried
    assert got["PIXI_PROJECT_MANIFEST"] == f"{carried}/pixi.toml"
    # scripts: cuda1's, then the default feature's linux-64 list (replacing its generic one),
    # each after the packages' activate.d (greet-config sets GREET_CONFIG)
    assert got["ORDER"] == "cuda1(after-package) linux(after-package)"
    # env: after the scripts (SEEN), expanded; cuda1 over cuda2 over default; target over generic
    assert got["SEEN"] == got["ORDER"]
    assert got["FOO_VAR"] == "cuda1"
    assert got["CUDA2"] == "2"
    assert got["LINUX_VAR"] == "linux-64"
    assert got["UNIX_VAR"] == "unix"
    assert got["DEFAULT_VAR"] == "1"
    assert got["DATA"] == f"{carried}/data"
    assert got["QUOTED"] == "it's literal: no $ here"
    assert got["GREET_CONFIG"] == f"{prefix}/etc/greet.conf"

    # a job (or a checkout) sets PIXI_PROJECT_ROOT: the scripts are then the project's own
    project = tmp_path / "job-copy"
    shutil.copytree(workspace, project)
    (project / "scripts" / "cuda1.sh").write_text('export ORDER="from-the-project"\n')
    job = activated(meta.activate_script, PIXI_PROJECT_ROOT=str(project))
    assert job["ORDER"] == "from-the-project linux(after-package)"
    assert job["PIXI_PROJECT_MANIFEST"] == f"{project}/pixi.toml"
    assert job["DATA"] == f"{project}/data"

    default = api.deploy(
        manifest_path=workspace,
        platform="linux-64",
        base=tmp_path / "store",
        cache_dir=tmp_path / "cache",
    )
    plain = activated(default.activate_script)
    assert plain["CONDA_DEFAULT_ENV"] == "acttest"  # the project's name for the default env
    assert plain["ORDER"] == "linux(after-package)"
    assert plain["FOO_VAR"] == "default" and "CUDA2" not in plain


def test_feature_and_target_merge_on_another_platform(tmp_path: Path) -> None:
    workspace = make_activation_workspace(tmp_path, ("linux-64", "linux-aarch64"))
    ws = load_workspace(workspace)
    arm = ws.activation("cuda", "linux-aarch64")
    assert [s.path for s in arm.scripts] == ["scripts/cuda1.sh", "scripts/default.sh"]
    env = dict(arm.env)
    assert env["LINUX_VAR"] == "unix"  # no linux-aarch64 target: the unix one applies
    assert env["FOO_VAR"] == "cuda1"
    assert arm.platforms == ("linux-64", "linux-aarch64")
    no_default = read_manifest_activation(
        {"environments": {"solo": {"features": ["cuda2"], "no-default-feature": True}},
         "feature": {"cuda2": {"activation": {"env": {"X": "1"}}}},
         "activation": {"scripts": ["never.sh"]}},
        workspace, project="p", manifest_name="pixi.toml", environment="solo",
        platform="linux-64", platforms=["linux-64"],
    )  # fmt: skip
    assert no_default.scripts == () and no_default.env == (("X", "1"),)


def test_unpack_alone_activates_like_the_deploy(tmp_path: Path) -> None:
    workspace = make_activation_workspace(tmp_path)
    deployed = api.deploy(
        manifest_path=workspace, environment="cuda", platform="linux-64",
        base=tmp_path / "store", cache_dir=tmp_path / "cache",
    )  # fmt: skip
    packed = api.pack(
        manifest_path=workspace, environment="cuda", platform="linux-64",
        output=tmp_path / "env.tar", cache_dir=tmp_path / "cache",
    )  # fmt: skip
    shutil.rmtree(workspace)  # the project is not where the pack goes
    result = api.unpack(packed.path, tmp_path / "elsewhere" / "env")
    unpacked = activated(result.activate_script)
    reference = activated(deployed.activate_script)
    assert set(unpacked) == set(reference)
    for name, value in reference.items():
        assert unpacked[name] == value.replace(deployed.deployment_path, str(result.prefix)), name
    carried = result.prefix / CARRIED_DIR / "scripts" / "cuda1.sh"
    assert carried.read_text().startswith('export ORDER="${ORDER:+$ORDER }cuda1')


def test_missing_activation_script_is_refused_at_deploy_time(tmp_path: Path, cli) -> None:
    workspace = make_activation_workspace(tmp_path)
    (workspace / "scripts" / "cuda1.sh").unlink()
    out = cli(
        "deploy", "--manifest-path", workspace, "-e", "cuda", "-p", "linux-64",
        "--base", tmp_path / "store", "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert out.exit_code == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "scripts/cuda1.sh" in lines[0] and "does not exist" in lines[0]
    assert not (tmp_path / "store" / "envs").exists() or not any(
        (tmp_path / "store" / "envs").iterdir()
    )
    packed = cli("pack", "--manifest-path", workspace, "-e", "cuda", "-o", tmp_path / "x.tar")
    assert packed.exit_code == 2 and not (tmp_path / "x.tar").exists()
    described = json.loads(cli("inspect", "--manifest-path", workspace, "--json").stdout)
    assert any("scripts/cuda1.sh" in p for p in described["problems"])
    # the default environment does not use cuda1.sh: it still deploys
    ok = cli(
        "deploy", "--manifest-path", workspace, "-p", "linux-64", "--base", tmp_path / "store",
        "--cache-dir", tmp_path / "cache", "--metadata-out", tmp_path / "m.json",
    )  # fmt: skip
    assert ok.exit_code == 0, ok.stderr


def test_activation_is_part_of_the_identity_and_tasks_are_not(tmp_path: Path) -> None:
    workspace = make_activation_workspace(tmp_path)
    manifest = workspace / "pixi.toml"
    first = load_workspace(workspace).resolve("cuda", "linux-64").lock_hash
    manifest.write_text(manifest.read_text().replace('hello = "echo hello"', 'hello = "echo hi"'))
    assert load_workspace(workspace).resolve("cuda", "linux-64").lock_hash == first
    (workspace / "scripts" / "cuda1.sh").write_text("export CHANGED=1\n")
    changed_script = load_workspace(workspace).resolve("cuda", "linux-64").lock_hash
    manifest.write_text(manifest.read_text().replace('CUDA2 = "2"', 'CUDA2 = "3"'))
    changed_env = load_workspace(workspace).resolve("cuda", "linux-64").lock_hash
    assert len({first, changed_script, changed_env}) == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"scripts": [{"path": "../escape.sh", "sha256": "x", "content": ""}]},
        {"scripts": [{"path": "/etc/profile", "sha256": "x", "content": ""}]},
        {"env": [["NOT-A-NAME", "1"]]},
        {"scripts": [{"path": "a.sh", "sha256": "0" * 64, "content": "ZWNobwo="}]},
        {"manifest": "../../evil.toml"},
        {"scripts": "not a list"},
    ],
)
def test_hostile_pack_activation_is_refused(bad: dict[str, object]) -> None:
    good = ManifestActivation("p", "default", ("linux-64",), "pixi.toml").to_pack_extra()
    with pytest.raises(PackError):
        ManifestActivation.from_pack_extra({"activation": {**good, **bad}})


def test_self_extracting_installer_activates_like_the_deploy(tmp_path: Path) -> None:
    workspace = make_activation_workspace(tmp_path)
    installer = api.pack(
        manifest_path=workspace, environment="cuda", platform="linux-64",
        output=tmp_path / "env.sh", self_extracting=True, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    shutil.rmtree(workspace)
    target = tmp_path / "installed"
    subprocess.run(
        ["sh", str(installer.path), "--target", str(target)], check=True, capture_output=True
    )
    got = activated(target / "activate.sh")
    assert got["PIXI_PROJECT_ROOT"] == f"{target}/{CARRIED_DIR}"
    assert got["ORDER"] == "cuda1(after-package) linux(after-package)"
    assert (got["FOO_VAR"], got["CONDA_DEFAULT_ENV"]) == ("cuda1", "acttest:cuda")
