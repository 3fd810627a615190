"""Compare ``bench.py --json`` runs of two builds, row by row.

Two builds cannot share one process, so run ``bench.py --json`` alternately in each build's
venv (old, new, old, new, ...: they see the same machine noise) and pass the files::

    python benchmarks/compare_bench.py --old old-1.json old-2.json --new new-1.json new-2.json

For every row it prints the median over runs of symprop's time and of its ratio to PyTorch
(measured side by side inside each run), for each build, and new/old of both.
"""
from __future__ import annotations

import argparse
import json
import statistics


def rows(paths: list[str]) -> dict:
    out: dict = {}
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        for r in data["rows"]:
            out.setdefault((r["case"], r["what"]), []).append(r)
        if data.get("digits"):
            d = data["digits"]
            ratio = d.get("ratio") or d.get("ratio_sklearn")
            if ratio is not None:
                out.setdefault(("digits fit", "vs scikit-learn"), []).append(
                    {"symprop_ms": d.get("symprop_s", 0) * 1e3 if d.get("symprop_s") else None, "ratio": ratio})
    return out


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", nargs="+", required=True)
    ap.add_argument("--new", nargs="+", required=True)
    args = ap.parse_args(argv)
    old, new = rows(args.old), rows(args.new)
    print(f"{'row':50s} {'old ms':>8s} {'new ms':>8s} {'new/old':>8s} {'old/torch':>10s} {'new/torch':>10s}")
    for key in old:
        if key not in new:
            continue
        om, nm = median(r.get("symprop_ms") for r in old[key]), median(r.get("symprop_ms") for r in new[key])
        orat, nrat = median(r.get("ratio") for r in old[key]), median(r.get("ratio") for r in new[key])
        speed = f"{nm / om:8.2f}" if om and nm else f"{'-':>8s}"
        fmt = lambda v, w: f"{v:{w}.2f}" if v is not None else f"{'-':>{w}s}"  # noqa: E731
        print(f"{key[0] + ' / ' + key[1]:50s} {fmt(om, 8)} {fmt(nm, 8)} {speed} {fmt(orat, 10)} {fmt(nrat, 10)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
