"""The one figure saver and the axes every plot shares.

Figures are built with matplotlib's object API (``Figure`` + its Agg canvas), never
``pyplot`` or ``matplotlib.use``: library code must not change the caller's backend, and a
figure that is not registered with pyplot cannot leak between calls.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from ..files import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_figure(width: float, height: float, **kwargs: Any) -> Figure:
    """A figure of ``width`` x ``height`` inches, not managed by pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), **kwargs)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110, **kwargs: Any) -> str:
    """Write ``fig`` to ``path`` atomically: a killed run leaves the old file or none, never
    half a PNG that looks complete."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # the object API's figures draw through an explicit canvas
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, **kwargs)
    return os.fspath(path)


def t_axis(ax: Axes, ts: Sequence[float], label: str = "timestep t") -> None:
    """Timesteps on the x axis: log-spaced when they span 20x or more, ticked at each t."""
    ts = sorted(ts)
    if ts and ts[0] > 0 and ts[-1] / ts[0] >= 20:
        ax.set_xscale("log")
    ax.set_xticks(list(ts), [f"{t:g}" for t in ts])
    ax.minorticks_off()
    ax.set_xlabel(label)


LOG_SNR = "log-SNR  log(α²/σ²)"


def log_snr_axis(ax: Axes, values: Sequence[float], label: str = LOG_SNR) -> None:
    """log-SNR on the x axis (linear: it is already a log), noisy on the left, with ticks
    at whole numbers over the range the values span."""
    import numpy as np

    finite = [v for v in values if np.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite)
        step = max(1, int(np.ceil((hi - lo) / 8)))
        ax.set_xticks(np.arange(np.floor(lo), np.ceil(hi) + step, step))
    ax.set_xlabel(label)
