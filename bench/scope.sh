#!/usr/bin/env bash
# The cost of a transient scope per action (BENCHMARKS.md, "Scopes"): boots a
# real systemd with tests/harness/sysbox, installs the release daemons and
# the units, and runs the same rbe-bench exec (no-op /bin/true, forced cache
# misses) with [scope] mode = auto and mode = off, alternating, in one sitting.
# Usage: bench/scope.sh     Env: ROUNDS=2 SEQUENTIAL=200 CONCURRENT=1000
# Needs root and a hybrid or v1 cgroup host (the harness's requirement).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
ROUNDS=${ROUNDS:-2}
SEQUENTIAL=${SEQUENTIAL:-200}
CONCURRENT=${CONCURRENT:-1000}
T=${CARGO_TARGET_DIR:-$repo/target}
cargo build --release --bins -q
H=tests/harness/sysbox
name=rbsc$(( $$ % 100000 ))
trap '$H down $name >/dev/null 2>&1 || true' EXIT
# shellcheck source=bench/sysbox-rbe.sh
. bench/sysbox-rbe.sh
rbe_boot "$name"
$H exec "$name" sh -c 'systemctl daemon-reload && mkdir -p /etc/rbe'
run() {
  $H exec "$name" sh -c "printf '[scope]\nmode = \"$1\"\n' > /etc/rbe/workerd.toml && systemctl restart rbe-workerd"
  sleep 2
  echo "== scope.mode = $1"
  "$T/release/rbe-bench" exec --endpoint "unix:$R/run/rbe/frontend.sock" \
    --sequential "$SEQUENTIAL" --concurrent "$CONCURRENT" --concurrency 50
}
for _ in $(seq "$ROUNDS"); do
  run auto
  run off
done
$H exec "$name" journalctl -u rbe-workerd -o cat --no-pager | grep -E 'scopes|scope.mode' | tail -4
