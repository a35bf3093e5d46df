#!/bin/bash
# Asserts that the action has no network: the only interface in its network
# namespace (per /proc/net/dev) is `lo`, and TCP connects to non-loopback
# addresses fail.
set -uo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
# /proc/net/dev lists the interfaces of the caller's network namespace.
# (/sys/class/net is not reliable: a sandbox that bind-mounts the host's /sys
# shows the host's interfaces there even inside a private netns.)
[ -r /proc/net/dev ] || fail "/proc/net/dev is not readable"
ifaces=$(awk -F: 'NR > 2 { gsub(/ /, "", $1); print $1 }' /proc/net/dev | sort | tr '\n' ' ')
echo "interfaces: ${ifaces:-<none>}"
for i in $ifaces; do
  [ "$i" = lo ] || fail "network interface '$i' is present (expected only lo)"
done
# Routing check: with only lo there is no route to a public address, so the
# connect fails at once (ENETUNREACH) instead of timing out.
for target in 192.0.2.1/80 1.1.1.1/53 10.0.0.1/80; do
  if timeout 5 bash -c "exec 3<>/dev/tcp/${target}" 2>/dev/null; then
    fail "TCP connect to ${target/\//:} succeeded"
  fi
done
if command -v ip >/dev/null 2>&1 && ip route show 2>/dev/null | grep -q default; then
  fail "a default route exists: $(ip route show | grep default)"
fi
echo "no_network_test: PASS"
