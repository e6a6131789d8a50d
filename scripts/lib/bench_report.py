#!/usr/bin/env python3
"""bench_report.py — the measuring and reporting half of scripts/bench-migrate.sh.

    bench_report.py ticks RUN_DIR PREFIX OUT.csv
        follow the consoles of the VMs RUN_DIR/PREFIX*.GEN/console.log (new generations
        too) until SIGTERM; every "TICK n rate=<pages/s> rewrites=<total>" line becomes
        "vm,host_seconds,n,rewrites" (polled every 20 ms: the host time is the time seen)
    bench_report.py row RUNS.jsonl LINK N MODE MIGRATE.json TICKS.csv T0 T1 LINK_BYTES \
        LINK_BPS MEM_MIB DIRTY_MIB SCENARIO DIRTY_RATE [HOT_MIB]
        append one run (its migrate-postcopy.sh --json, its longest TICK gap in [T0, T1])
    bench_report.py report RUNS.jsonl OUT_DIR [TRACE.csv]
        results.csv (one row per run, lower bounds and ratios added), results.md (tables),
        and the PNG plots through gnuplot (when installed): bytes.png, memory.png and
        progress.png of the clones scenario (first RAM size), downtime.png (downtime
        against RAM size, one line per mode and scenario, first N)
"""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

MODES = ("tlm", "qemu", "precopy")
MODE_NAME = {"tlm": "tlm", "tlm-post": "tlm --policy post",
             "tlm-hybrid": "tlm --policy hybrid", "tlm-auto": "tlm --policy auto",
             "tlm-nolive": "tlm --no-live", "qemu": "postcopy-ram", "precopy": "precopy"}


