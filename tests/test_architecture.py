"""The package's rooms and their allowed import directions (docs/ARCHITECTURE.md).

Every ``import`` of focus_jax/ is read with ``ast`` — module level and inside
functions — and checked: an import between rooms must follow :data:`ALLOWED`;
there is no cycle between modules nor between rooms; modules stay under
:data:`MAX_MODULE_LINES` lines and functions of the fitting and render packages
under :data:`MAX_FUNCTION_LINES`. The lists of exceptions are explicit and each
entry says why; an entry that no longer applies fails the test, so the lists
only shrink.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "focus_jax"

# Module (or package prefix) -> room; the longest matching prefix wins.
ROOM_OF = {
    "focus_jax.errors": "core", "focus_jax.host_memory": "core", "focus_jax.images": "core",
    "focus_jax.obj_io": "core", "focus_jax.file_sets": "core",
    "focus_jax.morphable": "morphable",
    "focus_jax.render": "render",
    "focus_jax.losses": "losses",
    "focus_jax.prior": "prior",
    "focus_jax.nets": "nets",
    "focus_jax.eval": "eval",
    "focus_jax.data": "data",
    "focus_jax.fitting": "fitting",
    "focus_jax.autoencoder": "autoencoder",
    # The run configuration (a frozen dataclass, no imports) is what checkpoints store
    # and what the autoencoder rebuilds networks from: its own room below train.
    "focus_jax.train.config": "config",
    "focus_jax.train": "train",
    "focus_jax.app": "app",
    "focus_jax.commands": "commands", "focus_jax.cli": "commands",
}
# focus_jax/__init__.py: the lazy facade (``fj.fit``, ``fj.morphable``); imports nothing
# statically and belongs to no room.
FACADE = "focus_jax"

_BELOW_FITTING = {"core", "morphable", "render", "losses", "prior", "nets", "eval", "data"}
# Room -> the rooms its modules may import (besides their own).
ALLOWED = {
    "core": set(),
    "morphable": {"core"},
    "render": {"core", "morphable"},
    "losses": {"core"},
    "eval": {"core", "morphable"},
    "prior": {"core", "morphable", "render"},
    # The encoder's head decodes to the renderer's parameters (SH light layout and
    # default light of render.shading, camera units): a downward import.
    "nets": {"core", "morphable", "render"},
    # data.synthetic renders faces; data.real_occluders places occluders on eval's
    # landmark hull (the region its scores are taken over).
    "data": {"core", "morphable", "render", "eval"},
    # fitting.misfit_prior builds the prior by fitting data.synthetic faces.
    "fitting": {"core", "morphable", "render", "losses", "prior", "data"},
    "config": {"core"},
    "autoencoder": {"core", "morphable", "render", "losses", "prior", "nets", "config"},
    "train": _BELOW_FITTING | {"fitting", "config", "autoencoder"},
    # The application never imports the trainer.
    "app": _BELOW_FITTING | {"fitting", "config", "autoencoder"},
    "commands": _BELOW_FITTING | {"fitting", "config", "autoencoder", "train", "app"},
}

# Imports that break the rules today, each with the reason it is still here.
# (importer, imported); remove an entry when its import is gone.
PENDING_EDGES = {
}
# Cycles between modules that are still being undone: frozensets of their modules.
PENDING_MODULE_CYCLES = set()

MAX_MODULE_LINES = 600
# Modules over the limit: generated tables (none today) and modules still to split (none today).
LONG_MODULES = {
}
MAX_FUNCTION_LINES = 80
FUNCTION_LIMIT_PACKAGES = ("focus_jax/fitting", "focus_jax/render")
# "path:function" -> reason.
LONG_FUNCTIONS = {
}


# ----------------------------------------------------------------------------- the parser


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  """focus_jax/data/__init__.py -> focus_jax.data; data/align.py -> focus_jax.data.align."""
  parts = list(path.relative_to(root.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def find_modules(root: pathlib.Path) -> dict:
  """Module name -> path of every .py file under the package folder ``root``."""
  return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: pathlib.Path, modules) -> set:
  """The package's modules that module ``name`` imports anywhere in its file (module
  level, in functions, under ``if``), relative imports resolved. ``from X import y``
  counts as importing ``X.y`` when that is a module, else ``X``; literal
  ``importlib.import_module("...")`` calls count too."""
  top = name.split(".")[0]
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()

  def add(target):
    while target and target not in modules:    # an attribute path: keep the module part
      target = target.rpartition(".")[0]
    if target and target != name:
      found.add(target)

  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] == top:
          add(alias.name)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
      else:
        target = node.module or ""
      if target.split(".")[0] != top:
        continue
      for alias in node.names:
        sub = f"{target}.{alias.name}"
        add(sub if sub in modules else target)
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "import_module" and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
          and node.args[0].value.split(".")[0] == top):
      add(node.args[0].value)
  return found


def import_graph(root: pathlib.Path) -> dict:
  """Module -> set of the package's modules it imports."""
  modules = find_modules(root)
  return {name: imports_of(name, path, modules) for name, path in modules.items()}


