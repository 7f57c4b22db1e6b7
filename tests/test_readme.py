"""Every command the README shows is run here (the set-up commands are what CI runs)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks(lang):
    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read()
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


LONG = "# about an hour; tests/"


def test_long_readme_blocks_name_an_existing_test():
    long = [b for b in blocks("bash") if b.startswith(LONG)]
    for b in long:
        test = b.splitlines()[0].split("tests/", 1)[1].split()[0]
        assert os.path.exists(os.path.join(ROOT, "tests", test)), b


def test_readme_has_the_two_setup_commands():
    setup = [b for b in blocks("bash") if "pip install" in b]
    assert len(setup) == 2
    assert "probe demo" in setup[0] and "pytest" in setup[1]


@pytest.mark.slow
def test_readme_shell_and_python_blocks_run(tmp_path):
    # Blocks that take an hour say so on their first line and name the test that runs
    # them on a few images instead.
    shell = [b for b in blocks("bash") if "pip install" not in b and not b.startswith(LONG)]
    assert shell
    env = dict(os.environ, MPLBACKEND="Agg")
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    for block in shell:
        r = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"README block failed:\n{block}\n{r.stderr[-2000:]}"
    namespace = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for block in blocks("python"):
            exec(compile(block, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)


def test_ci_runs_the_readme_test_command():
    setup = [b for b in blocks("bash") if "pip install" in b][1]
    command = setup.strip().split("&&")[-1].strip()
    with open(os.path.join(ROOT, ".ci", "run")) as fh:
        assert command in [line.strip() for line in fh]
