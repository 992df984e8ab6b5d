#!/bin/sh
# Self-extracting pixi environment, written by pixi-deploy @@TOOL_VERSION@@.
#   environment @@ENVIRONMENT@@ (@@PLATFORM@@), lock hash @@LOCK_HASH@@
#
# Usage: sh @@SCRIPT_NAME@@ [--target DIR] [--check]
#   --target DIR  install into DIR (must not exist, or be empty; at most @@PLACEHOLDER_LENGTH@@ characters)
#                 default: @@DEFAULT_NAME@@ beside this file
#   --check       only verify this file's payload, install nothing
#
# Needs only a POSIX shell and: tar, dd, cksum, sed, mkdir, mv, rm, chmod, ln, cat
# (sha256sum is used as well when present). Nothing is downloaded; no python, no pixi.
# The payload is verified before anything is written; the environment is unpacked into a
# staging folder beside DIR, relocated for DIR, and renamed into place in one step.
set -u
PAYLOAD_BLOCKS=@@PAYLOAD_BLOCKS@@
PAYLOAD_SIZE=@@PAYLOAD_SIZE@@
PAYLOAD_CKSUM=@@PAYLOAD_CKSUM@@
PAYLOAD_SHA256=@@PAYLOAD_SHA256@@
PLACEHOLDER="@@PLACEHOLDER@@"
PLACEHOLDER_LENGTH=@@PLACEHOLDER_LENGTH@@
DEFAULT_NAME="@@DEFAULT_NAME@@"
RELOCATE=.pixi-deploy-relocate
BLOCK=4096
LC_ALL=C
export LC_ALL

die() {
    printf 'error: %s\n' "$1" >&2
    exit "${2:-1}"
}

self=$0
case $self in
    */*) here=${self%/*} ;;
    *) here=. ;;
esac
[ -r "$self" ] || die "cannot read $self"

target=
check_only=0
while [ $# -gt 0 ]; do
    case $1 in
        --target|-t)
            [ $# -ge 2 ] || die "--target needs a folder" 2
            target=$2
            shift 2
            ;;
        --target=*) target=${1#--target=}; shift ;;
        --check) check_only=1; shift ;;
        -h|--help) sed -n '2,15p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (usage: sh $self [--target DIR] [--check])" 2 ;;
    esac
done

payload() {
    dd if="$self" bs=$BLOCK skip=$PAYLOAD_BLOCKS 2>/dev/null
}

header() {
    dd if="$self" bs=$BLOCK count=$PAYLOAD_BLOCKS 2>/dev/null
}

# The header's last line holds the cksum and sha256 of the lines above it: a damaged or edited
# script stops here. (Whoever edits on purpose can fix these too: check the installer's own
# sha256 against the digest printed when it was built.)
verify_header() {
    last=$(header | sed -n '$p') || die "cannot read $self"
    set -- $last
    [ "${1:-}" = "#pixi-deploy-header" ] || die "$self is damaged (its header has no checksum); nothing was installed, download it again"
    want_cksum=$2
    want_sha=$3
    got=$(header | sed '$d' | cksum) || die "cannot read $self"
    set -- $got
    [ "$1" = "$want_cksum" ] || die "$self is damaged or was edited (header checksum mismatch); nothing was installed, download it again"
    if command -v sha256sum >/dev/null 2>&1; then
        got=$(header | sed '$d' | sha256sum) || die "cannot read $self"
        set -- $got
        [ "$1" = "$want_sha" ] || die "$self is damaged or was edited (header sha256 mismatch); nothing was installed, download it again"
    fi
}

verify() {
    verify_header
    got=$(payload | cksum) || die "cannot read the payload of $self"
    set -- $got
    if [ "${2:-0}" != "$PAYLOAD_SIZE" ]; then
        die "$self is truncated or corrupt (payload has ${2:-0} of $PAYLOAD_SIZE bytes); nothing was installed, download it again"
    fi
    if [ "$1" != "$PAYLOAD_CKSUM" ]; then
        die "$self is corrupt (payload checksum mismatch); nothing was installed, download it again"
    fi
    if command -v sha256sum >/dev/null 2>&1; then
        got=$(payload | sha256sum) || die "cannot read the payload of $self"
        set -- $got
        [ "$1" = "$PAYLOAD_SHA256" ] || die "$self is corrupt (payload sha256 mismatch); nothing was installed, download it again"
    fi
}

if [ "$check_only" = 1 ]; then
    verify
    echo "$self: payload OK ($PAYLOAD_SIZE bytes)"
    exit 0
fi

# -- can this machine run the environment? (glibc, CUDA driver; nothing written yet) -------
target_ok() {
@@TARGET_CHECK@@
:
}
target_ok || exit $?

# -- where to install --------------------------------------------------------------------
[ -n "$target" ] || target="$here/$DEFAULT_NAME"
case $target in
    /*) ;;
    *) target="$(pwd)/$target" ;;
esac
while :; do
    case $target in
        ?*/) target=${target%/} ;;
        *) break ;;
    esac
done
case $target in
    *[!A-Za-z0-9/._+@%,=~-]*)
        die "the target path may contain only letters, digits and / . _ - + @ % , = ~ (scripts and PATH embed it)" 2 ;;
