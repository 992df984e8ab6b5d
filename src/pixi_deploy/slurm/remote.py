"""POSIX sh run on the login node for Slurm work. Values always arrive as "$1" "$2" ... (quoted
by the transport), never pasted into the script text. Each script is one SSH round trip.
"""

# Detect once per client: does sacct work (accounting), and where is the jobcomp file?
PROBE = r"""
if sacct -n -X -j 1 -o JobID >/dev/null 2>&1; then echo sacct=1; else echo sacct=0; fi
scontrol show config 2>/dev/null | sed -n 's/^JobCompLoc *= *//p' | head -n 1 | sed 's/^/jobcomp=/'
"""

# Shared by SUBMIT and PREPARE, after they set $env and $code: the environment must be
# deployed (a directory with activate.sh, or an image to be mounted at its path) and a code
# snapshot named must be there; its use is recorded (for prune's "most recently used").
CHECK_ENVIRONMENT_AND_CODE = r"""
if [ -n "$env" ] && [ ! -f "$env/activate.sh" ]; then
  real=$(readlink -f -- "$env" 2>/dev/null) || real=$env  # a named deployment: its target
  if [ ! -f "${real%/envs/*}/images/${real##*/}.sqfs" ]; then  # nor an image mounted there
    echo "pixi-deploy-missing-environment" >&2; exit 97
  fi
fi
if [ -n "$code" ]; then
  [ -f "$code/snapshot.json" ] || { echo "pixi-deploy-missing-code" >&2; exit 96; }
  touch -c "$code/snapshot.json" 2>/dev/null || :
fi
"""

# Submit: unpack the run folder (0700, files 0600) from the tar on stdin, sbatch, remember the
# run folder by job id. A code snapshot named in $5 must be there (its use is recorded, for
# prune's "most recently used").  $1 = run dir, $2 = environment ('' = none), $3 = base,
# $4 = run id, $5 = code snapshot folder ('' = none), then extra sbatch arguments.
SUBMIT = (
    r"""
set -e
umask 077
run=$1; env=$2; base=$3; rid=$4; code=$5; shift 5
"""
    + CHECK_ENVIRONMENT_AND_CODE
    + r"""mkdir -p "$run" "$base/runs/by-id"
tar -xf - -C "$run"
out=$(cd "$run" && sbatch --parsable "$@" job.sh)
id=${out%%;*}
ln -sfn "../$rid" "$base/runs/by-id/$id"
printf '%s\n' "$id"
"""
)

# Prepare a session step's folder, or a run on the login node (no sbatch); a code snapshot
# is checked and its use recorded as for SUBMIT.
# $1 = run dir, $2 = environment ('' = none), $3 = code snapshot folder ('' or absent = none)
PREPARE = (
    r"""
set -e
umask 077
run=$1; env=$2; code=${3:-}
"""
    + CHECK_ENVIRONMENT_AND_CODE
    + r"""mkdir -p "$run"
tar -xf - -C "$run"
"""
)

# States of many jobs in ONE round trip: one squeue for all; then, only for the jobs squeue
# shows as ended other than COMPLETED or no longer shows, sacct (if $3 = 1), scontrol, and the jobcomp file ($4) for
# those scontrol forgot. Sections are separated by \035 lines.  $1 = ids (comma-separated),
# $2 = squeue format, $3 = use sacct (1/0), $4 = jobcomp path or ''
STATES = r"""
ids=$1; fmt=$2; use_sacct=$3; jc=$4
out=$(squeue -h -t all -j "$ids" -o "$fmt" 2>&1); rc=$?
if [ $rc -ne 0 ]; then
  case $out in *"Invalid job id"*) out= ;; *) printf '%s\n' "$out" >&2; exit $rc ;; esac
fi
printf '%s\n\035\n' "$out"
ended=
for id in $(printf '%s' "$ids" | tr ',' ' '); do
  mine=$(printf '%s\n' "$out" | grep -E "^${id}([_+][^|]*)?\|")
  if [ -z "$mine" ]; then ended="$ended $id"; continue; fi
  # all rows ended, and not all COMPLETED (COMPLETED means exit code 0: nothing to look up)
  if ! printf '%s\n' "$mine" | grep -qvE '\|(COMPLETED|FAILED|OUT_OF_MEMORY|TIMEOUT|NODE_FAIL|CANCELLED|PREEMPTED|BOOT_FAIL|DEADLINE|SPECIAL_EXIT|REVOKED)\|' \
     && printf '%s\n' "$mine" | grep -qv '|COMPLETED|'; then
    ended="$ended $id"
  fi
done
[ -n "$ended" ] || exit 0
if [ "$use_sacct" = 1 ]; then
  sacct -n -P -X -j "$(echo $ended | tr ' ' ',')" -o JobID,State,ExitCode,Reason,NodeList 2>/dev/null
fi
printf '\035\n'
for id in $ended; do
  o=$(scontrol -o show job "$id" 2>/dev/null)
  if [ -n "$o" ]; then printf '%s\n' "$o"; continue; fi
  if [ -n "$jc" ] && [ -r "$jc" ]; then grep -E "^JobId=$id " "$jc" | tail -n 1; fi
done
true
"""


