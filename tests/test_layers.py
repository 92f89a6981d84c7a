"""The package tree is the architecture: layers that only point down, and no import cycle.

Every ``ptq_deploy`` import (at the top of a module or deferred inside a function) is an edge; a module may
import its own layer or a lower one. ``UPWARD`` lists the edges that still point up, each with why; an edge
not listed fails, and so does a listed one that is gone (the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ptq_deploy"

# lowest first; a module's layer is its longest matching prefix (docs/architecture.md draws the same)
LAYERS = [
    ["errors", "settings", "stats", "timeutil", "ui"],
    ["environments", "hardware", "results", "checkpoint", "models", "provenance", "data", "tasks", "tiny"],
    ["engine", "probe"],
    ["compress", "perf", "eval", "kvcache", "inspection"],
    ["suite", "report", "doctor", "quicklook"],
    ["cli"],
]

UPWARD = {
    ("hardware.support", "compress.schemes"): "the static rules answer per scheme; they should take the checkpoint's "
                                               "quantization (checkpoint.quant) instead",
    ("probe.run", "compress"): "the probe compresses its own tiny checkpoints of each kernel family",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The ``ptq_deploy`` modules ``path`` imports, anywhere in it (``from ptq_deploy.x import y``: ``x.y``
    where that is a module, else ``x``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}"[len("ptq_deploy."):] in known
                     else node.module for a in node.names]
        else:
            continue
        out |= {n[len("ptq_deploy."):] for n in names if n.startswith("ptq_deploy.")}
    return {n for n in out if n in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items() if m}


def layer(module: str) -> int:
    best, found = -1, None
    for i, prefixes in enumerate(LAYERS):
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and len(pre) > best:
                best, found = len(pre), i
    if found is None:
        raise AssertionError(f"ptq_deploy.{module} is in no layer: add its package to LAYERS")
    return found


def upward(g: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in g.items() for b in targets if layer(b) > layer(a)}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module: deferred imports count, so none can hide one."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for m in modules():
        if m:
            layer(m)


def test_layers_only_point_down():
    found = upward(graph())
    new = sorted(found - set(UPWARD))
    assert not new, "lower layer imports a higher one: " + ", ".join(f"{a} -> {b}" for a, b in new)
    gone = sorted(set(UPWARD) - found)
    assert not gone, f"no longer imported, remove from UPWARD: {gone}"


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checks_fail_on_a_wrong_way_import_and_a_cycle():
    g = {"engine.load": {"suite.plan"}, "suite.plan": set()}
    assert upward(g) == {("engine.load", "suite.plan")}
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    with pytest.raises(AssertionError, match="in no layer"):
        layer("nowhere")
