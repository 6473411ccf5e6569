"""B5 data: a seeded reference, a drifted current and a 100k-row new window, as Parquet in .bench/b5.

20 numeric columns (normals, lognormals, mixtures, integer counts, one with 1 % nulls) and 5 string
categoricals (a short one, two long-tailed ones with 300 and 2000 categories, one whose current adds
categories never seen in the reference). `SPEC` says per column how the current side differs and the
intended class: "strong" (every method should flag it), "mild" (a test on 1M rows sees it, PSI does
not), "unseen" (new categories) or "none". The window is drawn from the current distribution.

    python benchmarks/b5_data.py                 # 1M x 1M + 100k window   -> .bench/b5/full
    python benchmarks/b5_data.py --rows 100000   # quick                   -> .bench/b5/r100000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from b5_common import CATEGORICAL, NUMERIC  # noqa: E402

DATA = HERE.parent / ".bench" / "b5"
SEED = 20250605
FULL_ROWS, FULL_WINDOW = 1_000_000, 100_000
SPLITS = {"reference": 0, "current": 1, "window": 2}

# column -> (generator kind, reference params, current params, class)
SPEC: dict[str, tuple[str, dict, dict, str]] = {
    "num_00": ("normal", {"loc": 0.0, "scale": 1.0}, {"loc": 0.8, "scale": 1.0}, "strong"),
    "num_01": ("normal", {"loc": 10.0, "scale": 2.0}, {"loc": 10.03, "scale": 2.0}, "mild"),
    "num_02": ("normal", {"loc": -5.0, "scale": 0.5}, {"loc": -5.0, "scale": 0.5}, "none"),
    "num_03": ("normal", {"loc": 100.0, "scale": 15.0}, {"loc": 100.0, "scale": 15.0}, "none"),
    "num_04": ("mixture", {"w": 0.3}, {"w": 0.65}, "strong"),
    "num_05": ("lognormal", {"mean": 0.0, "sigma": 1.0}, {"mean": 1.0, "sigma": 1.0}, "strong"),
    "num_06": ("lognormal", {"mean": 2.0, "sigma": 0.5}, {"mean": 2.008, "sigma": 0.5}, "mild"),
    "num_07": ("lognormal", {"mean": 1.0, "sigma": 0.25}, {"mean": 1.0, "sigma": 0.25}, "none"),
    "num_08": ("poisson", {"lam": 3.0}, {"lam": 4.5}, "strong"),
    "num_09": ("poisson", {"lam": 20.0}, {"lam": 20.06}, "mild"),
    "num_10": ("integers", {"high": 100}, {"high": 100}, "none"),
    "num_11": ("binomial", {"n": 10, "p": 0.3}, {"n": 10, "p": 0.3}, "none"),
    "num_12": ("normal", {"loc": 0.0, "scale": 1.0}, {"loc": 0.0, "scale": 2.0}, "strong"),
    "num_13": ("exponential", {"scale": 1.0}, {"scale": 1.012}, "mild"),
    "num_14": ("normal", {"loc": 50.0, "scale": 10.0}, {"loc": 50.0, "scale": 10.0}, "none"),
    "num_15": ("normal_nulls", {"loc": 0.0, "scale": 1.0, "nulls": 0.01}, {"loc": 0.0, "scale": 1.0, "nulls": 0.01},
               "none"),
    "num_16": ("gamma", {"shape": 2.0, "scale": 2.0}, {"shape": 2.0, "scale": 2.0}, "none"),
    "num_17": ("uniform_tail", {"tail": 0.0}, {"tail": 0.25}, "strong"),
    "num_18": ("student_t", {"df": 5}, {"df": 5}, "none"),
    "num_19": ("geometric", {"p": 0.2}, {"p": 0.197}, "mild"),
    "cat_0": ("cats", {"k": 5, "zipf": 0.5}, {"k": 5, "zipf": 0.5}, "none"),
    "cat_1": ("cats", {"k": 300, "zipf": 1.1}, {"k": 300, "zipf": 1.1, "jitter": 0.03}, "mild"),
    "cat_2": ("cats", {"k": 12, "zipf": 0.8}, {"k": 12, "zipf": 0.8, "reverse": True}, "strong"),
    "cat_3": ("cats", {"k": 2000, "zipf": 1.3}, {"k": 2000, "zipf": 1.3}, "none"),
    "cat_4": ("cats", {"k": 8, "zipf": 0.3}, {"k": 8, "zipf": 0.3, "unseen": 3, "unseen_share": 0.02}, "unseen"),
}
assert list(SPEC) == NUMERIC + CATEGORICAL


def _numeric(rng: np.random.Generator, kind: str, p: dict, n: int) -> np.ndarray:
    if kind == "normal":
        return rng.normal(p["loc"], p["scale"], n)
    if kind == "normal_nulls":
        x = rng.normal(p["loc"], p["scale"], n)
        x[rng.random(n) < p["nulls"]] = np.nan
        return x
    if kind == "mixture":
        hi = rng.random(n) < p["w"]
        return np.where(hi, rng.normal(4.0, 1.0, n), rng.normal(0.0, 1.0, n))
    if kind == "lognormal":
        return rng.lognormal(p["mean"], p["sigma"], n)
    if kind == "poisson":
        return rng.poisson(p["lam"], n).astype("int64")
    if kind == "integers":
        return rng.integers(0, p["high"], n).astype("int64")
    if kind == "binomial":
        return rng.binomial(p["n"], p["p"], n).astype("int64")
    if kind == "exponential":
        return rng.exponential(p["scale"], n)
    if kind == "gamma":
        return rng.gamma(p["shape"], p["scale"], n)
    if kind == "uniform_tail":       # the tail share moves to [1, 1.5): beyond the reference's maximum
        x = rng.random(n)
        tail = rng.random(n) < p["tail"]
        x[tail] = 1.0 + 0.5 * rng.random(int(tail.sum()))
        return x
    if kind == "student_t":
        return rng.standard_t(p["df"], n)
    if kind == "geometric":
        return rng.geometric(p["p"], n).astype("int64")
    raise ValueError(kind)


def category_probs(p: dict, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Names and probabilities of a categorical column: zipf-like weights, optionally perturbed."""
    k = p["k"]
    names = [f"v{i:04d}" for i in range(k)]
    w = 1.0 / np.arange(1, k + 1) ** p["zipf"]
    if p.get("reverse"):
        w = w[::-1].copy()
    if p.get("jitter"):          # a fixed (seeded) multiplicative perturbation of every category's weight
        w = w * np.exp(rng.normal(0.0, p["jitter"], k))
    w = w / w.sum()
    if p.get("unseen"):
        names += [f"new{i}" for i in range(p["unseen"])]
        w = np.concatenate([w * (1 - p["unseen_share"]), np.full(p["unseen"], p["unseen_share"] / p["unseen"])])
    return names, w


