#!/usr/bin/env bash
# Smoke test of scripts/bench-migrate.sh (the benchmark itself takes minutes and is not in
# CI): --quick (one 160 MiB clone) on loopback through tlm, stock postcopy-ram and precopy.
# The CSV has one complete row per mode (its columns in the documented order), the
# Markdown table and the ratios exist, tlm sent less than stock postcopy (the clone differs
# from its template by 4 MiB), and the plots (downtime.png too) exist when gnuplot is
# installed.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

out=$TLM_RUN_DIR/bench
step "scripts/bench-migrate.sh --quick --link loopback"
"$root/scripts/bench-migrate.sh" --quick --link loopback --out "$out" ||
	fail "bench-migrate.sh failed"
python3 - "$out/results.csv" <<'PY' || fail "bad results.csv"
import csv, sys
head = next(csv.reader(open(sys.argv[1])))
assert head[:8] == ["link", "n", "mem_mib", "scenario", "mode", "downtime_ms", "time_s",
                    "wire_mb"], head
for k in ("downtime_qemu_ms", "final_dirty", "resent_mb"):
    assert k in head, (k, head)
rows = list(csv.DictReader(open(sys.argv[1])))
assert [r["mode"] for r in rows] == ["tlm", "qemu", "precopy"], rows
for r in rows:
    assert r["link"] == "loopback" and r["n"] == "1", r
    assert r["scenario"] == "clones" and r["mem_mib"] == "160", r
    assert r["downtime_qemu_ms"] != "" and r["resent_mb"] != "", r
    for k in ("wire_bytes", "time_s", "downtime_ms", "dst_pss_mib", "data_bytes",
              "max_tick_gap_s"):
        assert r[k] != "", (k, r)
    assert float(r["max_tick_gap_s"]) >= 0.5, r       # TICKs were seen while migrating
tlm, qemu = rows[0], rows[1]
assert 0 < int(tlm["data_bytes"]) <= int(tlm["wire_bytes"]), tlm
assert int(tlm["wire_bytes"]) < int(qemu["wire_bytes"]) / 2, (tlm, qemu)
assert 0 < float(qemu["tlm_bytes_ratio"]) < 0.5, qemu
PY
grep -q '^| loopback | clones | 160 | 1 | postcopy-ram |' "$out/results.md" ||
	fail "no table in results.md"
grep -q '^| clones | 160 | 1 | postcopy-ram |' "$out/results.md" || fail "no ratios in results.md"
if command -v gnuplot >/dev/null; then
	for p in bytes memory progress downtime; do
		[ -s "$out/$p.png" ] || fail "no $p.png"
	done
fi
echo "PASS $name"
