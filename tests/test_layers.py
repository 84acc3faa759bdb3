"""The house is one-way: p2pclone's static import graph, read with ``ast`` (nothing is imported).

What is read
    Every ``.py`` file under ``p2pclone/`` and ``transports/``.  The ``transports/`` folder
    is named ``p2pclone.transports.*`` when ``p2pclone/transports`` exists (today: a
    symlink to ``../transports``), else ``transports.*`` (the older layout); an import
    written either way resolves to the same module, and a file reached twice (through
    the symlink, or a ``transports`` that links back) is read once.

What counts as an import
    Every ``import``/``from … import`` statement anywhere in a file: at the top, inside
    functions, under ``if TYPE_CHECKING:``, in ``try:`` blocks; and ``import_module("x")``
    / ``__import__("x")`` with a literal name.  A deferred import still ties the two
    modules together: moving an import into a function to dodge a circle hides the
    circle, it does not remove it.  Relative imports are resolved against the importing
    module's package.  ``from pkg import name`` is an import of ``pkg.name`` when that is
    a module, else of ``pkg``.  Imports made by name count too: a string that is
    exactly one of our module names (``"p2pclone.multicast.driver:DRIVER"``, the
    argument of ``import_module``), and the entry points of pyproject.toml's
    ``p2pclone.transports`` group, which p2pclone/endpoints.py loads.  A registry by
    name once hid a sender -> multicast -> sender circle from this check.

Parent packages
    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so an importer
    depends on those package ``__init__`` files too, but only on the ones that are not
    already its own enclosing packages.  ``p2pclone.sender`` importing
    ``p2pclone.image.reader`` thus also depends on ``p2pclone.image`` (if
    ``image/__init__`` imported the sender, that is a real circle and is reported), while
    ``p2pclone.protocol.connection`` importing ``.frames`` adds no edge to
    ``p2pclone.protocol``: its own package is loaded before it runs, and counting that
    edge would turn every package whose ``__init__`` re-exports its submodules (the
    normal pattern, ``protocol/__init__``) into a false circle.

The checks
    (a) ``test_no_import_cycles``: no circle in the graph.  Catches a lower layer reaching
        back up (an image module importing the sender that imports it), including
        circles hidden in function bodies.  The message gives one concrete path per
        strongly connected group, with the file and line of every hop.
    (b) ``test_transports_import_only_errors``: from a transports module, following
        imports, the only p2pclone modules reachable are other transports,
        ``p2pclone.errors`` and the ``p2pclone`` package itself (run on the way to
        ``p2pclone.errors``).  Catches a transport that knows sessions, images or
        drivers, directly or through a module it imports.  Each violation is reported
        as the path to the first forbidden module.
    (c) ``test_sizes``: no module (transports included: they ship as
        ``p2pclone.transports``) over ``MAX_MODULE_LINES`` lines and no function (or
        method, or nested function: each counted on its own, from ``def`` to its last
        line) over ``MAX_FUNCTION_LINES``, except those in ``SIZE_ALLOWLIST`` with a
        reason.  ``test_size_allowlist_is_current`` fails on an entry that no longer
        names an offender, so the list shrinks as the split lands.

Negative controls (each tried once, then undone):

* ``_GROUP = "p2pclone.multicast.driver:send_group"`` (a name in a string, as the old
  registry held it) added to ``p2pclone/sender/__init__.py`` fails (a) with one circle
  through ``p2pclone.multicast.driver`` and ``p2pclone.sender``.

* ``import p2pclone.sender`` added to ``transports/tcp.py`` fails (b) with
  "p2pclone.transports.tcp -> p2pclone.sender (transports/tcp.py:11)", and (a) as well,
  because ``image/store.py`` imports the tcp transport: "p2pclone.image.link ->
  p2pclone.image.store -> p2pclone.transports.tcp -> p2pclone.sender -> p2pclone.image.link".
* ``from p2pclone import sender`` inside a function of ``p2pclone/protocol/frames.py``
  fails (a): "… p2pclone.protocol -> p2pclone.protocol.frames -> p2pclone.sender ->
  p2pclone.endpoints -> p2pclone.session -> p2pclone.protocol".
* At commit 0392fc4 (before issue 13's moves) (a) reports the two circles the issue
  names, as one group {sender, image.reader, transports.share, image.player, ...} and
  receiver <-> multicast.receiver, and (b) reports ``transports.share`` importing
  ``p2pclone.image.player``, ``.reader`` and ``.recorder``.
"""

from __future__ import annotations

import ast
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80

# "module" or "module:qualname" (Python's __qualname__, e.g. "Class.method",
# "outer.<locals>.inner") -> why it may be over the limit.  Transports are written
# p2pclone.transports.*.
SIZE_ALLOWLIST: dict[str, str] = {
    "p2pclone.image.format": "the image format in one room: header, record and index "
    "codecs share their constants, and docs/image-format.md follows it section by section",
}


