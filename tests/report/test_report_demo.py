"""The demo's pages from cached sections: intervals on the test size, ties named."""
from matplotlib.image import imread
from scipy.stats import binomtest

from probe.report.demo import plot_linear_vs_t, plot_versus, write_report


def _ci(top1, n):
    c = binomtest(round(top1 * n), n).proportion_ci(method="wilson")
    return f"[{100 * c.low:.1f}, {100 * c.high:.1f}]"


def _lin(t, block, top1):
    return dict(t=t, block=block, head="linear", top1=top1, params=1290)


SIZES = dict(train=2000, test=1000)
GRID = [_lin(10, "b0", 0.780), _lin(100, "b0", 0.700), _lin(10, "b1", 0.802),
        _lin(100, "b1", 0.650)]
MODEL = dict(name="m", ts=[10, 100], blocks=["b0", "b1"], grid=GRID, best=GRID[2], dir="m",
             sizes=SIZES, heads=[GRID[2], dict(GRID[2], head="mlp", top1=0.81, params=9000)])
REF_GRID = [dict(_lin(None, "r0", 0.5)), dict(_lin(None, "r1", 0.9))]
REF = dict(name="ref", ts=None, blocks=["r0", "r1"], grid=REF_GRID, best=REF_GRID[1], dir="ref",
           sizes=SIZES, heads=[REF_GRID[1]])


def test_report_pages(tmp_path):
    path = write_report(tmp_path, [MODEL, REF], [], 60.0)
    text = open(path).read()
    assert f"| m | t=10, b1 (1 more tied) | 80.2 {_ci(0.802, 1000)} | 81.0 {_ci(0.81, 1000)} |" in text
    assert f"| ref (reference, no t) | r1 | 90.0 {_ci(0.9, 1000)} | – |" in text
    assert (f"the best key is t=10, b1 (80.2 % {_ci(0.802, 1000)}), tied within the 95 % "
            "intervals with t=10, b0 (78.0 %)") in text
    assert f"the worst is t=100, b1 (65.0 % {_ci(0.65, 1000)})" in text
    assert f"The dashed level is ref's best linear probe (r1, 90.0 % {_ci(0.9, 1000)})" in text
    assert "<h2>m</h2>" in (tmp_path / "index.html").read_text()


def test_demo_figures(tmp_path):
    levels = [dict(name="ref", block="r1", top1=0.9)]
    assert imread(plot_linear_vs_t(GRID, levels, 1000, tmp_path / "a.png")).ndim == 3
    rows = [dict(t=t, block=b, cka=0.5) for t in (10, 100) for b in ("b0", "b1")]
    vs = [dict(model="m", reference="ref", ref_block="r1", against_last=rows)]
    assert imread(plot_versus(vs, tmp_path / "v.png")).ndim == 3
