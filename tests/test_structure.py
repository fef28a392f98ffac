"""The package's structure, checked with ``ast`` over every module in ``taskbuffer/``.

Five rules (issue 10, "Structure"); each check reports every violation as ``file:line``:

1. **No cross-module private access.** A private name is one with a leading underscore that is
   not a dunder (``_state``, not ``__init__``). Inside ``taskbuffer/``:

   * ``x._name`` where ``x`` is not ``self``, ``cls``, ``super()`` or ``type(self)`` is allowed
     only in the module that *defines* an attribute ``_name`` on one of its own classes (a method
     or class-level name in a class body, an entry of ``__slots__``, or an assignment
     ``self._name = ...`` / ``cls._name = ...`` in a method), and only if no other module of the
     package defines an attribute of that name: the check goes by name, not by type, and a name
     two modules define cannot be told apart. So a class may touch the private state of another
     instance of a class of its own module (``other._key`` in ``__eq__``), and nothing outside
     that module may. ``C._name`` where ``C`` is a class of the module itself is allowed when the
     module defines ``_name``. ``getattr``/``setattr``/``hasattr``/``delattr`` with a literal
     private name count as ``x._name``.
   * ``module._name`` where ``module`` is an imported module (``_clock._helper``,
     ``asyncio.tasks._current_tasks``) is never allowed, wherever the name is defined.
   * ``from taskbuffer._mod import _name`` (or ``from ._mod import _name``) is never allowed: a
     module offers what others need as a public name inside its private module.
   * The documented ``namedtuple`` API (``_replace``, ``_asdict``, ``_fields``, ``_make``,
     ``_field_defaults``) is public despite its underscore.

2. **No private library imports.** ``from <outside module> import _name``, ``import _module``
   or ``import pkg._module`` / ``from pkg._module import ...`` of a module outside taskbuffer,
   and ``module._name`` on an imported outside module (rule 1 covers the attribute form; this
   check reports the imports). ``from __future__ import ...`` is fine.

3. **No import cycles** among taskbuffer modules. The graph has an edge A -> B for every
   ``import``/``from ... import`` in A naming module B anywhere in A: at the top, under
   ``if TYPE_CHECKING:``, inside a function. ``from pkg import name`` is an edge to ``pkg.name``
   when that is a module, else to ``pkg`` (``from taskbuffer import Task`` inside the package is
   an edge to ``taskbuffer/__init__.py``). Every edge that lies on a cycle is a violation.

4. **No module over 450 lines.**

5. **No function over 60 lines** (``def`` and ``async def``, methods and nested functions too;
   counted from the ``def`` line to the last line of the body, decorators excluded).

The allowlist below names the violations that existed when the check was written, one entry per
violation, grouped by module, with the engineer (helper) who removes them. An entry that no longer
occurs fails the test as "stale allowlist entry": the list can only shrink. Entries are keyed by
module and enclosing function, not by line, so unrelated edits do not disturb them. A permanent
exception says why in a comment.
"""

from __future__ import annotations

import ast
import importlib.util
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "taskbuffer"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60

# Entry formats (paths relative to taskbuffer/; scope is the enclosing Class.function qualname,
# "<module>" at top level):
#   "private-access <path> <scope>: <expression>"
#   "private-import <path> <scope>: <what>"
#   "import-cycle <path> -> <imported path>"
#   "module-length <path>"
#   "function-length <path> <qualname>"
ALLOWLIST: list[str] = [
    # --- _manager.py ---
    # Every trigger's one coroutine: splitting it adds an await per trigger and a frame per
    # waiting trigger (C5's bytes per waiter); its rare branches live in _inflight.py already.
    "function-length _manager.py TaskManager._trigger",
    # --- _events.py ---
    # reactivex's AutoDetachObserver keeps the subscriber's callback as _on_next; calling it
    # without the observer's own frame is E1's fast path for a sole subscriber.
    "private-access _events.py EventSubject._find_sole: observers[0]._on_next",
]


