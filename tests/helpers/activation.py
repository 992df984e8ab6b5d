"""A workspace whose manifest uses every part of pixi's activation (default and feature
activation, platform and family targets, scripts and env, values that expand), and reading
what an activate.sh sets."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pixi_deploy.testing.channel import build_channel, demo_specs, lock_workspace

ACTIVATION = """
[activation]
scripts = ["scripts/default.sh"]
env = { DEFAULT_VAR = "1", FOO_VAR = "default", DATA = "$PIXI_PROJECT_ROOT/data", SEEN = "$ORDER" }

[target.linux-64.activation]
scripts = ["scripts/linux.sh"]
env = { LINUX_VAR = "linux-64" }

[target.unix.activation.env]
UNIX_VAR = "unix"
LINUX_VAR = "unix"

[feature.cuda1.activation]
scripts = ["scripts/cuda1.sh"]
env = { FOO_VAR = "cuda1" }

[feature.cuda2.activation.env]
FOO_VAR = "cuda2"
CUDA2 = "2"
QUOTED = "it's literal: no $ here"

[tasks]
hello = "echo hello"
"""


def make_activation_workspace(dest: Path, platforms: tuple[str, ...] = ("linux-64",)) -> Path:
    """Environments default and cuda (= features cuda1, cuda2, then the default feature)."""
    build_channel(dest / "channel", demo_specs(platforms))
    workspace = dest / "ws"
    lock_workspace(
        workspace,
        dest / "channel",
        {"default": ["greet", "greet-config"], "cuda": []},
        list(platforms),
        name="acttest",
    )
    manifest = workspace / "pixi.toml"
    text = manifest.read_text().replace('cuda = ["cuda"]', 'cuda = ["cuda1", "cuda2"]')
    manifest.write_text(text.replace("[feature.cuda.dependencies]\n", "") + ACTIVATION)
    (workspace / "scripts").mkdir()
    for name in ("default", "linux", "cuda1"):
        # each script records that it ran, and whether the package's activate.d ran before it
        (workspace / "scripts" / f"{name}.sh").write_text(
            f'export ORDER="${{ORDER:+$ORDER }}{name}${{GREET_CONFIG:+(after-package)}}"\n'
        )
    return workspace


def activated(activate: Path | str, **preset: str) -> dict[str, str]:
    """The variables after sourcing ``activate`` in a clean POSIX shell."""
    env = {"PATH": "/usr/bin:/bin", **preset}
    out = subprocess.run(
        ["sh", "-c", '. "$0" && env -0', str(activate)],
        capture_output=True,
        env=env,
        check=True,
    ).stdout
    pairs = (item.split(b"=", 1) for item in out.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs if k.decode() not in ("PWD", "SHLVL", "_")}
