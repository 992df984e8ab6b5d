"""RayLauncher: a Ray cluster over the allocation's nodes, the driver, and a clean teardown.

The head runs on the job's first node and one worker on every further node (``srun`` inside the
allocation). Ray's defaults (port 6379, fixed manager ports, one /tmp/ray) make two Ray jobs on
one node collide, so every port is chosen on the node at run time: under a node-wide flock, a
small Python snippet (the environment has Python, since it has Ray) picks ports outside the
kernel's ephemeral range that bind now and that no live Ray job of pixi-deploy has claimed, and
records the claim until the job ends. Each job also gets its own ``--temp-dir``. Each Ray
process tree runs in its own process group so teardown kills exactly this job's Ray and never
another's (``ray stop`` would stop every Ray of the user on the node). The dashboard is off, and
binds to 127.0.0.1 when turned on, unless asked otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pixi_deploy.transport import quoting

from .bash import signal_name, start_in_background

if TYPE_CHECKING:
    from pixi_deploy.slurm.spec import JobSpec

# argv: claim dir, owner pid, number of single ports, worker-port range size.
# Prints the single ports, then the first and last worker port, on one line.
_PICKER = r"""
import fcntl, os, random, socket, sys
claims, owner, singles, span = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.makedirs(claims, exist_ok=True)
try:
    os.chmod(claims, 0o1777)
except OSError:
    pass
LOW, HIGH = 10000, 32000  # below the usual ephemeral range (32768-60999)
lock_path = os.path.join(claims, ".lock")
try:
    lock = open(lock_path, "a+")
    os.fchmod(lock.fileno(), 0o666)  # shared by every user's Ray jobs on this node
except PermissionError:
    lock = open(lock_path)
with lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    taken = set()
    for name in os.listdir(claims):
        if name.startswith("."):
            continue
        path = os.path.join(claims, name)
        pid = int(name.rsplit(".", 1)[-1]) if name.rsplit(".", 1)[-1].isdigit() else 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        except PermissionError:
            pass
        try:
            taken.update(int(p) for p in open(path).read().split())
        except (OSError, ValueError):
            pass

    def free(port):
        if port in taken:
            return False
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))
            except OSError:
                return False
        return True

    rng = random.SystemRandom()
    for _ in range(200):
        start = rng.randrange(LOW, HIGH - span, 10)
        if all(free(p) for p in range(start, start + span)):
            taken.update(range(start, start + span))
            break
    else:
        sys.exit("pixi-deploy: no free range of %d worker ports on this node" % span)
    chosen = []
    while len(chosen) < singles:
        port = rng.randrange(LOW, HIGH)
        if free(port):
            taken.add(port)
            chosen.append(port)
    mine = chosen + list(range(start, start + span))
    with open(os.path.join(claims, "%s.%d" % (os.environ.get("SLURM_JOB_ID", "0"), owner)), "w") as f:
        f.write(" ".join(map(str, mine)))
    print(" ".join(map(str, chosen + [start, start + span - 1])))
"""

_SINGLE_PORTS = (
    "port",
    "node-manager-port",
    "object-manager-port",
    "ray-client-server-port",
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)


@dataclass
class RayLauncher:
    """Start Ray over the allocation, run the driver with RAY_ADDRESS set, tear Ray down.

    ``head_port`` fixes the GCS port (otherwise picked like all others); ``node_ip_address``
    is the address the head binds to (default: 127.0.0.1 on one node, the node's first
    address on several). ``object_store_memory`` defaults to a quarter of the job's memory.
    """

    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = False
    head_port: int | None = None
    node_ip_address: str | None = None
    wait_timeout: float = 120.0
    worker_ports: int = 100
    object_store_memory: int | None = None
    claims_dir: str = "/tmp/pixi-deploy-ray-ports"
    client_server: bool = False  # the Ray Client server needs ray[client] (grpcio)
    extra_start_args: tuple[str, ...] = ()

    def render(self, spec: JobSpec) -> str:
        q = quoting.quote
        ports = " ".join(f"__rp_{i}" for i in range(len(_SINGLE_PORTS)))
        port_args = " ".join(
            f'--{name}="$__rp_{i}"'
            for i, name in enumerate(_SINGLE_PORTS)
            if not (name == "port" and self.head_port)
            and not (name == "ray-client-server-port" and not self.client_server)
        )
        if self.head_port:
            port_args += f" --port={int(self.head_port)}"
        worker_port_args = " ".join(
            f'--{name}="$__rp_{i}"'
            for i, name in enumerate(_SINGLE_PORTS)
            if name in ("node-manager-port", "object-manager-port", "metrics-export-port")
            or name.startswith(("dashboard-agent", "runtime-env"))
        )
        extra = " ".join(q(a) for a in self.extra_start_args)
        dashboard = (
            f"--include-dashboard=true --dashboard-host={q(self.dashboard_host)}"
            if self.include_dashboard
            else f"--include-dashboard=false --dashboard-host={q(self.dashboard_host)}"
        )
        store = str(int(self.object_store_memory)) if self.object_store_memory else ""
        ip = q(self.node_ip_address or "")
        picker = f'python - {q(self.claims_dir)} "$1" {len(_SINGLE_PORTS)} {int(self.worker_ports)}'
        return f"""
