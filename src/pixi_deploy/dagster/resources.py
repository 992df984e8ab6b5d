"""Dagster resources that describe the cluster: SSH login, queue defaults, a shared allocation.

Field names follow dagster-slurm's resources (``SSHConnectionResource(host, port, user, key_path
| password)``, ``SlurmQueueConfig(partition, time_limit, cpus, mem, ...)``, ``SlurmResource(ssh,
queue, remote_base)``, ``SessionResource(num_nodes, time_limit, ...)``) so that definitions
written for it keep working; underneath, everything goes through pixi-deploy's one shared SSH
transport per process and its Slurm client, not through ssh/scp subprocesses.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr, model_validator

from pixi_deploy.errors import ConfigError
from pixi_deploy.transport import SSHSettings, Transport, get_transport
from pixi_deploy.transport.settings import ENV_BASE_PATH

if TYPE_CHECKING:
    from pixi_deploy.slurm import JobResources, SlurmClient, SlurmSession

DEFAULT_PREFIX = "SLURM_EDGE_NODE"
_clients: dict[tuple[SSHSettings, str, bool | None], SlurmClient] = {}
_clients_lock = threading.Lock()


class SSHConnectionResource(dg.ConfigurableResource):
    """How to log in to the cluster's edge node (key, password, or ssh-agent / ssh config).

    ``host`` may be an alias from ``~/.ssh/config``. Host keys are checked against
    ``known_hosts`` (``~/.ssh/known_hosts`` by default); set ``accept_new_host_key`` to trust a
    host on first use. ``extra_opts`` exists for dagster-slurm compatibility only: pixi-deploy
    speaks SSH itself (asyncssh), so OpenSSH command-line options do not apply.
    """

    host: str = Field(description="Edge node host name, IP or ~/.ssh/config alias")
    port: int | None = Field(default=None, description="SSH port (default: ssh config, else 22)")
    user: str | None = Field(default=None, description="Login user (default: ssh config/local)")
    key_path: str | None = Field(default=None, description="Private key file (key login)")
    password: str | None = Field(default=None, description="Password (password login)")
    known_hosts: str | None = Field(default=None, description="known_hosts file to check against")
    accept_new_host_key: bool = Field(default=False, description="Trust unknown hosts once")
    ssh_config: str | None = Field(default=None, description="ssh config file (default ~/.ssh)")
    extra_opts: list[str] = Field(default_factory=list, description="Ignored (dagster-slurm)")

    @model_validator(mode="after")
    def _check_auth(self) -> SSHConnectionResource:
        if self.key_path and self.password:
            raise ValueError("set either key_path or password for the SSH login, not both")
        if self.key_path and not Path(self.key_path).expanduser().is_file():
            raise ValueError(f"SSH key not found: {self.key_path}")
        return self

    @classmethod
    def from_env(cls, prefix: str = DEFAULT_PREFIX) -> SSHConnectionResource:
        """Read ``{prefix}_HOST``/``_PORT``/``_USER``/``_KEY_PATH`` (or ``_KEY``)/``_PASSWORD``/
        ``_KNOWN_HOSTS``: by default the ``SLURM_EDGE_NODE_*`` variables the CLI reads too.

        A trailing underscore on ``prefix`` is accepted, as dagster-slurm's docs write it.
        """
        prefix = prefix.rstrip("_")

        def get(name: str) -> str | None:
            value = os.environ.get(f"{prefix}_{name}")
            return value if value else None

        host = get("HOST")
        if host is None:
            raise ConfigError(f"{prefix}_HOST is not set", "set it to the edge node's host name")
        port = get("PORT")
        return cls(
            host=host,
            port=int(port) if port else None,
            user=get("USER"),
            key_path=get("KEY_PATH") or get("KEY"),
            password=get("PASSWORD"),
            known_hosts=get("KNOWN_HOSTS"),
            accept_new_host_key=(get("ACCEPT_NEW_HOST_KEY") or "").lower() in {"1", "true", "yes"},
        )

    def to_settings(self, base_path: str | None = None) -> SSHSettings:
        """The core transport settings (the password wrapped so it cannot be printed)."""
        extra: dict[str, Any] = {}
        if self.known_hosts:
            extra["known_hosts"] = Path(self.known_hosts)
        if self.ssh_config:
            extra["ssh_config"] = Path(self.ssh_config)
        return SSHSettings(
            host=self.host,
            port=self.port,
            user=self.user,
            key_path=Path(self.key_path) if self.key_path else None,
            password=self.password,  # type: ignore[arg-type]  # wrapped in Secret by SSHSettings
            accept_new_host_key=self.accept_new_host_key,
            base_path=base_path,
            **extra,
        )

    def transport(self) -> Transport:
        """The process-wide shared connection for these settings (opened on first use)."""
        return get_transport(self.to_settings())


class SlurmQueueConfig(dg.ConfigurableResource):
    """Default sbatch options for every job; empty/zero means "the cluster's default".

    Unlike dagster-slurm, ``mem`` defaults to the cluster's default instead of 4096M: a request
    larger than any node keeps a job pending forever, which is the worse surprise.
    """

    partition: str = Field(default="", description="Partition (empty: cluster default)")
    num_nodes: int = Field(default=1, description="Nodes per job")
    time_limit: str = Field(default="00:30:00", description="Time limit, e.g. 01:00:00")
    cpus: int = Field(default=1, description="CPUs per task")
    gpus_per_node: int = Field(default=0, description="GPUs per node")
    mem: str = Field(default="", description="Memory per node, e.g. 4G (empty: default)")
    mem_per_cpu: str = Field(default="", description="Memory per CPU instead of mem")
    qos: str = Field(default="", description="Quality of service")
    account: str = Field(default="", description="Account to charge")
    reservation: str = Field(default="", description="Reservation")
    constraint: str = Field(default="", description="Node features, e.g. 'gpu&a100'")
    extra_sbatch: list[str] = Field(default_factory=list, description="More sbatch options")

    def job_resources(self, overrides: dict[str, Any] | None = None) -> JobResources:
        """The core JobResources, with per-run overrides (dagster-slurm's ``extra_slurm_opts``
        keys and ``resource_requirements`` keys are both understood)."""
        from pixi_deploy.slurm import JobResources

        o = dict(overrides or {})
        nodes = o.pop("nodes", o.pop("num_nodes", self.num_nodes))
        cpus = o.pop("cpus_per_task", o.pop("cpus", self.cpus))
        gpus = o.pop("gpus_per_node", o.pop("gpus", self.gpus_per_node))
        mem = o.pop("mem", None)
        if mem is None and "memory_gb" in o:
            mem = f"{o.pop('memory_gb')}G"
        mem = mem if mem is not None else self.mem
        time = o.pop("time_limit", o.pop("time", self.time_limit))
        extra = list(self.extra_sbatch) + list(o.pop("extra_sbatch", []))
        mem_per_cpu = o.pop("mem_per_cpu", self.mem_per_cpu)
        if mem_per_cpu and not mem:
            extra.append(f"--mem-per-cpu={mem_per_cpu}")
        o.pop("framework", None)  # dagster-slurm's cluster-reuse hint; nothing to submit
        resources = JobResources(
            partition=o.pop("partition", self.partition) or None,
            nodes=int(nodes) if nodes else None,
            cpus_per_task=int(cpus) if cpus else None,
            mem=str(mem) or None,
            gpus=int(gpus) if gpus else None,
            time=str(time) or None,
            account=o.pop("account", self.account) or None,
            qos=o.pop("qos", self.qos) or None,
            reservation=o.pop("reservation", self.reservation) or None,
            constraint=o.pop("constraint", self.constraint) or None,
            extra_sbatch=extra,
        )
        if o:
            raise ConfigError(
                f"unknown Slurm option(s) {', '.join(sorted(o))}",
                "use nodes, cpus_per_task, mem, gpus_per_node, time_limit, partition, account, "
                "qos, reservation, constraint or extra_sbatch",
            )
        return resources


class SlurmResource(dg.ConfigurableResource):
    """A Slurm cluster: how to log in, default job options, and where pixi-deploy keeps things.

    ``remote_base`` holds the deployed environments (the content-addressed store), the job run
    directories and the Pipes files; it defaults to ``SLURM_DEPLOYMENT_BASE_PATH``, then
    ``~/pixi-deploy``.
    """

    ssh: SSHConnectionResource = Field(description="SSH login to the edge node")
    queue: SlurmQueueConfig = Field(
        default_factory=SlurmQueueConfig, description="Default job options"
    )
    remote_base: str | None = Field(default=None, description="Base directory on the cluster")
    remote_python: str = Field(default="python", description="Python inside the environment")
    activate_sh: str | None = Field(default=None, description="Unused (dagster-slurm compat)")
    use_sacct: bool | None = Field(default=None, description="Ask sacct for final states")

    @classmethod
    def from_env(cls, prefix: str = DEFAULT_PREFIX) -> SlurmResource:
        """SSH from ``SLURM_EDGE_NODE_*``, queue defaults from ``SLURM_PARTITION``,
        ``SLURM_TIME``, ``SLURM_CPUS``, ``SLURM_MEM``, ``SLURM_NUM_NODES``,
        ``SLURM_GPUS_PER_NODE`` (dagster-slurm's names), base from ``SLURM_DEPLOYMENT_BASE_PATH``."""
        env = os.environ
        return cls(
            ssh=SSHConnectionResource.from_env(prefix),
            queue=SlurmQueueConfig(
                partition=env.get("SLURM_PARTITION", ""),
                time_limit=env.get("SLURM_TIME", "00:30:00"),
                cpus=int(env.get("SLURM_CPUS", "1")),
                mem=env.get("SLURM_MEM", ""),
                mem_per_cpu=env.get("SLURM_MEM_PER_CPU", ""),
                num_nodes=int(env.get("SLURM_NUM_NODES", "1")),
                gpus_per_node=int(env.get("SLURM_GPUS_PER_NODE", "0")),
            ),
            remote_base=env.get(ENV_BASE_PATH) or env.get("SLURM_REMOTE_BASE") or None,
            remote_python=env.get("SLURM_PYTHON", "python"),
        )

    def transport(self) -> Transport:
        return self.ssh.transport()

    def base_path(self) -> str:
        """``remote_base`` with ``~`` expanded on the cluster (SFTP never expands it)."""
        transport = self.transport()
        base = self.remote_base or os.environ.get(ENV_BASE_PATH) or "~/pixi-deploy"
        return transport.expand_path(base).rstrip("/") or "/"

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


class SessionResource(dg.ConfigurableResource):
    """One Slurm allocation shared by every asset of a Dagster run (each asset an srun step).

    The allocation is requested on first use, not at resource setup, so a run whose assets
    never reach the cluster allocates nothing; it is released when Dagster tears the resource
    down, after success and failure alike. It lives in this process: use the in-process
    executor (``dagster.materialize`` does) so that all assets of a run share it; with the
    multiprocess executor each step process would hold its own allocation.
    """

    slurm: SlurmResource | None = Field(default=None, description="Default: ComputeResource's")
    enabled: bool = Field(default=True, description="False: one job per asset instead")
    enable_session: bool = Field(default=True, description="Same as enabled (dagster-slurm)")
    num_nodes: int = Field(default=1, description="Nodes in the allocation")
    time_limit: str = Field(default="01:00:00", description="Allocation time limit")
    partition: str | None = Field(default=None, description="Default: the queue's partition")
    cpus: int | None = Field(default=None, description="CPUs per task (default: queue's)")
    mem: str | None = Field(default=None, description="Memory per node (default: queue's)")
    max_concurrent_jobs: int = Field(default=4, description="Steps that may run at once")
    enable_health_checks: bool = Field(default=True, description="Unused (dagster-slurm compat)")

    _session: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def active(self) -> bool:
        return self.enabled and self.enable_session

    def get_session(self, slurm: SlurmResource | None, name: str) -> SlurmSession:
        """The running allocation, requested now if this is the first step that needs it."""
        from pixi_deploy.slurm import SlurmSession

        with self._lock:
            if self._session is None:
                owner = self.slurm or slurm
                if owner is None:
                    raise ConfigError("SessionResource needs a SlurmResource to allocate on")
                overrides: dict[str, Any] = {"nodes": self.num_nodes, "time_limit": self.time_limit}
                if self.partition:
                    overrides["partition"] = self.partition
                if self.cpus:
                    overrides["cpus_per_task"] = self.cpus
                if self.mem:
                    overrides["mem"] = self.mem
                session = SlurmSession(
                    owner.client(),
                    owner.queue.job_resources(overrides),
                    max_concurrent_steps=self.max_concurrent_jobs,
                    name=name,
                )
                session.start()
                self._session = session
            return self._session

    def release(self) -> None:
        """Give the allocation back (idempotent; also called on interrupts)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.release()
