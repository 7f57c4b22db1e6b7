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


def test_readme_has_the_two_setup_commands():
    setup = [b for b in blocks("bash") if "pip install" in b]
    assert len(setup) == 2
    assert "probe demo" in setup[0] and "pytest" in setup[1]


@pytest.mark.slow
def test_readme_shell_and_python_blocks_run(tmp_path):
    shell = [b for b in blocks("bash") if "pip install" not in b]
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
