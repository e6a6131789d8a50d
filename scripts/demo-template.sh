#!/usr/bin/env bash
# Template store demo: install, build, generate a 64 MiB "template VM"
# RAM image (random pages, zero pages, repeated pages), build its tlm template index,
# inspect and verify it.
#
#   scripts/demo-template.sh [--keep DIR]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d /tmp/tlm-demo.XXXXXX)
keep=0
if [ "${1:-}" = "--keep" ]; then work=$2; keep=1; mkdir -p "$work"; fi
[ "$keep" = 1 ] || trap 'rm -rf "$work"' EXIT

"$here/scripts/setup.sh" >/dev/null
bin="$here/build/runtime"

img="$work/template.ram"
echo "== generating a 64 MiB RAM image in $img"
{
	head -c 32M /dev/urandom > "$work/rand"
	cat "$work/rand"                                  # 8192 distinct pages
	head -c 16M /dev/zero                             # 4096 zero pages
	head -c 16M "$work/rand"                          # 4096 pages repeating earlier ones
} > "$img"
rm -f "$work/rand"

echo "== tlm-template build --from $img"
"$bin/tlm-template" build --from "$img"
echo "== tlm-template inspect"
"$bin/tlm-template" inspect "$img"
echo "== tlm-template verify"
"$bin/tlm-template" verify "$img"
