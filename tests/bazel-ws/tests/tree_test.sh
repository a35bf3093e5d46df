#!/bin/sh
# Checks the directory output and the symlink output made (remotely) by
# //gen:tree_out and //gen:symlinked.
set -eu
tree=$1
link=$2
fail() { echo "FAIL: $*"; exit 1; }
[ -d "$tree/sub/deeper" ] || fail "nested directory missing"
[ "$(cat "$tree/sub/deeper/n.txt")" = nested ] || fail "nested file wrong"
[ -x "$tree/sub/tool.sh" ] || fail "executable bit lost"
[ "$("$tree/sub/tool.sh")" = "tool ok" ] || fail "tool does not run"
[ "$(cat "$tree/sub/link_to_n")" = nested ] || fail "symlink in tree does not resolve"
grep -q "Hello" "$tree/hello.txt" || fail "copied input missing"
[ "$(cat "$link")" = "through a symlink" ] || fail "symlink output does not resolve"
echo "tree and symlink outputs ok"
