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
