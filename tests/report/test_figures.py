"""The one figure saver: atomic (a failed save leaves nothing), matplotlib's object API
(the caller's backend and pyplot's figures untouched), and the shared t axis."""
import os

import matplotlib
import pytest
from matplotlib.image import imread

from probe.report.figures import new_figure, save_figure, t_axis


def test_a_saved_figure_is_a_png(tmp_path):
    fig = new_figure(3, 2)
    fig.subplots().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "sub" / "f.png")
    assert path == str(tmp_path / "sub" / "f.png")
    assert imread(path).shape[:2] == (220, 330)  # 3 x 2 inches at 110 dpi
    assert os.listdir(tmp_path / "sub") == ["f.png"]


@pytest.mark.parametrize("existing", [False, True])
def test_a_save_that_fails_leaves_no_file_and_no_temp(tmp_path, monkeypatch, existing):
    target = tmp_path / "f.png"
    if existing:
        target.write_bytes(b"the old figure")
    fig = new_figure(3, 2)
    fig.subplots().plot([0, 1], [1, 0])
    real = type(fig).savefig

    def killed(self, fname, **kw):
        real(self, fname, **kw)  # half a file is there when the run dies
        with open(fname, "r+b") as fh:
            fh.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(type(fig), "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, target)
    assert os.listdir(tmp_path) == (["f.png"] if existing else [])
    if existing:
        assert target.read_bytes() == b"the old figure"


def test_no_backend_or_pyplot_state_is_touched(tmp_path):
    import matplotlib.pyplot as plt

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    fig = new_figure(2, 2)
    fig.subplots().plot([0, 1])
    save_figure(fig, tmp_path / "f.png")
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures


@pytest.mark.parametrize("ts, scale", [([1, 10, 100, 500], "log"), ([10, 50, 100], "linear"),
                                       ([0, 10, 100], "linear")])
def test_t_axis(ts, scale):
    ax = new_figure(3, 2).subplots()
    ax.plot(ts, range(len(ts)))
    t_axis(ax, list(reversed(ts)))
    assert ax.get_xscale() == scale  # log from a 20x span, never with t = 0
    assert list(ax.get_xticks()) == sorted(ts)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(t) for t in sorted(ts)]
    assert ax.get_xlabel() == "timestep t"


def test_every_figure_is_saved_here():
    """One figure saver: no module but report/figures.py calls savefig, builds a Figure,
    imports pyplot or sets matplotlib's backend."""
    import pathlib

    package = pathlib.Path(__file__).resolve().parents[2] / "probe"
    found = [f"{p.relative_to(package)}: {word}" for p in package.rglob("*.py")
             if p != package / "report" / "figures.py"
             for word in ("savefig", "pyplot", "matplotlib.use", "Figure(")
             if word in p.read_text()]
    assert not found
