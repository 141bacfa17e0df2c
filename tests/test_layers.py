"""The source layout's promise, on the host: each folder is one layer and uses only the layers below
it (kernel/ -> drivers/ -> net/ -> port/ -> modules/), by its #includes and, in the built kernel, by
the symbols its objects take from each other; and no C file reaches back to itself through others
(what a layer below needs from above, it is handed: a handler, an output, a tty)."""
import os
import re
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LAYERS = ["kernel", "drivers", "net", "port", "modules"]
BUILD = os.path.join(os.path.dirname(os.environ.get("CLLM_KERNEL", os.path.join(ROOT, "build/port/cllm.elf"))))


def sources():
    for layer in LAYERS:
        for folder, _, files in os.walk(os.path.join(ROOT, layer)):
            for name in sorted(files):
                if name.endswith((".c", ".cpp", ".h", ".S")):
                    yield layer, os.path.relpath(os.path.join(folder, name), ROOT)


def layer_of(path):
    top = path.split("/")[0]
    return top if top in LAYERS else None


def includes(path):
    """The repository files a source includes, as paths from the root."""
    text = open(os.path.join(ROOT, path)).read()
    for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, re.M):
        for candidate in (os.path.join(os.path.dirname(path), name), name, os.path.join("net", name)):
            if os.path.isfile(os.path.join(ROOT, candidate)):
                yield os.path.normpath(candidate)
                break


def test_includes_point_down():
    wrong = []
    for layer, path in sources():
        for inc in includes(path):
            target = layer_of(inc)
            if target and LAYERS.index(target) > LAYERS.index(layer):
                wrong.append("{} includes {}".format(path, inc))
    assert not wrong, "\n".join(wrong)


def symbols(obj):
    out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TDBRC":
            defined.add(parts[2])
        elif len(parts) == 2 and parts[0] == "U":
            used.add(parts[1])
    return defined, used


def objects():
    """Each C file of ours in the built kernel, by its source path. An assembly file and the C file
    of the same concern (entry.S and boot.c, traps.S and trap.c) call each other by design: they are
    left out, as are the files of MicroPython and llama.cpp."""
    found = {}
    for layer, path in sources():
        if path.endswith((".c", ".cpp")):
            obj = os.path.join(BUILD, os.path.splitext(path)[0] + ".o")
            if os.path.isfile(obj):
                found[path] = symbols(obj)
    if len(found) < 20:
        pytest.skip("the kernel is not built in {}".format(BUILD))
    return found


def uses():
    objs = objects()
    owner = {sym: path for path, (defined, _) in objs.items() for sym in defined}
    edges = {}
    for path, (_, used) in objs.items():
        for sym in used:
            if sym in owner and owner[sym] != path:
                edges.setdefault(path, {}).setdefault(owner[sym], []).append(sym)
    return edges


def test_symbols_point_down():
    wrong = []
    for path, targets in uses().items():
        for target, syms in targets.items():
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(path)):
                wrong.append("{} uses {} from {}".format(path, sorted(syms), target))
    assert not wrong, "\n".join(wrong)


def test_no_file_cycles():
    edges = uses()

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    # A native module's folder is one unit: its MicroPython tables (C) and its code (C++) name each other.
    def one_module(a, b):
        return a.startswith("modules/") and os.path.dirname(a) == os.path.dirname(b)

    reachable = {path: reach(path) for path in edges}
    cycles = sorted({" <-> ".join(sorted((a, b))) for a in edges for b in reachable[a]
                     if a != b and a in reachable.get(b, ()) and not one_module(a, b)})
    assert not cycles, "files that reach each other:\n" + "\n".join(cycles)
