#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine: installs what the tests
# need (Bazel 4.2.3 from Debian, systemd and D-Bus for the tests that boot a
# real systemd in private namespaces, BuildGrid's bgd client),
# then checks formatting and lints and runs every test with real binaries,
# real sockets, a real Bazel and a real bgd.
#
# Needs a Rust toolchain (cargo >= 1.85) and, for the installs, root.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "system packages"
need=()
command -v bazel >/dev/null 2>&1 || need+=(bazel-bootstrap)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The systemd harness (tests/harness/sysbox) boots systemd with a D-Bus.
command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus)
command -v script >/dev/null 2>&1 || need+=(bsdutils)
[ -e /lib/x86_64-linux-gnu/libnss_systemd.so.2 ] || need+=(libnss-systemd)
# Lab networks of the harness (tests/tests/lab.rs, cluster.rs).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# packaging/build and the package tests (tests/tests/packages.rs, and
# cluster.rs, whose hosts install the .debs).
command -v dpkg-buildpackage >/dev/null 2>&1 || need+=(dpkg-dev)
command -v dh >/dev/null 2>&1 || need+=(debhelper)
command -v rpmbuild >/dev/null 2>&1 || need+=(rpm)
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v rpmlint >/dev/null 2>&1 || need+=(rpmlint)
command -v man >/dev/null 2>&1 || need+=(man-db)
# WebDAV backing store of the object-storage tests
# (crates/rbe-backing/tests/objstore.rs); nginx-light has dav_methods PUT.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "not root: cannot install ${need[*]}; tests needing them will say SKIP"
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

step "BuildGrid bgd (independent REAPI client, and a backing store)"
# shellcheck source=tests/scripts/bgd-env.sh
. tests/scripts/bgd-env.sh
if ensure_bgd; then echo "bgd: $BGD"; else echo "bgd unavailable: its test will say SKIP"; fi

step "moto S3 server (object-storage backing tests)"
# crates/rbe-backing/tests/objstore.rs runs $RBE_MOTO_PYTHON -m moto.server.
MOTO_VENV=${MOTO_VENV:-/var/tmp/moto-venv}
if [ ! -x "$MOTO_VENV/bin/python" ] || ! "$MOTO_VENV/bin/python" -c 'import moto.server, flask' 2>/dev/null; then
  echo "installing moto[server] into $MOTO_VENV"
  { python3 -m venv "$MOTO_VENV" && "$MOTO_VENV/bin/pip" install -q 'moto[server]'; } ||
    echo "moto unavailable: its tests will say SKIPPED"
fi
[ -x "$MOTO_VENV/bin/python" ] && export RBE_MOTO_PYTHON="$MOTO_VENV/bin/python"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build binaries"
cargo build --workspace --bins --quiet

step "packages (packaging/build --profile debug, into target/packages-debug)"
# The package tests and the cluster tests (booted hosts on a lab network,
# tests/tests/cluster*.rs) install these; debug binaries spare CI an
# optimized build. Built once here for the whole run: each test binary asks
# packaging/build again, which finds them up to date by a stat of its
# inputs (not by checksumming the binaries) and holds a lock meanwhile.
export RBE_PACKAGE_PROFILE=debug
if command -v dh >/dev/null 2>&1 && command -v rpmbuild >/dev/null 2>&1; then
  packaging/build
else
  echo "debhelper or rpm missing: the package tests will say SKIP"
fi

step "cargo test"
# The daemons are built above; the test kit need not run cargo again.
# The log lives beside the build, not in /tmp: tests that boot systemd or
# clean temporary directories must not be able to take it away.
logdir=${CARGO_TARGET_DIR:-target}
mkdir -p "$logdir"
log=$(mktemp -p "$logdir" test-log.XXXXXX)
set +e
RBE_TEST_NO_BUILD=1 cargo test --workspace --no-fail-fast --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo
grep -h '^SKIP' "$log" | sort | uniq -c || true
# One closing line for the whole suite, summed over every test binary. A
# test that printed SKIP returned early, so libtest counted it as passed:
# count it as skipped instead.
skipped=$(grep -c '^SKIP' "$log" || true)
awk -v s="${skipped:-0}" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p - s, f, g + s }' "$log"
rm -f "$log"
exit "$status"
