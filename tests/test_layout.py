"""The house rules that keep the code readable in an afternoon: small modules, short
functions (or a comment above the def that says why not), and an `import probe` that
does not pay for what it does not use."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "probe"
MAX_MODULE, MAX_FUNCTION = 400, 80


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_over_400_lines():
    big = {str(p.relative_to(PACKAGE)): n for p in _modules()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE}
    assert not big, f"split these by job: {big}"


def test_no_function_over_80_lines_without_a_reason():
    long = []
    for p in _modules():
        lines = p.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                size = node.end_lineno - first + 1
                said_why = first >= 2 and lines[first - 2].strip().startswith("# long:")
                if size > MAX_FUNCTION and not said_why:
                    long.append(f"{p.relative_to(PACKAGE)}:{node.name} ({size} lines)")
    assert not long, f"split these, or say why above the def (# long: ...): {long}"


def test_no_subpackage_is_shadowed_by_a_name_of_the_api():
    import probe

    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert not (set(probe.__all__) & (subpackages | modules))


def _module_name(path, package):
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree):
    """The import nodes under ``if TYPE_CHECKING:`` (they never run)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return skip


def import_graph(package=PACKAGE):
    """module -> the package modules it imports anywhere (at the top or inside functions),
    except under TYPE_CHECKING.  ``from X import name`` is an edge to ``X.name`` where that
    is a module, else to ``X``.  A package's ``__init__`` is a node but has no edges: its
    re-exports run after its submodules are importable and are not the circles we mean."""
    paths = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        graph[name] = set()
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        skip = _type_checking_only(tree)
        here = name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                src = (f"{base}.{node.module}" if node.module else base) if node.level \
                    else node.module or ""
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in paths else src
                           for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in paths and t != name)
    return graph


def find_cycle(graph):
    """One import circle (a list of modules, first = last) or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_circle_check_sees_circles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .b import g\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    from .. import b\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.b", "pkg.sub.c", "pkg.b"]
    (pkg / "sub" / "c.py").write_text("def f():\n    from ..a import f\n")
    assert find_cycle(import_graph(pkg)) is None
