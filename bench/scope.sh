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
args=()
for b in rbe-casd rbe-frontend rbe-workerd; do
  args+=(--ro-bind "$T/release/$b:/usr/libexec/rbe/$b")
done
P=$($H up "$name" "${args[@]}")
R=/proc/$P/root
for f in systemd/*; do
  b=$(basename "$f")
  case $b in
    *.service|*.socket|*.slice) cp "$f" "$R/etc/systemd/system/" ;;
    rbe.sysusers) cp "$f" "$R/usr/lib/sysusers.d/rbe.conf" ;;
    rbe.tmpfiles) cp "$f" "$R/usr/lib/tmpfiles.d/rbe.conf" ;;
  esac
done
$H exec "$name" sh -c 'systemd-sysusers && systemd-tmpfiles --create rbe.conf && systemctl daemon-reload && mkdir -p /etc/rbe'
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
