"""Shared cores: how `probe fit` and `probe extract` slow down when another CPU-bound
process runs, at each thread setting, measured side by side in one run.

    python benchmarks/bench_threads.py [--repeat 3]

Workloads (each the whole command, start-up included, in a fresh process): a linear probe
(`probe fit --solver sgd`, 20 epochs on 9,000 x 128 synthetic features, 10 classes) and two
extractions of 1,024 demo images (`ldae-fmnist`, `adm-fmnist`).  Settings: torch's own
default (one OpenMP thread per core, spin-waiting; torch is imported before probe can set
the wait policy, which is how probe ran before), `--threads 1`, probe's default (no
`--threads`: one thread per core, waiting passively) and `--threads N` (N = cores).  Each
runs on the idle machine, next to a Python loop (`while True: pass`, one core), and next to
a torch job (small matmuls at torch's default threads, as another user's job would run).
Expected with the cores shared: about 2x slower, not 20x.  Median of ``--repeat`` runs,
the settings taking turns.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from probe import store

CORES = len(os.sched_getaffinity(0))


def settings():
    """name -> (flags, whether torch is imported before probe sets the wait policy)."""
    n = str(CORES)
    return {
        f"torch default ({n} threads, spin-waiting)": ([], True),  # probe before this change
        "--threads 1": (["--threads", "1"], False),
        "probe default (no --threads)": ([], False),
        f"--threads {n}": (["--threads", n], False),
    }


def workloads(tmp):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 9000)
    x = rng.normal(size=(9000, 128)).astype(np.float32) + y[:, None] * 0.05
    feats = store.write_features(os.path.join(tmp, "f.h5"), {(10, "b"): x}, labels=y)
    extract = ["extract", "--t", "10", "--blocks", "2", "--limit", "1024", "--quiet", "--overwrite"]
    return {
        "fit linear --solver sgd": ["fit", feats, "--solver", "sgd", "--epochs", "20", "--quiet",
                                    "--overwrite", "--out", os.path.join(tmp, "fit.json")],
        "extract ldae-fmnist": extract + ["--model", "ldae-fmnist", "--out", os.path.join(tmp, "l.h5")],
        "extract adm-fmnist": extract + ["--model", "adm-fmnist", "--out", os.path.join(tmp, "a.h5")],
    }


def run(argv, flags, torch_first):
    """Wall time of `probe ARGV FLAGS` in a fresh process."""
    code = ("import torch; " if torch_first else "") + (
        "import sys; from probe.cli import main; sys.exit(main(sys.argv[1:]))")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *argv, *flags], check=True,
                   env=clean_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def clean_env():
    """The environment without the thread settings this benchmark compares."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}


def measure(work, sets, repeat):
    """{(workload, setting): median seconds}, the settings taking turns."""
    times = {(w, s): [] for w in work for s in sets}
    for _ in range(repeat):
        for w, argv in work.items():
            for s, setting in sets.items():
                times[w, s].append(run(argv, *setting))
    return {k: statistics.median(v) for k, v in times.items()}


COMPETITORS = {
    "python loop": "while True: pass",
    "torch job": "import torch\na = torch.randn(64, 64)\nwhile True:\n    a = torch.tanh(a @ a)",
}


def with_competitor(code, fn):
    """fn() while ``code`` runs in another process."""
    proc = subprocess.Popen([sys.executable, "-c", code], env=clean_env())
    try:
        time.sleep(3)  # let it start (torch takes seconds to import)
        return fn()
    finally:
        proc.kill()
        proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    sets = settings()
    with tempfile.TemporaryDirectory() as tmp:
        work = workloads(tmp)
        for argv in work.values():  # warm-up: page cache, .pyc files
            run(argv, *sets["--threads 1"])
        phases, loads = {}, [os.getloadavg()[0]]
        phases["idle"] = measure(work, sets, args.repeat)
        loads.append(os.getloadavg()[0])
        for name, code in COMPETITORS.items():
            print(f"{len(phases)} phase(s) done, load average {loads[-1]:.2f}", flush=True)
            phases[name] = with_competitor(code, lambda: measure(work, sets, args.repeat))
            loads.append(os.getloadavg()[0])
    print(f"{CORES} cores; load average {loads[0]:.2f} before, then at the end of each phase "
          f"{', '.join(f'{x:.2f}' for x in loads[1:])} (this benchmark counts in it); median "
          f"of {args.repeat} runs, in s, and the slow-down against idle")
    print(f"{'workload':<24} {'setting':<38} {'idle':>5}" + "".join(f" {c:>17}" for c in COMPETITORS))
    for w in work:
        for s in sets:
            idle = phases["idle"][w, s]
            print(f"{w:<24} {s:<38} {idle:>5.1f}" + "".join(
                f" {phases[c][w, s]:>9.1f} ({phases[c][w, s] / idle:>4.1f}x)" for c in COMPETITORS))


if __name__ == "__main__":
    main()
