"""JobEnvironment: where a task of a job runs, from Slurm's variables (submitit's model).

A function submitted through :class:`~pixi_deploy.slurm.Executor` calls ``JobEnvironment()``
to learn its rank among the job's tasks and the job's nodes. This module is standard library
only because it is also shipped to the cluster next to the runner: the environment there
need not have pixi-deploy installed (see ``runner.py``, which makes it importable under this
same name so that functions referring to it unpickle).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping

_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?\Z")


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host list -> names: ``node[1-3],gpu[01-02]a`` ->
    ``node1 node2 node3 gpu01a gpu02a`` (zero padding kept, several brackets multiply)."""
    names: list[str] = []
    for item in _split_top_level(text.strip()):
        names.extend(_expand_item(item))
    return names


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item]


def _expand_item(item: str) -> list[str]:
    open_at = item.find("[")
    if open_at < 0:
        return [item]
    close_at = item.index("]", open_at)
    prefix, body, rest = item[:open_at], item[open_at + 1 : close_at], item[close_at + 1 :]
    values: list[str] = []
    for part in body.split(","):
        match = _RANGE.match(part.strip())
        if match is None:
            raise ValueError(f"{item!r} is not a Slurm host list")
        low, high = match.group(1), match.group(2) or match.group(1)
        width = len(low)
        values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    tails = _expand_item(rest) if rest else [""]
    return [f"{prefix}{value}{tail}" for value in values for tail in tails]


class JobEnvironment:
    """This task's place in its Slurm job (read when created, from ``environ``).

    ``global_rank`` counts the job's tasks from 0 (``SLURM_PROCID``), ``local_rank`` the
    tasks on this node (``SLURM_LOCALID``), ``node`` this node's index in ``hostnames`` (the
    job's nodes, in Slurm's order). A job that runs one task without srun has rank 0 of 1.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        self.job_id = f"{array_job}_{array_task}" if array_job else env.get("SLURM_JOB_ID", "")
        self.array_task_id = int(array_task) if array_task else None
        self.global_rank = int(env.get("SLURM_PROCID", "0"))
        self.local_rank = int(env.get("SLURM_LOCALID", "0"))
        self.num_tasks = int(env.get("SLURM_NTASKS", "1"))
        self.num_nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
        self.node = int(env.get("SLURM_NODEID", "0"))
        nodelist = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", ""))
        self.hostnames = expand_hostlist(nodelist) if nodelist else [socket.gethostname()]
        self.hostname = env.get("SLURMD_NODENAME") or socket.gethostname()

    def __repr__(self) -> str:
        return (
            f"JobEnvironment(job_id={self.job_id!r}, global_rank={self.global_rank},"
            f" local_rank={self.local_rank}, num_tasks={self.num_tasks},"
            f" node={self.node}, hostnames={self.hostnames!r})"
        )
