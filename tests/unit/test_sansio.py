"""The protocol core is sans-IO: it imports no event loop, socket, thread or clock.

Checked twice: statically (the ``ast`` of each module, imports at any depth,
following relative imports into other aiodicom modules) and dynamically (a
fresh interpreter imports the modules and looks at ``sys.modules``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "aiodicom"

CORE = ["pdu", "pdu_primitives", "fsm", "presentation", "errors", "status", "_nservice"]

FORBIDDEN = {"anyio", "trio", "asyncio", "socket", "ssl", "threading", "time", "select"}

#: Modules pydicom itself may pull in: checked only statically, and in the
#: subprocess only when aiodicom (not pydicom) is what imports them.
ALWAYS_FORBIDDEN = {"anyio", "trio", "asyncio", "socket"}

#: Name fragments of modules that exist for I/O (the anyio shell), which the
#: dimse*/negotiation* discovery leaves out.
IO_MARKERS = ("_io", "io_", "transport", "stream", "socket", "server", "client", "async", "aio")


def _discovered() -> list[str]:
    names = []
    for pattern in ("dimse*.py", "negotiation*.py"):
        for path in sorted(PACKAGE.glob(pattern)):
            if not any(marker in path.stem for marker in IO_MARKERS):
                names.append(path.stem)
    return names


SANS_IO = CORE + [name for name in _discovered() if name not in CORE]


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(absolute modules, sibling aiodicom modules) imported anywhere in ``module``."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    absolute: set[str] = set()
    siblings: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                absolute.add(alias.name)
                if alias.name.startswith("aiodicom."):
                    siblings.add(alias.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                absolute.add(node.module)
                if node.module.startswith("aiodicom."):
                    siblings.add(node.module.split(".")[1])
                elif node.module == "aiodicom":
                    siblings.update(a.name for a in node.names)
            elif node.level == 1:
                if node.module:
                    siblings.add(node.module.split(".")[0])
                else:
                    siblings.update(a.name for a in node.names)
            else:  # pragma: no cover - aiodicom has no sub-packages yet
                raise AssertionError(f"{module}: relative import beyond the package")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    absolute.add(arg.value)
    return {m for m in absolute if m.split(".")[0] != "aiodicom"}, siblings


def _closure(module: str) -> dict[str, set[str]]:
    """Absolute imports of ``module`` and every aiodicom module it imports, transitively."""
    seen: dict[str, set[str]] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if not (PACKAGE / f"{name}.py").exists():
            # ``from . import x`` of a sub-package or the package itself.
            assert (PACKAGE / name).is_dir() or name == "__init__", name
            continue
        absolute, siblings = _imports(name)
        seen[name] = absolute
        todo.extend(siblings)
    return seen


def test_the_core_modules_exist() -> None:
    for name in CORE:
        assert (PACKAGE / f"{name}.py").is_file(), name


@pytest.mark.parametrize("module", SANS_IO)
def test_no_io_imports_in_the_source(module: str) -> None:
    for name, absolute in _closure(module).items():
        bad = {m.split(".")[0] for m in absolute} & FORBIDDEN
        assert not bad, f"aiodicom/{name}.py (imported by {module}) imports {sorted(bad)}"


def test_the_checker_catches_nested_and_relative_imports(tmp_path: Path) -> None:
    """The AST walk sees imports inside functions and TYPE_CHECKING blocks."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import anyio\n"
        "def f():\n    from time import monotonic\n    import socket as s\n"
        "class C:\n    def g(self):\n        __import__('select')\n"
    )
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.add(node.args[0].value)  # type: ignore[attr-defined]
    assert {"anyio", "time", "socket", "select"} <= found


_SCRIPT = r"""
import importlib, json, sys, types
package_dir, modules, third_party = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
# What the third-party dependencies import is their business: load them first.
for name in third_party:
    importlib.import_module(name)
baseline = set(sys.modules)
# A bare package object, so that aiodicom/__init__.py (which may well import
# the I/O shell) does not run: only the modules under test are imported.
pkg = types.ModuleType("aiodicom")
pkg.__path__ = [package_dir]
sys.modules["aiodicom"] = pkg
for name in modules:
    importlib.import_module("aiodicom." + name)
print(json.dumps({"new": sorted(set(sys.modules) - baseline), "all": sorted(sys.modules)}))
"""


def test_no_io_modules_after_import() -> None:
    third_party = sorted(
        {
            absolute
            for module in SANS_IO
            for absolute in set().union(*_closure(module).values())
            if absolute.split(".")[0] not in sys.stdlib_module_names
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(PACKAGE), json.dumps(SANS_IO), json.dumps(third_party)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {f"aiodicom.{m}" for m in SANS_IO} <= set(report["new"])
    new_top = {m.split(".")[0] for m in report["new"]}
    all_top = {m.split(".")[0] for m in report["all"]}
    # pydicom itself imports socket, threading, time, ... (its network and
    # logging helpers), so at run time only these are checked: no event loop is
    # loaded at all, and nothing of the list is loaded because of aiodicom.
    assert not all_top & (ALWAYS_FORBIDDEN - {"socket"}), sorted(all_top & ALWAYS_FORBIDDEN)
    assert not new_top & ALWAYS_FORBIDDEN, sorted(new_top & ALWAYS_FORBIDDEN)