# --------------------------------------------------------------------------- modules


def _transports_prefix() -> str:
    return "p2pclone.transports" if (REPO / "p2pclone" / "transports").exists() else "transports"


@dataclass
class Module:
    name: str
    path: Path  # as walked (for messages), not resolved
    is_package: bool
    tree: ast.Module = field(repr=False)
    lines: int = 0

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(REPO))


def _walk(root: Path) -> Iterator[Path]:
    # os.walk does not descend into symlinked directories (followlinks=False), so a
    # symlinked p2pclone/transports is not walked a second time under p2pclone/.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if f.endswith(".py"):
                yield Path(dirpath) / f


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    seen: set[Path] = set()
    roots = [(REPO / "p2pclone", "p2pclone"), (REPO / "transports", _transports_prefix())]
    for root, prefix in roots:
        if not root.is_dir():
            continue
        for path in _walk(root):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join([prefix, *parts])
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text, filename=str(path))
            found[name] = Module(name, path, is_package, tree, len(text.splitlines()))
    assert "p2pclone.errors" in found, f"no p2pclone/errors.py under {REPO}"
    return found


def canon(name: str) -> str:
    """``transports.x`` and ``p2pclone.transports.x`` name the same module."""
    prefix = _transports_prefix()
    for alias in ("p2pclone.transports", "transports"):
        if name == alias or name.startswith(alias + "."):
            return prefix + name[len(alias) :]
    return name


def is_transport(name: str) -> bool:
    prefix = _transports_prefix()
    return name == prefix or name.startswith(prefix + ".")


# --------------------------------------------------------------------------- imports


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    implied: bool  # a parent package's __init__, run on the way to the named module

    def where(self) -> str:
        how = ", parent package" if self.implied else ""
        return f"{modules()[self.source].rel}:{self.line}{how}"


def _longest_known(name: str) -> str | None:
    known = modules()
    name = canon(name)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _named_imports(mod: Module) -> Iterator[tuple[str, int]]:
    """(module named, line) for every import in the file."""
    known = modules()
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (hit := _longest_known(alias.name)) is not None:
                    yield hit, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = mod.package.split(".")
                if node.level - 1 >= len(base_parts):
                    continue  # beyond the top: not ours
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                full = f"{base}.{node.module}" if node.module else base
            else:
                full = node.module or ""
            full = canon(full)
            for alias in node.names:
                sub = canon(f"{full}.{alias.name}")
                if alias.name != "*" and sub in known:
                    yield sub, node.lineno
                elif (hit := _longest_known(full)) is not None:
                    yield hit, node.lineno
        elif (
            # A module named in a string ("p2pclone.multicast.driver:DRIVER" in a table
            # loaded later, import_module("…")): a tie all the same, which a registry
            # by name once hid from this check (a sender -> multicast -> sender loop).
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _NAMED.fullmatch(node.value)
            and (hit := _longest_known(node.value.partition(":")[0]))
        ):
            yield hit, node.lineno


#: a string that names one of our modules, optionally with an attribute
_NAMED = re.compile(r"(?:p2pclone|transports)(?:\.\w+)+(?::[\w.]+)?")


def _entry_points() -> list[tuple[str, int]]:
    """(module, line in pyproject.toml) of each ``p2pclone.transports`` entry point:
    p2pclone/endpoints.py imports them by name."""
    found, inside = [], False
    lines = (REPO / "pyproject.toml").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if line.startswith("["):
            inside = line.strip() == '[project.entry-points."p2pclone.transports"]'
        elif inside and "=" in line and (hit := _longest_known(line.split('"')[1].split(":")[0])):
            found.append((hit, number))
    return found


@cache
def graph() -> dict[str, dict[str, Edge]]:
    """module -> {imported module -> first Edge (named imports win over implied ones)}."""
    known = modules()
    out: dict[str, dict[str, Edge]] = {name: {} for name in known}
    for name, mod in known.items():
        own = set(_ancestors(name)) | ({name} if mod.is_package else set())
        edges = out[name]
        named = list(_named_imports(mod))
        if name == "p2pclone.endpoints":
            named += _entry_points()
        for target, line in sorted(named, key=lambda t: t[1]):
            if target != name:
                old = edges.get(target)
                if old is None or old.implied:
                    edges[target] = Edge(name, target, line, implied=False)
            for parent in _ancestors(target):
                if parent in known and parent not in own and parent not in edges:
                    edges[parent] = Edge(name, parent, line, implied=True)
    return out


# --------------------------------------------------------------------------- helpers


