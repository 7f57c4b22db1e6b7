"""The compare report: every accuracy with its interval, ties named, figures drawn."""
from matplotlib.image import imread

from probe.heads.metrics import wilson_interval
from probe.report.heads import markdown_table, plot_accuracy_vs_t, plot_heads, plot_key_weights
from probe.report.pages import pct


def _row(t, block, head, top1, n=1000, **kw):
    return dict(dict(t=t, block=block, head=head, top1=top1, num_eval=n, params=1290,
                     keys_in_pass=4, train_time_s=1.0, epochs_run=None, input="pooled",
                     keys=None), **kw)


ROWS = [_row(10, "b0", "linear", 0.780), _row(100, "b0", "linear", 0.700),
        _row(10, "b1", "linear", 0.802), _row(100, "b1", "linear", 0.788),
        _row(10, "b1", "mlp", 0.60, epochs_run=30), _row(10, "b0", "mlp", 0.75, epochs_run=30),
        _row(100, "b1", "mlp", 0.55, epochs_run=30), _row(100, "b0", "mlp", 0.50, epochs_run=30),
        _row(None, None, "fusion", 0.793, keys="t10/b0 + t10/b1")]
CONTEXT = dict(train="tr.h5", test="te.h5", num_train=1800, num_val=200, notes=["a note"])


def test_markdown_carries_intervals_and_ties():
    text = markdown_table(ROWS, CONTEXT)
    lo, hi = wilson_interval(802, 1000)
    assert f"80.2 [{pct(lo)}, {pct(hi)}] (1.3k)" in text
    # linear: 78.0 and 78.8 overlap 80.2's interval, 70.0 does not
    line = next(l for l in text.splitlines() if l.startswith("- linear:"))
    assert "at t10/b1" in line
    assert line.endswith("tied within the intervals: t100/b1 (78.8), t10/b0 (78.0)")
    assert "t100/b0" not in line
    mlp = next(l for l in text.splitlines() if l.startswith("- mlp:"))
    assert "at t10/b0" in mlp and "tied" not in mlp  # 75 % is clear of 60 %
    lo, hi = wilson_interval(793, 1000)
    assert f"Fusion head: one head on all 2 keys" in text and f"79.3 [{pct(lo)}, {pct(hi)}]" in text
    assert "Note: a note." in text and "95 % Wilson interval" in text


def test_figures(tmp_path):
    for draw in (plot_accuracy_vs_t, plot_heads):
        path = draw(ROWS, tmp_path / f"{draw.__name__}.png")
        assert imread(path).ndim == 3
    summary = dict(key_weights={"t10/b0": 0.3, "t10/b1": 0.7}, head_options={},
                   evaluated_on="test", top1=0.793, num_eval=1000)
    assert imread(plot_key_weights(summary, tmp_path / "w.png")).ndim == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "plot_accuracy_vs_t.png", "plot_heads.png", "w.png"]
