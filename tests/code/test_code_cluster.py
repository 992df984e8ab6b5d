"""The project on the real test cluster: `submit -- python train.py` from a project folder, an
edited resubmit, tasks, manifest activation inside a job, and what happens when things go
wrong (a cut connection, a file that changes while it is sent, a pruned snapshot, bad input)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.connections import CutReporter
from helpers.project import SETUP
from pixi_deploy import api
from pixi_deploy.code.remote import CodeStore
from pixi_deploy.code.select import CodeRules
from pixi_deploy.code.snapshot import take_snapshot
from pixi_deploy.errors import WorkspaceError
from pixi_deploy.progress import NullReporter
from pixi_deploy.slurm import JobResources
from pixi_deploy.transport import Transport

pytestmark = pytest.mark.cluster


def _base() -> str:
    return os.environ["SLURM_DEPLOYMENT_BASE_PATH"]


def _sh(t: Transport, script: str, *args: str) -> str:
    return t.run_script(script, list(args)).stdout


def test_submit_python_train_from_the_project_folder(project: Path, remote: Transport, cli) -> None:
    done = cli("submit", "--json", "--", "python", "train.py", "--lr", "0.3")
    assert done.exit_code == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "COMPLETED"
    job_out = done.stderr  # with --json the job's stdout is echoed to stderr
    assert "train: model v1 lr=0.3 epochs=1 mode=-" in job_out
    cwd = next(line[4:] for line in job_out.splitlines() if line.startswith("cwd "))
    assert cwd.startswith(f"{_base()}/runs/") and cwd.endswith("/work")
    assert f"root {cwd}" in job_out  # PIXI_PROJECT_ROOT is the job's working copy
    snapshot = take_snapshot(project, CodeRules())
    assert f"pixi-deploy: code snapshot {snapshot.hash}, working copy {cwd}" in job_out
    shipped = _sh(
        remote, 'cd "$1/code/$2/files" && find . -type f -o -type l | sort', _base(), snapshot.hash
    )
    assert shipped.split() == [
        "./.gitignore",
        "./data/config.json",
        "./notes.txt",
        "./pixi.lock",
        "./pixi.toml",
        "./scripts/setup.sh",
        "./src/model.py",
        "./train.py",
    ]  # fmt: skip  (tracked + untracked-not-ignored; no .pixi/, .git/, debug.log)
    # the job wrote into its copy, never into the snapshot (whose files are read-only)
    assert _sh(remote, 'cat "$1/outputs/result.txt"', cwd) == "done\n"
    assert (
        _sh(remote, '[ -e "$1/code/$2/files/outputs" ] || echo clean', _base(), snapshot.hash)
        == "clean\n"
    )
    modes = _sh(
        remote, 'stat -c %a "$1/code/$2/files/train.py" "$1/code/$2/files"', _base(), snapshot.hash
    )
    assert modes.split() == ["444", "755"]


def test_jobs_never_change_the_snapshot_or_each_other(project: Path, remote: Transport) -> None:
    writer = (
        "echo new > fresh.txt && printf 'mine\\n' > tmp && mv tmp train.py && "
        "if echo overwrite > src/model.py 2>/dev/null; then echo WROTE-THROUGH; else echo refused; fi; "
        "cat train.py"
    )
    first = api.submit(["sh", "-c", writer], resources=JobResources(time="00:05:00"))
    assert first.wait().ok
    out = first.logs()[0]
    assert out.splitlines() == ["refused", "mine"]
    second = api.submit(["sh", "-c", "ls fresh.txt 2>&1; head -n 1 train.py; cat src/model.py"])
    assert second.wait().ok
    seen = second.logs()[0]
    assert "No such file" in seen and seen.splitlines()[1] == "import argparse, os, sys"
    assert 'VERSION = "v1"' in seen
    tasks = api.submit(["sh", "-c", "pwd; echo mine > mine.txt"], array="0-1")
    assert tasks.wait().ok
    outs = _sh(remote, 'cat "$1"/stdout-*.log', tasks.run_dir).split()
    assert sorted(outs) == [f"{tasks.run_dir}/work-0", f"{tasks.run_dir}/work-1"]


def test_edit_one_file_resubmit_moves_about_that_file(project: Path, remote: Transport) -> None:
    api.submit(["true"], transport=remote).wait()  # cold: environment + code
    before = remote.stats
    job = api.submit(["true"], transport=remote)
    after = remote.stats
    no_change_bytes = after.bytes_uploaded - before.bytes_uploaded
    no_change_trips = after.commands_run - before.commands_run
    assert job.wait().ok
    before = remote.stats
    api.submit(["true"], code=False, transport=remote).wait()
    after = remote.stats
    assert no_change_trips == 2, "the deploy probe and sbatch, as without code"
    assert no_change_bytes == after.bytes_uploaded - before.bytes_uploaded  # the job's bundle

    # one edited file, of realistic size (20 kB of generated Python)
    body = "".join(f"def f{i}(x):\n    return x * {i} + {i * 7 % 13}\n\n\n" for i in range(500))
    model = project / "src" / "model.py"
    model.write_text(model.read_text().replace('"v1"', '"v2"') + body)
    size = model.stat().st_size
    before = remote.stats
    job = api.submit(["python", "train.py"], transport=remote)
    after = remote.stats
    code_bytes = after.bytes_uploaded - before.bytes_uploaded - no_change_bytes
    assert after.commands_run - before.commands_run == 3  # probe, the upload, sbatch
    assert 0 < code_bytes <= 1.1 * size, (code_bytes, size)
    result = job.wait()
    assert result.ok, result.message()
    assert "train: model v2" in job.logs()[0]
    # the snapshot before the edit, which the new one was copied from, is untouched
    snapshots = _sh(remote, 'grep -h "^VERSION" "$1"/code/*/files/src/model.py', _base())
    assert sorted(snapshots.split("\n")[:2]) == ['VERSION = "v1"', 'VERSION = "v2"']


def test_task_with_depends_on_args_and_env(project: Path, cli) -> None:
    done = cli("submit", "--task", "train", "--json", "--", "4", "0.2")
    assert done.exit_code == 0, done.stderr
    lines = done.stderr.splitlines()
    prepared = [line for line in lines if line.startswith("PREPARE in ")]
    assert len(prepared) == 1 and prepared[0].endswith("/work")  # the project root: the copy
    assert "train: model v1 lr=0.2 epochs=4 mode=fast" in lines
    assert lines.index(prepared[0]) < lines.index("train: model v1 lr=0.2 epochs=4 mode=fast")
    refused = cli("submit", "--task", "train")  # epochs has no default
    assert refused.exit_code == 2 and "needs its argument 'epochs'" in refused.stderr


def test_manifest_activation_inside_a_job(project: Path, cli) -> None:
    done = cli("submit", "--task", "show", "--json")
    assert done.exit_code == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("root="))
    values = dict(item.split("=", 1) for item in line.split(" ") if "=" in item)
    root = values["root"]
    assert root.endswith("/work") and root.startswith(_base())
    assert values["data"] == f"{root}/data"
    assert values["script"] == "setup.sh"  # "setup.sh from <root>": split at the blanks
    assert f"setup.sh from {root}" in line
    assert values["linux"] == "yes" and values["env"] == "default" and values["default"] == "demo"


def test_a_cut_connection_resumes_and_sends_only_the_missing_files(
    project: Path, remote: Transport, tmp_path: Path
) -> None:
    bulk = project / "bulk"
    bulk.mkdir()
    for i in range(12):
        (bulk / f"part{i:02}.bin").write_bytes(os.urandom(3_000_000))
    snapshot = take_snapshot(project, CodeRules())
    store = CodeStore(remote, _base(), cache_dir=tmp_path / "cut-cache")
    reporter = CutReporter(remote, after_bytes=12_000_000)
    store.ensure(snapshot, reporter)
    assert reporter.cut, "the connection must have been cut mid-upload"
    transfer = store.last_transfer
    assert transfer.attempts == 2 and remote.stats.reconnects >= 1
    assert transfer.objects_sent < transfer.objects_total + 13  # not everything twice
    assert transfer.bytes_uploaded < 36_000_000 * 1.75, "resumed, not restarted from zero"
    check = _sh(
        remote,
        'cd "$1/code/$2/files/bulk" && sha256sum part*.bin; ls -A "$1/code"',
        _base(),
        snapshot.hash,
    )
    sums = {line.split()[1]: line.split()[0] for line in check.splitlines() if ".bin" in line}
    assert sums == {
        e.path.split("/")[-1]: e.sha256 for e in snapshot.entries if e.path.startswith("bulk/")
    }
    assert not any(name.startswith(".incoming") for name in check.split()), "nothing half left"


def test_a_file_changed_while_sent_publishes_nothing(
    project: Path, remote: Transport, tmp_path: Path
) -> None:
    (project / "big.bin").write_bytes(os.urandom(4_000_000))
    snapshot = take_snapshot(project, CodeRules())

    class Editor(NullReporter):
        def task(self, description, total):  # type: ignore[override]
            from contextlib import contextmanager

            @contextmanager
            def ctx():  # type: ignore[no-untyped-def]
                def advance(n: int) -> None:
                    if n:
                        (project / "big.bin").write_bytes(os.urandom(4_000_000))

                yield advance

            return ctx()

    store = CodeStore(remote, _base(), cache_dir=tmp_path / "edit-cache")
    with pytest.raises(WorkspaceError, match="changed while the code snapshot was sent"):
        store.ensure(snapshot, Editor())
    listed = _sh(remote, 'ls -A "$1/code" 2>/dev/null || true', _base()).split()
    assert snapshot.hash not in listed and not [n for n in listed if ".staging-" in n]


def test_a_pruned_snapshot_is_sent_again_and_prune_spares_snapshots_in_use(
    project: Path, remote: Transport, cli
) -> None:
    first = take_snapshot(project, CodeRules()).hash
    # a job holds its snapshot's in-use lock while it runs (shared, on the lock file)
    held = api.submit(
        [
            "sh",
            "-c",
            f'flock -xn "{_base()}/locks/code-{first}.in-use" true && echo free || echo held',
        ]
    )
    assert held.wait().ok and held.logs()[0] == "held\n"
    (project / "notes.txt").write_text("second version\n")
    second = take_snapshot(project, CodeRules()).hash
    assert api.submit(["true"]).wait().ok
    listed = json.loads(cli("list", "--target", "ssh", "--json").stdout)["code_snapshots"]
    assert [s["hash"] for s in listed] == [second, first]  # most recently used first
    assert listed[0]["files"] == 8 and listed[0]["path"] == f"{_base()}/code/{second}"
    # the first snapshot in use, as a running job holds it (the same lock, taken the same way)
    lock = remote.iter_lines(
        ["sh", "-c", 'exec 7>>"$1" && flock -s 7 && echo held && exec sleep 600', "sh",
         f"{_base()}/locks/code-{first}.in-use"]
    )  # fmt: skip
    try:
        assert next(iter(lock)) == ("stdout", "held")
        pruned = cli("prune", "--target", "ssh", "--keep", "5", "--keep-code", "0", "--json")
        assert pruned.exit_code == 0, pruned.stderr
        assert json.loads(pruned.stdout)["removed"] == [f"{_base()}/code/{second}"]
    finally:
        lock.close()
    # this machine believes `second` is there: the submit finds out, sends it again, runs
    job = api.submit(["cat", "notes.txt"])
    assert job.wait().ok and job.logs()[0] == "second version\n"
    # every snapshot pruned, the last one this machine sent among them: an edit then goes as
    # the whole snapshot (the base for a delta is gone)
    pruned = cli("prune", "--target", "ssh", "--keep", "5", "--keep-code", "0", "--json")
    assert sorted(json.loads(pruned.stdout)["removed"]) == sorted(
        f"{_base()}/code/{h}" for h in (first, second)
    )
    (project / "notes.txt").write_text("third version\n")
    job = api.submit(["cat", "notes.txt"])
    assert job.wait().ok and job.logs()[0] == "third version\n"


def test_concurrent_uploads_of_one_snapshot(project: Path, ssh_settings, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    (project / "weights.bin").write_bytes(os.urandom(8_000_000))
    snapshot = take_snapshot(project, CodeRules())

    def upload(i: int) -> tuple[str, str]:
        with Transport(replace(ssh_settings, base_path=_base())) as t:  # two "machines"
            store = CodeStore(t, _base(), cache_dir=tmp_path / f"cache-{i}")
            return store.ensure(snapshot), store.last_transfer.mode

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(upload, range(2)))
    assert {path for path, _ in done} == {f"{_base()}/code/{snapshot.hash}"}
    with Transport(replace(ssh_settings, base_path=_base())) as t:
        check = _sh(
            t, 'cd "$1/code" && sha256sum "$2/files/weights.bin"; ls -A', _base(), snapshot.hash
        )
    assert check.split()[0] == snapshot.by_path()["weights.bin"].sha256
    assert not [n for n in check.split() if n.startswith((".incoming", f".{snapshot.hash}."))]


def test_bad_input_is_one_line_and_ships_nothing(project: Path, remote: Transport, cli) -> None:
    cases = [
        (["submit", "--workdir", "../elsewhere", "--", "true"], 7, "outside the code snapshot"),
        (["submit", "--workdir", "nope", "--", "true"], 7, "not a folder of the code snapshot"),
        (["submit", "--task", "nope"], 2, "has no task 'nope'"),
        (["submit", "--task", "show", "--no-code"], 7, "drop --no-code"),
    ]
    for args, code, needle in cases:
        out = cli(*args)
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert out.exit_code == code and len(errors) == 1 and needle in errors[0], (
            args,
            out.stderr,
        )
    (project / "scripts" / "setup.sh").unlink()
    out = cli("submit", "--", "true")
    assert (
        out.exit_code == 2 and "scripts/setup.sh" in out.stderr and "does not exist" in out.stderr
    )
    assert _sh(remote, '[ -d "$1/code" ] && ls -A "$1/code" || true', _base()).split() == []
    sub = cli("submit", "--no-code", "--workdir", "/tmp", "--", "pwd")
    assert sub.exit_code == 2  # the missing script is refused for every entry point
    (project / "scripts" / "setup.sh").write_text(SETUP)
    ok = cli("submit", "--workdir", "src", "--", "pwd")
    assert ok.exit_code == 0 and ok.stdout.strip().endswith("/work/src"), ok.stderr


def test_prune_keeps_the_most_recently_used_snapshots(project: Path, cli) -> None:
    original = (project / "notes.txt").read_text()
    first = take_snapshot(project, CodeRules()).hash
    assert api.submit(["true"]).wait().ok
    (project / "notes.txt").write_text("second version\n")
    second = take_snapshot(project, CodeRules()).hash
    assert api.submit(["true"]).wait().ok
    (project / "notes.txt").write_text(original)  # back to the first: used again, not sent
    assert take_snapshot(project, CodeRules()).hash == first
    assert cli("run", "--target", "ssh", "--", "true").exit_code == 0  # a login-node run uses it
    listed = json.loads(cli("list", "--target", "ssh", "--json").stdout)["code_snapshots"]
    assert [s["hash"] for s in listed] == [first, second]  # most recently used first
    pruned = cli("prune", "--target", "ssh", "--keep", "5", "--keep-code", "1", "--json")
    assert pruned.exit_code == 0, pruned.stderr
    assert json.loads(pruned.stdout)["removed"] == [f"{_base()}/code/{second}"]
    listed = json.loads(cli("list", "--target", "ssh", "--json").stdout)["code_snapshots"]
    assert [s["hash"] for s in listed] == [first]
    job = api.submit(["cat", "notes.txt"])  # the kept one still serves jobs
    assert job.wait().ok and job.logs()[0] == original
