"""The POSIX sh that keeps code snapshots on the edge node. Paths and keys always arrive as
"$1" "$2" ... (quoted by the transport), never pasted into the script text.

    BASE/code/<hash>/files/...         a snapshot's tree: hard links to objects (read-only)
    BASE/code/<hash>/snapshot.json     what it is; its mtime is when a job last used it
    BASE/code/.objects/<key>           a file's content, named by its sha256 (+x: executable)
    BASE/code/.incoming-<hash>/        objects of an upload that did not finish (resumed)
    BASE/code/.<hash>.staging-<nonce>  a snapshot being built; renamed into place when whole
    BASE/locks/code-gc.lock            shared by uploads, exclusive for prune's collection
    BASE/locks/code-<hash>.lock        one upload of a snapshot at a time
    BASE/locks/code-<hash>.in-use      shared by every job using it; prune skips those

Needs only sh, tar (hard-link members), cp -al, mv, find, xargs, flock and sha256sum.
"""

# Which objects a snapshot lacks. stdin: one key per line. Prints whether the cluster has zstd
# (zstd=yes|no), then "present" when the snapshot is there already; else "i KEY" for an object an earlier, cut upload delivered whole (checked
# against its name, the sha256 of its content: a cut leaves the last one short), and "m KEY" for
# one that must be sent. Keys already in .objects/ are not printed.  $1 = base, $2 = hash
MISSING = r"""
base=$1; hash=$2
code="$base/code"
if command -v zstd >/dev/null 2>&1; then echo zstd=yes; else echo zstd=no; fi
if [ -f "$code/$hash/snapshot.json" ]; then echo present; exit 0; fi
mkdir -p "$code/.objects" "$base/locks" || exit 3
exec 8>"$base/locks/code-gc.lock" && flock -s 8 || exit 3
# an upload of this snapshot may be writing its objects right now: wait for it to end
exec 9>"$base/locks/code-$hash.lock" && flock -x 9 || exit 3
if [ -f "$code/$hash/snapshot.json" ]; then echo present; exit 0; fi
inc="$code/.incoming-$hash/objects"
if [ -d "$inc" ]; then
  (cd "$inc" && find . -mindepth 1 -maxdepth 1 -type f -print0 | xargs -0 -r sha256sum) |
  while read -r sum name; do
    name=${name#./}
    case $name in "$sum"|"${sum}x") ;; *) rm -f -- "$inc/$name" ;; esac
  done
fi
while read -r k; do
  [ -e "$code/.objects/$k" ] && continue
  if [ -f "$inc/$k" ]; then printf 'i %s\n' "$k"; else printf 'm %s\n' "$k"; fi
done
"""

# Receive a snapshot: a tar (zstd-compressed when $5 = zstd) of the missing objects under
# .incoming-<hash>/objects/, then the tree under .<hash>.staging-<nonce>/files/ as hard-link
# members pointing at the objects (or symbolic links), then snapshot.json. With $4 = an earlier
# snapshot's hash, the tree starts as `cp -al` of that one: the stream then holds only what
# changed, and the paths to delete arrive as "$@". Prints "present", "base-missing" (nothing
# was built; send the whole tree) or "published".
# $1 = base, $2 = hash, $3 = nonce, $4 = base snapshot or '', $5 = zstd|none, then deletions
RECEIVE = r"""
set -eu
base=$1; hash=$2; nonce=$3; from=$4; comp=$5; shift 5
umask 022
code="$base/code"
mkdir -p "$code/.objects" "$base/locks"
[ -w "$code" ] || { echo "not writable: $code" >&2; exit 3; }
exec 8>"$base/locks/code-gc.lock"; flock -s 8
exec 9>"$base/locks/code-$hash.lock"; flock -x 9
if [ -f "$code/$hash/snapshot.json" ]; then cat >/dev/null; echo present; exit 0; fi
inc="$code/.incoming-$hash"
stage="$code/.$hash.staging-$nonce"
mkdir -p "$inc/objects"
# we hold this snapshot's lock: any other staging folder of it is a killed upload's
rm -rf "$code/.$hash.staging-"*
trap 'rm -rf "$stage"' EXIT
if [ -n "$from" ]; then
  if [ ! -f "$code/$from/snapshot.json" ]; then cat >/dev/null; echo base-missing; exit 0; fi
  mkdir "$stage"
  cp -al "$code/$from/files" "$stage/files"
  if [ $# -gt 0 ]; then (cd "$stage/files" && rm -rf -- "$@"); fi
  find "$stage/files" -depth -mindepth 1 -type d -empty -delete
else
  mkdir -p "$stage/files"
fi
if [ "$comp" = zstd ]; then zstd -dcq | tar -xf - -C "$code"; else tar -xf - -C "$code"; fi
[ -f "$stage/snapshot.json" ] || { echo "the snapshot arrived incomplete" >&2; exit 4; }
# the objects that arrived join the store (one that a concurrent upload put there stays)
(cd "$inc/objects" && find . -mindepth 1 -maxdepth 1 -type f -print0 |
  xargs -0 -r mv -n -t "$code/.objects" --) 2>/dev/null || :
chmod 755 "$stage"
if ! mv -T "$stage" "$code/$hash" 2>/dev/null; then
  [ -f "$code/$hash/snapshot.json" ] || { echo "cannot publish snapshot $hash" >&2; exit 4; }
fi
rm -rf "$inc"
echo published
"""

# Every snapshot's snapshot.json (newest use first), each followed by a record separator line.
# $1 = base
LIST = r"""
code="$1/code"
[ -d "$code" ] || exit 0
ls -1t "$code"/*/snapshot.json 2>/dev/null | while read -r f; do
  cat "$f"; printf '\n\036\n'
done
"""

# Remove all but the $2 most recently used snapshots, skipping those a job holds, then every
# object no snapshot or job folder links any more. Prints each removed hash.  $1 = base, $2 = N
PRUNE = r"""
base=$1; keep=$2
code="$base/code"
[ -d "$code" ] || exit 0
mkdir -p "$base/locks"
exec 8>"$base/locks/code-gc.lock"
flock -x 8
ls -1t "$code"/*/snapshot.json 2>/dev/null | tail -n "+$((keep + 1))" | while read -r f; do
  dir=${f%/snapshot.json}; h=${dir##*/}
  doomed="$code/.$h.pruned-$$"
  # holding the in-use lock while moving: a job that starts later finds no snapshot
  if flock -xn "$base/locks/code-$h.in-use" mv -T "$dir" "$doomed"; then
    rm -rf "$doomed"
    printf '%s\n' "$h"
  fi
done
rm -rf "$code"/.incoming-* "$code"/.*.staging-* "$code"/.*.pruned-*  # no upload runs now
[ -d "$code/.objects" ] && find "$code/.objects" -mindepth 1 -maxdepth 1 -type f -links 1 -delete
true
"""
