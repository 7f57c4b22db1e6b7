"""Shared cores: how `probe fit` and `probe extract` slow down when another CPU-bound
process takes one core, at each thread setting, measured side by side in one run.

    python benchmarks/bench_threads.py [--repeat 3] [--busy 1]

Workloads (each the whole command, start-up included, in a fresh process): a linear probe
(`probe fit --solver sgd`, 9,000 x 128 synthetic features, 10 classes) and two extractions
of 512 demo images (`ldae-fmnist`, `adm-fmnist`).  Settings: torch's own default (one
OpenMP thread per core, spin-waiting; torch is imported before probe can set the wait
policy, which is how probe ran before), `--threads 1`, and probe's default (no
`--threads`: one thread per core, waiting passively) and `--threads N` (N = cores).  Each
runs on the idle machine and next to ``--busy`` processes spinning `while True: pass`.
Expected with half the cores taken: about 2x slower, not 20x.  Median of ``--repeat``
runs, the settings taking turns.
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
    extract = ["extract", "--t", "10", "--blocks", "2", "--limit", "512", "--quiet", "--overwrite"]
    return {
        "fit linear --solver sgd": ["fit", feats, "--solver", "sgd", "--epochs", "10", "--quiet",
                                    "--overwrite", "--out", os.path.join(tmp, "fit.json")],
        "extract ldae-fmnist": extract + ["--model", "ldae-fmnist", "--out", os.path.join(tmp, "l.h5")],
        "extract adm-fmnist": extract + ["--model", "adm-fmnist", "--out", os.path.join(tmp, "a.h5")],
    }


def run(argv, flags, torch_first):
    """Wall time of `probe ARGV FLAGS` in a fresh process."""
    code = ("import torch; " if torch_first else "") + (
        "import sys; from probe.cli import main; sys.exit(main(sys.argv[1:]))")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *argv, *flags], check=True,
                   env=clean, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(work, sets, repeat):
    """{(workload, setting): median seconds}, the settings taking turns."""
    times = {(w, s): [] for w in work for s in sets}
    for _ in range(repeat):
        for w, argv in work.items():
            for s, setting in sets.items():
                times[w, s].append(run(argv, *setting))
    return {k: statistics.median(v) for k, v in times.items()}


def spinners(n):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--busy", type=int, default=1, help="competing busy processes")
    args = p.parse_args()
    sets = settings()
    with tempfile.TemporaryDirectory() as tmp:
        work = workloads(tmp)
        for argv in work.values():  # warm-up: page cache, .pyc files
            run(argv, *sets["--threads 1"])
        loads = [os.getloadavg()[0]]
        idle = measure(work, sets, args.repeat)
        loads.append(os.getloadavg()[0])
        print(f"idle phase done, load average {loads[0]:.2f} -> {loads[1]:.2f}", flush=True)
        procs = spinners(args.busy)
        try:
            busy = measure(work, sets, args.repeat)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        loads.append(os.getloadavg()[0])
    print(f"{CORES} cores; load average {loads[0]:.2f} before the idle runs, {loads[1]:.2f} "
          f"after them (this benchmark's own process counts); {args.busy} busy process(es) in "
          f"the second column, load average {loads[2]:.2f} at its end; median of {args.repeat}")
    print(f"{'workload':<26} {'setting':<40} {'idle s':>7} {'busy s':>7} {'busy/idle':>9}")
    for w in work:
        for s in sets:
            a, b = idle[w, s], busy[w, s]
            print(f"{w:<26} {s:<40} {a:>7.1f} {b:>7.1f} {b / a:>8.1f}x")

if __name__ == "__main__":
    main()