def _categorical(rng: np.random.Generator, p: dict, n: int, col_id: int) -> pa.Array:
    names, w = category_probs(p, np.random.default_rng([SEED, 99, col_id]))   # same perturbation in every split
    codes = rng.choice(len(names), size=n, p=w).astype("int32")
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names)).cast(pa.string())


def make_split(split: str, n: int) -> pa.Table:
    side = 0 if split == "reference" else 1
    cols = {}
    for col_id, (name, spec) in enumerate(SPEC.items()):
        rng = np.random.default_rng([SEED, SPLITS[split], col_id])
        kind, params = spec[0], spec[1 + side]
        cols[name] = _categorical(rng, params, n, col_id) if kind == "cats" else pa.array(_numeric(rng, kind,
                                                                                                  params, n))
    return pa.table(cols)


def size_dir(rows: int) -> Path:
    return DATA / ("full" if rows == FULL_ROWS else f"r{rows}")


def generate(rows: int = FULL_ROWS, window: int | None = None, force: bool = False) -> Path:
    """Write reference/current/window Parquet (cached: skipped when meta.json matches)."""
    window = window or max(rows // 10, 1000)
    d = size_dir(rows)
    meta = {"seed": SEED, "rows": rows, "window": window,
            "spec": {c: {"kind": k, "reference": a, "current": b, "class": cls} for c, (k, a, b, cls) in SPEC.items()}}
    mp = d / "meta.json"
    if not force and mp.exists() and json.loads(mp.read_text()) == meta and all(
            (d / f"{s}.parquet").exists() for s in SPLITS):
        return d
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("reference", rows), ("current", rows), ("window", window)):
        t0 = time.perf_counter()
        pq.write_table(make_split(split, n), d / f"{split}.parquet", compression="snappy")
        print(f"  wrote {d / f'{split}.parquet'} ({n:,} rows, {time.perf_counter() - t0:.1f} s)", flush=True)
    mp.write_text(json.dumps(meta, indent=1))
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=FULL_ROWS)
    ap.add_argument("--window", type=int, default=None, help="new-window rows (default rows / 10)")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    print(generate(a.rows, a.window, a.force))


if __name__ == "__main__":
    main()
