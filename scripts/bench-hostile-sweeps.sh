#!/usr/bin/env bash
# Time and memory the CLI takes to refuse hostile sweep files (the server
# runs the same parser). Usage: scripts/bench-hostile-sweeps.sh [BINARY_DIR]
# (default target/debug). Prints one line per file; see BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug}/coordinator
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import sys
d = sys.argv[1]
head = 'name: h\nkfold: {folds: 2}\ndataset: d\ncommand: ["true"]\n'
def write(name, text):
    open(f"{d}/{name}.yaml", "w").write(text)
write("compact", head + "parameters:\n  x:\n    values:\n      " + "- " * 500000 + "x\n")
write("flow", head + "parameters: {x: {values: " + "[" * 400000 + "1" + "]" * 400000 + "}}\n")
write("block", head + "parameters:\n" + "".join(" " * (i + 2) + f"k{i}:\n" for i in range(1400)))
bomb = head + "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
for i in range(1, 10):
    bomb += f"a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * 10) + "]\n"
write("bomb", bomb)
long = lambda p: ", ".join(f'"{p}{i}' + "v" * 5000 + '"' for i in range(70))
write("grid", head + f"parameters:\n  a: {{values: [{long('a')}]}}\n  b: {{values: [{long('b')}]}}\n")
write("big", head + "# " + "x" * (200 << 20) + "\n")
PY
for f in compact flow block bomb grid big; do
    size=$(stat -c %s "$dir/$f.yaml")
    msg=$( { /usr/bin/time -f "%e s, max RSS %M KiB" "$bin" submit "$dir/$f.yaml" --dry-run; } 2>&1 || true)
    echo "$f ($size bytes): $(echo "$msg" | tail -1) | $(echo "$msg" | head -1 | cut -c1-120)"
done