# ---- pixi-deploy RayLauncher ----
__ray_t0=$(date +%s%N)
__ray_pick() {{
{picker} <<'__PD_PICKER__'
{_PICKER}
__PD_PICKER__
}}
__ray_nodes=${{SLURM_JOB_NUM_NODES:-1}}
__ray_ip={ip}
if [ -z "$__ray_ip" ]; then
  if [ "$__ray_nodes" -gt 1 ]; then __ray_ip=$(hostname -I | awk '{{print $1}}'); else __ray_ip=127.0.0.1; fi
fi
__ray_store={q(store)}
if [ -z "$__ray_store" ]; then
  __ray_mb=${{SLURM_MEM_PER_NODE:-$(( ${{SLURM_MEM_PER_CPU:-2048}} * ${{SLURM_CPUS_ON_NODE:-1}} ))}}
  __ray_store=$(( __ray_mb * 1024 * 1024 / 4 ))
  [ "$__ray_store" -ge 80000000 ] || __ray_store=80000000
fi
__ray_tmp=$(mktemp -d "/tmp/ray-${{SLURM_JOB_ID:-0}}-XXXXXX") || __pd_fail "cannot create Ray's temp dir"
__ray_head=; __ray_workers=
__ray_down() {{
  for __p in $__ray_workers $__ray_head; do kill -TERM -- "-$__p" 2>/dev/null; done
  for __i in 1 2 3 4 5 6 7 8 9 10; do
    __alive=
    for __p in $__ray_workers $__ray_head; do kill -0 -- "-$__p" 2>/dev/null && __alive=1; done
    [ -z "$__alive" ] && break
    sleep 0.5
  done
  for __p in $__ray_workers $__ray_head; do kill -KILL -- "-$__p" 2>/dev/null; done
  rm -f "{self.claims_dir}/${{SLURM_JOB_ID:-0}}.$$"
  rm -rf "$__ray_tmp"
}}
trap __ray_down EXIT
trap 'exit 143' TERM INT HUP
read -r {ports} __rp_wmin __rp_wmax <<EOF
$(__ray_pick $$)
EOF
[ -n "$__rp_wmax" ] || __pd_fail "could not pick free ports for Ray on $(hostname)"
# unbuffered: ray start's "Ray runtime started." must reach the log at once (see _wait)
PYTHONUNBUFFERED=1 setsid ray start --head --block --disable-usage-stats --node-ip-address="$__ray_ip" \\
  {port_args} --min-worker-port="$__rp_wmin" --max-worker-port="$__rp_wmax" \\
  {dashboard} --temp-dir="$__ray_tmp" --num-cpus="${{SLURM_CPUS_ON_NODE:-1}}" \\
  --object-store-memory="$__ray_store" {extra} > >(tee -a "$__ray_tmp/up-head.log" >&2) 2>&1 &
__ray_head=$!
__ray_gcs_port={int(self.head_port) if self.head_port else "$__rp_0"}
export RAY_ADDRESS="$__ray_ip:$__ray_gcs_port"
if [ "$__ray_nodes" -gt 1 ]; then
  export __PD_RAY_PICK_CMD="$(declare -f __ray_pick)"
  setsid srun --overlap --kill-on-bad-exit=1 --nodes=$(( __ray_nodes - 1 )) \\
    --ntasks=$(( __ray_nodes - 1 )) --ntasks-per-node=1 --exclude="${{SLURMD_NODENAME:-$(hostname)}}" bash -c '
    eval "$__PD_RAY_PICK_CMD"
    read -r {ports} __rp_wmin __rp_wmax <<EOF
