#!/usr/bin/env bash
# End-to-end check of a REAPI remote cache, or with MODE=exec of remote
# execution, with a real Bazel (4.2.3):
#   1. build+test tests/bazel-ws with --remote_cache=ENDPOINT in a fresh
#      output root (a fresh salt makes every action key new, so this build
#      runs locally and uploads its results),
#   2. record the sha256 and executable bit of every file under bazel-bin,
#   3. bazel clean, build+test again: Bazel's process summary must show every
#      non-internal process as a "remote cache hit" (none run locally), and
#      bazel-bin must be byte-identical.
# Usage: bazel-cache-e2e.sh ENDPOINT        e.g. grpc://127.0.0.1:8980
# Env: REMOTE_INSTANCE_NAME  passed as --remote_instance_name when set
#      SALT                  fixed salt instead of a fresh one
#      TARGETS               default //...
#      BAZEL                 default bazel
#      EXTRA_BAZEL_FLAGS     extra build flags (word-split), e.g. TLS flags
#      REMOTE_HEADER         one --remote_header value, not split (it holds
#                            "authorization=Bearer <token>")
#      KEEP=1                keep the output root and logs for inspection
#      MODE=exec             use --remote_executor: the first build must run
#                            every action "remote" except LOCAL_EXPECTED ones
#                            (default 1: //host:host_info is no-remote-exec),
#                            and //net:no_network_test is added to TARGETS
# Exit 0 and "PASS" on success, 1 and "FAIL: ..." otherwise.
set -uo pipefail
[ $# -ge 1 ] || { sed -n '2,24p' "$0"; exit 2; }
MODE=${MODE:-cache}
LOCAL_EXPECTED=${LOCAL_EXPECTED:-1}
ENDPOINT=$1
here=$(cd "$(dirname "$0")" && pwd)
WS=$(cd "$here/../bazel-ws" && pwd)
BAZEL=${BAZEL:-bazel}
if [ "$MODE" = exec ]; then
  read -ra TARGETS <<< "${TARGETS:-//... //net:no_network_test}"
else
  read -ra TARGETS <<< "${TARGETS:-//...}"
fi
SALT=${SALT:-$(date +%s%N)-$$}
ROOT=$(mktemp -d "${TMPDIR:-/var/tmp}/rbe-bazel-e2e.XXXXXX")
LOGS="$ROOT/logs"
mkdir -p "$LOGS"

log() { printf '[bazel-cache-e2e] %s\n' "$*" >&2; }
# --nohome_rc: ignore ~/.bazelrc. Debian's /etc/bazel/bazelrc must stay: it
# sets --install_base=/usr/share/bazel, without which bazel-bootstrap fails.
bz() { (cd "$WS" && "$BAZEL" --nohome_rc --output_user_root="$ROOT/out" "$@"); }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  bz shutdown >/dev/null 2>&1 || true
  if [ "${KEEP:-0}" = 1 ]; then
    log "kept $ROOT"
  else
    chmod -R u+w "$ROOT" 2>/dev/null || true
    rm -rf "$ROOT"
  fi
}
trap cleanup EXIT

FAILED=0
fail() { echo "FAIL: $*"; FAILED=1; }

if [ "$MODE" = exec ]; then REMOTE_FLAG=--remote_executor; else REMOTE_FLAG=--remote_cache; fi
FLAGS=(
  "$REMOTE_FLAG=$ENDPOINT"
  --remote_timeout=120
  --symlink_prefix=/            # no convenience symlinks in the source tree
  --action_env=RBE_E2E_SALT="$SALT"
  --host_action_env=RBE_E2E_SALT="$SALT"
  --test_env=RBE_E2E_SALT="$SALT"
)
[ -n "${REMOTE_INSTANCE_NAME:-}" ] && FLAGS+=(--remote_instance_name="$REMOTE_INSTANCE_NAME")
# shellcheck disable=SC2206
[ -n "${EXTRA_BAZEL_FLAGS:-}" ] && FLAGS+=($EXTRA_BAZEL_FLAGS)
[ -n "${REMOTE_HEADER:-}" ] && FLAGS+=("--remote_header=$REMOTE_HEADER")

# summary LOG -> "total internal remote_cache_hit other detail" from the
# last "INFO: N processes: a kind, b kind." line. Bazel 4.2.3 prints e.g.
#   INFO: 35 processes: 16 internal, 19 linux-sandbox.
#   INFO: 35 processes: 19 remote cache hit, 16 internal.
#   INFO: 1 process: 1 internal.      INFO: 0 processes.
summary() {
  python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
m = re.findall(r"^INFO: (\d+) process(?:es)?(?:: (.*?))?\.?$", text, re.M)
if not m:
    print("none 0 0 0 0 -"); sys.exit()
total, detail = m[-1]
kinds = {}
for part in (detail or "").split(", "):
    mm = re.match(r"(\d+) (.+?)\.?$", part.strip())
    if mm:
        kinds[mm.group(2)] = kinds.get(mm.group(2), 0) + int(mm.group(1))
internal = kinds.pop("internal", 0)
hits = kinds.pop("remote cache hit", 0)
remote = kinds.get("remote", 0)
other = sum(kinds.values())
print(total, internal, hits, other, remote, (detail or "-").replace(" ", "_"))
PY
}