esac
[ ${#target} -le $PLACEHOLDER_LENGTH ] || die "the target path is ${#target} characters long; this environment can be installed at paths of at most $PLACEHOLDER_LENGTH" 2
if [ -e "$target" ] || [ -L "$target" ]; then
    [ -d "$target" ] || die "$target exists and is not a folder" 5
    for entry in "$target"/* "$target"/.[!.]* "$target"/..?*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue
        die "$target already exists and is not empty (pick a new folder or remove it)" 5
    done
fi
parent=${target%/*}
[ -n "$parent" ] || parent=/
name=${target##*/}
mkdir -p "$parent" 2>/dev/null || die "cannot create $parent" 5
[ -w "$parent" ] || die "$parent is not writable (pick a folder you can write to)" 5

verify

# -- unpack into a staging folder beside the target ----------------------------------------
stage="$parent/.$name.pixi-deploy-$$"
mkdir "$stage" 2>/dev/null || die "cannot create $stage" 5
trap 'rm -rf "$stage"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
payload | (cd "$stage" && tar -xf -) || die "unpacking into $stage failed (disk full?)" 5

# -- relocate: the environment was laid out for $PLACEHOLDER -------------------------------
escaped=$(printf '%s\n' "$target" | sed 's/[\\|&]/\\&/g')
shrink=$((PLACEHOLDER_LENGTH - ${#target}))
tmp="$stage/.pixi-deploy-tmp"

if command -v sha256sum >/dev/null 2>&1; then hasher=sha256sum
elif command -v shasum >/dev/null 2>&1; then hasher="shasum -a 256"
else hasher=; fi
: > "$tmp.sed" || die "cannot write into $stage (disk full?)" 5

writable() {
    if [ ! -w "$1" ]; then chmod u+w "$1" || return 1; restore=1; else restore=0; fi
}

while IFS= read -r line; do
    kind=${line%% *}
    rest=${line#* }
    case $kind in
        T)  # text file: every occurrence, any length
            f="$stage/$rest"
            sed "s|$PLACEHOLDER|$escaped|g" "$f" > "$tmp" || die "relocating $rest failed" 5
            writable "$f" || die "cannot write $rest" 5
            cat "$tmp" > "$f" || die "relocating $rest failed (disk full?)" 5
            [ "$restore" = 0 ] || chmod u-w "$f"
            ;;
        B)  # binary file: a C string at OFFSET, LENGTH bytes, COUNT occurrences; keep its length
            offset=${rest%% *}; rest=${rest#* }
            length=${rest%% *}; rest=${rest#* }
            count=${rest%% *}; rest=${rest#* }
            f="$stage/$rest"
            keep=$((length - count * shrink))
            dd if="$f" bs=1 skip="$offset" count="$length" 2>/dev/null \
                | sed "s|$PLACEHOLDER|$escaped|g" > "$tmp" || die "relocating $rest failed" 5
            { dd if="$tmp" bs=1 count="$keep" 2>/dev/null
              dd if=/dev/zero bs=1 count=$((length - keep)) 2>/dev/null; } > "$tmp.2" \
                || die "relocating $rest failed" 5
            writable "$f" || die "cannot write $rest" 5
            dd if="$tmp.2" of="$f" bs=1 seek="$offset" conv=notrunc 2>/dev/null \
                || die "relocating $rest failed (disk full?)" 5
            [ "$restore" = 0 ] || chmod u-w "$f"
            ;;
        L)  # symbolic link whose target names the prefix; the next line holds that target
            IFS= read -r link || die "the relocation list is damaged" 5
            link=$(printf '%s\n' "$link" | sed "s|$PLACEHOLDER|$escaped|g")
            ln -sfn "$link" "$stage/$rest" || die "relocating link $rest failed" 5
            ;;
        F)  # a relocated file's conda-meta size and sha256: N SIZE OCCURRENCES PATH
            n=${rest%% *}; rest=${rest#* }
            size=${rest%% *}; rest=${rest#* }
            occurrences=${rest%% *}; rest=${rest#* }
            printf 's|"@pdsx-size-%s@"|%s|g\n' "$n" $((size - occurrences * shrink)) >> "$tmp.sed"
            if [ -n "$hasher" ]; then
                got=$($hasher < "$stage/$rest") || die "cannot read $rest" 5
                set -- $got
                printf 's|"@pdsx-sha-%s@"|"%s"|g\n' "$n" "$1" >> "$tmp.sed"
            else  # no tool to hash with: the record leaves the value out rather than lie
                printf 's|, "sha256_in_prefix": "@pdsx-sha-%s@"||g\n' "$n" >> "$tmp.sed"
                printf 's|"sha256_in_prefix": "@pdsx-sha-%s@", ||g\n' "$n" >> "$tmp.sed"
                no_hash=1
            fi
            ;;
        J)  # a conda-meta record whose tokens the F lines above fill in
            f="$stage/$rest"
            sed -f "$tmp.sed" "$f" > "$tmp" || die "rewriting $rest failed" 5
            writable "$f" || die "cannot write $rest" 5
            cat "$tmp" > "$f" || die "rewriting $rest failed (disk full?)" 5
            [ "$restore" = 0 ] || chmod u-w "$f"
            ;;
        '') ;;
        *) die "the relocation list is damaged" 5 ;;
    esac
done < "$stage/$RELOCATE"
rm -f "$tmp" "$tmp.2" "$tmp.sed" "$stage/$RELOCATE"
if [ "${no_hash:-0}" = 1 ]; then
    echo "note: no sha256sum or shasum here: conda-meta leaves out sha256_in_prefix of relocated files" >&2
fi

# -- publish in one step -------------------------------------------------------------------
if [ -d "$target" ]; then
    rmdir "$target" 2>/dev/null || die "$target is not empty any more" 5
fi
mv "$stage" "$target" || die "cannot move the environment into $target" 5
trap - EXIT
echo "installed @@ENVIRONMENT@@ (@@PLATFORM@@) into $target"
echo "activate with: . \"$target/activate.sh\""
exit 0
