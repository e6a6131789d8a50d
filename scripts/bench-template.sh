#!/usr/bin/env bash
# Template store benchmark: builds tlm if needed, then prints XXH3 hashing GB/s, lookups/s
# and the index build time for a generated image (default 1 GiB), next to the targets.
#
#   scripts/bench-template.sh [-s SIZE] [-d DIR]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/setup.sh" >/dev/null
out=$("$here/build/runtime/tlm-bench-template" "$@")
echo "$out"
echo "targets: hash_1core >= 5 GB/s, probes >= 20 M/s, build_index of 1 GiB < 1 s"