# manifest DIR -> "sha256 mode path" for every regular file (symlinks,
# e.g. runfiles trees, are not followed).
manifest() {
  (cd "$1" && find . -type f -printf '%P\n' | LC_ALL=C sort | while IFS= read -r f; do
    if [ -x "$f" ]; then x=x; else x=-; fi
    printf '%s %s %s\n' "$(sha256sum < "$f" | cut -d' ' -f1)" "$x" "$f"
  done)
}

run_build() {  # run_build NAME -> builds, sets S_* from the summary
  local name=$1 rc t0 t1
  t0=$(date +%s.%N)
  bz test "${FLAGS[@]}" "${TARGETS[@]}" > "$LOGS/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  read -r S_TOTAL S_INTERNAL S_HITS S_OTHER S_REMOTE S_DETAIL < <(summary "$LOGS/$name.log")
  log "$name: exit=$rc wall=$(python3 -c "print(round($t1 - $t0, 1))")s processes=$S_TOTAL internal=$S_INTERNAL remote_cache_hit=$S_HITS other=$S_OTHER ($S_DETAIL)"
  if [ "$rc" != 0 ]; then
    grep -E '^(ERROR|FAIL|WARNING)' "$LOGS/$name.log" | head -20 >&2
    tail -5 "$LOGS/$name.log" >&2
    fail "$name build/test exited $rc (log $LOGS/$name.log)"
    return 1
  fi
  [ "$S_TOTAL" = none ] && { fail "$name: no process summary line in the log"; return 1; }
  return 0
}

log "endpoint=$ENDPOINT instance=${REMOTE_INSTANCE_NAME:-<none>} salt=$SALT targets=${TARGETS[*]} root=$ROOT"

if run_build first; then
  FIRST_WORK=$((S_HITS + S_OTHER))
  FIRST_REMOTE=$S_REMOTE
  [ "$S_HITS" -gt 0 ] && log "note: first build already had $S_HITS remote cache hits (SALT reused or actions not salted)"
  if [ "$MODE" = exec ]; then
    local_ran=$((S_OTHER - S_REMOTE))
    [ "$S_REMOTE" -gt 0 ] || fail "first build ran no action remotely: $S_DETAIL"
    [ "$local_ran" -eq "$LOCAL_EXPECTED" ] || fail "first build ran $local_ran action(s) locally, expected $LOCAL_EXPECTED (no-remote-exec): $S_DETAIL"
    grep -q "no_network_test.*PASSED" "$LOGS/first.log" || [ "$MODE" != exec ] || fail "//net:no_network_test did not pass remotely"
  fi
  BIN=$(bz info "${FLAGS[@]}" bazel-bin 2>/dev/null)
  if [ -z "$BIN" ] || [ ! -d "$BIN" ]; then
    fail "bazel info bazel-bin gave '$BIN'"
  else
    manifest "$BIN" > "$LOGS/first.sha256"
    log "recorded $(wc -l < "$LOGS/first.sha256") output files under $BIN"
    bz clean > "$LOGS/clean.log" 2>&1 || fail "bazel clean failed"
    [ -d "$BIN" ] && [ -n "$(find "$BIN" -type f -print -quit 2>/dev/null)" ] && fail "bazel-bin not empty after clean"
    if run_build second; then
      [ "$S_OTHER" -eq 0 ] || fail "second build ran $S_OTHER non-internal processes outside the remote cache: $S_DETAIL"
      [ "$S_HITS" -gt 0 ] || fail "second build had no remote cache hits: $S_DETAIL"
      [ "$S_HITS" -eq "$FIRST_WORK" ] || fail "second build: $S_HITS remote cache hits, but the first build ran $FIRST_WORK non-internal processes"
      manifest "$BIN" > "$LOGS/second.sha256"
      if ! diff -u "$LOGS/first.sha256" "$LOGS/second.sha256" > "$LOGS/outputs.diff"; then
        head -40 "$LOGS/outputs.diff"
        fail "outputs differ after the cached rebuild"
      else
        log "outputs identical: $(wc -l < "$LOGS/second.sha256") files"
      fi
    fi
  fi
fi

if [ "$FAILED" = 0 ]; then
  if [ "$MODE" = exec ]; then
    echo "PASS: bazel-exec-e2e $ENDPOINT: $FIRST_REMOTE actions ran remote, $LOCAL_EXPECTED local (no-remote-exec); the cached rebuild was all remote cache hits ($S_HITS) and outputs are identical"
  else
    echo "PASS: bazel-cache-e2e $ENDPOINT: cached rebuild was all remote cache hits ($S_HITS) and outputs are identical"
  fi
  exit 0
fi
[ "${KEEP:-0}" = 1 ] || echo "(set KEEP=1 to keep logs)"
echo "FAIL: bazel-cache-e2e $ENDPOINT"
exit 1
