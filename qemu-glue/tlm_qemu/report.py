"""tlm_qemu.report — the report of scripts/migrate-postcopy.sh, the same for every mode
(tlm, qemu = stock postcopy-ram, precopy), so that runs compare field by field.

Per VM, one row (also the JSON of --json); every mode has every key (None where it does
not apply):
  vm, mode, time_s        start -> every page present at the destination (tlm: from the
                          source's STOP; qemu: from `migrate`, QEMU's total-time); tlm
                          counts a TEMPLATE page left to the kernel as present: the
                          destination maps it from the template's page cache on touch
  downtime_ms             guest stopped -> running: the source's QMP STOP event to the
                          destination's RESUME event (QEMU's timestamps, host clock), the
                          same measure in every mode; downtime_qemu_ms: QEMU's own figure
                          (query-migrate "downtime"; the device state only in tlm mode)
  freeze_ms               tlm: the page server's `freeze` round trip (classification of
                          what the live phase left, or of the whole RAM without it)
  live_method, live_why   tlm: how the page server classified while the guest ran
                          (pagemap-scan, soft-dirty) or "none" and why
  live_wait_s             tlm: how long the switch-over waited for the page server's
                          "ready" (its policy: live map sent, pre-send rounds done)
  policy, ready_why       tlm: the page server's switch policy and why it said ready
  presend_rounds, presend_bytes, valid_at_freeze   tlm: DATA sent before the stop, and
                          the pre-sent copies that still stood at the freeze
  post_window_s, total_s  tlm: destination running -> every page present; the
                          migration's start (live phase included) -> every page present
  map, stage, dst_ms      tlm: the destination's map kind (whole | live+fix), its stage
                          of pre-sent pages, its own timeline (ms after the region)
  qemu_downtime_bytes, qemu_stop_ms, qemu_warmup   tlm: what QEMU sent after the stop
                          (its ROM blocks go before it), `migrate` -> STOP, and whether
                          those were paced on a slow link (ARCHITECTURE F24)
  final_dirty, final_ms, redone, live_rounds   tlm: pages written since the last live
                          round that the freeze reclassified, its time; pages classified
                          again during the live phase; live rounds
  resent_bytes            pages sent again because they were written after being sent
                          (QEMU's normal + zero pages beyond the RAM size; tlm: pre-sent
                          copies sent again in a later round or after the freeze)
  qemu_bytes              bytes of QEMU's migration stream (RAM counters)
  tlm_bytes, tlm_payload_bytes   bytes tlm moved (both directions) and their DATA payload
  pages                   tlm: pages by class (template, zero, ref, data)
  template_left           tlm: TEMPLATE pages the destination never placed (nothing
                          faulted on them): the kernel maps them from the template
  zero_holes              tlm: pages the page server classified from holes of the RAM
                          file without reading them (never written, or freed by the
                          guest and discarded by QEMU: free page reporting)
  demand_faults, fault_p50_us, fault_p99_us   faults that waited for the network
  bulk_pace, bulk_pace_mbps   tlm: the background stream's pacing at the end (paced, lan,
                          probing, off: tlm-page-server --bulk-pace)
  dst_pss_kb              the destination QEMU's Pss (the template's frames are shared:
                          the sum over VMs counts them once), measured after the source
                          QEMU has gone
  checksum                the guest's memory checksum, compared before/after

    python3 -m tlm_qemu.report compare RUN.json RUN.json...   a table of the same VMs in
                                                              several modes
    python3 -m tlm_qemu.report qemu WORKDIR JSON_OUT NAME...  (the bash qemu/precopy mode)
"""

import json
import sys

from . import events

ROW_KEYS = ("vm", "mode", "time_s", "downtime_ms", "downtime_qemu_ms", "freeze_ms",
            "live_method", "live_why", "live_wait_s", "final_dirty", "final_ms", "redone",
            "live_rounds", "resent_bytes", "qemu_bytes", "tlm_bytes", "tlm_payload_bytes",
            "pages", "template_left", "demand_faults", "fault_p50_us", "fault_p99_us", "dst_pss_kb",
            "checksum")

