"""Batched L-BFGS: many independent problems of the same shape minimised together, each
with its own curvature history, step size and stopping test.

The parameters of n problems are one tensor (n, a, b).  Every evaluation of the objective
is one call for the problems still running, so a caller can serve all of them from one
pass over its data; a problem that backtracks in its line search, or has converged,
holds back no other.
"""
from collections.abc import Callable, Sequence

import numpy as np
import torch

HISTORY = 10           # curvature pairs kept per problem
LINE_SEARCH_STEPS = 20
ARMIJO = 1e-4


def _dot(a, b):
    return (a * b).sum((1, 2))


def _direction(G, state, precond):
    """-H G by the two-loop recursion over each problem's own history (an empty slot,
    with rho 0, is a no-op)."""
    S, Y, rho = state["S"], state["Y"], state["rho"]
    q, alphas = G.clone(), []
    for j in reversed(range(S.shape[1])):
        a = rho[:, j] * _dot(S[:, j], q)
        q -= a[:, None, None] * Y[:, j]
        alphas.append(a)
    q = state["gamma"][:, None, None] * precond(q)
    for j, a in zip(range(S.shape[1]), reversed(alphas)):
        q += (a - rho[:, j] * _dot(Y[:, j], q))[:, None, None] * S[:, j]
    return -q


def new_state(P: torch.Tensor) -> dict[str, torch.Tensor]:
    """No curvature pairs yet, unit scale."""
    empty = P.new_zeros((P.shape[0], 0) + P.shape[1:])
    return dict(S=empty, Y=empty.clone(), rho=P.new_zeros(P.shape[0], 0),
                gamma=P.new_ones(P.shape[0]))


def _remember(state, s, y, moved):
    """Append the pair (s, y) to the history of the problems that ``moved``; the others
    keep theirs, so one that stopped early loses none of its pairs to the others' steps."""
    sy = _dot(s, y)
    rho = torch.where(moved & (sy > 0), 1 / sy, torch.zeros_like(sy))
    for name, new in (("S", s), ("Y", y), ("rho", rho)):
        old = state[name]
        grown = torch.cat([old, new[:, None]], 1)
        padded = torch.cat([torch.zeros_like(new[:, None]), old], 1)
        mask = moved.view((-1,) + (1,) * (old.ndim - 1))
        state[name] = torch.where(mask, grown, padded)[:, -HISTORY:]
    return rho


def lbfgs(fun: Callable[[torch.Tensor, np.ndarray], tuple[torch.Tensor, torch.Tensor]],
          P: torch.Tensor, precond: Callable[[torch.Tensor], torch.Tensor],
          state: dict[str, torch.Tensor], max_iter: int, tol: float
          ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Minimise n problems from P (n, a, b).  ``fun(P_sub, idx) -> (f, G)`` evaluates the
    problems ``idx`` (a numpy array) at P_sub (len(idx), a, b); ``precond(q)`` applies
    the initial inverse Hessian to (n, a, b); ``state`` (see :func:`new_state`): the
    curvature pairs and scales to start from, updated in place.

    A problem has converged when its largest gradient entry is at most ``tol`` (the test
    of scikit-learn's lbfgs) and so is the decrease the next step predicts, -g.d/2.  The second test
    matters after a warm start from a nearby problem: the gradient can then be small
    while the optimum is still far, along directions of low curvature.  A problem also
    stops after ``max_iter`` iterations, or when no step lowers its objective (float
    precision).  Returns P, f, and per problem the iterations, the evaluations and
    whether it converged."""
    n = P.shape[0]
    f, G = fun(P, np.arange(n))
    iters, passes = np.zeros(n, int), np.ones(n, int)
    running, met = np.ones(n, bool), np.zeros(n, bool)
    while True:
        d = _direction(G, state, precond)
        gd = _dot(G, d)
        uphill = gd >= 0  # not in exact arithmetic: fall back to the preconditioned gradient
        if uphill.any():
            d[uphill] = -precond(G)[uphill]
            gd = _dot(G, d)
        met = ((G.abs().amax((1, 2)) <= tol) & (-gd / 2 <= tol)).cpu().numpy()
        running &= ~met & (iters < max_iter)
        if not running.any():
            break
        step = torch.ones_like(gd)
        new_P, new_f, new_G = P.clone(), f.clone(), G.clone()
        searching = running.copy()
        for _ in range(LINE_SEARCH_STEPS):
            idx = np.flatnonzero(searching)
            if not len(idx):
                break
            i = torch.as_tensor(idx, device=P.device)
            t = step[i]
            trial = P[i] + t[:, None, None] * d[i]
            ft, Gt = fun(trial, idx)
            passes[idx] += 1
            # Armijo, and a strict decrease: at float precision the bound rounds to f
            ok = (ft <= f[i] + ARMIJO * t * gd[i]) & (ft < f[i])
            new_P[i[ok]], new_f[i[ok]], new_G[i[ok]] = trial[ok], ft[ok], Gt[ok]
            searching[idx[ok.cpu().numpy()]] = False
            # backtrack to the minimum of the quadratic through f, gd and ft, in [t/10, t/2]
            quad = -gd[i] * t * t / (2 * (ft - f[i] - gd[i] * t))
            quad = torch.where(torch.isfinite(quad), quad, t / 2)
            step[i] = torch.minimum(torch.maximum(quad.to(t.dtype), t / 10), t / 2)
        s, y = new_P - P, new_G - G
        moved = torch.as_tensor(running & ~searching, device=P.device)
        rho = _remember(state, s, y, moved)
        state["gamma"] = torch.where(rho > 0, _dot(s, y) / _dot(y, precond(y)), state["gamma"])
        P, f, G = new_P, new_f, new_G
        iters[running] += 1
        running &= ~searching
    return P, f, iters, passes, met


def keep_state(state: dict[str, torch.Tensor], keep: Sequence[int] | np.ndarray
               ) -> dict[str, torch.Tensor]:
    """The state of the problems ``keep`` (indices) only."""
    k = torch.as_tensor(keep, dtype=torch.long, device=state["gamma"].device)
    return {name: v[k] for name, v in state.items()}
