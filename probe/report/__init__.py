"""The report layer: every figure and page the package draws.

Heads, measures and dense probes return results; the functions here draw them.  Every
figure goes through :func:`figures.save_figure` (one atomic write, matplotlib's object API,
no global backend), and every axis of timesteps through :func:`figures.t_axis`.
"""
