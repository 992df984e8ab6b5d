"""SlurmQueueConfig (default job options) and SlurmResource (a cluster), dagster-slurm's fields.

Defaults are dagster-slurm's: 2 CPUs, 4096M, 30 minutes, one node. ``None`` means "the
cluster's default" for every optional field. ``gpus_per_node=N`` asks for N GPUs on each node
(``--gres=gpu:N``), ``signal_before_timeout='TERM@120'`` has Slurm signal the batch shell 120 s
before the time limit (``--signal=B:TERM@120``).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, PrivateAttr, field_validator, model_validator

from pixi_deploy.dagster.strict import StrictResource
from pixi_deploy.errors import ConfigError
from pixi_deploy.transport import Transport
from pixi_deploy.transport.auth import AuthProvider
from pixi_deploy.transport.settings import ENV_BASE_PATH

from .ssh import SSHConnectionResource

if TYPE_CHECKING:
    from pixi_deploy.slurm import JobResources, SlurmClient

_SIGNAL = re.compile(r"^(?:SIG)?[A-Z][A-Z0-9_+]*@([1-9][0-9]*)$|^[0-9]+@([1-9][0-9]*)$")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_clients: dict[tuple[Any, str, bool | None], SlurmClient] = {}
_clients_lock = threading.Lock()
_expanded: dict[tuple[Any, str], str] = {}
POLL_REASON = (
    "pixi-deploy asks squeue once for all jobs being waited on (every 0.5 s) on one shared "
    "connection, instead of polling per job"
)


def time_limit_seconds(value: str) -> int:
    """Seconds in a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``)."""
    match = _TIME.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Slurm time limit (e.g. 01:30:00)")
    days, first, second, third = match.groups()
    if days is not None:
        return int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    if second is None:
        return int(first) * 60
    if third is None:
        return int(first) * 60 + int(second)
    return int(first) * 3600 + int(second) * 60 + int(third)


def check_signal(value: str | None, time_limit: str | None) -> str | None:
    """``SIGNAL@SECONDS`` upper-cased, checked to fall inside the time limit."""
    if value is None:
        return None
    normal = value.strip().upper()
    match = _SIGNAL.fullmatch(normal)
    if match is None:
        raise ValueError(
            "signal_before_timeout must be SIGNAL@SECONDS, e.g. 'TERM@120' or 'USR1@300'"
        )
    lead = int(match.group(1) or match.group(2))
    if time_limit and lead >= time_limit_seconds(time_limit):
        raise ValueError(
            f"signal_before_timeout lead time ({lead}s) must be shorter than "
            f"time_limit ({time_limit})"
        )
    return normal


class SlurmQueueConfig(StrictResource):
    """Default sbatch options for every job (an asset's ``extra_slurm_opts`` override them)."""

    partition: str = Field(default="", description="Partition (empty: cluster default)")
    num_nodes: int = Field(default=1, description="Nodes per job")
    time_limit: str = Field(default="00:30:00", description="Time limit, e.g. 01:00:00")
    signal_before_timeout: str | None = Field(
        default=None, description="e.g. 'TERM@120': signal the job this long before the limit"
    )
    cpus: int = Field(default=2, description="CPUs per task")
    gpus_per_node: int = Field(default=0, description="GPUs per node (--gres=gpu:N)")
    mem: str | None = Field(default="4096M", description="Memory per node (None: default)")
    mem_per_cpu: str | None = Field(default=None, description="Memory per CPU (if no mem)")
    qos: str | None = Field(default=None, description="Quality of service")
    reservation: str | None = Field(default=None, description="Reservation")
    account: str | None = Field(default=None, description="Account to charge")
    constraint: str | None = Field(default=None, description="Node features, e.g. 'gpu&a100'")
    extra_sbatch: list[str] = Field(default_factory=list, description="More sbatch options")

    @model_validator(mode="after")
    def _check(self) -> SlurmQueueConfig:
        if self.time_limit:
            time_limit_seconds(self.time_limit)
        check_signal(self.signal_before_timeout, self.time_limit)
        if self.gpus_per_node < 0 or self.cpus < 0 or self.num_nodes < 0:
            raise ValueError("cpus, gpus_per_node and num_nodes cannot be negative")
        return self

    def job_resources(self, overrides: dict[str, Any] | None = None) -> JobResources:
        """The core JobResources with per-run overrides (dagster-slurm's ``extra_slurm_opts``
        keys and ``resource_requirements`` keys are both understood)."""
        from pixi_deploy.slurm import JobResources

        o = dict(overrides or {})
        nodes = o.pop("nodes", o.pop("num_nodes", self.num_nodes))
        cpus = o.pop("cpus_per_task", o.pop("cpus", self.cpus))
        gpus_per_node = o.pop("gpus_per_node", o.pop("gpus", self.gpus_per_node))
        mem = o.pop("mem", None)
        if mem is None and "memory_gb" in o:
            mem = f"{o.pop('memory_gb')}G"
        mem = mem if mem is not None else self.mem
        time = o.pop("time_limit", o.pop("time", self.time_limit))
        extra = list(self.extra_sbatch) + list(o.pop("extra_sbatch", []))
        mem_per_cpu = o.pop("mem_per_cpu", self.mem_per_cpu)
        if mem_per_cpu and not mem:
            extra.append(f"--mem-per-cpu={mem_per_cpu}")
        signal = check_signal(
            o.pop("signal_before_timeout", self.signal_before_timeout), str(time or "") or None
        )
        o.pop("framework", None)  # dagster-slurm's cluster-reuse hint; nothing to submit
        resources = JobResources(
            partition=o.pop("partition", self.partition) or None,
            nodes=int(nodes) if nodes else None,
            cpus_per_task=int(cpus) if cpus else None,
            mem=str(mem) if mem else None,
            gpus_per_node=int(gpus_per_node) if gpus_per_node else None,
            time=str(time) if time else None,
            account=o.pop("account", self.account) or None,
            qos=o.pop("qos", self.qos) or None,
            reservation=o.pop("reservation", self.reservation) or None,
            constraint=o.pop("constraint", self.constraint) or None,
            signal=f"B:{signal}" if signal else None,
            extra_sbatch=extra,
        )
        if o:
            raise ConfigError(
                f"unknown Slurm option(s) {', '.join(sorted(o))}",
                "use nodes, cpus_per_task, mem, gpus_per_node, time_limit, partition, account, "
                "qos, reservation, constraint, signal_before_timeout or extra_sbatch",
            )
        return resources


class SlurmResource(StrictResource):
    """A Slurm cluster: how to log in, default job options, and where pixi-deploy keeps things.

    ``remote_base`` holds the deployed environments (the content-addressed store), run folders
    and Pipes files. ``~`` and ``$VARIABLES`` (``$HOME/dagster_runs``, ``$SCRATCH/x``) are
    expanded on the cluster. Default: ``SLURM_DEPLOYMENT_BASE_PATH``, then ``~/pixi-deploy``.
    """

    refused_prefixes: ClassVar[Mapping[str, str]] = {"status_poll_": POLL_REASON}

    ssh: SSHConnectionResource = Field(description="SSH login to the edge node")
    queue: SlurmQueueConfig = Field(
        default_factory=SlurmQueueConfig, description="Default job options"
    )
    remote_base: str | None = Field(default=None, description="Base directory on the cluster")
    remote_python: str = Field(default="python", description="Python inside the environment")
    activate_sh: str | None = Field(
        default=None, description="Ignored: the job script activates the deployed environment"
    )
    use_sacct: bool | None = Field(default=None, description="Ask sacct for final states")

    _auth_provider: AuthProvider | None = PrivateAttr(default=None)

    @field_validator("remote_base")
    @classmethod
    def _base(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("remote_base is empty; leave it out for the default")
        return value

    def set_auth_provider(self, provider: AuthProvider) -> SlurmResource:
        """Call ``provider.ensure()`` before every SSH connect (e.g. to renew a certificate)."""
        if not callable(getattr(provider, "ensure", None)):
            raise ConfigError(f"{type(provider).__name__} has no ensure() method")
        self._auth_provider = provider
        return self

    @classmethod
    def from_env(cls, prefix: str | None = None) -> SlurmResource:
        """SSH from ``SLURM_EDGE_NODE_*`` / ``SLURM_SSH_*``; queue from ``SLURM_PARTITION``,
        ``SLURM_TIME`` (00:10:00), ``SLURM_CPUS`` (1), ``SLURM_MEM`` (256M),
        ``SLURM_MEM_PER_CPU``, ``SLURM_NUM_NODES``, ``SLURM_GPUS_PER_NODE``, ``SLURM_QOS``,
        ``SLURM_RESERVATION``, ``SLURM_ACCOUNT``, ``SLURM_SIGNAL_BEFORE_TIMEOUT`` (dagster-slurm's
        names and defaults); base from ``SLURM_DEPLOYMENT_BASE_PATH`` or ``SLURM_REMOTE_BASE``."""
        return cls.from_env_slurm(
            SSHConnectionResource.from_env(prefix),
            defaults={"partition": "", "time": "00:10:00", "cpus": "1", "mem": "256M"},
        )

    @classmethod
    def from_env_slurm(
        cls, ssh: SSHConnectionResource, defaults: dict[str, str] | None = None
    ) -> SlurmResource:
        """Queue and base from the environment, with this SSH login (dagster-slurm's defaults
        here: partition ``interactive``, 00:30:00, 2 CPUs, 4096M)."""
        d = {"partition": "interactive", "time": "00:30:00", "cpus": "2", "mem": "4096M"}
        d.update(defaults or {})

        def get(name: str, default: str | None = None) -> str | None:
            raw = os.environ.get(name)
            if raw is None:
                return default
            return raw.strip() or None  # an empty value clears the default

        return cls(
            ssh=ssh,
            queue=SlurmQueueConfig(
                partition=get("SLURM_PARTITION", d["partition"]) or "",
                time_limit=get("SLURM_TIME", d["time"]) or "",
                cpus=int(get("SLURM_CPUS", d["cpus"]) or 0),
                mem=get("SLURM_MEM", d["mem"]),
                mem_per_cpu=get("SLURM_MEM_PER_CPU"),
                num_nodes=int(get("SLURM_NUM_NODES", "1") or 1),
                gpus_per_node=int(get("SLURM_GPUS_PER_NODE", "0") or 0),
                qos=get("SLURM_QOS"),
                reservation=get("SLURM_RESERVATION"),
                account=get("SLURM_ACCOUNT"),
                signal_before_timeout=get("SLURM_SIGNAL_BEFORE_TIMEOUT"),
            ),
            remote_base=get(ENV_BASE_PATH) or get("SLURM_REMOTE_BASE"),
            remote_python=get("SLURM_PYTHON", "python") or "python",
        )

    def transport(self) -> Transport:
        return self.ssh.transport(self._auth_provider)

    def base_path(self) -> str:
        """``remote_base`` with ``~`` and ``$VARIABLES`` expanded on the cluster."""
        transport = self.transport()
        base = self.remote_base or os.environ.get(ENV_BASE_PATH) or "~/pixi-deploy"
        return expand_remote(transport, base).rstrip("/") or "/"

    def client(self) -> SlurmClient:
        """The process-wide client for this cluster and base: jobs waited on by many assets
        (threads) then share one squeue poller instead of one each."""
        from pixi_deploy.slurm import SlurmClient

        transport = self.transport()
        key = (transport.settings, self.base_path(), self.use_sacct)
        with _clients_lock:
            client = _clients.get(key)
            if client is None or client.transport is not transport:
                client = _clients[key] = SlurmClient(transport, key[1], use_sacct=self.use_sacct)
            return client


def expand_remote(transport: Transport, path: str) -> str:
    """``~`` and ``$NAME``/``${NAME}`` as the login shell would expand them (cached per
    connection); SFTP and quoted arguments never expand them."""
    key = (transport.settings, path)
    if key in _expanded:
        return _expanded[key]
    text = transport.expand_path(path)
    names = sorted({a or b for a, b in _VAR.findall(text)})
    if names:
        script = 'for n in "$@"; do eval "v=\\${$n-__pd_unset__}"; printf "%s\\0" "$v"; done'
        out = transport.run_script(script, names).stdout.split("\0")
        values = dict(zip(names, out, strict=False))
        missing = [n for n in names if values.get(n) in (None, "__pd_unset__", "")]
        if missing:
            raise ConfigError(
                f"the path {path} uses ${missing[0]}, which is not set on the cluster",
                "use an absolute path or a variable the login shell sets",
            )
        text = _VAR.sub(lambda m: values[m.group(1) or m.group(2)], text)
    _expanded[key] = text
    return text
