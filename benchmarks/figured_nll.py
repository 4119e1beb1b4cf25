"""Teacher-forced NLL of the figured primes' own continuation, by token kind.

Each figure of ``benchmarks/continuing.py`` is written for 40 s instead of 20; the model scores
every token of that piece (one full forward), and this reports the mean NLL over the second 20 s
(its last M tokens where it is longer),
split into NOTE_ON, NOTE_OFF, TIME_SHIFT and VELOCITY tokens. A model that carries a figure
forward predicts the NOTE_ONs of its repetition almost surely; the "-human" figures (timing and
loudness jittered) show whether the prediction survives a human performance.

    python -m benchmarks.figured_nll --checkpoint checkpoints/maestro-cpu --checkpoint DIR
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks import continuing  # noqa: E402

KINDS = {  # token kind: [first id, last id + 1)
    "note_on": (3, 131),
    "note_off": (131, 259),
    "time_shift": (259, 359),
    "velocity": (359, 391),
}


def figured_pieces(seconds: float = 2 * continuing.PRIME_S) -> list[dict]:
    """The figured primes, written for ``seconds`` instead of ``PRIME_S``."""
    saved = continuing.PRIME_S
    try:
        continuing.PRIME_S = seconds
        return continuing.figured_primes()
    finally:
        continuing.PRIME_S = saved


def second_half_nll(model, ids: np.ndarray) -> dict[str, float]:
    """Mean NLL per token kind over the tokens after the piece's middle (by token count; at most
    the last M of them, the positions the latents predict)."""
    import jax
    import jax.numpy as jnp

    from perceiver_midi.tokenizer.constants import EOS_ID, PAD_ID, SOS_ID

    ids = ids[ids != EOS_ID]
    if ids[0] != SOS_ID:
        ids = np.concatenate([[SOS_ID], ids])
    n, m = int(model.config.max_len), int(model.config.num_latents)
    length = ids.size - 1
    if length > n:
        raise ValueError(f"a figured piece of {length} tokens is longer than the context {n}")
    inputs = np.full((1, n), PAD_ID, np.int32)
    inputs[0, n - length :] = ids[:-1]
    logp = np.asarray(jax.nn.log_softmax(model(jnp.asarray(inputs)), axis=-1))[0]  # [M, V]
    scored = min(m, length - length // 2)  # the second half's last tokens the latents reach
    targets = ids[1:][length - scored :]
    rows = np.arange(m - scored, m)
    nll = -logp[rows, targets]
    out = {"all": float(nll.mean())}
    for kind, (lo, hi) in KINDS.items():
        sel = (targets >= lo) & (targets < hi)
        out[kind] = float(nll[sel].mean()) if sel.any() else None
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.env import add_checkpoint_flag
    from perceiver_midi.model.checkpoint import default_checkpoint, load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_flag(p, repeatable=True)
    p.add_argument("--out", help="results JSON (default: print only)")
    args = p.parse_args(argv)
    pieces = figured_pieces()
    results = {}
    for ckpt in args.checkpoint or [str(default_checkpoint())]:
        model = load_model(ckpt)
        rows = {piece["name"]: second_half_nll(model, piece["ids"]) for piece in pieces}
        mean = {
            group: {
                k: float(np.mean([r[k] for name, r in rows.items() if pick(name) and r[k]]))
                for k in ("all", *KINDS)
            }
            for group, pick in (
                ("quantized", lambda s: not s.endswith("-human")),
                ("human", lambda s: s.endswith("-human")),
            )
        }
        results[ckpt] = {"by_figure": rows, "mean": mean}
        print(ckpt)
        for group, vals in mean.items():
            print(f"  {group:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in vals.items()))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
