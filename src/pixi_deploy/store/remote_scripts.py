"""The POSIX sh that runs on the edge node. Paths and keys always arrive as "$1" "$2" ...
(quoted by the transport), never pasted into the script text.

The cluster needs only sh, tar, cp (-al, --remove-destination), mv, mkdir, cat, find and flock
(GNU coreutils and util-linux), which every Linux login node has. Shipping conda payloads as
they are also takes GNU tar and zstd (the probe checks both).
"""

from pixi_deploy.store.image import SHA256_SH

# uname + any already-deployed candidate: the one round trip of a no-op redeploy.
# $1 = base, then pairs of (platform, key)
PROBE = r"""
base=$1; shift
uname -sm
echo "glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null)"
echo "kernel=$(uname -r)"
if command -v zstd >/dev/null 2>&1; then echo zstd=yes; else echo zstd=no; fi
case $(tar --version 2>/dev/null | head -n 1) in *"GNU tar"*) echo gnutar=yes ;; esac
while [ $# -ge 2 ]; do
  if [ -f "$base/envs/$2/deployment_metadata.json" ]; then
    printf '\036%s\n' "$1"
    cat "$base/envs/$2/deployment_metadata.json"
    exit 0
  fi
  shift 2
done
"""

# Held for the whole deploy: the per-environment lock (one deploy does the work) and a shared
# lock that keeps prune's garbage collection away. The locks live on this shell's descriptors;
# it becomes `sleep` (same pid), which the transport's watchdog kills when our channel closes
# (deploy finished, or its connection died, e.g. kill -9), and that releases both.
# $1 = base, $2 = key
LOCK = r"""
base=$1; key=$2
mkdir -p "$base/envs" "$base/locks" "$base/objects" "$base/names" || exit 3
[ -w "$base/envs" ] || { echo "not writable: $base" >&2; exit 3; }
exec 8>"$base/locks/gc.lock" 9>"$base/locks/$key.lock" || exit 3
flock -s 8 && flock -x 9 || exit 3
if [ -f "$base/envs/$key/deployment_metadata.json" ]; then echo present; else echo locked; fi
exec sleep 2147483647
"""


# Which of the group keys on stdin the cluster lacks: neither published under objects/ nor
# completely received (marker file) by an earlier, interrupted attempt.  $1 = base, $2 = key
MISSING = r"""
inc="$1/objects/.incoming-$2"
cd "$1/objects" || exit 3
while read -r k; do
  [ -d "$k" ] || [ -e "$inc/groups/$k.done" ] || [ -e "$inc/stage/.pd-staged/$k" ] || printf '%s\n' "$k"
done
"""

# Receive the stream (tar, or zstd-compressed tar) into the environment's incoming folder.
# Groups end with a marker file, so after a dropped connection only unfinished ones are resent.
# $1 = base, $2 = key, $3 = zstd|none
RECEIVE = r"""
set -eu
inc="$1/objects/.incoming-$2"
mkdir -p "$inc"
rm -rf "$inc/env"
if [ "$3" = zstd ]; then zstd -dcq | tar -xf - -C "$inc"; else tar -xf - -C "$inc"; fi
"""

# Receive conda payloads as they are (store/payloads.py): one zstd stream (the packages' own
# frames, back to back) of tars, unpacked by ONE zstd and ONE tar straight into the
# environment's pre-stage, as `tar -x` of a finished tree would be. After each package comes a
# small tar of hard links, .pd-objects/<key>/<path> -> <path> (its object, for later
# environments), then the marker .pd-staged/<key>: it arrived whole (a dropped connection
# resumes from there). Every payload was checked member by member before it was sent
# (pack/untar.py); tar still takes no owner from it (the cluster user may be root) and masks
# its modes with umask 022 (no world-writable, setuid or setgid file).
# $1 = base, $2 = key
RECEIVE_PAYLOADS = r"""
set -eu
umask 022
inc="$1/objects/.incoming-$2"
mkdir -p "$inc/stage"
# a payload's own info/ (licences, tests, recipes: 79 of 83 real conda-forge packages) is never
# part of an environment: paths.json does not list it, and conda and rattler never link it
zstd -dcq | tar -x -i --no-same-owner --no-same-permissions --anchored --exclude=info \
  -f - -C "$inc/stage"
"""

