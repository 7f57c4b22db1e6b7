"""Start-up: `import probe`, `probe --help`, `probe models` and `probe info` import only what
they use.  Checked by what lands in sys.modules of a fresh interpreter, not by timing (the
timing is benchmarks/bench_start.py)."""
import json
import subprocess
import sys

import numpy as np
import pytest

import probe
from probe import store

HEAVY = ("torch", "sklearn", "matplotlib", "diffusers", "torchvision", "timm", "transformers")


def _loaded_after(code):
    """The heavy packages a fresh interpreter has imported after running ``code``."""
    check = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cli(*argv):
    """`probe ARGV` in a subprocess, as the console script runs it (exit codes kept)."""
    return f"import sys\nfrom probe.cli import main\ntry:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass"


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("start") / "f.h5")
    store.write_features(path, {(10, "blocks.1"): np.zeros((4, 8), np.float32)},
                         labels=[0, 1, 0, 1], class_names=["a", "b"],
                         attrs={"model": "m", "model_blocks": ["blocks.0", "blocks.1"]})
    return path


def test_import_probe_loads_no_heavy_package():
    assert _loaded_after("import probe") == []


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["extract", "--help"],
                                  ["fit", "--help"], ["cka", "--help"], ["train", "ldae", "--help"]])
def test_help_and_models_do_not_import_torch(argv):
    assert _loaded_after(_cli(*argv)) == []


def test_info_does_not_import_torch(small_file):
    assert _loaded_after(_cli("info", small_file)) == []


def test_the_api_names_resolve_to_their_modules():
    from probe.pipeline.run import extract
    from probe.extractors.registry import load_model
    from probe.heads.fit import fit
    from probe.measures import cka, similarity
    from probe.store import open_features

    assert (probe.load_model, probe.extract, probe.open_features, probe.fit, probe.cka,
            probe.similarity) == (load_model, extract, open_features, fit, cka, similarity)
    assert set(probe.__all__) <= set(dir(probe))
    with pytest.raises(AttributeError):
        probe.no_such_name  # noqa: B018


def test_the_cli_spells_the_cka_choices_as_the_measures_do():
    from probe.cli import cka as cli_cka
    from probe.measures.core import KERNELS
    from probe.measures.result import ACROSS

    assert (cli_cka.KERNELS, cli_cka.ACROSS) == (KERNELS, ACROSS)
