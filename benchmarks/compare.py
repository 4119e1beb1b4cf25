"""Two ``benchmarks/quality.py`` records side by side, paired: is B ahead of A by more than chance?

    python -m benchmarks.compare A.json B.json [--resamples 1000] [--seed 0] [--out PATH]

Both records must come from the same primes and seeds (same split, pieces, prime window, seconds,
base seed and draws: ``quality.py`` run on two checkpoints, or on two sampler settings), so their
real continuations are the same and every difference comes from the model or the sampler. Three
draws of 32 primes move the overall score by about 0.01 from draw to draw; a difference smaller
than that is a coin toss unless it holds prime by prime. So, for the overall score and the
issue's ratios to real (prime reuse, self-repetition, distinct pitches, polyphony, density):

* each record's value pooled over its draws, and B - A draw by draw (the same seeds);
* a paired bootstrap over primes: ``--resamples`` times, primes drawn with replacement (each with
  all its draws, the same primes for both records), the statistic recomputed on both and
  differenced; the 95% interval of B - A and the share of resamples in which B - A > 0, and
  each record's own 95% interval (how far one record's value is from the truth: e.g. whether a
  ratio is within a bar's +-25% of real, or only might be). For the overall score that own
  interval sits low: a resample's repeated primes make both KDEs lumpier and their overlap
  smaller, the same for both records, so it is the paired difference that reads true.

The overall score is ``music_metrics.overall_score`` (higher is better). A ratio is better the
closer it is to 1: for those, ``closer`` is the share of resamples in which B's ratio is nearer 1
(on a log scale) than A's. Writes ``--out`` (default ``benchmarks/results/compare.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.music_metrics import FEATURES, by_draw, summarise  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "compare.json"
RATIOS = (
    "prime_reuse",
    "self_repetition",
    "distinct_pitches",
    "polyphony",
    "density_notes_per_s",
)
PAIRED_SETTINGS = ("split", "pieces", "seconds", "prime_window", "base_seed", "draws")
MAX_RESAMPLES = 100_000
INTERVAL = (2.5, 97.5)  # percentiles: a 95% interval


class UserError(Exception):
    """A bad argument or record: one line, no traceback."""


def load(path: str) -> dict:
    """A ``quality.py`` record, or a one-line error saying why it is not one."""
    p = pathlib.Path(path)
    try:
        record = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(record, dict) or record.get("benchmark") != "quality":
        raise UserError(f"{path}: not a benchmarks/quality.py record")
    if not record.get("pieces"):
        raise UserError(f"{path}: a quality record with no pieces")
    return record


def _rows_key(record: dict) -> list[tuple]:
    return [(p["index"], p.get("draw", 0), p["name"], p["seed"]) for p in record["pieces"]]


def check_paired(a: dict, b: dict) -> None:
    """Refuses two records that did not continue the same primes with the same seeds."""
    for key in PAIRED_SETTINGS:
        va, vb = a["settings"].get(key), b["settings"].get(key)
        if va != vb:
            raise UserError(f"the records are not paired: {key} differs ({va!r} vs {vb!r})")
    if _rows_key(a) != _rows_key(b):
        raise UserError("the records are not paired: their primes or seeds differ row by row")


def statistics(pieces: list[dict]) -> dict[str, float]:
    """The overall score and the ratios to real of ``RATIOS`` over ``pieces``."""
    s = summarise(pieces)
    out = {"overall_score": float(np.nanmean([s[f]["generated"]["overlap"] for f in FEATURES]))}
    out.update({f: float(s[f]["generated"]["ratio"]) for f in RATIOS})
    return out


def _by_prime(pieces: list[dict]) -> dict[int, list[dict]]:
    rows: dict[int, list[dict]] = {}
    for p in pieces:
        rows.setdefault(p["index"], []).append(p)
    return rows


def _distance(ratio: float) -> float:
    """How far a ratio to real is from 1, on a log scale (0 = same as real)."""
    return abs(math.log(ratio)) if ratio > 0 and math.isfinite(ratio) else math.inf


def _interval(values) -> list[float]:
    """The 95% percentile interval of the finite ``values`` (NaNs when none is)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return [float(x) for x in np.percentile(v, INTERVAL)] if v.size else [math.nan, math.nan]


