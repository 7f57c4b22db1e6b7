"""Accuracies with their 95 % intervals, ties with the best, and the page writer."""
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from probe.heads.metrics import tied_with_best, wilson_interval
from probe.report.pages import accuracy, error_bars, to_html, write_page


@pytest.mark.parametrize("k, n", [(805, 1000), (0, 50), (50, 50), (1, 7), (180, 200),
                                  (4999, 10000)])
def test_wilson_interval_matches_scipy(k, n):
    want = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    got = wilson_interval(k, n)
    assert got == pytest.approx((want.low, want.high), abs=1e-12)


def test_the_demo_summary_interval_is_about_2_5_points():
    lo, hi = wilson_interval(805, 1000)
    assert 2.3 < 100 * (hi - lo) / 2 < 2.6
    ci = binomtest(805, 1000).proportion_ci(method="wilson")
    assert accuracy(0.805, 1000) == f"80.5 [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"
    assert accuracy(0.805, None) == "80.5" and accuracy(None, 10) == "-"
    assert math.isnan(wilson_interval(0, 0)[0])


def test_error_bars_are_the_interval_around_the_value():
    below, above = error_bars([0.805, 1.0], [1000, 30])
    lo, hi = wilson_interval(805, 1000)
    assert below[0] == pytest.approx(100 * (0.805 - lo)) and above[0] == pytest.approx(100 * (hi - 0.805))
    assert above[1] == 0.0 and below[1] > 0  # 100 %: the interval reaches below only


def test_ties_are_the_intervals_that_overlap_the_best():
    """Against scipy's intervals, drawn here: a key is tied when its upper end reaches the
    best key's lower end."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = [int(v) for v in rng.integers(50, 2000, size=6)]
        acc = [float(v) for v in rng.uniform(0.6, 0.9, size=6)]
        cis = [binomtest(round(a * m), m).proportion_ci(method="wilson") for a, m in zip(acc, n)]
        best = int(np.argmax(acc))
        # the rounding of a * n to a count moves the bounds by < 1/n: compare with margin
        want = [c.high >= cis[best].low for c in cis]
        got = tied_with_best(acc, n)
        assert got[best]
        for g, w, c in zip(got, want, cis):
            assert g == w or abs(c.high - cis[best].low) < 2 / min(n)


def test_ties_on_the_demo_scale():
    # 1,000 test images: 80.2 vs 78.8 cannot be told apart; 80.2 vs 70.0 can
    assert tied_with_best([0.802, 0.788, 0.70], [1000] * 3) == [True, True, False]
    assert tied_with_best([], []) == []


def test_page_writer(tmp_path):
    md = ["# title", "", "| a | b |", "|---|---|", "| 1 | <2> |", "", "![fig](x.png)", "text"]
    path = write_page(tmp_path, md, title="t")
    assert open(path).read() == "\n".join(md)
    page = (tmp_path / "index.html").read_text()
    assert "<h1>title</h1>" in page and "<td>&lt;2&gt;</td>" in page
    assert '<img src="x.png" alt="fig">' in page and "<p>text</p>" in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "report.md"]
    assert to_html([]).startswith("<!doctype html>")
