#!/bin/bash
# Checks the contents of //gen:hello_txt and //gen:multi.
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
g=gen   # tests run in the runfiles tree of the main repository
expected='Hello, world! fnv1a=
Hello, bazel! fnv1a=
Hello, rbe! fnv1a='
got=$(sed -E 's/fnv1a=[0-9a-f]{16}$/fnv1a=/' "$g/hello.txt")
[ "$got" = "$expected" ] || fail "unexpected hello.txt: $(cat "$g/hello.txt")"
grep -q '^HELLO, RBE! FNV1A=' "$g/multi/a.txt" || fail "a.txt not upper-cased"
[ "$(cat "$g/multi/nested/deeper/b.txt")" = 3 ] || fail "b.txt != 3"
[ -f "$g/multi/empty.txt" ] || fail "empty.txt missing"
[ -s "$g/multi/empty.txt" ] && fail "empty.txt not empty"
[ -x "$g/multi/run.sh" ] || fail "run.sh not executable"
[ "$("$g/multi/run.sh")" = "run.sh ok" ] || fail "run.sh output"
size=$(wc -c < "$g/multi/big.bin")
[ "$size" -eq $((5 * 16384 * 64)) ] || fail "big.bin has $size bytes"
[ "$(tail -n 1 "$g/multi/big.bin")" = "00016383:$(printf '%054d' 4)" ] || fail "big.bin tail"
echo "outputs_test: PASS"