def ticks(run_dir, prefix, out):
    """Host-timestamped TICK lines of every generation of the VMs, until SIGTERM."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    pos, rest = {}, {}
    with open(out, "a") as f:
        while not stop:
            for path in glob.glob(os.path.join(run_dir, f"{prefix}*", "console.log")):
                d = os.path.dirname(path)
                if os.path.islink(d):
                    continue
                try:
                    with open(path, "rb") as c:
                        c.seek(pos.get(path, 0))
                        data = c.read()
                except OSError:         # a stopped generation went away
                    continue
                now = time.time()
                pos[path] = pos.get(path, 0) + len(data)
                lines = (rest.get(path, b"") + data).split(b"\n")
                rest[path] = lines.pop()
                vm = os.path.basename(d).rsplit(".", 1)[0]
                for ln in lines:
                    w = ln.decode(errors="replace").split()
                    if len(w) >= 4 and w[0] == "TICK" and w[3].startswith("rewrites="):
                        f.write(f"{vm},{now:.3f},{w[1]},{w[3][9:]}\n")
            f.flush()
            time.sleep(0.02)


def tick_gap(path, t0, t1):
    """The longest interval between two TICKs of one VM seen in [t0, t1] (the window's
    edges count as TICKs: a guest that stops ticking shows as a gap too)."""
    by_vm = {}
    with open(path) as f:
        for vm, t, _, _ in csv.reader(f):
            by_vm.setdefault(vm, []).append(float(t))
    gap = 0.0
    for ts in by_vm.values():
        ts = sorted([t0] + [t for t in ts if t0 < t < t1] + [t1])
        gap = max([gap] + [b - a for a, b in zip(ts, ts[1:])])
    return round(gap, 2)


def row(runs, link, n, mode, mig, tick_csv, t0, t1, link_bytes, link_bps, mem, dirty,
        scenario, dirty_rate, hot_mib=""):
    j = json.load(open(mig))
    vms, tot = j["vms"], j["total"]
    p50 = [v["fault_p50_us"] for v in vms if v.get("fault_p50_us") is not None]
    p99 = [v["fault_p99_us"] for v in vms if v.get("fault_p99_us") is not None]
    vmax = lambda k: max((v[k] for v in vms if v.get(k) is not None), default=None)  # noqa
    vsum = lambda k: sum(v.get(k) or 0 for v in vms)       # noqa: E731
    r = {"link": link, "n": int(n), "mode": mode, "mem_mib": int(mem),
         "scenario": scenario, "dirty_mib": int(dirty) if scenario == "clones" else None,
         "dirty_rate": int(dirty_rate) if scenario == "diverged" else None,
         "hot_mib": int(hot_mib) if hot_mib and scenario == "diverged" else None,
         "wire_bytes": tot["wire_bytes"], "wire_mb": round(tot["wire_bytes"] / 1e6, 1),
         "link_bytes": int(link_bytes) or None, "qemu_bytes": tot["qemu_bytes"],
         "tlm_bytes": tot["tlm_bytes"],
         "tlm_payload_bytes": tot["tlm_payload_bytes"] if mode.startswith("tlm") else None,
         "time_s": tot["wall_s"], "slowest_vm_s": max(v["time_s"] for v in vms),
         "downtime_ms": max(v["downtime_ms"] or 0 for v in vms),
         "downtime_qemu_ms": vmax("downtime_qemu_ms"), "freeze_ms": vmax("freeze_ms"),
         "live_method": vms[0].get("live_method"),
         "final_dirty": vsum("final_dirty") if mode.startswith("tlm") else None,
         "resent_mb": round(vsum("resent_bytes") / 1e6, 1),
         "presend_mb": round(vsum("presend_bytes") / 1e6, 1),
         "presend_rounds": vmax("presend_rounds"), "post_window_s": vmax("post_window_s"),
         "total_s": vmax("total_s"),
         "policy": vms[0].get("policy"), "ready_why": vms[0].get("ready_why"),
         "data_pages": sum((v.get("pages") or {}).get("data", 0) for v in vms)
         if mode.startswith("tlm") else None,
         "dst_pss_mib": round(tot["dst_pss_kb"] / 1024, 1),
         "demand_faults": sum(v.get("demand_faults") or 0 for v in vms),
         "fault_p50_us": max(p50) if p50 else None, "fault_p99_us": max(p99) if p99 else None,
         "max_tick_gap_s": tick_gap(tick_csv, float(t0), float(t1)),
         "link_bps": int(link_bps)}
    with open(runs, "a") as f:
        f.write(json.dumps(r) + "\n")


COLS = ["link", "n", "mem_mib", "scenario", "mode", "downtime_ms", "time_s", "wire_mb",
        "dirty_mib", "dirty_rate", "wire_bytes", "link_bytes", "qemu_bytes", "tlm_bytes",
        "data_bytes", "data_link_s", "slowest_vm_s", "dst_pss_mib", "demand_faults",
        "fault_p50_us", "fault_p99_us", "max_tick_gap_s", "wire_vs_data", "tlm_bytes_ratio",
        "tlm_time_ratio", "tlm_pss_ratio", "downtime_qemu_ms", "freeze_ms", "live_method",
        "final_dirty", "resent_mb", "presend_mb", "presend_rounds", "post_window_s",
        "policy", "hot_mib", "total_s"]


def key(r):
    """Runs that moved the same guest content: same scenario, RAM size and N."""
    return (r.get("scenario", "clones"), r.get("mem_mib"), r["n"])


def derive(rows):
    """Lower bounds from the tlm run of the same scenario, RAM size and N (the same guest
    content); ratios tlm / this run, pair by pair."""
    tlm = {key(r): r for r in rows if r["mode"] == "tlm"}
    for r in rows:      # without a plain tlm run: the first tlm --policy run
        if r["mode"].startswith("tlm-") and r["mode"] != "tlm-nolive":
            tlm.setdefault(key(r), r)
    for r in rows:
        r.setdefault("scenario", "clones")
        t = tlm.get(key(r))
        # the DATA pages of the final class map (pre-sent copies re-sent because the
        # guest wrote them again are in resent_mb); older runs: tlm's payload
        data = t and ((t.get("data_pages") or 0) * 4096 or t["tlm_payload_bytes"])
        r["data_bytes"] = data
        r["data_link_s"] = round(data * 8 / r["link_bps"], 3) if data and r["link_bps"] \
            else None
        r["wire_vs_data"] = round(r["wire_bytes"] / data, 2) if data else None
        for k, col in (("wire_bytes", "tlm_bytes_ratio"), ("time_s", "tlm_time_ratio"),
                       ("dst_pss_mib", "tlm_pss_ratio")):
            r[col] = round(t[k] / r[k], 3) if t and r[k] else None
    return rows


def fmt(v, unit=1, nd=1):
    return "-" if v is None else f"{v / unit:.{nd}f}"


def markdown(rows, out):
    L = ["| link | scenario | RAM MiB | N | mode | downtime ms | QEMU's downtime ms | "
         "freeze ms | live | final dirty | wire MB | link MB | DATA bound MB | DATA/link s | "
         "time s | slowest VM s | dst Pss MiB | faults | fault p50/p99 us | max TICK gap s |",
         "|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
         "---:|---:|---:|"]
    for r in rows:
        lat = "-" if r["fault_p50_us"] is None else \
            f"{r['fault_p50_us']:.0f}/{r['fault_p99_us']:.0f}"
        L.append(f"| {r['link']} | {r['scenario']} | {r.get('mem_mib', '-')} | {r['n']} | "
                 f"{MODE_NAME[r['mode']]} | {r['downtime_ms']:.0f} | "
                 f"{fmt(r.get('downtime_qemu_ms'), 1, 0)} | {fmt(r.get('freeze_ms'), 1, 0)} | "
                 f"{r.get('live_method') or '-'} | "
                 f"{'-' if r.get('final_dirty') is None else r['final_dirty']} | "
                 f"{fmt(r['wire_bytes'], 1e6)} | {fmt(r['link_bytes'], 1e6)} | "
                 f"{fmt(r['data_bytes'], 1e6)} | {fmt(r['data_link_s'], 1, 2)} | "
                 f"{r['time_s']:.2f} | {r['slowest_vm_s']:.2f} | "
                 f"{r['dst_pss_mib']:.0f} | "
                 f"{r['demand_faults']} | {lat} | {r['max_tick_gap_s']:.2f} |")
    live = [r for r in rows if r.get("policy")]
    if live:
        L += ["", "Live phase (tlm): what went before the stop, what was left after it "
              "(total: from the migration's start, live phase included, to every page "
              "present):", "",
              "| scenario | RAM MiB | N | mode | pre-send rounds | pre-sent MB | re-sent MB | "
              "post-copy window s | demand faults | max TICK gap s | total s | wire MB | "
              "the policy's reason |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in live:
            L.append(f"| {r['scenario']} | {r.get('mem_mib', '-')} | {r['n']} | "
                     f"{MODE_NAME[r['mode']]} | {r.get('presend_rounds') or 0} | "
                     f"{fmt(r.get('presend_mb'))} | {fmt(r.get('resent_mb'))} | "
                     f"{fmt(r.get('post_window_s'), 1, 2)} | {r['demand_faults']} | "
                     f"{r['max_tick_gap_s']:.2f} | {fmt(r.get('total_s'), 1, 2)} | "
                     f"{fmt(r['wire_bytes'], 1e6)} | "
                     f"{r.get('ready_why') or '-'} |")
    L += ["", "Ratios tlm / baseline, same scenario, RAM size and N, same link, same run:",
          "", "| scenario | RAM MiB | N | baseline | bytes | time | dst memory |",
          "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if not r["mode"].startswith("tlm") and r["tlm_bytes_ratio"] is not None:
            L.append(f"| {r['scenario']} | {r.get('mem_mib', '-')} | {r['n']} | "
                     f"{MODE_NAME[r['mode']]} | {r['tlm_bytes_ratio']:.3f} | "
                     f"{fmt(r['tlm_time_ratio'], 1, 2)} | {fmt(r['tlm_pss_ratio'], 1, 2)} |")
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")
    return L


def downtime_plot(rows, out_dir):
    """downtime.png: downtime against RAM size, one line per mode (and scenario, when
    there are two), for the first N; gnuplot commands, [] when there is nothing to draw."""
    n0 = min(r["n"] for r in rows)
    sel = [r for r in rows if r["n"] == n0]
    lines = sorted({(r["scenario"], r["mode"]) for r in sel},
                   key=lambda sm: (sm[0], list(MODE_NAME).index(sm[1])))
    if not sel:
        return []
    dat = os.path.join(out_dir, "downtime.dat")
    two = len({s for s, _ in lines}) > 1
    plot = []
    with open(dat, "w") as f:
        for i, (sc, mode) in enumerate(lines):
            pts = sorted((r["mem_mib"], r["downtime_ms"]) for r in sel
                         if (r["scenario"], r["mode"]) == (sc, mode))
            f.write(f"# {sc} {mode}\n" + "\n".join(f"{m} {d}" for m, d in pts) + "\n\n\n")
            plot.append(f"'{dat}' index {i} u 1:($2 > 0 ? $2 : 0.1) w lp lw 2 t "
                        f"'{MODE_NAME[mode]}{f' ({sc})' if two else ''}'")
    downs = [max(r["downtime_ms"], 0.1) for r in sel]
    mems = sorted({r["mem_mib"] for r in sel})
    gp = ["unset logscale", "set xtics", "set key top left", "set yrange [*:*]",
          f"set output '{out_dir}/downtime.png'",
          f"set title 'Downtime against guest RAM size, N={n0} ({rows[0]['link']})'",
          "set xlabel 'guest RAM (MiB)'", "set ylabel 'downtime (ms): source STOP -> "
          "destination RESUME'", f"set xtics ({', '.join(map(str, mems))})",
          f"set xrange [{mems[0] / 1.3:.0f}:{mems[-1] * 1.3:.0f}]",
          "set logscale x 2" if len(mems) > 1 else "unset logscale x"]
    if max(downs) / min(downs) > 20:
        gp.append("set logscale y")
    return gp + ["plot " + ", ".join(plot)]


def plots(rows, out_dir, trace):
    """bytes vs N, destination memory vs N, pages present over time (PNG, gnuplot): the
    clones scenario at its first RAM size; downtime vs RAM size: every scenario."""
    gp = ["set terminal pngcairo size 800,500", "set grid"]
    gp += clone_plots([r for r in rows if r["scenario"] == "clones"], out_dir, trace)
    gp += downtime_plot(rows, out_dir)
    try:
        r = subprocess.run(["gnuplot"], input="\n".join(gp) + "\n", text=True,
                           stderr=subprocess.PIPE)
    except FileNotFoundError:
        print("bench_report.py: gnuplot is not installed: no plots", file=sys.stderr)
        return
    if r.returncode:
        sys.exit(f"bench_report.py: gnuplot failed: {r.stderr.strip()}")


def clone_plots(rows, out_dir, trace):
    if not rows:
        return []
    mem0 = rows[0].get("mem_mib")
    rows = [r for r in rows if r.get("mem_mib") == mem0]
    dat = os.path.join(out_dir, "plot.dat")
    ns = sorted({r["n"] for r in rows})
    by = {(r["n"], r["mode"]): r for r in rows}
    with open(dat, "w") as f:
        f.write("# N tlm_MB qemu_MB precopy_MB data_MB tlm_MiB qemu_MiB precopy_MiB\n")
        for n in ns:
            g = lambda m, k, u: by[(n, m)][k] / u if (n, m) in by and by[(n, m)][k] \
                is not None else float("nan")       # noqa: E731
            f.write(" ".join(f"{v:.3f}" for v in [n] + [g(m, "wire_bytes", 1e6) for m in MODES]
                             + [g("tlm", "data_bytes", 1e6)]
                             + [g(m, "dst_pss_mib", 1) for m in MODES]) + "\n")
    link = rows[0]["link"]
    gp = ["set key top left", "set xlabel 'clones migrated at once (N)'", f"set xtics ({', '.join(map(str, ns))})",
          f"set output '{out_dir}/bytes.png'", "set logscale y",
          f"set title 'Bytes on the wire ({link})'", "set ylabel 'MB'",
          f"plot '{dat}' u 1:2 w lp t 'tlm', '' u 1:3 w lp t 'stock postcopy-ram', "
          "'' u 1:4 w lp t 'stock precopy', '' u 1:5 w l dt 2 t 'DATA payload (lower bound)'",
          "unset logscale y", f"set output '{out_dir}/memory.png'",
          f"set title 'Destination memory, Pss of all VMs ({link})'", "set ylabel 'MiB'",
          f"plot '{dat}' u 1:6 w lp t 'tlm', '' u 1:7 w lp t 'stock postcopy-ram', "
          "'' u 1:8 w lp t 'stock precopy'"]
    if trace and os.path.exists(trace):
        tr = os.path.join(out_dir, "trace.dat")
        with open(trace) as f, open(tr, "w") as o:
            blocks, first = {}, {}
            for mode, vm, t, present, total in csv.reader(f):
                if mode in ("tlm", "qemu") and int(total) and first.setdefault(mode, vm) == vm:
                    blocks.setdefault(mode, []).append(f"{t} {100 * int(present) / int(total)}")
            for mode in ("tlm", "qemu"):
                o.write(f"# {mode}\n" + "\n".join(blocks.get(mode, ["nan nan"])) + "\n\n\n")
        gp += ["unset xtics", "set xtics", "set key bottom right",
               f"set output '{out_dir}/progress.png'",
               f"set title 'Pages present at the destination, one VM ({link})'",
               "set xlabel 'seconds since the switch-over (tlm) / migrate (postcopy-ram)'",
               "set ylabel '% of guest RAM'", "set yrange [0:105]",
               f"plot '{tr}' index 0 u 1:2 w l lw 2 t 'tlm', "
               "'' index 1 u 1:2 w l lw 2 t 'stock postcopy-ram'"]
    return gp


def report(runs, out_dir, trace=None):
    rows = derive([json.loads(ln) for ln in open(runs) if ln.strip()])
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLS)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in COLS])
    print("\n".join(markdown(rows, os.path.join(out_dir, "results.md"))))
    plots(rows, out_dir, trace)


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) == 4 and a[0] == "ticks":
        ticks(*a[1:])
    elif len(a) in (15, 16) and a[0] == "row":
        row(*a[1:])
    elif len(a) in (3, 4) and a[0] == "report":
        report(*a[1:])
    else:
        sys.exit(__doc__.strip().split("\n\n")[1])
