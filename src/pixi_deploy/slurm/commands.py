"""Slurm commands: submit, status, logs, cancel. Each is a thin wrapper over SlurmClient.

The cluster comes from SLURM_EDGE_NODE_* and runs live under SLURM_DEPLOYMENT_BASE_PATH, the
same settings ``deploy --target ssh`` uses, so ``submit`` can deploy first and then run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pixi_deploy import api
from pixi_deploy.cli_options import (
    BuildSdistsOpt,
    CacheDirOpt,
    EnvironmentOpt,
    InjectOpt,
    JsonOpt,
    ManifestPath,
    PlatformOpt,
    stderr,
    stdout,
)
from pixi_deploy.render import RichReporter

from .client import SlurmClient
from .spec import JobResources, JobResult


def _client() -> SlurmClient:
    return api.slurm_client()


def _print_out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _print_err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _result_json(result: JobResult) -> dict[str, Any]:
    data = asdict(result)
    data["ok"] = result.ok
    data["message"] = result.message()
    return data


def submit(
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The command to run, or with --task the task's arguments (after --)"),
    ] = None,
    manifest_path: ManifestPath = None,
    environment: EnvironmentOpt = None,
    platform: PlatformOpt = None,
    deployment: Annotated[
        Path | None,
        typer.Option(
            "--deployment",
            help="deployment_metadata.json of an environment already on the cluster "
            "(default: deploy the workspace's environment first)",
        ),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Job name")] = "pixi-deploy",
    partition: Annotated[str | None, typer.Option("--partition")] = None,
    nodes: Annotated[int | None, typer.Option("--nodes")] = None,
    ntasks: Annotated[int | None, typer.Option("--ntasks")] = None,
    cpus_per_task: Annotated[int | None, typer.Option("--cpus-per-task")] = None,
    mem: Annotated[str | None, typer.Option("--mem", help="e.g. 4G")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus")] = None,
    time: Annotated[str | None, typer.Option("--time", help="e.g. 1:00:00")] = None,
    account: Annotated[str | None, typer.Option("--account")] = None,
    qos: Annotated[str | None, typer.Option("--qos")] = None,
    reservation: Annotated[str | None, typer.Option("--reservation")] = None,
    constraint: Annotated[str | None, typer.Option("--constraint")] = None,
    sbatch: Annotated[
        list[str] | None,
        typer.Option("--sbatch", help="Extra sbatch option, passed through (repeatable)"),
    ] = None,
    array: Annotated[str | None, typer.Option("--array", help="e.g. 0-9%2")] = None,
    ntasks_per_node: Annotated[int | None, typer.Option("--ntasks-per-node")] = None,
    nodelist: Annotated[
        str | None, typer.Option("--nodelist", help="Run on these nodes, e.g. node[1-2]")
    ] = None,
    dependency: Annotated[
        str | None,
        typer.Option(
            "--dependency",
            help="Start after other jobs, e.g. afterok:1234 (or afterany, afternotok, after,"
            " aftercorr, singleton); a dependency that can never be met ends the job",
        ),
    ] = None,
    requeue: Annotated[
        bool | None,
        typer.Option(
            "--requeue/--no-requeue",
            help="Let Slurm rerun the job after a node failure (each attempt logs apart)",
        ),
    ] = None,
    signal: Annotated[
        str | None,
        typer.Option(
            "--signal",
            help="Send the command a signal before the time limit, e.g. TERM@60",
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option("--follow/--no-follow", help="Stream the output and wait (Ctrl-C cancels)"),
    ] = True,
    cache_dir: CacheDirOpt = None,
    inject: InjectOpt = None,
    build_sdists: BuildSdistsOpt = False,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="Run this task of the manifest (as `pixi run NAME`: depends-on first, args, "
            "env, cwd), with no pixi on the cluster",
        ),
    ] = None,
    code: Annotated[
        bool,
        typer.Option(
            "--code/--no-code",
            help="Ship the workspace's files (git's view, [tool.pixi-deploy] include/exclude) "
            "and start the job in its own copy of them",
        ),
    ] = True,
    workdir: Annotated[
        str | None,
        typer.Option(
            "--workdir",
            help="Folder of the code snapshot to start in (relative to the workspace root; "
            "with --no-code, an absolute folder on the cluster)",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Run a command (or a task of the manifest) as a Slurm job, in the deployed environment
    and a working copy of the workspace's code."""
    resources = JobResources(
        partition=partition,
        nodes=nodes,
        ntasks=ntasks,
        cpus_per_task=cpus_per_task,
        mem=mem,
        gpus=gpus,
        time=time,
        account=account,
        qos=qos,
        reservation=reservation,
        constraint=constraint,
        extra_sbatch=list(sbatch or []),
        ntasks_per_node=ntasks_per_node,
        nodelist=nodelist,
        requeue=requeue,
        signal=signal,
    )
    job = api.submit(
        command or [],
        resources=resources,
        job_name=name,
        array=array,
        dependency=dependency,
        deployment=deployment,
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        cache_dir=cache_dir,
        inject=inject or (),
        build_sdists=build_sdists,
        code=code,
        workdir=workdir,
        task=task,
        reporter=RichReporter(stderr, quiet=json_),
    )
    if not follow:
        if json_:
            stdout.print_json(json.dumps({"job_id": job.id, "run_dir": job.run_dir}))
        else:
            stdout.print(job.id, markup=False)
        return
    stderr.print(f"submitted job {job.id} (run folder {job.run_dir})", markup=False)
    result = job.wait(on_stdout=_print_err if json_ else _print_out, on_stderr=_print_err)
    if json_:
        stdout.print_json(json.dumps(_result_json(result)))
    result.raise_for_state()


def status(
    job_ids: Annotated[list[str], typer.Argument(help="Job ids")],
    json_: JsonOpt = False,
) -> None:
    """Show the state of jobs (one squeue for all; sacct/scontrol for ended ones)."""
    found = _client().explained(job_ids)
    rows = []
    for job_id in job_ids:
        s = found.get(job_id)
        rows.append(
            {
                "job_id": job_id,
                "state": s.state if s else "UNKNOWN",
                "exit_code": s.exit_code if s else None,
                "signal": s.signal if s else None,
                "reason": s.reason if s else "",
                "source": s.source if s else "none",
            }
        )
    if json_:
        stdout.print_json(json.dumps(rows))
        return
    table = Table()
    for column in ("job", "state", "exit", "reason"):
        table.add_column(column)
    for row in rows:
        code = "" if row["exit_code"] is None else str(row["exit_code"])
        if row["signal"]:
            code += f" (signal {row['signal']})"
        table.add_row(str(row["job_id"]), str(row["state"]), code, str(row["reason"] or ""))
    stdout.print(table)


def logs(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow until the job ends")
    ] = False,
) -> None:
    """Print a job's output (stdout to stdout, stderr to stderr)."""
    job = _client().job(job_id)
    if follow:
        result = job.wait(on_stdout=_print_out, on_stderr=_print_err)
        result.raise_for_state()
        return
    out, err = job.logs()
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.stderr.write(err)
    sys.stderr.flush()


def cancel(job_ids: Annotated[list[str], typer.Argument(help="Job ids")]) -> None:
    """Cancel jobs (scancel); cancelling an ended job is not an error."""
    client = _client()
    for job_id in job_ids:
        client.cancel(job_id)
        stderr.print(f"cancelled job {job_id}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("submit", context_settings={"allow_interspersed_args": False})(submit)
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
