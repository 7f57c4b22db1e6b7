"""Start-up times of `import probe` and of the commands that should answer at once, each
against `python -c "import torch"` measured in the same run.

    python benchmarks/bench_start.py [--repeat 7]

Every command runs in a fresh interpreter; the commands take turns (one of each per
round), so a change in the machine's load touches them all alike, and the median of the
rounds is reported.  The console script is the one installed next to this Python (a
pyenv shim in front of it adds its own start-up).  Goal: each command under 1 s, and
`import probe` at most `import torch` + 0.3 s (and the API's first use
as well).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from probe import store


def console_script():
    here = os.path.join(os.path.dirname(sys.executable), "probe")
    return here if os.path.exists(here) else shutil.which("probe")


def small_file(folder):
    path = os.path.join(folder, "small.h5")
    feats = {(t, f"blocks.{b}"): np.zeros((64, 128), np.float32) for t in (10, 100) for b in range(4)}
    return store.write_features(path, feats, labels=np.arange(64) % 10,
                                attrs={"model": "bench", "command": "bench_start.py"})


def commands(script, path):
    py = [sys.executable, "-c"]
    return {
        "python -c pass": py + ["pass"],
        "python -c 'import torch'": py + ["import torch"],
        "python -c 'import probe'": py + ["import probe"],
        "probe --help": [script, "--help"],
        "probe models": [script, "models"],
        "probe info FILE": [script, "info", path],
        "probe extract --help": [script, "extract", "--help"],
        "probe fit --help": [script, "fit", "--help"],
        "probe compare --help": [script, "compare", "--help"],
        "probe cka --help": [script, "cka", "--help"],
        "probe train ldae --help": [script, "train", "ldae", "--help"],
        "probe demo --help": [script, "demo", "--help"],
        # the API's first use pulls in torch
        "python -c 'import probe; probe.extract'": py + ["import probe; probe.extract"],
        "python -c 'import probe; probe.fit'": py + ["import probe; probe.fit"],
    }


def run_once(argv):
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(console_script(), small_file(tmp))
        for argv in cmds.values():  # warm the page cache and the .pyc files
            run_once(argv)
        load_before = os.getloadavg()[0]
        times = {name: [] for name in cmds}
        for _ in range(args.repeat):
            for name, argv in cmds.items():
                times[name].append(run_once(argv))
        load_after = os.getloadavg()[0]
    med = {name: statistics.median(ts) for name, ts in times.items()}
    torch_s = med["python -c 'import torch'"]
    print(f"{os.cpu_count()} cores, load average {load_before:.2f} before, {load_after:.2f} "
          f"after; median of {args.repeat} rounds")
    print(f"{'command':<46} {'median s':>9} {'vs import torch':>16}  (min-max s)")
    for name, ts in times.items():
        print(f"{name:<46} {med[name]:>9.3f} {med[name] / torch_s:>15.2f}x  "
              f"({min(ts):.3f}-{max(ts):.3f})")
    probe_s = med["python -c 'import probe'"]
    print(f"import probe - import torch: {probe_s - torch_s:+.3f} s")


if __name__ == "__main__":
    main()