def compare(a: dict, b: dict, resamples: int = 1000, seed: int = 0) -> dict:
    """Paired comparison of records ``a`` and ``b`` (see the module docstring)."""
    check_paired(a, b)
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise UserError(f"--resamples must be in [1, {MAX_RESAMPLES}], got {resamples}")
    pa, pb = a["pieces"], b["pieces"]
    stat_a, stat_b = statistics(pa), statistics(pb)
    draws = [
        (statistics(da), statistics(db)) for da, db in zip(by_draw(pa), by_draw(pb), strict=True)
    ]
    groups_a, groups_b = _by_prime(pa), _by_prime(pb)
    primes = sorted(groups_a)
    rng = np.random.default_rng(seed)
    boot = {name: [] for name in stat_a}
    own = {name: ([], []) for name in stat_a}  # each record's own resampled value
    closer = {name: [] for name in RATIOS}
    for _ in range(resamples):
        picked = rng.choice(primes, size=len(primes), replace=True)
        sa = statistics([row for i in picked for row in groups_a[i]])
        sb = statistics([row for i in picked for row in groups_b[i]])
        for name in stat_a:
            boot[name].append(sb[name] - sa[name])
            own[name][0].append(sa[name])
            own[name][1].append(sb[name])
        for name in RATIOS:
            closer[name].append(_distance(sb[name]) < _distance(sa[name]))
    out = {}
    for name in stat_a:
        diffs = np.asarray(boot[name], np.float64)
        diffs = diffs[np.isfinite(diffs)]
        lo, hi = _interval(diffs)
        row = {
            "a": stat_a[name],
            "b": stat_b[name],
            "b_minus_a": stat_b[name] - stat_a[name],
            "by_draw": [
                {"a": x[name], "b": y[name], "b_minus_a": y[name] - x[name]} for x, y in draws
            ],
            "interval95": [float(lo), float(hi)],
            "b_ahead": float(np.mean(diffs > 0)) if diffs.size else math.nan,
            "a_interval95": _interval(own[name][0]),
            "b_interval95": _interval(own[name][1]),
        }
        if name in closer:
            row["b_closer_to_real"] = float(np.mean(closer[name]))
        out[name] = row
    return {
        "benchmark": "compare",
        "primes": len(primes),
        "draws": len(draws),
        "resamples": resamples,
        "seed": seed,
        "statistics": out,
    }


def verdict(row: dict) -> str:
    """For the overall score: who is ahead, by the interval of B - A."""
    lo, hi = row["interval95"]
    if lo > 0:
        return "B ahead"
    if hi < 0:
        return "A ahead"
    return "not resolved"


def print_report(result: dict, path_a: str, path_b: str) -> None:
    print(f"A = {path_a}\nB = {path_b}")
    print(
        f"{result['primes']} primes x {result['draws']} draw(s); paired bootstrap over primes, "
        f"{result['resamples']} resamples (seed {result['seed']})\n"
    )
    print(
        f"{'statistic':<22}{'A':>8}{'B':>8}{'B-A':>9}  {'95% interval':<19}{'B ahead':>8}"
        "  by draw B-A"
    )
    for name, row in result["statistics"].items():
        lo, hi = row["interval95"]
        draws = " / ".join(f"{d['b_minus_a']:+.3f}" for d in row["by_draw"])
        extra = (
            f"  (B closer to 1 in {row['b_closer_to_real']:.0%})"
            if "b_closer_to_real" in row
            else ""
        )
        print(
            f"{name:<22}{row['a']:8.3f}{row['b']:8.3f}{row['b_minus_a']:+9.3f}  "
            f"[{lo:+.3f}, {hi:+.3f}]   {row['b_ahead']:7.0%}  {draws}{extra}"
        )
    print("\neach record's own 95% interval (bootstrap over primes):")
    for name, row in result["statistics"].items():
        (la, ha), (lb, hb) = row["a_interval95"], row["b_interval95"]
        print(f"  {name:<20} A [{la:.3f}, {ha:.3f}]  B [{lb:.3f}, {hb:.3f}]")
    print(f"\nOVERALL SCORE: {verdict(result['statistics']['overall_score'])}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="quality.py record A (e.g. the shipped model's)")
    p.add_argument("b", help="quality.py record B (the candidate), same primes and seeds")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (0)")
    p.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.env import write_json

    args = parse_args(argv)
    try:
        result = compare(load(args.a), load(args.b), args.resamples, args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["a"], result["b"] = args.a, args.b
    write_json(args.out, result)
    print_report(result, args.a, args.b)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
