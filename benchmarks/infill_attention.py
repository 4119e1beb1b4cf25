"""Where does a middle look? The cross-attention of an infilling model's latents (issue 23).

    python -m benchmarks.infill_attention --checkpoint checkpoints/maestro-cpu-infill \
        --checkpoint ~/train/r9-seg/best [--split validation] [--gap 5] [--count 12]

For ``--count`` real gaps of ``--gap`` seconds (``benchmarks.infill.pick_gaps``: the same draw as
the infilling NLL benchmark), the infilling prompt and the real middle fill the model's context as
``benchmarks/infill.py`` scores them. The one cross-attention's weights (every head) of the
latents that predict the middle's tokens are averaged and summed over the prompt's parts
(``gap_clock.segments``): the part after the gap (and its first second, the join), the part
before it, the gap's length, the middle itself. Each part's share of the attention is printed
beside its share of the input tokens: equal shares mean the latents look everywhere alike (the
part after the gap then adds a bag of its tokens, not the notes the middle must lead into).

The weights are read by running the model's own forward with ``causal_attention`` wrapped to keep
its first call's queries and keys (the cross-attention; deterministic, no dropout), so the code
measured is the code that runs. Writes ``results/experiments/infill_attention.json``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import unittest.mock

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "experiments" / "infill_attention.json"
PARTS = ("after the gap", "join (its first second)", "before the gap", "gap length", "middle")


def cross_weights(model, tokens_1xN: np.ndarray) -> np.ndarray:
    """float32 ``[H, M, N]``: the cross-attention weights of the model's forward on one row."""
    import jax
    import jax.numpy as jnp

    from perceiver_midi.model import perceiver_ar

    kept = []
    real = perceiver_ar.causal_attention

    def keep_first(q, k, v, q_index, key_ok, chunk=0):
        if not kept:
            kept.append((q, k, q_index, key_ok))
        return real(q, k, v, q_index, key_ok, chunk)

    with unittest.mock.patch.object(perceiver_ar, "causal_attention", keep_first):
        model(jnp.asarray(tokens_1xN))
    q, k, q_index, key_ok = kept[0]
    scores = jnp.einsum("bhqk,bhtk->bhqt", q, k) / np.sqrt(q.shape[-1])
    t = jnp.arange(k.shape[2])
    seen = (t[None] <= q_index[:, None])[None, None] & (
        key_ok[:, None, None, :] | (t[None] == q_index[:, None])[None, None]
    )
    return np.asarray(jax.nn.softmax(jnp.where(seen, scores, -jnp.inf), axis=-1))[0]


def part_shares(model, gap: dict) -> dict:
    """Attention shares and token shares of the prompt's parts, for one gap."""
    import jax.numpy as jnp

    from perceiver_midi.model import gap_clock, infill
    from perceiver_midi.model.vocab import PAD_ID

    n, m = int(model.config.max_len), int(model.config.num_latents)
    seq, a, b = gap["seq"], gap["a"], gap["b"]
    middle = seq[a:b]
    steps = infill.gap_steps(seq, a, b)
    prompt = infill.prompt(seq[:a], seq[b:], steps, n - middle.size, model.config.infill_layout)
    row = np.concatenate([prompt, middle])[-n:]
    row = np.concatenate([np.full(n - row.size, PAD_ID), row]).astype(np.int32)[None]
    w_HxMxN = cross_weights(model, row)
    first_middle = n - middle.size  # the latent at MIDDLE predicts the first middle token
    rows_M = np.arange(n - m, n) >= first_middle - 1
    w_N = w_HxMxN[:, rows_M].mean(axis=(0, 1))
    seg = np.asarray(gap_clock.segments(jnp.asarray(row)))[0]
    after = seg == 2
    times = infill.time_before(row[0])[:-1]  # the music time at each token
    since = times - times[np.argmax(after)]  # since SUFFIX (the part after the gap's start)
    parts = {
        "after the gap": after,
        "join (its first second)": after & (since < 100),
        "before the gap": (seg == 0) & (np.arange(n) < first_middle) & (row[0] != PAD_ID),
        "gap length": seg == 1,
        "middle": seg == 3,
    }
    valid = row[0] != PAD_ID
    return {
        name: {"attention": float(w_N[mask].sum()), "tokens": float(mask.sum() / valid.sum())}
        for name, mask in parts.items()
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.env import (
        add_checkpoint_flag,
        add_note_flag,
        add_out_flag,
        environment,
        write_json,
    )
    from benchmarks.infill import pick_gaps

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_flag(p, repeatable=True)
    p.add_argument("--data", default=str(ROOT / "work" / "data"), help="prepare-data folder")
    p.add_argument("--split", default="validation")
    p.add_argument("--gap", type=float, default=5.0, help="gap length, seconds (5)")
    p.add_argument("--count", type=int, default=12, help="gaps (12)")
    p.add_argument("--seed", type=int, default=0)
    add_out_flag(p, RESULTS)
    add_note_flag(p)
    args = p.parse_args(argv)

    from perceiver_midi.model.checkpoint import default_checkpoint, load_model
    from perceiver_midi.tokenizer.dataset import load_split

    split = load_split(args.data, args.split)
    gaps = pick_gaps(split, args.gap, args.count, args.seed)
    results = {}
    for path in args.checkpoint or [str(default_checkpoint("infill"))]:
        model = load_model(path)
        rows = [part_shares(model, g) for g in gaps]
        mean = {
            part: {key: round(float(np.mean([r[part][key] for r in rows])), 4)
                   for key in ("attention", "tokens")}
            for part in PARTS
        }  # fmt: skip
        results[str(path)] = {"parts": mean, "gaps": len(rows)}
        print(path)
        for part, v in mean.items():
            print(f"  {part:<26} attention {v['attention']:.3f}  tokens {v['tokens']:.3f}")
    write_json(
        args.out,
        {"environment": environment(), "split": args.split, "gap_seconds": args.gap,
         "seed": args.seed, "checkpoints": results, "note": args.note},
    )  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