# Find a job's run folder and its directives.  $1 = base, $2 = job id
REATTACH = r"""
run=$(readlink -f -- "$1/runs/by-id/$2") || exit 3
[ -d "$run" ] || exit 3
printf '%s\n' "$run"
sed -n 's/^#SBATCH //p' "$run/job.sh" 2>/dev/null
"""

# The last bytes of every log of a run (arrays: one per task), then drop the secrets file.
# Output: per file "\036NAME\n" + content.  $1 = run dir, $2 = max bytes (0 = whole file),
# $3 = 1 to remove the secrets file (the job has ended)
TAILS = r"""
run=$1; n=$2; cleanup=$3
for f in "$run"/stdout*.log "$run"/stderr*.log; do
  [ -f "$f" ] || continue
  printf '\036%s\n' "${f##*/}"
  if [ "$n" -gt 0 ]; then tail -c "$n" -- "$f"; else cat -- "$f"; fi
done
if [ "$cleanup" = 1 ]; then rm -f -- "$run/secrets.env"; fi
true
"""

# Follow a job's two log files from given line numbers: stdout file -> our stdout, stderr file
# -> our stderr. The transport's watchdog kills the shell; the trap takes both tails along.
# $1 = stdout file, $2 = stderr file, $3/$4 = first line to show of each
FOLLOW = r"""
tail -n "+$3" -s 0.2 -F -- "$1" 2>/dev/null & a=$!
tail -n "+$4" -s 0.2 -F -- "$2" >&2 2>/dev/null & b=$!
trap 'kill $a $b 2>/dev/null; exit 0' TERM INT HUP
wait
"""

# Nodes of a job that are down, drained, failed or not responding, for a NODE_FAIL result.
# $1 = hostlist (e.g. node[1-2])
NODE_STATES = r"""
sinfo -h -N -n "$1" -o '%N|%T|%E' 2>/dev/null
true
"""

# Results of function jobs (Executor) and, optionally, log tails, as binary frames
# "\036NAME SIZE\n" + SIZE bytes.  $1 = run dir, $2 = log tail bytes (0: no logs, all:
# whole files),
# $3 = log name suffix ('' for a job, '-ID_N' for array task N), then the array indexes
# whose result files (result-INDEX-RANK.pkl) to send.
FETCH_RESULTS = r"""
run=$1; n=$2; sfx=$3; shift 3
send() { printf '\036%s %s\n' "${1##*/}" "$2"; }
for i in "$@"; do
  for f in "$run/result-$i-"*.pkl; do
    [ -f "$f" ] || continue
    send "$f" "$(wc -c < "$f" | tr -d ' ')"; cat -- "$f"
  done
done
if [ "$n" != 0 ]; then
  for f in "$run/stdout$sfx.log" "$run/stdout$sfx.attempt-"*.log \
           "$run/stderr$sfx.log" "$run/stderr$sfx.attempt-"*.log; do
    [ -f "$f" ] || continue
    size=$(wc -c < "$f" | tr -d ' ')
    if [ "$n" = all ]; then send "$f" "$size"; head -c "$size" -- "$f"; continue; fi
    [ "$size" -le "$n" ] || size=$n
    send "$f" "$size"; tail -c "$size" -- "$f"  # a file that grew meanwhile: its last bytes
  done
fi
true
"""

# The environment's python and whether it has cloudpickle (Executor, once).
# $1 = environment path, $2 = python command
PYTHON_PROBE = r"""
env=$1; py=$2
real=$(readlink -f -- "$env" 2>/dev/null) || real=$env
if [ ! -f "$env/activate.sh" ] && [ -f "${real%/envs/*}/images/${real##*/}.sqfs" ]; then
  echo "pixi-deploy-image" >&2; exit 94  # a squashfs deployment: ask again with it mounted
fi
[ -f "$env/activate.sh" ] || { echo "pixi-deploy-missing-environment" >&2; exit 97; }
. "$env/activate.sh" >/dev/null 2>&1 || { echo "pixi-deploy-cannot-activate" >&2; exit 96; }
command -v "$py" >/dev/null 2>&1 || { echo "pixi-deploy-no-python" >&2; exit 95; }
"$py" -c 'import sys
print("python %d.%d" % sys.version_info[:2])
try:
    import cloudpickle
    print("cloudpickle " + cloudpickle.__version__)
except ImportError as exc:
    print("cloudpickle-missing %s" % exc)'
"""
