#!/usr/bin/env python3
"""From edit to running: one source file edited -> the job's first output line (issue 15).

Measured in ONE run against the test cluster (``scripts/test-cluster``, started if needed),
rounds interleaved, each path on a fresh SSH connection (as a new ``pixi-deploy`` process has):

* **edit**: a source file of the project (``--file-kb``, generated Python) changes; then
  ``api.submit(["head", "-n", "1", FILE])`` (snapshot, deploy probe, the changed file, sbatch)
  and the job's first output line read from its log;
* **no change**: the same submit again;
* **floor**: ``true`` over a new connection, plus ``sbatch --parsable --wrap 'echo first'`` and
  its first output line, read the same way;
* **cold** (once, first): the same submit into an empty base (environment + whole snapshot);
* **run --target ssh** (reported, no goal): after another edit, ``api.run(argv, target="ssh")``
  to its first output line, again with no change, against ``true`` over a new connection.

Both paths wait for the first line with the same remote loop (``until [ -s log ]; sleep
0.02``), so the difference is what pixi-deploy adds. Reported: medians, the median of the
per-round differences (paired), and the bytes that crossed the connection (all of them, and
the code alone: a submit's bytes minus those of the no-change submit, which carries only the
job's bundle).

Goals: an edit-one-file submit moves <= 1.1x the file's bytes, and adds <= 0.3 s to the floor.

    python benchmarks/bench_code.py [--repeat 7] [--file-kb 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pixi_deploy import api
from pixi_deploy.testing.python_pkg import make_python_workspace
from pixi_deploy.transport import SSHSettings, Transport

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
WAIT_FIRST_LINE = 'until [ -s "$1" ]; do sleep 0.02; done; head -n 1 "$1"'


def cluster_settings() -> dict[str, str]:
    script = REPO / "scripts" / "test-cluster"
    status = subprocess.run([script, "status"], capture_output=True, check=False)
    command = "env" if status.returncode == 0 else "start"
    out = subprocess.run([script, command], capture_output=True, text=True, check=True).stdout
    values = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export":
            name, value = words[1].split("=", 1)
            values[name] = value
    return values


def make_project(root: Path, files: int) -> Path:
    workspace = make_python_workspace(root, path_dependencies={}, interpreter=SYSTEM_PYTHON)
    src = workspace / "src"
    src.mkdir()
    for i in range(files):  # a realistic checkout: many small modules
        (src / f"module_{i:03}.py").write_text(source(i, 40))
    subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
    subprocess.run(["git", "add", "-A"], cwd=workspace, check=True)
    return workspace


def source(seed: int, functions: int) -> str:
    return f"# module {seed}\n" + "".join(
        f"def f{seed}_{i}(x, y=({i}, {seed})):\n"
        f"    total = x * {i} + y[0] - {seed * 7 % 13}\n"
        f"    return [total, 'value {i} of {seed}', {{'k': total}}]\n\n\n"
        for i in range(functions)
    )


def edit(path: Path, round_: int, kb: int) -> int:
    """Rewrite the file: new content of about ``kb`` kB, first line names the round."""
    body = source(10_000 + round_, 1)
    while len(body) < kb * 1000:
        body += source(20_000 + round_ * 1000 + len(body) % 997, 8)
    path.write_text(f"# round {round_}\n" + body[: kb * 1000])
    return path.stat().st_size


def wire_bytes(transport: Transport) -> int:
    """What this connection has sent so far, as the kernel counts it (SSH framing, commands,
    stdin, handshake: everything), from ``ss -ti``."""
    conn = transport._session._conn
    assert conn is not None
    port = conn.get_extra_info("sockname")[1]
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"bytes_sent:(\d+)", out)
    assert match, out
    return int(match[1])


def timed_submit(settings: SSHSettings, argv: list[str]) -> tuple[float, int, int, str]:
    """(seconds to the first output line, payload bytes piped, bytes on the wire, that line)"""
    started = time.perf_counter()
    with Transport(settings) as t:
        job = api.submit(argv, transport=t)
        first = t.run_script(WAIT_FIRST_LINE, [job.stdout_path]).stdout.strip()
        elapsed = time.perf_counter() - started
        return elapsed, t.stats.bytes_uploaded, wire_bytes(t), first


def timed_login_run(settings: SSHSettings, argv: list[str]) -> tuple[float, int, str]:
    """``run --target ssh``: (seconds to the first output line, payload bytes piped, that line)"""
    lines: list[str] = []
    started = time.perf_counter()
    with Transport(settings) as t:
        status = api.run(
            argv, target="ssh", transport=t, on_stdout=lines.append, on_stderr=lambda line: None
        )
        elapsed = time.perf_counter() - started
        assert status == 0 and lines, (status, lines)
        return elapsed, t.stats.bytes_uploaded, lines[0]


def login_floor(settings: SSHSettings) -> float:
    """``ssh host true`` over a new connection: what any login-node command costs."""
    started = time.perf_counter()
    with Transport(settings) as t:
        t.run(["true"])
        return time.perf_counter() - started


def floor(settings: SSHSettings, base: str) -> tuple[float, int]:
    started = time.perf_counter()
    with Transport(settings) as t:
        t.run(["true"])
        out = f"{base}/floor-{uuid.uuid4().hex[:8]}.out"
        t.run(["sbatch", "--parsable", "-o", out, "--wrap", "echo first"])
        assert t.run_script(WAIT_FIRST_LINE, [out]).stdout.strip() == "first"
        return time.perf_counter() - started, wire_bytes(t)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--file-kb", type=int, default=20)
    parser.add_argument("--files", type=int, default=200, help="modules in the project")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    env = cluster_settings()
    base = f"{env['SLURM_DEPLOYMENT_BASE_PATH']}/bench-code-{uuid.uuid4().hex[:8]}"
    settings = SSHSettings(
        host=env["SLURM_EDGE_NODE_HOST"],
        port=int(env["SLURM_EDGE_NODE_PORT"]),
        user=env["SLURM_EDGE_NODE_USER"],
        key_path=Path(env["SLURM_EDGE_NODE_KEY_PATH"]),
        known_hosts=Path(env["SLURM_EDGE_NODE_KNOWN_HOSTS"]),
        base_path=base,
        ssh_config=None,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-code-"))
    os.environ["PIXI_DEPLOY_CACHE_DIR"] = str(work / "cache")
    workspace = make_project(work / "p", args.files)
    os.chdir(workspace)
    edited = workspace / "src" / "module_007.py"
    argv = ["head", "-n", "1", "src/module_007.py"]

    cold, cold_bytes, cold_wire, first = timed_submit(settings, argv)
    assert first.startswith("# module 7"), first
    timed_submit(settings, argv)  # warms the login node's caches
    rows: dict[str, list[float]] = {"floor": [], "edit": [], "no change": []}
    wire: dict[str, list[int]] = {"floor": [], "edit": [], "no change": []}
    login: dict[str, list[float]] = {"floor": [], "edit": [], "no change": []}
    code_bytes, sizes = [], []
    for round_ in range(args.repeat):
        seconds, sent_wire = floor(settings, base)
        rows["floor"].append(seconds)
        wire["floor"].append(sent_wire)
        sizes.append(edit(edited, round_, args.file_kb))
        seconds, piped, sent_wire, first = timed_submit(settings, argv)
        assert first == f"# round {round_}", first
        rows["edit"].append(seconds)
        wire["edit"].append(sent_wire)
        code_bytes.append(piped)  # the code stream (the only piped data of a submit)
        seconds, piped, sent_wire, first = timed_submit(settings, argv)
        assert piped == 0 and first == f"# round {round_}"
        rows["no change"].append(seconds)
        wire["no change"].append(sent_wire)
        login["floor"].append(login_floor(settings))
        edit(edited, 1000 + round_, args.file_kb)
        seconds, piped, first = timed_login_run(settings, argv)
        assert first == f"# round {1000 + round_}" and piped > 0, first
        login["edit"].append(seconds)
        seconds, piped, first = timed_login_run(settings, argv)
        assert piped == 0 and first == f"# round {1000 + round_}"
        login["no change"].append(seconds)
    change_wire = [e - n for e, n in zip(wire["edit"], wire["no change"], strict=True)]
    byte_ratio = max(c / s for c, s in zip(change_wire, sizes, strict=True))
    overhead = statistics.median(e - f for e, f in zip(rows["edit"], rows["floor"], strict=True))
    result = {
        "repeat": args.repeat,
        "files": args.files + 3,
        "file_bytes": statistics.median(sizes),
        "cold_seconds": cold,
        "cold_payload_bytes": cold_bytes,
        "cold_wire_bytes": cold_wire,
        **{f"{k}_median_s": statistics.median(v) for k, v in rows.items()},
        **{f"{k}_min_s": min(v) for k, v in rows.items()},
        **{f"{k}_wire_bytes_median": statistics.median(v) for k, v in wire.items()},
        "edit_overhead_paired_s": overhead,
        "edit_overhead_median_s": statistics.median(rows["edit"])
        - statistics.median(rows["floor"]),
        "edit_code_stream_bytes_median": statistics.median(code_bytes),
        "edit_minus_no_change_wire_bytes_median": statistics.median(change_wire),
        "change_wire_over_file_bytes_max": byte_ratio,
        **{f"login_{k}_median_s": statistics.median(v) for k, v in login.items()},
        "login_edit_overhead_paired_s": statistics.median(
            e - f for e, f in zip(login["edit"], login["floor"], strict=True)
        ),
        "goals": {
            "bytes <= 1.1x the file": byte_ratio <= 1.1,
            "overhead <= 0.3 s": overhead <= 0.3,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"project: {result['files']} files; edited file {result['file_bytes']:.0f} bytes")
        print(f"{'path':<12}{'median s':>10}{'min s':>10}")
        for name, values in rows.items():
            print(f"{name:<12}{statistics.median(values):>10.3f}{min(values):>10.3f}")
        print(f"{'cold':<12}{cold:>10.3f}")
        print(
            f"edit - floor: {overhead:.3f} s paired median "
            f"({result['edit_overhead_median_s']:.3f} s between medians)"
        )
        print(
            "bytes on the wire (median): "
            + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in wire.items())
            + f", cold {cold_wire}"
        )
        print(
            f"an edit adds {result['edit_minus_no_change_wire_bytes_median']:.0f} bytes on the "
            f"wire ({byte_ratio:.2f}x the file at most); its code stream "
            f"{result['edit_code_stream_bytes_median']:.0f} bytes (zstd)"
        )
        print(
            "run --target ssh (median s): "
            + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in login.items())
            + f"; edit - floor {result['login_edit_overhead_paired_s']:.3f} s paired"
        )
        for goal, ok in result["goals"].items():
            print(f"  {'ok  ' if ok else 'MISS'} {goal}")
    return 0 if all(result["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
