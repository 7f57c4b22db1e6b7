"""The report layer: every figure and page the package draws.

Heads, measures and dense probes return results; the functions here draw them.  Every
figure goes through :func:`figures.save_figure` (one atomic write, matplotlib's object API,
no global backend), and every axis of timesteps through :func:`figures.t_axis`.

- ``figures``: the figure saver, ``new_figure`` and the t axis;
- ``pages``: accuracies with their 95 % intervals, ties with the best, markdown/HTML;
- ``heads``: `probe compare`'s table and figures, the fusion head's key weights;
- ``measures``: heatmaps and line plots of similarity results;
- ``demo``: the pages and figures of `probe demo`.

A new kind of result gets a module of its own here (e.g. ``correspond``, ``segment``).
"""
