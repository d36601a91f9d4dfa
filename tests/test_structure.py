"""The package structure (docs/layout.md): no import cycles in any of the project's packages
(imports inside functions included); the runtime input path (data_pipeline) imports neither the
offline data construction nor progress_jax; data construction never imports progress_jax (the
teacher's device call is injected); evaluation never imports training; the model layer never
imports the trainers; only progress_jax/models/ knows the Qwen2.5-VL code (tools and configs
included; the tests alone may import it)."""

import ast
import functools
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ("progress_jax", "data_pipeline", "data_construction")
PACKAGES = LIBRARY + ("tools", "configs", "tests")


def modules() -> dict[str, str]:
    """{dotted module name: file path} of every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(directory, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: str, known) -> set[str]:
    """The project modules `name` imports anywhere in its file, with the packages each import
    runs first (importing a.b.c runs a/__init__ and a/b/__init__). The importer's own enclosing
    packages are already being imported: an edge to one only where it takes a name defined there
    (`from package import function`), not a submodule."""
    is_package = path.endswith("__init__.py")
    parts = name.split(".")
    own = {".".join(parts[:i]) for i in range(1, len(parts))}

    def chain(module):
        p = module.split(".")
        return {".".join(p[:i]) for i in range(1, len(p) + 1)} & set(known) - own

    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            for a in node.names:
                found |= chain(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= chain(base)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found |= chain(sub) if sub in known else {base} & set(known)
    found.discard(name)
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, mods) for name, path in mods.items()}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `g` (as a path that ends where it starts), or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(g[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(g):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_import_cycles():
    found = cycle(graph())
    assert found is None, "import cycle: " + " -> ".join(found)


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def imported(importers: str, targets: tuple[str, ...]) -> dict[str, list[str]]:
    """{module under `importers`: the modules under `targets` it imports}, for those that import any."""
    out = {}
    for m, found in graph().items():
        if m == importers or m.startswith(importers + "."):
            bad = sorted(t for t in found if any(t == p or t.startswith(p + ".") for p in targets))
            if bad:
                out[m] = bad
    return out


def test_the_runtime_input_path_never_imports_construction_or_the_trainers():
    assert imported("data_pipeline", ("data_construction", "progress_jax")) == {}


def test_data_construction_never_imports_progress_jax():
    assert imported("data_construction", ("progress_jax",)) == {}


def test_evaluation_never_imports_training():
    assert imported("progress_jax.eval", ("progress_jax.train",)) == {}


def test_the_model_layer_never_imports_the_trainers():
    assert imported("progress_jax.models", ("progress_jax.train",)) == {}


def test_only_the_model_layer_imports_qwen2_5_vl():
    # Everything but the tests goes through the family registry (progress_jax/models/families.py).
    bad = {}
    for package in LIBRARY + ("tools", "configs"):
        bad |= imported(package, ("progress_jax.models.qwen2_5_vl",))
    assert {m: t for m, t in bad.items() if not m.startswith("progress_jax.models")} == {}


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("from . import c\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")
    known = {"pkg": "", "pkg.a": "", "pkg.b": "", "pkg.c": ""}
    g = {m: imports(m, str(tmp_path / "pkg" / f"{m.split('.')[-1]}.py"), known) for m in ("pkg.a", "pkg.b", "pkg.c")}
    assert g == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert cycle(g) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