def _strongly_connected(g: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components with a circle only."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0
    for start in sorted(g):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(g[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1 or node in g[node]:
                    result.append(sorted(comp))
    return sorted(result)


def _path(
    g: dict[str, dict[str, Edge]], start: str, goals: set[str], through: Iterable[str]
) -> list[Edge]:
    """Shortest path of edges from ``start`` to any of ``goals``, using only ``through``
    (and the goals) as stops."""
    allowed = set(through) | goals
    prev: dict[str, Edge] = {}
    queue = deque([start])
    visited = {start}
    while queue:
        node = queue.popleft()
        for target, edge in sorted(g[node].items()):
            if target in goals:
                path = [edge]
                while path[0].source != start:
                    path.insert(0, prev[path[0].source])
                return path
            if target in allowed and target not in visited:
                visited.add(target)
                prev[target] = edge
                queue.append(target)
    raise AssertionError(f"no path from {start} to {goals}")


def _describe(path: list[Edge]) -> str:
    names = " -> ".join([path[0].source, *(e.target for e in path)])
    hops = "".join(f"\n      {e.source} -> {e.target}  ({e.where()})" for e in path)
    return names + hops


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(tree: ast.Module) -> Iterator[tuple[str, Function]]:
    """(qualname, node) for every function, method and nested function."""

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, Function]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, Function):
                qual = prefix + child.name
                yield qual, child
                yield from visit(child, qual + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, prefix + child.name + ".")
            else:
                yield from visit(child, prefix)

    yield from visit(tree, "")


def size_offenders() -> dict[str, str]:
    """Key as in SIZE_ALLOWLIST -> what is too long."""
    found: dict[str, str] = {}
    for name, mod in sorted(modules().items()):
        if mod.lines > MAX_MODULE_LINES:
            found[name] = f"{mod.rel}: {mod.lines} lines (limit {MAX_MODULE_LINES})"
        for qual, node in _functions(mod.tree):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found[f"{name}:{qual}"] = (
                    f"{mod.rel}:{node.lineno}: {qual} is {length} lines"
                    f" (limit {MAX_FUNCTION_LINES})"
                )
    return found


# --------------------------------------------------------------------------- tests


def test_graph_sees_the_code() -> None:
    """Guards the other checks against passing vacuously (a layout the walker misses)."""
    known = modules()
    prefix = _transports_prefix()
    assert {"p2pclone.errors", "p2pclone.protocol", prefix, f"{prefix}.tcp"} <= set(known)
    assert "p2pclone.errors" in graph()[f"{prefix}.tcp"]
    assert len(known) > 30


def test_no_import_cycles() -> None:
    g = graph()
    components = _strongly_connected(g)
    reports = []
    for comp in components:
        start = comp[0]
        path = _path(g, start, {start}, comp)
        reports.append(f"  {_describe(path)}\n    (all in this circle: {', '.join(comp)})")
    assert not components, f"{len(components)} import circle(s):\n" + "\n".join(reports)


def test_transports_import_only_errors() -> None:
    g = graph()
    known = modules()
    ours = [n for n in known if n.startswith("p2pclone") or is_transport(n)]
    allowed = {n for n in ours if is_transport(n)} | {"p2pclone.errors", "p2pclone"}
    forbidden = set(ours) - allowed
    reports = []
    for name in sorted(n for n in known if is_transport(n)):
        # First forbidden module on each way out, walking only through allowed modules.
        reached: set[str] = set()
        queue, seen = deque([name]), {name}
        while queue:
            node = queue.popleft()
            for target in g[node]:
                if target in forbidden:
                    reached.add(target)
                elif target not in seen:
                    seen.add(target)
                    queue.append(target)
        for bad in sorted(reached):
            reports.append("  " + _describe(_path(g, name, {bad}, allowed)))
    assert not reports, (
        "transports may import only p2pclone.errors (and each other):\n" + "\n".join(reports)
    )


def test_sizes() -> None:
    allowed = {canon_key(k) for k in SIZE_ALLOWLIST}
    over = {k: v for k, v in size_offenders().items() if k not in allowed}
    assert not over, (
        f"over {MAX_MODULE_LINES} lines per module / {MAX_FUNCTION_LINES} per function "
        "(split it, or add it to SIZE_ALLOWLIST with a reason):\n"
        + "\n".join(f"  {k}: {v}" for k, v in over.items())
    )


def test_size_allowlist_is_current() -> None:
    offenders = size_offenders()
    stale = sorted(k for k in SIZE_ALLOWLIST if canon_key(k) not in offenders)
    assert not stale, "no longer over the limit; remove from SIZE_ALLOWLIST:\n" + "\n".join(
        f"  {k}" for k in stale
    )
    for key, reason in SIZE_ALLOWLIST.items():
        assert reason.strip() and "\n" not in reason, f"{key}: give a one-line reason"


def canon_key(key: str) -> str:
    module, sep, qual = key.partition(":")
    return canon(module) + sep + qual
