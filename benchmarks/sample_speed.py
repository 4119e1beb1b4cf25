"""Sampling speed of checkpoints side by side (a change of model shape must say what it costs).

    python benchmarks/sample_speed.py --checkpoint A --checkpoint B [--batch 1 --batch 4]
    python benchmarks/sample_speed.py --checkpoint A --guidance 0 --guidance 1   # its cost

Each checkpoint samples ``--tokens`` new tokens (EOS off, default settings otherwise) after a
``--prompt`` token prompt (a fixed random walk of note/shift tokens, the same for all), through
``model.sampler.sample``, the sampler every surface uses; the first call compiles and is not
timed, then ``--repeats`` timed calls (median). The checkpoints alternate within each repeat, so
load from a training job beside it hits them alike. ``--guidance G`` (repeatable) runs each
checkpoint with context guidance G (``SampleOptions.guidance``, the short rows seeing none of
the prompt; 0 = off) as arms of their own. Reports new tokens/s and the ratio to the first arm;
writes ``benchmarks/results/sample_speed.json``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "sample_speed.json"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.env import add_note_flag, add_out_flag, environment, training_beside, write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True, help="repeatable")
    p.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 4)")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--prompt", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--guidance", type=float, action="append", help="repeatable (default 0: off)")
    add_note_flag(p)
    add_out_flag(p, RESULTS)
    args = p.parse_args(argv)

    from perceiver_midi.model.checkpoint import load_model
    from perceiver_midi.model.sampler import sample

    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 359, size=args.prompt).astype(np.int32)
    loaded = {c: load_model(c) for c in args.checkpoint}
    guidance = args.guidance or [0.0]
    arms = {  # name -> (model, guidance)
        c if len(guidance) == 1 and not g else f"{c} @ guidance {g:g}": (loaded[c], g)
        for c in args.checkpoint
        for g in guidance
    }
    results = {}
    for b in args.batch or [1, 4]:
        times = {c: [] for c in arms}
        for rep in range(args.repeats + 1):
            for c, (model, g) in arms.items():
                t0 = time.perf_counter()
                out = sample(model, [prompt] * b, max_new_tokens=args.tokens, seed=rep,
                             stop_at_eos=False, guidance=g)  # fmt: skip
                dt = time.perf_counter() - t0
                assert all(len(o) == args.tokens for o in out)
                if rep:  # the first call compiles
                    times[c].append(dt)
        first = next(iter(arms))
        base = b * args.tokens / statistics.median(times[first])
        for c in arms:
            tps = b * args.tokens / statistics.median(times[c])
            results.setdefault(c, {})[f"batch{b}"] = {
                "tokens_per_s": round(tps, 1),
                "ratio_to_first": round(tps / base, 3),
                "seconds": [round(t, 3) for t in times[c]],
            }
            print(f"batch {b:>2}  {c}: {tps:8.1f} new tok/s ({tps / base:.2f}x the first)")
    write_json(
        args.out,
        {
            "benchmark": "sample_speed",
            "checkpoints": results,
            "settings": {
                "tokens": args.tokens,
                "prompt": args.prompt,
                "repeats": args.repeats,
                "guidance": guidance,
            },  # fmt: skip
            "training_beside": training_beside(),
            "environment": environment(),
            "note": args.note,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
