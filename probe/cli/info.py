"""`probe info FILE`: how a feature file was made, and what it holds."""
import json
import os

from ..errors import ProbeError


def register(sub):
    p = sub.add_parser("info", help="print how a feature file was made and what it holds")
    p.add_argument("file")
    p.set_defaults(func=run)


def run(args):
    import h5py

    from ..store import FORMAT, _read_attr

    path = args.file
    if not os.path.exists(path):
        partial = f"{path}.partial"
        if os.path.isdir(partial):
            n = len(os.listdir(os.path.join(partial, "parts")))
            print(f"{path}: not written yet; {partial} holds an unfinished run ({n} parts): "
                  "re-run the same `probe extract` command to finish it")
            return 0
        raise ProbeError(f"file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ProbeError(f"{path} is not a readable HDF5 file (truncated or corrupt?)") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise ProbeError(f"{path} is not a probe feature file (made by another tool?)")
        print(f"{path}  ({os.path.getsize(path) / 2**20:.1f} MiB)")
        print(f"  status: {'complete' if f.attrs.get('complete') else 'INCOMPLETE'}")
        for k in sorted(f.attrs):
            if k in ("format", "complete", "settings"):
                continue
            v = _read_attr(f.attrs[k])
            text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
            print(f"  {k}: {text}")
        print("  features:")
        for tname in f.get("features", {}):
            for block, ds in f["features"][tname].items():
                print(f"    {tname}/{block}: {ds.shape} {ds.dtype}")
        names = [s.decode() if isinstance(s, bytes) else s for s in f["class_names"][...]]
        print(f"  classes ({len(names)}): {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    return 0
