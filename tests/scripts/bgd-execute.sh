#!/usr/bin/env bash
# Remote execution with BuildGrid's `bgd execute command` as an independent
# client: an input directory (nested file, executable script) goes up, the
# command runs on the endpoint, and its output file comes back.
# Usage: bgd-execute.sh ENDPOINT      Env: REMOTE_INSTANCE_NAME, BGD, BGD_VENV,
#   BGD_AUTH_TOKEN, BGD_SERVER_CERT, BGD_CLIENT_CERT/KEY (see bgd-env.sh)
set -uo pipefail
[ $# -ge 1 ] || { sed -n '2,6p' "$0"; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/scripts/bgd-env.sh
. "$here/bgd-env.sh"
ensure_bgd || { echo "FAIL: bgd unavailable"; exit 1; }
REMOTE=$(bgd_remote "$1")
work=$(mktemp -d "${TMPDIR:-/var/tmp}/bgd-execute.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/in/sub" "$work/out"
salt="$(date +%s%N)-$$"
printf 'hello from input %s\n' "$salt" > "$work/in/sub/data.txt"
printf '#!/bin/sh\nset -e\ntr a-z A-Z < sub/data.txt > result.txt\necho ran\n' > "$work/in/run.sh"
chmod +x "$work/in/run.sh"
inst=()
[ -n "${REMOTE_INSTANCE_NAME:-}" ] && inst=(--instance-name "$REMOTE_INSTANCE_NAME")
mapfile -t auth < <(bgd_auth_args cas)
(cd "$work" && "$BGD" execute --remote "$REMOTE" "${auth[@]}" "${inst[@]}" command \
  --output-file result.txt --output-directory "$work/out" in ./run.sh) > "$work/bgd.log" 2>&1
rc=$?
want="HELLO FROM INPUT $salt"
got=$(cat "$work/out/result.txt" 2>/dev/null)
if [ "$rc" = 0 ] && [ "$got" = "$want" ]; then
  echo "PASS: bgd-execute $1: output file came back as expected"
  exit 0
fi
tail -20 "$work/bgd.log"
echo "FAIL: bgd-execute $1: exit $rc, result.txt was '$got', expected '$want'"
exit 1