# ---------------------------------------------------------------------------------------------
# The checkers: pure functions over {path relative to taskbuffer/: source text}.


@dataclass(frozen=True, slots=True)
class Violation:
    key: str
    path: str
    line: int
    detail: str

    def __str__(self) -> str:
        return f"{PACKAGE}/{self.path}:{self.line}: {self.detail}  [{self.key}]"


NAMEDTUPLE_API = frozenset({"_replace", "_asdict", "_fields", "_make", "_field_defaults"})
ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: str) -> str:
    """``_task.py`` -> ``taskbuffer._task``; ``a/__init__.py`` -> ``taskbuffer.a``."""
    parts = [PACKAGE, *path.removesuffix(".py").split("/")]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: str) -> bool:
    return path.endswith("__init__.py")


def resolve_from(path: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement in ``path`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = module_name(path).split(".")
    if not is_package(path):
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


class _Scoped(ast.NodeVisitor):
    """Walks a module keeping the qualname of the enclosing class/function."""

    def __init__(self) -> None:
        self.scope: list[str] = []

    @property
    def qualname(self) -> str:
        return ".".join(self.scope) or "<module>"

    def enter(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.enter(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.enter(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.enter(node)


def defined_private_attributes(tree: ast.Module) -> set[str]:
    """Private attribute names that the module's own classes define."""
    names: set[str] = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for stmt in cls.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(stmt.name)
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        names.add(target.id)
                        if target.id == "__slots__" and stmt.value is not None:
                            names.update(
                                c.value
                                for c in ast.walk(stmt.value)
                                if isinstance(c, ast.Constant) and isinstance(c.value, str)
                            )
        for node in ast.walk(cls):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in {"self", "cls"}
            ):
                names.add(node.attr)
    return {name for name in names if is_private(name)}


def imported_module_names(tree: ast.Module, path: str, package_modules: set[str]) -> set[str]:
    """Local names bound to modules: ``import x``, ``import x as y``, ``from pkg import module``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(path, node)
            for alias in node.names:
                if is_module(f"{source}.{alias.name}", package_modules):
                    names.add(alias.asname or alias.name)
    return names


def is_module(name: str, package_modules: set[str]) -> bool:
    if in_package(name):
        return name in package_modules
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_self(node: ast.expr) -> bool:
    """``self``, ``cls``, ``super()``, ``type(self)``."""
    if isinstance(node, ast.Name):
        return node.id in {"self", "cls"}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "super" and not node.args:
            return True
        if node.func.id == "type" and len(node.args) == 1:
            return _is_self(node.args[0])
    return False


def check_private_access(sources: Mapping[str, str]) -> list[Violation]:
    """Rule 1: private names of another module, reached by attribute or by import."""
    found: list[Violation] = []
    package_modules = {module_name(path) for path in sources}
    trees = {path: ast.parse(text, filename=path) for path, text in sorted(sources.items())}
    defined = {path: defined_private_attributes(tree) for path, tree in trees.items()}
    definers = Counter(name for names in defined.values() for name in names)
    for path, tree in trees.items():
        # A name that another module defines too cannot be told apart by name alone.
        own = {name for name in defined[path] if definers[name] == 1}
        classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        modules = imported_module_names(tree, path, package_modules)
        visitor = _PrivateAccess(path, own, defined[path], classes, modules, package_modules)
        found.extend(visitor.run(tree))
    return found


class _PrivateAccess(_Scoped):
    def __init__(
        self,
        path: str,
        own: set[str],
        defined: set[str],
        own_classes: set[str],
        modules: set[str],
        package_modules: set[str],
    ) -> None:
        super().__init__()
        self.path = path
        self.own = own  # defined here and nowhere else in the package
        self.defined = defined
        self.own_classes = own_classes
        self.modules = modules  # local names bound to modules
        self.package_modules = package_modules
        self.found: list[Violation] = []

    def run(self, tree: ast.Module) -> list[Violation]:
        self.visit(tree)
        return self.found

    def _report(self, node: ast.expr | ast.stmt, kind: str, what: str, detail: str) -> None:
        key = f"{kind} {self.path} {self.qualname}: {what}"
        self.found.append(Violation(key, self.path, node.lineno, detail))

    def _access(self, node: ast.expr, receiver: ast.expr, name: str) -> None:
        if not is_private(name) or name in NAMEDTUPLE_API or _is_self(receiver):
            return
        if isinstance(receiver, ast.Name) and receiver.id in self.own_classes:
            if name in self.defined:  # ``Task._trigger_coro`` in the module defining Task
                return
        what = f"{ast.unparse(receiver)}.{name}"
        if _root_name(receiver) in self.modules:
            self._report(node, "private-access", what, f"private name of a module: {what}")
        elif name not in self.own:
            self._report(
                node, "private-access", what, f"private attribute of another module: {what}"
            )

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._access(node, node.value, node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in ATTRIBUTE_FUNCTIONS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            self._access(node, node.args[0], node.args[1].value)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = resolve_from(self.path, node)
        if in_package(source):
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if is_private(alias.name) and submodule not in self.package_modules:
                    what = f"from {source} import {alias.name}"
                    self._report(node, "private-access", what, f"private name imported: {what}")


def check_private_imports(sources: Mapping[str, str]) -> list[Violation]:
    """Rule 2: private modules or names of the standard library or third-party packages."""
    found: list[Violation] = []
    for path, text in sorted(sources.items()):
        visitor = _PrivateImports(path)
        visitor.visit(ast.parse(text, filename=path))
        found.extend(visitor.found)
    return found


class _PrivateImports(_Scoped):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.found: list[Violation] = []

    def _report(self, node: ast.stmt, what: str) -> None:
        key = f"private-import {self.path} {self.qualname}: {what}"
        self.found.append(Violation(key, self.path, node.lineno, f"private import: {what}"))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if any(is_private(part) for part in alias.name.split(".")):
                self._report(node, f"import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = resolve_from(self.path, node)
        if in_package(source) or source == "__future__":
            return
        if any(is_private(part) for part in source.split(".")):
            self._report(node, f"from {source} import ...")
            return
        for alias in node.names:
            if is_private(alias.name):
                self._report(node, f"from {source} import {alias.name}")


def import_edges(sources: Mapping[str, str]) -> dict[tuple[str, str], list[int]]:
    """{(importing path, imported path): [lines]} over the package's own modules."""
    by_module = {module_name(path): path for path in sources}
    edges: dict[tuple[str, str], list[int]] = {}

    def add(path: str, module: str, line: int) -> None:
        target = by_module.get(module)
        if target is not None and target != path:
            edges.setdefault((path, target), []).append(line)

    for path, text in sources.items():
        for node in ast.walk(ast.parse(text, filename=path)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(path, alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                source = resolve_from(path, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    add(path, submodule if submodule in by_module else source, node.lineno)
    return edges


def check_import_cycles(sources: Mapping[str, str]) -> list[Violation]:
    """Rule 3: every import edge that lies on a cycle (both ends in one strongly connected part)."""
    edges = import_edges(sources)
    graph: dict[str, set[str]] = {path: set() for path in sources}
    for a, b in edges:
        graph[a].add(b)
    component = {path: i for i, part in enumerate(strongly_connected(graph)) for path in part}
    found = []
    for (a, b), lines in sorted(edges.items()):
        if component[a] == component[b]:
            where = ", ".join(map(str, lines))
            detail = f"imports {PACKAGE}/{b} (line {where}), which leads back to {a}"
            found.append(Violation(f"import-cycle {a} -> {b}", a, lines[0], detail))
    return found


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> Iterator[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                part = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    part.append(member)
                    if member == node:
                        break
                yield part


def check_module_length(sources: Mapping[str, str]) -> list[Violation]:
    """Rule 4: modules over MAX_MODULE_LINES lines."""
    found = []
    for path, text in sorted(sources.items()):
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            detail = f"module has {lines} lines (at most {MAX_MODULE_LINES})"
            found.append(Violation(f"module-length {path}", path, lines, detail))
    return found


def check_function_length(sources: Mapping[str, str]) -> list[Violation]:
    """Rule 5: functions over MAX_FUNCTION_LINES lines."""
    found: list[Violation] = []
    for path, text in sorted(sources.items()):
        visitor = _FunctionLength(path)
        visitor.visit(ast.parse(text, filename=path))
        found.extend(visitor.found)
    return found


class _FunctionLength(_Scoped):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.found: list[Violation] = []

    def enter(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        lines = (node.end_lineno or node.lineno) - node.lineno + 1
        name = ".".join([*self.scope, node.name])
        super().enter(node)
        if not isinstance(node, ast.ClassDef) and lines > MAX_FUNCTION_LINES:
            detail = f"function {name} has {lines} lines (at most {MAX_FUNCTION_LINES})"
            self.found.append(
                Violation(f"function-length {self.path} {name}", self.path, node.lineno, detail)
            )


# ---------------------------------------------------------------------------------------------
# The package, checked against the allowlist.


def package_sources() -> dict[str, str]:
    base = ROOT / PACKAGE
    return {
        path.relative_to(base).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(base.rglob("*.py"))
    }


def compare_with_allowlist(found: list[Violation], kinds: tuple[str, ...]) -> list[str]:
    allowed = Counter(entry for entry in ALLOWLIST if entry.startswith(kinds))
    problems: list[str] = []
    seen: Counter[str] = Counter()
    for violation in found:
        seen[violation.key] += 1
        if seen[violation.key] > allowed[violation.key]:
            problems.append(str(violation))
    for key, count in sorted((allowed - seen).items()):
        problems.extend([f"stale allowlist entry (no longer occurs; remove it): {key!r}"] * count)
    return problems


CHECKS = {
    "private-access": check_private_access,
    "private-import": check_private_imports,
    "import-cycle": check_import_cycles,
    "module-length": check_module_length,
    "function-length": check_function_length,
}


@pytest.mark.parametrize("kind", list(CHECKS))
def test_package_structure(kind: str) -> None:
    sources = package_sources()
    problems = compare_with_allowlist(CHECKS[kind](sources), (kind + " ",))
    assert not problems, f"{len(problems)} {kind} problem(s):\n" + "\n".join(problems)


def test_allowlist_entries_are_well_formed() -> None:
    duplicates_allowed = ("private-access ", "private-import ")
    counts = Counter(ALLOWLIST)
    for entry in ALLOWLIST:
        assert entry.startswith(tuple(k + " " for k in CHECKS)), entry
        if not entry.startswith(duplicates_allowed):
            assert counts[entry] == 1, f"duplicate allowlist entry: {entry!r}"


# ---------------------------------------------------------------------------------------------
# Each checker catches what it is meant to catch (synthetic sources).


def _keys(found: list[Violation]) -> list[str]:
    return [v.key for v in found]


def test_private_access_rule_on_synthetic_sources() -> None:
    sources = {
        "_a.py": (
            "from ._b import Thing, _helper\n"
            "from . import _b\n"
            "class A:\n"
            "    __slots__ = ('_slot',)\n"
            "    def __init__(self, other):\n"
            "        self._state = 1\n"
            "        other._state = 2\n"  # own attribute name: allowed
            "        other._slot = 3\n"  # own __slots__ entry: allowed
            "        self.__class__.__name__\n"  # dunder: allowed
            "    def _own(self): return self._own\n"
            "    def use(self, thing):\n"
            "        thing._value\n"  # B's private attribute: violation
            "        getattr(thing, '_value')\n"  # same through getattr: violation
            "        _b._hidden\n"  # private name of a module: violation
            "        super()._x\n"  # self via super(): allowed
            "        thing._replace(a=1)\n"  # namedtuple API: allowed
        ),
        "_b.py": ("class Thing:\n    def __init__(self):\n        self._value = 1\n"),
    }
    keys = _keys(check_private_access(sources))
    assert keys == [
        "private-access _a.py <module>: from taskbuffer._b import _helper",
        "private-access _a.py A.use: thing._value",
        "private-access _a.py A.use: thing._value",
        "private-access _a.py A.use: _b._hidden",
    ]


def test_private_access_flags_private_names_of_library_modules() -> None:
    sources = {"_a.py": "import asyncio\ndef f():\n    return asyncio.tasks._current_tasks\n"}
    assert _keys(check_private_access(sources)) == [
        "private-access _a.py f: asyncio.tasks._current_tasks"
    ]


def test_private_import_rule_on_synthetic_sources() -> None:
    source = (
        "from __future__ import annotations\n"
        "from asyncio.tasks import _current_tasks\n"
        "import _thread\n"
        "from typing import TYPE_CHECKING as _TC\n"  # private alias of a public name: fine
        "def f():\n"
        "    from concurrent.futures._base import Future\n"
        "from ._b import _x\n"  # inside the package: rule 1's business
    )
    assert _keys(check_private_imports({"_a.py": source})) == [
        "private-import _a.py <module>: from asyncio.tasks import _current_tasks",
        "private-import _a.py <module>: import _thread",
        "private-import _a.py f: from concurrent.futures._base import ...",
    ]


def test_import_cycle_rule_sees_type_checking_and_function_imports() -> None:
    sources = {
        "__init__.py": "from ._a import A\n",
        "_a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._b import B\n",
        "_b.py": "def f():\n    from . import _c\n",
        "_c.py": "import taskbuffer._a\n",
        "_d.py": "from ._a import A\n",  # imports into the cycle, not part of it
        "sub/__init__.py": "from .. import _d\nfrom .x import y\n",
        "sub/x.py": "from . import z\n",
        "sub/z.py": "from taskbuffer.sub import x\n",
    }
    assert _keys(check_import_cycles(sources)) == [
        "import-cycle _a.py -> _b.py",
        "import-cycle _b.py -> _c.py",
        "import-cycle _c.py -> _a.py",
        "import-cycle sub/x.py -> sub/z.py",
        "import-cycle sub/z.py -> sub/x.py",
    ]


def test_import_of_the_package_itself_is_a_cycle() -> None:
    sources = {"__init__.py": "from ._a import A\n", "_a.py": "def f():\n    import taskbuffer\n"}
    assert _keys(check_import_cycles(sources)) == [
        "import-cycle __init__.py -> _a.py",
        "import-cycle _a.py -> __init__.py",
    ]


def test_module_length_rule() -> None:
    short = "x = 1\n" * MAX_MODULE_LINES
    long = short + "y = 2\n"
    assert _keys(check_module_length({"short.py": short, "long.py": long})) == [
        "module-length long.py"
    ]


def test_function_length_rule_counts_methods_and_nested_functions() -> None:
    body = "    x = 1\n" * (MAX_FUNCTION_LINES - 1)
    source = (
        f"def fits():\n{body}"
        f"class C:\n    async def too_long(self):\n    {body.replace(chr(10), chr(10) + '    ')}"
        "    x = 2\n"
    )
    found = check_function_length({"m.py": source})
    assert _keys(found) == ["function-length m.py C.too_long"]
    assert found[0].line == MAX_FUNCTION_LINES + 2


def test_stale_allowlist_entries_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.ALLOWLIST", ["module-length gone.py", "module-length long.py"])
    found = check_module_length({"long.py": "x = 1\n" * (MAX_MODULE_LINES + 1)})
    assert compare_with_allowlist(found, ("module-length ",)) == [
        "stale allowlist entry (no longer occurs; remove it): 'module-length gone.py'"
    ]


def test_a_private_name_two_modules_define_is_nobody_s_own() -> None:
    sources = {
        "_a.py": "class A:\n    def f(self, other):\n        self._v = 1\n        other._v\n",
        "_b.py": "class B:\n    def __init__(self):\n        self._v = 2\n",
    }
    assert _keys(check_private_access(sources)) == ["private-access _a.py A.f: other._v"]
