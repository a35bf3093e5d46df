#!/bin/bash
# Runs //app:hello (passed as $1) and checks its output.
set -euo pipefail
out=$("$1" tester)
case "$out" in
  "Hello, tester! fnv1a="[0-9a-f]*) echo "hello_run_test: PASS ($out)";;
  *) echo "FAIL: unexpected output: $out" >&2; exit 1;;
esac