def room_of(module: str, rooms) -> str | None:
  best = None
  for prefix, room in rooms.items():
    if (module == prefix or module.startswith(prefix + ".")) and (
        best is None or len(prefix) > len(best[0])):
      best = (prefix, room)
  return best[1] if best else None


def forbidden_edges(graph, rooms, allowed, facade) -> set:
  """(importer, imported) pairs between rooms that ``allowed`` does not permit."""
  bad = set()
  for src, targets in graph.items():
    if src == facade:
      continue
    a = room_of(src, rooms)
    for dst in targets:
      b = room_of(dst, rooms)
      if dst == facade or a is None or b is None:
        bad.add((src, dst))
      elif a != b and b not in allowed.get(a, ()):
        bad.add((src, dst))
  return bad


def cycles(graph) -> list:
  """The strongly connected components with more than one node (Tarjan), as sorted
  tuples, sorted."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(tuple(sorted(comp)))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(out)


def room_graph(graph, rooms, facade) -> dict:
  out = {}
  for src, targets in graph.items():
    if src == facade:
      continue
    a = room_of(src, rooms)
    for dst in targets:
      b = room_of(dst, rooms)
      if a and b and a != b:
        out.setdefault(a, set()).add(b)
  return out


def closure(graph, start) -> set:
  seen, todo = set(), [start]
  while todo:
    for w in graph.get(todo.pop(), ()):
      if w not in seen:
        seen.add(w)
        todo.append(w)
  return seen


def _too_long_functions(path: pathlib.Path, limit: int) -> dict:
  out = {}
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      n = node.end_lineno - node.lineno + 1
      if n > limit:
        out[node.name] = n
  return out


# ----------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph():
  return import_graph(PACKAGE)


def test_every_module_has_a_room(graph):
  lost = sorted(m for m in graph if m != FACADE and room_of(m, ROOM_OF) is None)
  assert not lost, f"modules in no room (add them to ROOM_OF and docs/ARCHITECTURE.md): {lost}"


def test_allowed_directions_form_no_cycle():
  assert not cycles(ALLOWED), "ALLOWED lets rooms import each other both ways"
  assert set(ROOM_OF.values()) == set(ALLOWED)


def test_imports_follow_the_allowed_directions(graph):
  bad = forbidden_edges(graph, ROOM_OF, ALLOWED, FACADE)
  new = sorted(bad - set(PENDING_EDGES))
  lines = [f"{s} -> {d}  ({room_of(s, ROOM_OF)} -> {room_of(d, ROOM_OF)})" for s, d in new]
  assert not new, "imports against docs/ARCHITECTURE.md:\n" + "\n".join(lines)
  stale = sorted(set(PENDING_EDGES) - bad)
  assert not stale, f"these imports are gone: remove them from PENDING_EDGES: {stale}"


def test_no_cycle_between_modules(graph):
  found = {frozenset(c) for c in cycles(graph)}
  new = sorted(tuple(sorted(c)) for c in found - PENDING_MODULE_CYCLES)
  assert not new, f"modules importing each other (directly or around a loop): {new}"
  stale = [sorted(c) for c in PENDING_MODULE_CYCLES - found]
  assert not stale, f"these cycles are gone: remove them from PENDING_MODULE_CYCLES: {stale}"


def _settled(graph):
  """The graph without the PENDING_EDGES."""
  return {s: {d for d in t if (s, d) not in PENDING_EDGES} for s, t in graph.items()}


def test_no_cycle_between_rooms(graph):
  assert not cycles(room_graph(_settled(graph), ROOM_OF, FACADE)), "rooms importing each other"


def test_the_application_does_not_reach_the_trainer(graph):
  """Photo -> reconstruction loads trained networks without importing training code."""
  settled = _settled(graph)
  for app in (m for m in graph if room_of(m, ROOM_OF) == "app"):
    reached = {m for m in closure(settled, app) if room_of(m, ROOM_OF) == "train"}
    assert not reached, f"{app} imports training code: {sorted(reached)}"


def test_module_lengths():
  long = {}
  for p in sorted(PACKAGE.rglob("*.py")):
    n = len(p.read_text(encoding="utf-8").splitlines())
    if n > MAX_MODULE_LINES:
      long[p.relative_to(PACKAGE.parent).as_posix()] = n
  new = {k: v for k, v in long.items() if k not in LONG_MODULES}
  assert not new, f"modules over {MAX_MODULE_LINES} lines (split them): {new}"
  stale = sorted(set(LONG_MODULES) - set(long))
  assert not stale, f"no longer over the limit: remove from LONG_MODULES: {stale}"


def test_function_lengths_in_fitting_and_render():
  long = {}
  for pkg in FUNCTION_LIMIT_PACKAGES:
    for p in sorted((PACKAGE.parent / pkg).rglob("*.py")):
      for fn, n in _too_long_functions(p, MAX_FUNCTION_LINES).items():
        long[f"{p.relative_to(PACKAGE.parent).as_posix()}:{fn}"] = n
  new = {k: v for k, v in long.items() if k not in LONG_FUNCTIONS}
  assert not new, f"functions over {MAX_FUNCTION_LINES} lines (split them): {new}"
  stale = sorted(set(LONG_FUNCTIONS) - set(long))
  assert not stale, f"no longer over the limit: remove from LONG_FUNCTIONS: {stale}"


# ----------------------------------------------------------------------------- the checker


def _write(root: pathlib.Path, files: dict) -> pathlib.Path:
  for rel, text in files.items():
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
  return root / "pkg"


def test_parser_sees_local_relative_and_dynamic_imports(tmp_path):
  root = _write(tmp_path, {
      "pkg/__init__.py": "",
      "pkg/low/__init__.py": "from pkg.low import a\n",
      "pkg/low/a.py": "import os\nCONST = 1\n",
      "pkg/low/b.py": "def f():\n  from . import a\n  from .a import CONST\n  return CONST\n",
      "pkg/high.py": ("import importlib\nimport pkg.low.b\n"
                      "if True:\n  from pkg.low.a import CONST\n"
                      "def g():\n  return importlib.import_module('pkg.low')\n"),
  })
  g = import_graph(root)
  assert g["pkg.low.b"] == {"pkg.low.a"}
  assert g["pkg.high"] == {"pkg.low.b", "pkg.low.a", "pkg.low"}
  assert g["pkg.low"] == {"pkg.low.a"}
  assert g["pkg.low.a"] == set()


def test_checker_finds_a_function_local_cycle_and_a_wrong_direction(tmp_path):
  root = _write(tmp_path, {
      "pkg/__init__.py": "",
      "pkg/low/__init__.py": "",
      "pkg/low/a.py": "def f():\n  from pkg.high import x\n",
      "pkg/high/__init__.py": "",
      "pkg/high/x.py": "from pkg.low import a\n",
  })
  g = import_graph(root)
  assert cycles(g) == [("pkg.high.x", "pkg.low.a")]
  rooms = {"pkg.low": "low", "pkg.high": "high"}
  allowed = {"low": set(), "high": {"low"}}
  assert forbidden_edges(g, rooms, allowed, "pkg") == {("pkg.low.a", "pkg.high.x")}
  assert room_graph(g, rooms, "pkg") == {"low": {"high"}, "high": {"low"}}
  assert cycles(room_graph(g, rooms, "pkg")) == [("high", "low")]
  assert closure(g, "pkg.high.x") == {"pkg.low.a", "pkg.high.x"}


def test_room_lookup_takes_the_longest_prefix():
  assert room_of("focus_jax.train.config", ROOM_OF) == "config"
  assert room_of("focus_jax.train.steps", ROOM_OF) == "train"
  assert room_of("focus_jax.training", ROOM_OF) is None
  assert room_of("focus_jax.cli", ROOM_OF) == "commands"
