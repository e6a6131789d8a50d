#!/usr/bin/env python3
"""The destination daemon's files call each other one way only (runtime/dest).

Builds the call graph between the .c files of a directory (a call to a function defined
without `static` in another file is an edge) and fails on any cycle; a region file
including a header of the peer or the daemon fails too (the region reaches its link
only through struct dst_link). Prints the graph, so a failure shows where the cycle is.

usage: check_layers.py DIR
"""
import os
import re
import sys

REGION = {"dst_region", "dst_pages", "dst_uevent", "dst_place", "dst_map", "dst_fault",
          "dst_fetch", "dst_report"}
ABOVE = {"dst_peer.h", "dst_server.h", "dst_ctl.h"}


def strip(src):
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    return re.sub(r'"(\\.|[^"\\])*"', '""', src)


def graph(d):
    files = sorted(f for f in os.listdir(d) if f.endswith(".c"))
    text = {f: strip(open(os.path.join(d, f)).read()) for f in files}
    defs = {}
    for f, s in text.items():
        for m in re.finditer(r"^(?!static)[A-Za-z][^\n;]*?\b(\w+)\(", s, flags=re.M):
            defs[m.group(1)] = f
    edges = {f: {} for f in files}
    for f, s in text.items():
        for m in re.finditer(r"\b(\w+)\s*\(", s):
            g = defs.get(m.group(1))
            if g and g != f:
                edges[f].setdefault(g, set()).add(m.group(1))
    return files, edges


def cycles(files, edges):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for f in files:
        if f not in index:
            visit(f)
    return out


def wrong_includes(d, files):
    bad = []
    for f in files:
        if f[:-2] not in REGION:
            continue
        for h in (f, f[:-2] + ".h"):
            path = os.path.join(d, h)
            if not os.path.exists(path):
                continue
            for inc in re.findall(r'^#include "([^"]+)"', open(path).read(), flags=re.M):
                if inc in ABOVE:
                    bad.append(f"{h} includes {inc}")
    return bad


def main():
    d = sys.argv[1]
    files, edges = graph(d)
    for f in files:
        for g, fns in sorted(edges[f].items()):
            print(f"{f:16} -> {g:16} {' '.join(sorted(fns))}")
    found = cycles(files, edges)
    bad = wrong_includes(d, files)
    for c in found:
        print("FAIL: files call each other in a cycle: " + " <-> ".join(c))
    for b in bad:
        print("FAIL: a region file includes what sits above it: " + b)
    if not edges or not any(edges.values()):
        print("FAIL: no calls found between files (wrong directory?)")
        return 1
    return 1 if found or bad else 0


if __name__ == "__main__":
    sys.exit(main())
