"""Targets that cannot run the environment are refused before anything moves: glibc and CUDA
needs (`__glibc`, `__cuda` in the lock, `[system-requirements]`) against this machine for
unpack and local deploys, against the login node (from the deploy's one probe) for ssh
deploys, and against the compute node in the shell check a job runs; CONDA_OVERRIDE_GLIBC /
CONDA_OVERRIDE_CUDA override the detection as in conda and pixi."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers.needs import require
from pixi_deploy.errors import StoreError
from pixi_deploy.target import (
    UNMET_STATUS,
    TargetFacts,
    check_target,
    lower_bounds,
    shell_check,
    unmet,
)
from pixi_deploy.workspace import load_workspace

HERE_GLIBC = TargetFacts.here().glibc


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONDA_OVERRIDE_GLIBC", "CONDA_OVERRIDE_CUDA"):
        monkeypatch.delenv(name, raising=False)


def test_needs_are_compared_as_version_specs() -> None:
    old = TargetFacts.reported("node1", uname_s="Linux", glibc_line="glibc 2.17", kernel="3.10.0-1160.el7.x86_64", environ={})  # fmt: skip
    assert (old.glibc, old.linux, old.cuda) == ("2.17", "3.10.0", None)
    assert unmet(["__glibc >=2.17,<3.0.a0", "__unix", "__linux"], old) == []
    assert unmet(["__glibc >=2.28,<3.0.a0", "__linux >=4.18"], old) == [
        "glibc >=2.28,<3.0.a0 (it has 2.17)",
        "linux >=4.18 (it has 3.10.0)",
    ]
    assert unmet(["__cuda >=12", "__osx >=11"], old) == [
        "cuda >=12 (it has no NVIDIA driver)",
        "osx >=11 (it runs linux)",
    ]
    musl = TargetFacts.reported("alpine", uname_s="Linux", glibc_line="", environ={})
    assert unmet(["__glibc >=2.17"], musl) == ["glibc >=2.17 (it has no glibc)"]
    overridden = TargetFacts.reported(
        "node1", uname_s="Linux", glibc_line="glibc 2.17",
        environ={"CONDA_OVERRIDE_GLIBC": "2.34", "CONDA_OVERRIDE_CUDA": "12.4"},
    )  # fmt: skip
    assert unmet(["__glibc >=2.28", "__cuda >=12"], overridden) == []
    with pytest.raises(StoreError) as caught:
        check_target(["__glibc >=2.28"], old, "environment 'prod' (linux-64)")
    assert str(caught.value).startswith(
        "node1 cannot run environment 'prod' (linux-64): it needs glibc >=2.28 (it has 2.17) ("
    )
    assert lower_bounds(["__glibc >=2.17,<3.0.a0", "__glibc >=2.28", "__cuda", "__unix"]) == {
        "glibc": "2.28",
        "cuda": "0",
    }


def test_this_machine_honours_conda_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDA_OVERRIDE_GLIBC", "2.5")
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "12.4")
    here = TargetFacts.here()
    assert (here.glibc, here.cuda) == ("2.5", "12.4")
    assert unmet(["__glibc >=2.17"], here) == ["glibc >=2.17 (it has 2.5)"]


def test_system_requirements_apply_per_platform(tmp_path: Path) -> None:
    from pixi_deploy.testing.channel import make_demo_workspace

    workspace = make_demo_workspace(tmp_path / "demo")
    manifest = workspace / "pixi.toml"
    manifest.write_text(
        manifest.read_text()
        + '\n[system-requirements]\nlibc = "2.31"\ncuda = "12"\nmacos = "13.0"\n'
    )
    needs = load_workspace(workspace).resolve("default", "linux-64").virtual_packages
    assert {"__glibc >=2.31", "__cuda >=12"} <= set(needs)
    assert not any(n.startswith("__osx") for n in needs)  # macos means nothing on linux


def test_local_deploy_and_unpack_are_refused_on_an_old_glibc(
    fresh_demo_ws: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = require(fresh_demo_ws, "__glibc >=99")
    deployed = cli("deploy", "--manifest-path", workspace, "-p", "linux-64", "--base", tmp_path / "store")  # fmt: skip
    assert deployed.exit_code == 5, deployed.stderr
    line = deployed.stderr.strip()
    assert len(line.splitlines()) == 1
    assert (
        f"this machine cannot run environment 'default' (linux-64): it needs glibc >=99 (it has {HERE_GLIBC})"
        in line
    )
    assert "CONDA_OVERRIDE_GLIBC" in line
    assert not (tmp_path / "store").exists()  # refused before anything was written

    packed = cli("pack", "--manifest-path", workspace, "-p", "linux-64", "-o", tmp_path / "p.tar")
    assert packed.exit_code == 0, packed.stderr  # packing for elsewhere is fine
    unpacked = cli("unpack", tmp_path / "p.tar", tmp_path / "env")
    assert unpacked.exit_code == 5 and "it needs glibc >=99" in unpacked.stderr
    assert not (tmp_path / "env").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".env")]  # no work folder

    monkeypatch.setenv("CONDA_OVERRIDE_GLIBC", "99.1")  # as conda and pixi: trust the user
    assert cli("unpack", tmp_path / "p.tar", tmp_path / "env").exit_code == 0
    assert (tmp_path / "env" / "bin" / "greet").is_file()
    # where it is activated without the override (a compute node), activate.sh refuses first
    activated = subprocess.run(
        ["sh", "-c", '. "$0"; echo "status $? PATH=$PATH"', str(tmp_path / "env" / "activate.sh")],
        capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert activated.stdout.strip() == f"status {UNMET_STATUS} PATH=/usr/bin:/bin"  # unchanged
    assert activated.stderr.strip().endswith(
        f"cannot run environment default: it needs glibc >=99 (it has {HERE_GLIBC})"
    )


def test_cuda_needs_a_driver(fresh_demo_ws: Path, tmp_path: Path, cli, monkeypatch) -> None:
    workspace = require(fresh_demo_ws, "__cuda >=12")
    assert cli("pack", "--manifest-path", workspace, "-p", "linux-64", "-o", tmp_path / "p.tar").exit_code == 0  # fmt: skip
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi on this machine in any case
    refused = cli("unpack", tmp_path / "p.tar", tmp_path / "env")
    assert refused.exit_code == 5
    assert "it needs cuda >=12 (it has no NVIDIA driver)" in refused.stderr
    assert "CONDA_OVERRIDE_CUDA" in refused.stderr
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "11.8")
    assert "it needs cuda >=12 (it has 11.8)" in cli("unpack", tmp_path / "p.tar", tmp_path / "env").stderr  # fmt: skip
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "12.2")
    assert cli("unpack", tmp_path / "p.tar", tmp_path / "env").exit_code == 0


def test_self_extracting_installer_checks_the_machine_first(
    fresh_demo_ws: Path, tmp_path: Path, cli
) -> None:
    """The installer is a shell script: it embeds the shell check and runs it before it writes."""
    workspace = require(require(fresh_demo_ws, "__glibc >=99"), "__cuda >=12")
    out = tmp_path / "env.sh"
    packed = cli("pack", "--self-extracting", "--manifest-path", workspace, "-p", "linux-64", "-o", out)  # fmt: skip
    assert packed.exit_code == 0, packed.stderr  # packing for elsewhere is fine
    target = tmp_path / "site" / "env"

    def install(**overrides: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", **overrides}  # no nvidia-smi here in any case
        return subprocess.run(["sh", str(out), "--target", str(target)], capture_output=True, text=True, check=False, env=env)  # fmt: skip

    refused = install()
    assert refused.returncode == UNMET_STATUS, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "cannot run environment default: it needs glibc >=99 (it has " + str(HERE_GLIBC) in line
    assert "cuda >=12 (it has no NVIDIA driver)" in line
    assert "nothing was installed; CONDA_OVERRIDE_GLIBC / CONDA_OVERRIDE_CUDA" in line
    assert not (tmp_path / "site").exists()  # checked before the target's parent was made
    old_cuda = install(CONDA_OVERRIDE_GLIBC="99.1", CONDA_OVERRIDE_CUDA="11.8")
    assert old_cuda.returncode == UNMET_STATUS
    assert "it needs cuda >=12 (it has 11.8)" in old_cuda.stderr
    assert "glibc" not in old_cuda.stderr.split("it needs")[1].split("(nothing")[0]
    assert not (tmp_path / "site").exists()
    fine = install(CONDA_OVERRIDE_GLIBC="99.1", CONDA_OVERRIDE_CUDA="12.2")
    assert fine.returncode == 0, fine.stderr
    assert (target / "bin" / "greet").is_file()


def _run_check(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    body = f"f() {{\n{script}\necho checked-ok\n}}\nf\n"
    return subprocess.run(["sh", "-c", body], capture_output=True, text=True, check=False, env=env)


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_shell_check_refuses_with_one_line(shell: str) -> None:
    script = shell_check(["__glibc >=2.17,<3.0.a0", "__cuda >=12"], "prod")
    base = {"PATH": "/usr/bin:/bin", "SLURMD_NODENAME": "node7"}
    no_gpu = _run_check(script, base)
    assert no_gpu.returncode == UNMET_STATUS and "checked-ok" not in no_gpu.stdout
    assert no_gpu.stderr.strip() == (
        "pixi-deploy: node7 cannot run environment prod: it needs cuda >=12 (it has no NVIDIA driver)"
    )
    both = _run_check(script, {**base, "CONDA_OVERRIDE_GLIBC": "2.12", "CONDA_OVERRIDE_CUDA": "11.8"})  # fmt: skip
    assert both.stderr.strip().endswith(
        "it needs glibc >=2.17 (it has 2.12); cuda >=12 (it has 11.8)"
    )
    fine = _run_check(script, {**base, "CONDA_OVERRIDE_CUDA": "12.4"})
    assert fine.returncode == 0 and fine.stdout.strip() == "checked-ok", fine.stderr
    # this machine's real glibc, detected by the shell as rattler detects it
    real = _run_check(shell_check([f"__glibc >={HERE_GLIBC}"], "x"), base)
    assert real.returncode == 0, real.stderr
    newer = _run_check(shell_check(["__glibc >=99"], "x"), base)
    assert f"glibc >=99 (it has {HERE_GLIBC})" in newer.stderr
    assert shell_check(["__unix", "__linux"], "x") == ""  # nothing to check: nothing written


@pytest.mark.cluster
def test_ssh_deploy_is_refused_on_the_login_nodes_glibc(
    fresh_demo_ws: Path, ssh_env, tmp_path: Path, cli, monkeypatch
) -> None:
    workspace = require(fresh_demo_ws, "__glibc >=99")
    base = f"{ssh_env.base_path}/target-{uuid.uuid4().hex[:8]}"
    out = cli("deploy", "--target", "ssh", "--manifest-path", workspace, "--base", base, "--json")
    assert out.exit_code == 5, out.stderr
    assert (
        f"the cluster's login node (ssh://{ssh_env.user}@{ssh_env.host}:{ssh_env.port}) cannot "
        f"run environment 'default' (linux-64): it needs glibc >=99 (it has {HERE_GLIBC})"
    ) in out.stderr
    assert out.stdout == ""
    from pixi_deploy.transport import get_transport

    listing = get_transport().run(["sh", "-c", 'ls -A "$1" 2>/dev/null | wc -l', "sh", base])
    assert listing.stdout.strip() == "0"  # nothing moved
    monkeypatch.setenv("CONDA_OVERRIDE_GLIBC", "99.0")
    again = cli("deploy", "--target", "ssh", "--manifest-path", workspace, "--base", base, "--json", "--metadata-out", tmp_path / "m.json")  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["deployment_path"].startswith(f"{base}/envs/")