mb = lambda b: (b or 0) / 1e6       # noqa: E731


def qemu_downtime(m):
    """QEMU 7.2 reports "now - 0" as the postcopy downtime when the switch took under 1 ms
    (fixed upstream in 8.1: ms->downtime_start is never set on the postcopy path)."""
    down = m.get("downtime")
    if down is not None and down > m.get("total-time", 0):
        return 0, f" (<1 ms; QEMU reported {down} ms, a 7.2 bug)"
    return down, ""


def describe(r):
    tlm = ""
    if r["mode"] == "tlm":
        p = r["pages"]
        tlm = (f"; tlm sent {mb(r['tlm_bytes']):.1f} MB (DATA {p['data']}, REF {p['ref']}, "
               f"ZERO {p['zero']}, TEMPLATE {p['template']} pages, "
               f"{r.get('template_left') or 0} of them left to the kernel; payload "
               f"{mb(r['tlm_payload_bytes']):.1f} MB)")
    if r["mode"] == "tlm" and r.get("freeze_ms") is not None:
        live = r.get("live_method") or "none"
        tlm += f"; freeze {r['freeze_ms']:.0f} ms, live phase: {live}"
        if live != "none":
            tlm += (f" ({r.get('final_dirty')} pages written since reclassified in "
                    f"{r.get('final_ms')} ms, {r.get('redone')} redone)")
        elif r.get("live_why"):
            tlm += f" ({r['live_why']})"
    faults = ""
    if r.get("demand_faults") is not None:
        faults = f"; {r['demand_faults']} demand faults"
    if r.get("fault_p50_us") is not None:
        faults += f" (p50 {r['fault_p50_us']:.0f} us, p99 {r['fault_p99_us']:.0f} us)"
    return (f"{r['vm']}: {r['mode']}: all pages present in {r['time_s']:.2f} s, downtime "
            f"{r['downtime_ms']} ms{r.get('downtime_note', '')} (QEMU's figure "
            f"{r.get('downtime_qemu_ms')} ms); QEMU sent "
            f"{mb(r['qemu_bytes']):.1f} MB{tlm}{faults}; destination Pss "
            f"{r['dst_pss_kb'] / 1024:.1f} MiB; checksum {r['checksum']}")


def emit(mode, rows, wall_s, json_out):
    for r in rows:
        for k in ROW_KEYS:
            r.setdefault(k, None)
    for r in rows:
        print(describe(r))
    tot = {"vms": len(rows), "wall_s": round(wall_s, 3),
           "qemu_bytes": sum(r["qemu_bytes"] or 0 for r in rows),
           "tlm_bytes": sum(r.get("tlm_bytes") or 0 for r in rows),
           "tlm_payload_bytes": sum(r.get("tlm_payload_bytes") or 0 for r in rows),
           "dst_pss_kb": sum(r["dst_pss_kb"] for r in rows)}
    tot["wire_bytes"] = tot["qemu_bytes"] + tot["tlm_bytes"]
    print(f"total: {tot['vms']} VM(s), {mode}: {mb(tot['wire_bytes']):.1f} MB on the wire "
          f"(QEMU {mb(tot['qemu_bytes']):.1f} MB, tlm {mb(tot['tlm_bytes']):.1f} MB), "
          f"{tot['wall_s']:.2f} s, destination Pss {tot['dst_pss_kb'] / 1024:.1f} MiB")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"mode": mode, "vms": rows, "total": tot}, f, indent=2)
            f.write("\n")
    return tot


def event_downtime(src_events, dst_events):
    """ms from the source's first STOP to the destination's first RESUME (QMP event
    timestamps), None if either was not recorded."""
    stop = events.first(events.load(src_events), "STOP")
    resume = events.first(events.load(dst_events), "RESUME")
    if not stop or not resume or stop.get("t") is None or resume.get("t") is None:
        return None
    return round((resume["t"] - stop["t"]) * 1000, 1)


