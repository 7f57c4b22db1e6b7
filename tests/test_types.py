"""The package's type hints: mypy checks all of it (with check_untyped_defs; its settings
are in pyproject.toml), and every public function says what it takes and returns."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "probe"


def test_package_type_checks():
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout


def _functions(body):
    """Functions defined at module level or in a class (nested classes too), not those
    defined inside other functions."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body)
        elif isinstance(node, (ast.If, ast.Try)):
            yield from _functions(node.body + node.orelse)


def unannotated(source):
    """'name (what is missing)' for each public function of ``source`` (a module's text)
    without a type for every parameter (self and cls aside) and for its return."""
    out = []
    for fn in _functions(ast.parse(source).body):
        if fn.name.startswith("_"):
            continue
        a = fn.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
        missing = [p.arg for p in params if p.annotation is None and p.arg not in ("self", "cls")]
        missing += ["return"] if fn.returns is None else []
        if missing:
            out.append(f"{fn.name}:{fn.lineno} ({', '.join(missing)})")
    return out


def test_every_public_function_is_annotated():
    bad = [f"{path.relative_to(ROOT)}: {f}" for path in sorted(PACKAGE.rglob("*.py"))
           for f in unannotated(path.read_text())]
    assert not bad, "public functions without full type hints:\n" + "\n".join(bad)


def test_the_annotation_check_sees_what_is_missing():
    source = ("def ok(a: int, *b: str, c: float = 1, **d: int) -> None: ...\n"
              "def no_return(a: int): ...\n"
              "def no_param(self, a, *, b: int) -> int: ...\n"
              "def _private(a): ...\n"
              "class C:\n"
              "    def method(self, x) -> int:\n"
              "        def inner(y): ...\n"
              "    def __init__(self, z): ...\n"
              "    @property\n"
              "    def prop(self): ...\n")
    assert unannotated(source) == ["no_return:2 (return)", "no_param:3 (a)", "method:6 (x)",
                                   "prop:10 (return)"]
