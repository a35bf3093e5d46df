#!/usr/bin/env bash
# CAS round trip through an independent client, BuildGrid's `bgd` CLI:
# uploads files and a directory tree (nested dirs, an executable, an empty
# file, an empty dir, duplicate content, blobs below and above bgd's batch
# threshold and one over 4 MiB), downloads them back and compares bytes, the
# tree's shape and executable bits, and the digests against sha256sum.
# Usage: bgd-roundtrip.sh ENDPOINT          e.g. grpc://127.0.0.1:8980
# Env: REMOTE_INSTANCE_NAME (bgd --instance-name), BGD (bgd binary),
#      BGD_AUTH_TOKEN, BGD_SERVER_CERT, BGD_CLIENT_CERT/KEY (bgd-env.sh),
#      BGD_VENV / BUILDGRID_VERSION (see bgd-env.sh; installs bgd if missing),
#      KEEP=1 keeps the work dir.
set -uo pipefail
[ $# -ge 1 ] || { sed -n '2,10p' "$0"; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=bgd-env.sh
source "$here/bgd-env.sh"
ENDPOINT=$1
REMOTE=$(bgd_remote "$ENDPOINT")
ensure_bgd || { echo "FAIL: cannot install bgd"; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bgd-roundtrip.XXXXXX")
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
FAILED=0
fail() { echo "FAIL: $*"; FAILED=1; }
log() { printf '[bgd-roundtrip] %s\n' "$*" >&2; }
mapfile -t AUTH < <(bgd_auth_args)
CAS=("$BGD" cas --remote "$REMOTE" "${AUTH[@]}")
[ -n "${REMOTE_INSTANCE_NAME:-}" ] && CAS+=(--instance-name "$REMOTE_INSTANCE_NAME")

# bgd prints "Error: ..." and may still exit 0 (e.g. when the download target
# exists), so every call is judged by its exit code AND its output.
bgd_run() {  # bgd_run LOGNAME ARGS...
  local name=$1; shift
  "${CAS[@]}" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  if [ $rc != 0 ] || grep -q '^Error' "$WORK/$name.log" || ! grep -q '^Success' "$WORK/$name.log"; then
    sed 's/^/  | /' "$WORK/$name.log" | tail -20
    fail "bgd cas $1 failed (exit $rc)"
    return 1
  fi
}
digest_of() { echo "$(sha256sum < "$1" | cut -d' ' -f1)/$(stat -c %s "$1")"; }
pushed() {  # pushed LOGNAME PATH -> hash/size that bgd reported for PATH
  sed -n "s#^Success: Pushed path=\[$2\] with digest=\[\([0-9a-f]*/[0-9]*\)\]\$#\1#p" "$WORK/$1.log" | tail -1
}

# --- test data -------------------------------------------------------------
SRC="$WORK/src"; mkdir -p "$SRC/files" "$SRC/tree/a/b/c" "$SRC/tree/empty_dir" "$SRC/tree/x"
printf 'hello from bgd-roundtrip %s\n' "$$" > "$SRC/files/small.txt"
# 5 MiB + 7 bytes, deterministic: above gRPC's 4 MiB message limit, so bgd
# sends it with ByteStream.Write in several chunks and reads it with Read.
python3 -c "
import sys
sys.stdout.buffer.write(b''.join(i.to_bytes(4, 'little') for i in range(5 * 262144)) + b'tail!!\n')" > "$SRC/files/big.bin"
: > "$SRC/files/empty"
echo top > "$SRC/tree/top.txt"
printf '#!/bin/sh\necho run\n' > "$SRC/tree/a/run.sh"; chmod 755 "$SRC/tree/a/run.sh"
: > "$SRC/tree/a/b/empty"
echo "same content" > "$SRC/tree/a/b/dup1"; echo "same content" > "$SRC/tree/x/dup2"
head -c 2000000 "$SRC/files/big.bin" > "$SRC/tree/a/b/c/medium.bin"   # > bgd's batch threshold (~1 MiB)
printf 'nested\n' > "$SRC/tree/a/b/c/deep.txt"
cp "$SRC/files/big.bin" "$SRC/tree/x/big.bin"

log "endpoint=$ENDPOINT (bgd --remote $REMOTE) instance=${REMOTE_INSTANCE_NAME:-<none>} bgd=$BGD"

# --- files -------------------------------------------------------------------
FILES=(small.txt big.bin empty)
if bgd_run upload-file upload-file --verify "${FILES[@]/#/$SRC/files/}"; then
  DL_ARGS=()
  for f in "${FILES[@]}"; do
    d=$(pushed upload-file "$SRC/files/$f")
    want=$(digest_of "$SRC/files/$f")
    [ "$d" = "$want" ] || fail "bgd reported digest '$d' for $f, sha256sum says $want"
    DL_ARGS+=("$want" "$WORK/dl-$f")
  done
  if bgd_run download-file download-file --verify "${DL_ARGS[@]}"; then
    for f in "${FILES[@]}"; do
      cmp "$SRC/files/$f" "$WORK/dl-$f" || fail "downloaded $f differs"
    done
    log "files: ${#FILES[@]} uploaded and downloaded identical"
  fi
fi

# --- directory tree ------------------------------------------------------------
tree_listing() {  # type, exec bit, size, sha256 and path of every entry
  (cd "$1" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | while IFS= read -r p; do
    if [ -d "$p" ]; then echo "d - - - $p"
    elif [ -L "$p" ]; then echo "l - - $(readlink "$p") $p"
    else
      if [ -x "$p" ]; then x=x; else x=-; fi
      echo "f $x $(stat -c %s "$p") $(sha256sum < "$p" | cut -d' ' -f1) $p"
    fi
  done)
}
if bgd_run upload-dir upload-dir --verify "$SRC/tree"; then
  ROOT=$(pushed upload-dir "$SRC/tree")
  if [ -z "$ROOT" ]; then
    fail "no root digest in bgd upload-dir output"
  else
    log "tree root digest $ROOT"
    if bgd_run download-dir download-dir --verify "$ROOT" "$WORK/dl-tree"; then
      tree_listing "$SRC/tree" > "$WORK/tree.src"
      tree_listing "$WORK/dl-tree" > "$WORK/tree.dl"
      if diff -u "$WORK/tree.src" "$WORK/tree.dl"; then
        log "tree: $(wc -l < "$WORK/tree.src") entries identical (content, exec bits, empty file and dir)"
      else
        fail "downloaded tree differs (diff above: - uploaded, + downloaded)"
      fi
    fi
  fi
fi

# --- a blob that is not there must be reported missing ----------------------------
"${CAS[@]}" download-file "$(printf '%064d' 0)/5" "$WORK/missing" > "$WORK/missing.log" 2>&1
if [ -e "$WORK/missing" ] || ! grep -qi 'not found' "$WORK/missing.log"; then
  sed 's/^/  | /' "$WORK/missing.log"
  fail "downloading an absent blob did not fail with 'not found'"
fi

if [ "$FAILED" = 0 ]; then
  echo "PASS: bgd-roundtrip $ENDPOINT"
  exit 0
fi
echo "FAIL: bgd-roundtrip $ENDPOINT"
exit 1
