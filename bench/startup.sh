#!/usr/bin/env bash
# Startup to READY=1 under a real systemd (BENCHMARKS.md, "Startup"): boots
# systemd 252 with tests/harness/sysbox, gives rbe-casd a store of COUNT
# blobs (rbe-bench populate, bound at /var/lib/rbe/cas), and times
# `systemctl start` of each daemon, which returns when the daemon sends
# READY=1 (Type=notify). Then it times how long casd's background index scan
# takes (STATUS= stops saying "loading index").
# Usage: bench/startup.sh    Env: COUNT=1000000 STORE=/var/lib/rbe-bench-store KEEP=1
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
COUNT=${COUNT:-1000000}
STORE=${STORE:-/var/lib/rbe-bench-store}
T=${CARGO_TARGET_DIR:-$repo/target}
cargo build --release --bins -q
if [ ! -d "$STORE/cas.v1" ]; then
  mkdir -p "$STORE"
  echo "populating $COUNT blobs in $STORE"
  "$T/release/rbe-bench" populate --store "$STORE" --count "$COUNT"
fi
H=tests/harness/sysbox
name=rbst$(( $$ % 100000 ))
trap '$H down $name >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$STORE"' EXIT
# shellcheck source=bench/sysbox-rbe.sh
. bench/sysbox-rbe.sh
rbe_boot "$name" --bind "$STORE:/var/lib/rbe/cas"
$H exec "$name" sh -c 'chown -R rbe:rbe /var/lib/rbe/cas && systemctl daemon-reload' >/dev/null
for u in rbe-casd rbe-frontend rbe-workerd; do
  ms=$($H exec "$name" sh -c "s=\$(date +%s%N); systemctl start $u; e=\$(date +%s%N); echo \$(( (e - s) / 1000000 ))")
  echo "$u: systemctl start (to READY=1) ${ms} ms"
done
s=$(date +%s%N)
while $H exec "$name" systemctl show -p StatusText --value rbe-casd | grep -q 'loading index'; do sleep 0.1; done
e=$(date +%s%N)
echo "rbe-casd: index of $COUNT blobs loaded $(( (e - s) / 1000000 )) ms after READY"
$H exec "$name" systemctl show -p StatusText --value rbe-casd