# Publish received groups, hard-link the environment together beside its final path, rename
# it into place.  $1 = base, $2 = key, then the environment's group keys.
FINALIZE = r"""
set -eu
base=$1; key=$2; shift 2
umask 022
inc="$base/objects/.incoming-$key"
for stale in "$base/envs/.$key.staging-"*; do [ -e "$stale" ] && rm -rf "$stale"; done
stage=$(mktemp -d "$base/envs/.$key.staging-XXXXXX")
trap 'rm -rf "$stage"' EXIT
# claim the pre-stage RECEIVE_PAYLOADS filled (one rename, so only one finalize ever uses it);
# its .pd-staged/ names the packages unpacked into it, its .pd-objects/ holds their objects
if [ -d "$inc/stage" ]; then
  rmdir "$stage"
  mv -T "$inc/stage" "$stage" 2>/dev/null || mkdir "$stage"
  # checked before they were sent; checked again: no special file in a package, and none of
  # the payloads' symlinks (the environment part below brings every declared one again), so
  # nothing copied in below can be written through one
  if [ -n "$(find "$stage" ! -type f ! -type d ! -type l -print -quit)" ]; then
    rm -rf "$inc"; echo "refused: a package payload holds a special file" >&2; exit 4
  fi
  find "$stage" -type l -exec rm -f {} +
fi
if [ -d "$stage/.pd-objects" ]; then
  # one process for all: an object a concurrent deploy made already stays as it is
  mv -t "$base/objects" "$stage/.pd-objects"/* 2>/dev/null || :
  rm -rf "$stage/.pd-objects"
fi
# groups that arrived whole become objects, all with one mv (a process per group cost 0.4 s
# for an environment's 240 conda-meta records); one that exists already stays as it is
if [ -d "$inc/groups" ]; then
  (
    cd "$inc/groups"
    set --
    for done in *.done; do
      if [ -e "$done" ]; then set -- "$@" "${done%.done}"; fi
    done
    if [ $# -gt 0 ]; then mv -t "$base/objects" "$@" 2>/dev/null || :; fi
  )
fi
n=$#
for k; do
  [ -e "$stage/.pd-staged/$k" ] && continue  # unpacked into the stage already
  [ -d "$base/objects/$k" ] || { echo "missing object $k" >&2; exit 4; }
  set -- "$@" "$base/objects/$k/."
done
shift "$n"
if [ $# -gt 0 ]; then cp -al "$@" "$stage/"; fi
rm -rf "$stage/.pd-staged"
# the environment part wins over a payload's raw copy (prefix patched); --remove-destination
# unlinks that copy first, or cp would write through the hard link into the shared object
cp -a --remove-destination "$inc/env/." "$stage/"
[ -f "$stage/deployment_metadata.json" ] || { echo "incomplete environment" >&2; exit 4; }
chmod 755 "$stage"
if ! mv -T "$stage" "$base/envs/$key" 2>/dev/null; then
  # a killed deploy's finalize may have published it meanwhile: fine if it is complete
  [ -f "$base/envs/$key/deployment_metadata.json" ] || { echo "cannot publish $key" >&2; exit 4; }
fi
rm -rf "$inc"
"""

# Throw away what a refused deploy sent (under its lock): a package checked while it was being
# laid out turned out to be hostile or broken.  $1 = base, $2 = key
DISCARD = r"""
rm -rf "$1/objects/.incoming-$2"
"""

