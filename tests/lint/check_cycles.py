#!/usr/bin/env python3
"""No two source files of tlm call each other, directly or round a longer loop.

Reads the object files of the project's libraries and programs (nm: what each defines,
what it uses), draws an edge A -> B when A.c uses a function or variable defined in
B.c, and fails listing every strongly connected group of more than one file. Calls
through function pointers (callbacks) are not edges: that is how a module talks back
without a cycle.

    check_cycles.py BUILD_DIR OBJECT...

The objects are those of the current targets (CMake passes them): a reused build
directory may hold stale ones of files that no longer exist.
"""
import os
import subprocess
import sys

def symbols(obj):
    out = subprocess.run(["nm", obj], check=True, capture_output=True, text=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            used.add(parts[1])
        elif len(parts) == 3 and parts[1] in "TDBRC":
            defined.add(parts[2])
    return defined, used


def name(obj, build):
    # build/runtime/dest/CMakeFiles/tlm_dest.dir/dst_peer.c.o -> runtime/dest/dst_peer.c
    rel = os.path.relpath(obj, build).split(os.sep)
    i = rel.index("CMakeFiles")
    return "/".join(rel[:i] + [rel[-1][:-2]])


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            out.append(group)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: check_cycles.py BUILD_DIR OBJECT...")
    build = sys.argv[1]
    files = {}
    for obj in sys.argv[2:]:
        files.setdefault(name(obj, build), symbols(obj))
    if not files:
        sys.exit(f"check_cycles: no object files under {build} (build first)")
    owner = {}
    for f, (defined, _) in files.items():
        for s in defined:
            owner.setdefault(s, f)
    graph = {f: sorted({owner[s] for s in used if s in owner and owner[s] != f})
             for f, (_, used) in files.items()}
    bad = [sorted(g) for g in sccs(graph) if len(g) > 1]
    for g in bad:
        print("cycle: " + " <-> ".join(g))
        for f in g:
            print(f"  {f} calls " + ", ".join(x for x in graph[f] if x in g))
    print(f"check_cycles: {len(files)} files, {len(bad)} cycle(s)")
    sys.exit(1 if bad else 0)


main()