def qemu_rows(work, names, mode):
    rows, span = [], None
    for i, name in enumerate(names):
        m = json.load(open(f"{work}/{i}.migrate.json"))
        t0, t1 = (float(open(f"{work}/{i}.{w}").read()) for w in ("start", "end"))
        span = (min(t0, span[0]), max(t1, span[1])) if span else (t0, t1)
        pss = json.load(open(f"{work}/{i}.pss"))
        ram = m.get("ram", {})
        try:        # tlm_qemu.vm check --phase after: "<hash> ok", "check-cmd ok", ...
            check = open(f"{work}/{i}.check").read().strip() or "not checked"
        except OSError:
            check = "not checked"
        qdown, note = qemu_downtime(m)
        down = event_downtime(f"{work}/{i}.src.events", f"{work}/{i}.dst.events")
        if down is None:
            down, note = qdown, note + " (QEMU's figure: no QMP events recorded)"
        else:
            note = ""
        sent = ram.get("normal", 0) + ram.get("duplicate", 0)
        rows.append({"vm": name, "mode": mode, "time_s": m.get("total-time", 0) / 1000,
                     "downtime_ms": down, "downtime_note": note,
                     "downtime_qemu_ms": qdown,
                     "resent_bytes": max(0, sent - ram.get("total", 0) // 4096) * 4096,
                     "qemu_bytes": ram.get("transferred"), "ram_total": ram.get("total"),
                     "precopy_bytes": ram.get("precopy-bytes"),
                     "postcopy_bytes": ram.get("postcopy-bytes"),
                     "demand_faults": ram.get("postcopy-requests"),
                     "dst_pss_kb": pss.get("pss_kb"),
                     "dst_pss_shmem_kb": pss.get("pss_shmem_kb"), "checksum": check})
    return rows, span[1] - span[0]


def compare(paths):
    """A table of the same VMs migrated in several modes (the first is the reference of
    the ratio column when there are two)."""
    runs = [json.load(open(p)) for p in paths]
    metrics = [
        ("VMs", lambda r: r["total"]["vms"], "{:.0f}"),
        ("bytes on the wire, MB", lambda r: mb(r["total"]["wire_bytes"]), "{:.1f}"),
        ("  of which guest RAM pages (DATA), MB",
         lambda r: mb(r["total"]["tlm_payload_bytes"]) if r["mode"] == "tlm" else None,
         "{:.1f}"),
        ("slowest VM: start -> all pages present, s",
         lambda r: max(v["time_s"] for v in r["vms"]), "{:.2f}"),
        ("longest downtime, ms", lambda r: max(v["downtime_ms"] or 0 for v in r["vms"]),
         "{:.0f}"),
        ("destination memory (Pss of all VMs), MiB",
         lambda r: r["total"]["dst_pss_kb"] / 1024, "{:.0f}"),
        ("demand faults", lambda r: sum(v.get("demand_faults") or 0 for v in r["vms"]),
         "{:.0f}"),
    ]
    head = [r["mode"] for r in runs] + (["ratio"] if len(runs) == 2 else [])
    print("| | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    for label, fn, fmt in metrics:
        vals = [fn(r) for r in runs]
        cells = [fmt.format(v) if v is not None else "-" for v in vals]
        if len(runs) == 2:
            ok = None not in vals and vals[1]
            cells.append(f"{vals[0] / vals[1]:.2f}x" if ok else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "compare":
        compare(sys.argv[2:])
        sys.exit(0)
    if len(sys.argv) < 5 or sys.argv[1] not in ("qemu", "precopy"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    rows, wall = qemu_rows(sys.argv[2], sys.argv[4:], sys.argv[1])
    emit(sys.argv[1], rows, wall, sys.argv[3])