# Point a name at an environment, atomically.  $1 = base, $2 = name, $3 = relative target
NAME = r"""
set -eu
link="$1/names/$2"
mkdir -p "$(dirname "$link")"
ln -s "$3" "$link.tmp.$$"
mv -T "$link.tmp.$$" "$link"
"""

# Every environment's metadata, separated by a record separator line, then the names.
LIST = r"""
base=$1
if [ -d "$base/envs" ]; then
  for d in "$base"/envs/*/; do
    f="${d}deployment_metadata.json"
    [ -f "$f" ] || continue
    cat "$f"; printf '\n\036\n'
  done
fi
if [ -d "$base/images" ]; then
  for f in "$base"/images/*.json; do
    [ -f "$f" ] && [ -f "${f%.json}.sqfs" ] || continue
    cat "$f"; printf '\n\036\n'
  done
fi
printf '\035\n'
if [ -d "$base/names" ]; then
  cd "$base/names" && find . -type l -printf '%P\t%l\n'
fi
"""

# Remove the given environments unless a job holds their in-use lock, then collect objects that
# no environment links any more. Prints each removed key.  $1 = base, then keys.
PRUNE = r"""
base=$1; shift
mkdir -p "$base/locks"
exec 9>"$base/locks/gc.lock"
flock -x 9
for key; do
  env="$base/envs/$key"
  meta="$base/images/$key.json"
  if [ -f "$meta" ]; then
    # an image: its metadata goes first (it is then no deployment), then the image, then the
    # empty mountpoint; all while holding the in-use lock, which every job mounting it holds
    if flock -xn "$base/locks/$key.in-use" sh -c '
        mv -f "$1/images/$2.json" "$1/images/.$2.pruned-$$.json" &&
        rm -f "$1/images/$2.sqfs" "$1/images/.$2.pruned-$$.json" &&
        { rmdir "$1/envs/$2" 2>/dev/null || :; }' sh "$base" "$key"; then
      printf '%s\n' "$key"
    fi
    continue
  fi
  [ -d "$env" ] || continue
  doomed="$base/envs/.$key.pruned-$$"
  # holding the in-use lock while moving: a job that starts later finds no environment
  if flock -xn "$base/locks/$key.in-use" mv -T "$env" "$doomed"; then
    rm -rf "$doomed"
    printf '%s\n' "$key"
  fi
done
rm -rf "$base"/objects/.incoming-* "$base"/objects/.*.tmp.*  # no deploy runs while we hold gc.lock
for g in "$base"/objects/*/; do
  [ -d "$g" ] || continue
  if [ -z "$(find "$g" -type f -links +1 -print -quit)" ]; then rm -rf "$g"; fi
done
"""

# --- single-file environments (store/image.py) -------------------------------------------------

# Build the image on the cluster from the environment laid out there (BASE/envs/<key>), beside
# its final name; prints its sha256 and size. $1 = base, $2 = key, then mksquashfs's options.
IMAGE_BUILD = (
    SHA256_SH
    + r"""
set -eu
base=$1; key=$2; shift 2
umask 022
mkdir -p "$base/images"
built="$base/images/.$key.staging-$$.sqfs"
trap 'rm -f "$built"' EXIT
mksquashfs "$base/envs/$key" "$built" "$@" >/dev/null
__pd_sha256 < "$built"
wc -c < "$built"
trap - EXIT
printf '%s\n' "$built"
"""
)

# Receive an image on stdin under its staging name, checksumming it as it is written (one pass);
# prints its sha256. A short write (full disk) leaves tee's message last on stderr.
# $1 = staging path, $2 = its size in bytes
IMAGE_RECEIVE = (
    SHA256_SH
    + r"""
set -eu
umask 022
mkdir -p "${1%/*}"
rm -f -- "$1"
tee -- "$1" | __pd_sha256
[ "$(wc -c < "$1")" = "$2" ] || { rm -f -- "$1"; exit 4; }
"""
)