$(__ray_pick $$)
EOF
    exec env PYTHONUNBUFFERED=1 ray start --block --disable-usage-stats --address="$RAY_ADDRESS" \\
      --node-ip-address="$(hostname -I | awk "{{print \\$1}}")" {worker_port_args} \\
      --min-worker-port="$__rp_wmin" --max-worker-port="$__rp_wmax" \\
      --num-cpus="${{SLURM_CPUS_ON_NODE:-1}}" --object-store-memory="'"$__ray_store"'" 2>&1' \
    > >(tee -a "$__ray_tmp/up-workers.log" >&2) 2>&1 &
  __ray_workers=$!
fi
{self._wait()}printf 'pixi-deploy: Ray is up on %s node(s) after %s ms; starting the driver\\n' \\
  "$__ray_nodes" "$(( ($(date +%s%N) - __ray_t0) / 1000000 ))" >&2
# ---- the driver, watched: a Ray node that stops ends the job instead of hanging it ----
{self._driver(spec)}"""

    def _wait(self) -> str:
        """Wait until every node's ``ray start`` has said "Ray runtime started." (it says so
        once its node is in the GCS's node table), watching the head and the worker step.
        Reading the lines costs nothing; asking Ray (``ray.nodes()``) would import Ray once
        more, seconds of CPU while the nodes start."""
        return f"""__ray_fail() {{ printf 'pixi-deploy: %s\\n' "$1" >&2; exit 98; }}
__ray_up() {{ cat "$__ray_tmp"/up-*.log 2>/dev/null | grep -c 'Ray runtime started'; }}
__ray_deadline=$(( $(date +%s) + {int(self.wait_timeout)} ))
while [ "$(__ray_up)" -lt "$__ray_nodes" ]; do
  kill -0 "$__ray_head" 2>/dev/null || __ray_fail "the Ray head exited while starting; its log is in the job's stderr"
  if [ -n "$__ray_workers" ] && ! kill -0 "$__ray_workers" 2>/dev/null; then
    __ray_fail "a Ray worker node exited while starting; its log is in the job's stderr"
  fi
  [ "$(date +%s)" -lt "$__ray_deadline" ] || __ray_fail "the Ray cluster has $(__ray_up) of $__ray_nodes nodes after {self.wait_timeout:g}s; raise wait_timeout or check the workers' output in the job's stderr"
  sleep 0.1
done
"""

    @staticmethod
    def _driver(spec: JobSpec) -> str:
        """The driver in the background, and a loop that wakes whenever a child exits
        (SIGCHLD interrupts ``wait``) or every second: the job's exit status is the
        driver's, unless the head or the worker step (``srun --kill-on-bad-exit``: one
        worker's ``ray start --block`` exiting ends it) stopped first, then it is 98. A
        ``--signal`` before the time limit is handed on to the driver."""
        start, target = start_in_background(spec)
        signal = signal_name(spec)
        forward = ""
        if signal is not None:
            forward = f"trap 'kill -s {signal} {target} 2>/dev/null' {signal}\n"
        return f"""{start}__ray_driver=$__pd_child
{forward}trap : CHLD
while kill -0 "$__ray_driver" 2>/dev/null; do
  __ray_lost=
  kill -0 "$__ray_head" 2>/dev/null || __ray_lost="the Ray head on $(hostname)"
  if [ -n "$__ray_workers" ] && ! kill -0 "$__ray_workers" 2>/dev/null; then
    __ray_lost="a Ray worker node (its ray start or srun step ended)"
  fi
  if [ -n "$__ray_lost" ]; then
    printf 'pixi-deploy: %s stopped while the driver ran; stopping the driver\\n' "$__ray_lost" >&2
    kill -TERM {target} 2>/dev/null
    exit 98
  fi
  sleep 1 & __ray_tick=$!
  wait "$__ray_tick" 2>/dev/null
  kill "$__ray_tick" 2>/dev/null
done
trap - CHLD
wait "$__ray_driver"
"""
