#!/usr/bin/env bash
# Starts a BuildGrid server with only CAS + ByteStream + ActionCache (no
# execution, so no PostgreSQL) on loopback: a reference peer for
# bazel-cache-e2e.sh and bgd-roundtrip.sh. rbe_testkit::buildgrid (crates/rbe-testkit)
# writes the same configuration for the Rust tests: change both together.
# Usage: start-bgd-cache.sh [PORT]      (default 50161)
# Env: BG_INSTANCE (instance name, default ""), BG_STATE (default
#      /var/tmp/bgd-cache-PORT: config, CAS on disk, log, pid).
# Stop with: kill "$(cat $BG_STATE/server.pid)"
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=bgd-env.sh
source "$here/bgd-env.sh"
PORT=${1:-50161}
case "$PORT" in
  ''|*[!0-9]*) sed -n '2,9p' "$0"; exit 2;;
esac
BG_INSTANCE=${BG_INSTANCE:-}
BG_STATE=${BG_STATE:-/var/tmp/bgd-cache-$PORT}
ensure_bgd
mkdir -p "$BG_STATE/cas"
if [ -f "$BG_STATE/server.pid" ] && kill -0 "$(cat "$BG_STATE/server.pid")" 2>/dev/null; then
  echo "already running: pid $(cat "$BG_STATE/server.pid") endpoint grpc://127.0.0.1:$PORT"
  exit 0
fi
cat > "$BG_STATE/buildgrid.yml" <<YML
description: BuildGrid CAS + action cache on loopback (rbe tests)
server:
  - !channel
    address: "127.0.0.1:$PORT"
    insecure-mode: true
authorization:
  method: none
storages:
  - !disk-storage &cas
    path: $BG_STATE/cas
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: true
instances:
  - name: "$BG_INSTANCE"
    services:
      - !action-cache
        cache: *ac
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 16
YML
nohup "$BGD" server start "$BG_STATE/buildgrid.yml" > "$BG_STATE/server.log" 2>&1 &
echo $! > "$BG_STATE/server.pid"
for _ in $(seq 1 60); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "buildgrid up: pid $(cat "$BG_STATE/server.pid") endpoint grpc://127.0.0.1:$PORT instance='$BG_INSTANCE' log=$BG_STATE/server.log"
    exit 0
  fi
  kill -0 "$(cat "$BG_STATE/server.pid")" 2>/dev/null || { tail -30 "$BG_STATE/server.log"; echo "FAIL: server exited" >&2; exit 1; }
  sleep 0.5
done
echo "FAIL: server did not listen on 127.0.0.1:$PORT" >&2
exit 1
