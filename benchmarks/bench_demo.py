"""`probe demo` end to end at two revisions of probe, taking turns in one run.

    python benchmarks/bench_demo.py [--before 6709333] [--after WORKTREE] [--repeat 2]

``--before`` is a git revision, checked out into a temporary worktree; ``--after`` is a
folder holding the probe package (default: this checkout, uncommitted changes included).
Each run is `python -m probe demo --out NEW_FOLDER` in a fresh process with PYTHONPATH
pointing at that revision, so both use the same installed torch and the same shipped
weights of their own revision.  Default ``--before``: the last commit before issue 13
(fast start, the L-BFGS linear probe, passive thread waiting).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_seconds(tree, out):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = tree
    env["MPLBACKEND"] = "Agg"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "probe", "demo", "--out", out], check=True, env=env,
                   cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--before", default="6709333")
    p.add_argument("--after", default=ROOT)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = os.path.join(tmp, "before")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", before, args.before],
                       check=True, capture_output=True)
        try:
            trees = {f"before ({args.before})": before, "after": args.after}
            times = {k: [] for k in trees}
            loads = [os.getloadavg()[0]]
            for r in range(args.repeat):  # taking turns, so a change in load touches both
                for name, tree in trees.items():
                    times[name].append(demo_seconds(tree, os.path.join(tmp, f"out-{r}-{len(times[name])}-{name[:5]}")))
                    print(f"{name}: {times[name][-1]:.1f} s", flush=True)
            loads.append(os.getloadavg()[0])
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", before],
                           capture_output=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    b, a = med.values()
    print(f"{os.cpu_count()} cores, load average {loads[0]:.2f} before, {loads[1]:.2f} after; "
          f"median of {args.repeat}")
    for k, v in med.items():
        print(f"  {k:<22} {v:7.1f} s")
    print(f"  after / before: {a / b:.2f}")


if __name__ == "__main__":
    main()
