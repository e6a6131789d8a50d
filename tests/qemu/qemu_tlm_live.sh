#!/usr/bin/env bash
# The live switch-over on a real guest: a plain VM started with `vm start --track` (the
# glue registers its RAM for dirty tracking) whose workload keeps rewriting pages during
# the migration migrates with --mode tlm --policy hybrid. The page server classifies it
# while it runs (live method pagemap-scan: PAGEMAP_SCAN over the glue's WP_ASYNC
# registration), sends the destination the live class map and DATA pages in rounds, the
# pages it writes are reclassified (redone in the rounds + final_dirty at the freeze > 0)
# and their pre-sent copies invalidated by the fix map, the destination places the valid
# copies from its stage, and the guest checks pass there (same checksum, TICKs, rewrites
# go on). The same VM then migrates with --policy post (the live map only: nothing
# pre-sent) and with --no-live (classification after the stop); the reports have the
# same columns.
# Skips (exit 77) when the kernel has no userfaultfd WP_ASYNC (Linux 6.7+).
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

why=$(uffd_wp_async) || skip "$why"

step "boot a tracked 256 MiB guest (144 MiB workload, 5000 rewrites/s)"
vm start g --mem 256 --wl-mem 144 --dirty 5000 --track >/dev/null
vm wait-ready g --timeout 120
region=$(cat "$(vm info g --get dir)/region")
echo "glue: $region"
case " $region " in
*" track=wp-async "*) ;;
*) fail "the glue does not track the guest RAM (TLM_TRACK=1): '$region'" ;;
esac
before=$(vm cmd g sum)
echo "before: $before"

step "migrate --mode tlm --policy hybrid: live phase with DATA rounds, then the switch"
"$root/scripts/migrate-postcopy.sh" --mode tlm --policy hybrid g --json "$TLM_RUN_DIR/live.json" \
	> "$TLM_RUN_DIR/live.log" 2>&1 || { cat "$TLM_RUN_DIR/live.log"; fail "tlm migration failed"; }
cat "$TLM_RUN_DIR/live.log"
grep -q "tlm-page-server: g live: pagemap-scan" "$TLM_RUN_DIR/live.log" ||
	fail "the page server did not start a pagemap-scan live phase"
python3 - "$TLM_RUN_DIR/live.json" <<'PY' || fail "bad live report"
import json, sys
r = json.load(open(sys.argv[1]))["vms"][0]
print({k: r[k] for k in ("downtime_ms", "downtime_qemu_ms", "freeze_ms", "live_method",
                         "final_dirty", "final_ms", "redone", "live_wait_s", "policy",
                         "presend_rounds", "presend_bytes", "valid_at_freeze",
                         "resent_bytes", "ready_why", "stage")})
assert r["live_method"] == "pagemap-scan", r
assert r["policy"] == "hybrid" and r["presend_rounds"] >= 1, r
# DATA went before the stop, most of it still valid at the freeze, and the destination
# placed those copies from its stage instead of fetching them again.
assert r["presend_bytes"] > 0 and r["valid_at_freeze"] > 0, r
assert r["stage"]["placed"] > 0 and r["map"] == "live+fix", r
# The guest's writes through QEMU (TCG) were caught: pages reclassified in the live rounds
# or at the freeze. Which of the two is timing (a starved guest may write nothing in the
# last 50 ms before the stop), so only their sum is asserted.
assert r["redone"] + r["final_dirty"] > 0, r
assert r["downtime_ms"] > 0 and r["freeze_ms"] is not None, r
assert r["checksum"].endswith(" ok"), r
PY
same_memory g "$before"
vm ticks g --count 2 >/dev/null || fail "no TICK at the destination"
[ "$(sum_rewrites "$(vm cmd g sum)")" -gt "$(sum_rewrites "$before")" ] ||
	fail "the workload stopped rewriting"

step "the same guest with --policy post (the live map only, DATA after the switch)"
"$root/scripts/migrate-postcopy.sh" --mode tlm --policy post g --json "$TLM_RUN_DIR/post.json" ||
	fail "tlm --policy post migration failed"
python3 - "$TLM_RUN_DIR/post.json" <<'PY' || fail "bad --policy post report"
import json, sys
r = json.load(open(sys.argv[1]))["vms"][0]
print({k: r[k] for k in ("downtime_ms", "policy", "presend_bytes", "map", "stage")})
assert r["policy"] == "post" and r["presend_bytes"] == 0, r
assert r["map"] == "live+fix" and r["stage"]["received"] == 0, r
PY
same_memory g "$before"

step "the same guest with --no-live (classification after the stop)"
"$root/scripts/migrate-postcopy.sh" --mode tlm --no-live g --json "$TLM_RUN_DIR/nolive.json" ||
	fail "tlm --no-live migration failed"
python3 - "$TLM_RUN_DIR/live.json" "$TLM_RUN_DIR/nolive.json" <<'PY' || fail "bad --no-live report"
import json, sys
a, b = (json.load(open(p))["vms"][0] for p in sys.argv[1:3])
assert b["live_method"] == "none" and b["live_why"] == "--no-live", b
assert sorted(a) == sorted(b), (sorted(a), sorted(b))       # same columns
print(f"freeze: live {a['freeze_ms']} ms, --no-live {b['freeze_ms']} ms; downtime: live "
      f"{a['downtime_ms']} ms, --no-live {b['downtime_ms']} ms")
PY
[ "$(sum_hash "$(vm cmd g sum)")" = "$(sum_hash "$before")" ] || fail "checksum changed"
echo "PASS $name"
