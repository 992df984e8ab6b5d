"""`pixi-deploy run --target ssh` on the real test cluster's login node: a command and a task
in the deployed environment and a per-run working copy of the code snapshot, output streamed,
the exit status passed on, and Ctrl-C / SIGTERM stopping every remote process of the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.connections import drop_connection
from pixi_deploy import api
from pixi_deploy.transport import ConnectionLostError, Transport

pytestmark = pytest.mark.cluster
CLI = "import sys; from pixi_deploy.cli import main; sys.exit(main(sys.argv[1:]))"


def cluster_base() -> str:
    return os.environ["SLURM_DEPLOYMENT_BASE_PATH"]


def _line(out: str, prefix: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith(prefix)]
    return line.removeprefix(prefix).strip()


def test_a_command_runs_in_its_own_working_copy(project: Path, remote: Transport, cli) -> None:
    done = cli("run", "--target", "ssh", "--", "python", "train.py", "--lr", "0.5")
    assert done.exit_code == 0, done.stderr
    assert "train: model v1 lr=0.5 epochs=1 mode=-" in done.stdout
    work = _line(done.stdout, "cwd")
    assert work.startswith(f"{cluster_base()}/runs/") and work.endswith("/work")
    assert _line(done.stdout, "root") == work
    assert "code snapshot" in done.stderr and "running on the login node" in done.stderr
    # what the run wrote stays in its copy; the snapshot (read-only, shared) has none of it
    listed = remote.run_script(
        'cat "$1/outputs/result.txt"; ls "$2"/code/*/files/outputs 2>&1 || true',
        [work, cluster_base()],
    ).stdout
    assert listed.startswith("done\n") and "No such file" in listed
    again = cli("run", "--target", "ssh", "--", "python", "train.py")
    assert again.exit_code == 0, again.stderr
    assert _line(again.stdout, "cwd") != work  # every run has its own copy
    assert "nothing to send" in again.stderr


def test_the_exit_status_and_both_streams_come_back(project: Path, cli) -> None:
    done = cli("run", "--target", "ssh", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7")
    assert done.exit_code == 7
    assert done.stdout.splitlines() == ["to-out"]
    assert "to-err" in done.stderr.splitlines()


def test_a_task_with_depends_on_args_and_env(project: Path, cli) -> None:
    done = cli("run", "--target", "ssh", "--task", "train", "--", "4")
    assert done.exit_code == 0, done.stderr
    assert "PREPARE in " in done.stdout and "/work" in _line(done.stdout, "PREPARE in")
    assert "train: model v1 lr=0.01 epochs=4 mode=fast" in done.stdout
    shown = cli("run", "--target", "ssh", "--task", "show")
    assert shown.exit_code == 0, shown.stderr
    assert "data=" in shown.stdout and "/work/data" in shown.stdout  # manifest activation
    assert "linux=yes" in shown.stdout and "script=setup.sh from " in shown.stdout


def test_bad_input_is_refused_before_anything_runs(project: Path, cli) -> None:
    missing = cli("run", "--target", "ssh", "--task", "nope")
    assert missing.exit_code != 0 and "nope" in missing.stderr
    outside = cli("run", "--target", "ssh", "--workdir", "../x", "--", "pwd")
    assert outside.exit_code != 0 and "outside the code snapshot" in outside.stderr
    local = cli("run", "--no-code", "--", "true")
    assert local.exit_code != 0 and "apply to --target ssh" in local.stderr


# The run prints its shell's pid and a background child's, then waits. With TERM ignored by
# both, only the SIGKILL that follows 10 s later ends them.
WAITER = "echo pids $$ $!; wait"
STUBBORN = "trap '' TERM; sleep 600 & echo pids $$ $!; wait"


@pytest.mark.parametrize(
    ("local_signal", "script", "status"),
    [(signal.SIGINT, WAITER, 130), (signal.SIGTERM, STUBBORN, 143)],
    ids=["ctrl-c", "sigterm-ignored-remotely"],
)
def test_stopping_the_run_stops_every_remote_process(
    project: Path, remote: Transport, local_signal: int, script: str, status: int
) -> None:
    command = script if script == STUBBORN else "sleep 600 & " + script
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "run", "--target", "ssh", "--", "sh", "-c", command],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the run is going
        assert line.startswith("pids "), line
        pids = line.split()[1:]
        assert _alive(remote, pids) == pids
        proc.send_signal(local_signal)
        assert proc.wait(timeout=120) == status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 90
    while _alive(remote, pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(remote, pids) == []


def test_a_lost_connection_stops_the_run(project: Path, ssh_settings, remote: Transport) -> None:
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if len(lines) == 1:
            assert drop_connection(connection), "no sshd process found to kill"

    with Transport(replace(ssh_settings, base_path=cluster_base())) as connection:
        with pytest.raises(ConnectionLostError, match="stops it on the login node"):
            api.run(
                ["sh", "-c", "sleep 600 & echo pids $$ $!; wait"],
                target="ssh",
                transport=connection,
                on_stdout=out,
                on_stderr=lambda line: None,
            )
    pids = lines[0].split()[1:]
    deadline = time.monotonic() + 90
    while _alive(remote, pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(remote, pids) == []


def _alive(remote: Transport, pids: list[str]) -> list[str]:
    out = remote.run_script(
        'for p in "$@"; do kill -0 "$p" 2>/dev/null && echo "$p"; done; true', pids
    ).stdout
    return out.split()
