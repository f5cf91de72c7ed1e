"""The shape of the code (issue 8), kept by tests:

- a check module imports only `virtdoctor.api` and pure standard-library modules, and
  calls no I/O (no open(), os, subprocess, socket, libvirt, lxml, pathlib, time.sleep...):
  facts come from the facts object, edits from the api's XML helpers;
- no import cycle among virtdoctor's modules (the static import graph, imports inside
  functions included: a cycle hidden in a function is still a tangle).
"""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKS = REPO / "checks"

# pure standard-library modules a check may import (no I/O of their own)
PURE_STDLIB = {
    "__future__", "re", "dataclasses", "ipaddress", "shlex", "posixpath", "typing", "itertools", "collections",
    "collections.abc", "functools", "enum", "hashlib", "string", "textwrap", "datetime", "difflib", "math",
    "fnmatch", "copy", "operator", "abc", "json", "base64", "binascii", "bisect", "heapq", "statistics",
    "decimal", "fractions", "numbers", "types", "unicodedata", "urllib.parse",
}
ALLOWED_VIRTDOCTOR = {"virtdoctor.api"}
# builtins that do I/O (or escape the import rules)
IO_BUILTINS = {"open", "__import__", "exec", "eval", "compile", "input", "print", "breakpoint"}
# (a check cannot import them, so these names can only be calls through a module smuggled in)
IO_NAMES = {"os", "subprocess", "socket", "libvirt", "lxml", "etree", "pathlib", "shutil", "glob",
            "signal", "time", "fcntl", "tempfile", "psutil", "importlib", "ctypes", "sys"}

# ONE allow-list: host check modules the remedy helper (issue 8) has not migrated yet.
# Remove an entry as soon as its module is clean (test_allow_list_is_current says which).
NOT_YET_MIGRATED: dict[str, str] = {}


def check_modules() -> list[Path]:
    return sorted(p for p in CHECKS.glob("*.py") if p.name != "__init__.py")


def violations(path: Path) -> list[str]:
    """Every import past the api or of an impure module, and every I/O call, as 'line: what'."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name not in PURE_STDLIB and a.name not in ALLOWED_VIRTDOCTOR:
                    out.append(f"{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = "." * node.level + (node.module or "")
            if mod not in PURE_STDLIB and mod not in ALLOWED_VIRTDOCTOR:
                out.append(f"{node.lineno}: from {mod} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in IO_BUILTINS:
                out.append(f"{node.lineno}: {f.id}()")
            root = f
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in IO_NAMES and root is not f:
                out.append(f"{node.lineno}: {ast.unparse(f)}()")
            if isinstance(f, ast.Attribute) and f.attr in ("read_text", "write_text", "read_bytes", "write_bytes",
                                                            "open", "unlink", "mkdir", "chmod") \
                    and isinstance(f.value, ast.Call) and isinstance(f.value.func, ast.Name) \
                    and f.value.func.id == "Path":
                out.append(f"{node.lineno}: pathlib I/O")
    return out


@pytest.mark.parametrize("path", check_modules(), ids=lambda p: p.stem)
def test_check_module_imports_only_the_api_and_does_no_io(path):
    found = violations(path)
    if path.stem in NOT_YET_MIGRATED:
        if found:
            pytest.xfail(f"allow-listed: {NOT_YET_MIGRATED[path.stem]}")
        return
    assert not found, (f"checks/{path.name} reaches past virtdoctor.api or does I/O (add what it needs to "
                       f"virtdoctor/api.py or the facts layer):\n  " + "\n  ".join(found))


def test_the_scan_sees_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom lxml import etree\nfrom virtdoctor.facts import tls\nimport re\n"
                   "from virtdoctor.api import check\n"
                   "def f(x):\n    open('/etc/passwd')\n    import subprocess\n    x.y.read_text()\n"
                   "    time.sleep(1)\n    os.path.exists('/')\n    Path('/x').read_text()\n")
    got = sorted(violations(bad), key=lambda v: int(v.split(":")[0]))
    assert got == ["1: import os", "2: from lxml import etree", "3: from virtdoctor.facts import tls",
                   "7: open()", "8: import subprocess", "10: time.sleep()", "11: os.path.exists()",
                   "12: pathlib I/O"], got


def test_allow_list_is_current():
    """An allow-listed module that became clean is reported (xfail strictness would
    break other helpers' merges; the list is trimmed by hand)."""
    clean = [m for m in NOT_YET_MIGRATED if (CHECKS / f"{m}.py").exists() and not violations(CHECKS / f"{m}.py")]
    if clean:
        pytest.skip(f"clean now, remove from NOT_YET_MIGRATED: {', '.join(clean)}")


# -- import graph ----------------------------------------------------------------------------
def module_files() -> dict[str, Path]:
    out = {}
    for top, pkg in ((REPO / "virtdoctor", "virtdoctor"), (CHECKS, "virtdoctor.checks")):
        for path in top.rglob("*.py"):
            rel = list(path.relative_to(top).with_suffix("").parts)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join([pkg, *rel])] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph() -> dict[str, set[str]]:
    """module -> the virtdoctor modules it imports (module level and inside functions)."""
    files = module_files()
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue  # `if TYPE_CHECKING:` imports never run
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".")[:None if is_pkg else -1]
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# cycles other helpers of issue 8 are breaking right now; an entry goes when its cycle does
KNOWN_CYCLES = [
    ["virtdoctor.knowledge.base", "virtdoctor.knowledge.schema"],  # commands helper: knowledge package split
]


def test_no_import_cycle():
    found = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert not found, "import cycles among virtdoctor modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_type_checking_imports_are_not_edges(tmp_path, monkeypatch):
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nimport b\n")
    block = next(n for n in ast.walk(tree) if isinstance(n, ast.If))
    assert _is_type_checking(block.test)


def test_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_check_modules_do_not_import_each_other():
    graph = import_graph()
    tangled = {m: sorted(t for t in graph[m] if t.startswith("virtdoctor.checks.")) for m in graph
               if m.startswith("virtdoctor.checks.")}
    assert not {m: t for m, t in tangled.items() if t}, tangled
