"""``ComputeResource.run_hetjob``: several payloads as the components of one heterogeneous job.

One ``sbatch`` with one block of options per payload (``#SBATCH hetjob`` between them) waits
in the queue once; when it runs, each payload runs as an ``srun --het-group=N`` step in its
own component, all at the same time, each in its own Dagster Pipes session, so logs,
materializations and checks come back as from ``run()``. The allocation is released when the
last payload ends, and at once if the run is interrupted or a payload cannot start.

Each result's ``get_results()`` holds only what its payload reported (Dagster would otherwise
add an implicit materialization of every asset of the step to each component's results).

Requirements per payload are dagster-slurm's keys and defaults: ``nodes`` (1),
``cpus_per_task`` (2), ``mem`` ("4G"), ``gpus_per_node`` (0), ``time_limit`` ("01:00:00"),
``partition`` (the queue's). Unlike dagster-slurm, whose components get no Pipes context,
every payload here reports to Dagster.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster._core.errors import DagsterPipesExecutionError
from dagster._core.pipes.client import PipesClientCompletedInvocation

from pixi_deploy.errors import ConfigError
from pixi_deploy.slurm import JobResources, SlurmSession

from .launchers import ComputeLauncher, merge_launcher
from .remote import RemoteRun, StepAllocation, run_id, run_remote
from .run_options import RunOptions

if TYPE_CHECKING:
    from .compute import ComputeResource

COMPONENT_DEFAULTS = {
    "nodes": 1,
    "cpus_per_task": 2,
    "mem": "4G",
    "gpus_per_node": 0,
    "time_limit": "01:00:00",
}
_PASSTHROUGH = {"extra_env", "extras", "poll_timeout"}


def _check(
    assets: Sequence[tuple[str, str, Mapping[str, Any]]],
    launchers: Mapping[str, ComputeLauncher],
    kwargs: Mapping[str, Any],
) -> None:
    if not assets:
        raise ConfigError("run_hetjob needs at least one (name, payload_path, requirements)")
    names = [a[0] for a in assets]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError("run_hetjob's asset names must be unique and non-empty", str(names))
    stray = sorted(set(launchers) - set(names))
    if stray:
        raise ConfigError(f"run_hetjob got launchers for unknown assets: {', '.join(stray)}")
    for name, payload, _ in assets:
        if not Path(payload).is_file():
            raise ConfigError(f"the payload of {name!r} ({payload}) does not exist")
    unknown = sorted(set(kwargs) - _PASSTHROUGH)
    if unknown:
        raise ConfigError(f"run_hetjob() got unknown argument(s) {', '.join(unknown)}")


def _step_size(component: JobResources) -> JobResources:
    """The step takes its whole component (so SLURM_MEM_PER_NODE & co. describe it)."""
    return JobResources(
        nodes=component.nodes,
        cpus_per_task=component.cpus_per_task,
        mem=component.mem,
        gpus_per_node=component.gpus_per_node,
    )


def run_hetjob(
    compute: ComputeResource,
    context: Any,
    assets: Sequence[tuple[str, str, Mapping[str, Any]]],
    launchers: Mapping[str, ComputeLauncher],
    kwargs: Mapping[str, Any],
) -> dict[str, PipesClientCompletedInvocation]:
    _check(assets, launchers, kwargs)
    slurm = compute.slurm
    if slurm is None:
        raise ConfigError("mode='slurm-hetjob' needs slurm=SlurmResource(...)")
    components = [
        slurm.queue.job_resources({**COMPONENT_DEFAULTS, **dict(requirements)})
        for _, _, requirements in assets
    ]
    codes = {
        name: compute.prepare_code(context, RunOptions(), payload) for name, payload, _ in assets
    }
    environment, facts = compute.environment_facts(context, RunOptions())
    session = SlurmSession(
        slurm.client(),
        components[0],
        components=components[1:],
        max_concurrent_steps=len(assets),
        name=f"dagster-hetjob-{run_id(context)[:8]}",
    )
    results: dict[str, PipesClientCompletedInvocation] = {}
    errors: dict[str, BaseException] = {}
    try:
        session.start()
        assert session.job is not None
        context.log.info(
            f"[pixi-deploy] heterogeneous job {session.job.id} runs {len(assets)} components"
        )

        def one(index: int, name: str, payload: str) -> None:
            launcher = merge_launcher(compute.default_launcher, launchers.get(name))
            run = RemoteRun(
                slurm=slurm,
                environment=environment,
                code=codes[name],
                launcher=launcher.to_core(),
                resources=_step_size(components[index]),
                allocation=StepAllocation(
                    get=lambda: session,
                    release=session.close,
                    label="heterogeneous job",
                    mode="slurm-hetjob",
                    het_group=index if len(assets) > 1 else None,
                ),
                extra_env=dict(kwargs.get("extra_env") or {}),
                extras={**dict(kwargs.get("extras") or {}), "hetjob_component": name},
                timeout=kwargs.get("poll_timeout", compute.poll_timeout),
                debug_mode=compute.debug_mode,
                debug_dir=compute.debug_dir,
                cleanup_on_failure=compute.cleanup_on_failure,
                metadata={**facts, "pixi_deploy_launcher": launcher.describe()},
                implicit_materializations=False,
            )
            try:
                results[name] = run_remote(context, payload, run)
            except BaseException as error:  # reported below, for all components at once
                errors[name] = error

        threads = [
            threading.Thread(target=one, args=(i, name, payload), daemon=True)
            for i, (name, payload, _) in enumerate(assets)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    finally:
        session.close()
    if errors:
        lines = [f"{name}: {error}" for name, error in errors.items()]
        raise DagsterPipesExecutionError(
            f"{len(errors)} of {len(assets)} components of the heterogeneous job failed:\n\n"
            + "\n\n".join(lines)
        )
    return results
