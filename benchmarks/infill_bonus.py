"""Before training a logit bonus for infilling, measure what it could at most give (teacher-forced).

    python -m benchmarks.infill_bonus [--checkpoint DIR] [--per-gap 16]

``gap_held`` (``model/gap_clock.py``) adds a learned NOTE_ON bonus, by the time left in the gap,
on the pitches the middle still owes the part after it; that is what moved the last second
before the join. This asks whether more such bonuses would help, before any training: on real
middles (``benchmarks/infill.py``'s gaps of 2, 5 and 10 s) it takes the model's log-probabilities
of every middle token with the infilling prompt, then fits, on validation middles, one bonus per
time-left bucket (``gap_clock.bucket``) and per pitch set below, added to those pitches' NOTE_ON
logits with everything else frozen, and scores the test middles with the fitted bonuses:

* ``join``: pitches the part after the gap starts (a NOTE_ON) in its first second (``gap_join``'s
  set, which the model reads through a map into its latents);
* ``join_class``: other pitches of those pitch classes (the harmony at the join);
* ``after_3s``: pitches the part after the gap starts between 1 and 3 s;
* ``held``: the pitches the part after the gap first meets as a NOTE_OFF (``gap_held``'s; the
  model already has this bonus, so a fitted one near 0 says the fit finds nothing it missed).

Held pitches are left out of the other three sets. The fitted gain is an upper bound of what
such a zero-initialised bonus adds to the frozen model on these middles (training could also
move the rest of the model). Writes ``benchmarks/results/infill_bonus.json``; needs the prepared
MAESTRO tokens (``--data``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "infill_bonus.json"
SETS = ("join", "join_class", "after_3s", "held")
ARMS = {  # which sets get a fitted bonus
    "held": ("held",),
    "join": ("join",),
    "join + join_class": ("join", "join_class"),
    "join + join_class + after_3s": ("join", "join_class", "after_3s"),
    "all four": SETS,
}
AFTER_STEPS = 300  # 3 s, in 10 ms steps (the join's 1 s is gap_clock.JOIN_STEPS, gap_join's)
FIT_STEPS, FIT_LR = 300, 0.05  # Adam on the mean NLL of the fitting middles


def pitch_sets(after: np.ndarray) -> np.ndarray:
    """bool ``[len(SETS), 128]`` of the part after a gap (``after``: its tokens, from the gap's
    end on)."""
    from benchmarks.infill import held_pitches
    from perceiver_midi.model import infill
    from perceiver_midi.model.gap_clock import JOIN_STEPS
    from perceiver_midi.model.vocab import NOTE_ON_FIRST_ID, NUM_PITCHES

    after = np.asarray(after)[: infill.MAX_SUFFIX_TOKENS]
    time_at = infill.time_before(after)[:-1]
    pitch = after - NOTE_ON_FIRST_ID
    is_on = (pitch >= 0) & (pitch < NUM_PITCHES)
    held = held_pitches(after)
    join, later = np.zeros(NUM_PITCHES, bool), np.zeros(NUM_PITCHES, bool)
    join[pitch[is_on & (time_at < JOIN_STEPS)]] = True
    later[pitch[is_on & (time_at < AFTER_STEPS)]] = True
    classes = np.zeros(12, bool)
    classes[np.nonzero(join)[0] % 12] = True
    join_class = classes[np.arange(NUM_PITCHES) % 12] & ~join
    return np.stack([join & ~held, join_class & ~held, later & ~join & ~held, held])


def middle_rows(model, gaps: list[dict]) -> dict:
    """Per middle token: the model's log-probabilities with the infilling prompt, its target,
    its time-left bucket and seconds, its gap's asked length (``gap_s``), and its gap's pitch
    sets (one row per middle)."""
    import jax.numpy as jnp

    from benchmarks.infill import log_probs
    from perceiver_midi.model import gap_clock, infill

    n = int(model.config.max_len)
    forward = log_probs(model)
    keys = ("logp", "target", "bucket", "left", "seconds", "sets", "middle")
    out = {k: [] for k in keys}
    for i, g in enumerate(gaps):
        seq, a, b = g["seq"], g["a"], g["b"]
        middle = seq[a:b]
        steps = infill.gap_steps(seq, a, b)
        prompt = infill.prompt(seq[:a], seq[b:], steps, n + 1 - middle.size,
                               model.config.infill_layout)  # fmt: skip
        out["logp"].append(forward(np.concatenate([prompt, middle]).astype(np.int32), prompt.size))
        elapsed = infill.time_before(seq)[a:b] - infill.time_before(seq)[a]
        inside = jnp.ones(middle.size, bool)
        out["bucket"].append(np.asarray(gap_clock.bucket(inside, steps, jnp.asarray(elapsed))))
        out["left"].append((steps - elapsed) / 100)
        out["target"].append(middle)
        out["seconds"].append(np.full(middle.size, g["gap_s"]))
        out["middle"].append(np.full(middle.size, i))
        out["sets"].append(pitch_sets(seq[b:]))
    return {k: np.stack(v) if k == "sets" else np.concatenate(v) for k, v in out.items()}


def nll_with(bonus_SxK, rows: dict, use_S):
    """Per-token NLL with ``bonus[s, bucket]`` added to the NOTE_ON logits of set ``s``'s
    pitches (only the sets in ``use_S``)."""
    import jax
    import jax.numpy as jnp

    from perceiver_midi.model.vocab import NOTE_ON_FIRST_ID, NUM_PITCHES

    sets_TxSxP = jnp.asarray(rows["sets"])[rows["middle"]].astype(jnp.float32)
    bonus_TxS = bonus_SxK[:, rows["bucket"]].T * use_S
    add_TxP = jnp.einsum("ts,tsp->tp", bonus_TxS, sets_TxSxP)
    logits = jnp.asarray(rows["logp"])
    logits = logits.at[:, NOTE_ON_FIRST_ID : NOTE_ON_FIRST_ID + NUM_PITCHES].add(add_TxP)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, jnp.asarray(rows["target"])[:, None], axis=-1)[:, 0]


def fit(rows: dict, use_S) -> np.ndarray:
    """Bonuses ``[len(SETS), NUM_BUCKETS]`` minimising the mean NLL of ``rows``."""
    import jax
    import jax.numpy as jnp
    import optax

    from perceiver_midi.model import gap_clock

    use = jnp.asarray(use_S, jnp.float32)
    grad = jax.jit(jax.grad(lambda p: nll_with(p, rows, use).mean()))
    params = jnp.zeros((len(SETS), gap_clock.NUM_BUCKETS))
    opt = optax.adam(FIT_LR)
    state = opt.init(params)
    for _ in range(FIT_STEPS):
        updates, state = opt.update(grad(params), state)
        params = optax.apply_updates(params, updates)
    return np.asarray(params * use[:, None])


def gains(rows: dict, bonus: np.ndarray) -> dict:
    """NLL without and with ``bonus``: overall, over the last second, per gap length."""
    import jax.numpy as jnp

    from benchmarks.infill import LAST_S

    zero = np.asarray(nll_with(jnp.zeros_like(bonus), rows, jnp.ones(len(SETS))))
    new = np.asarray(nll_with(jnp.asarray(bonus), rows, jnp.ones(len(SETS))))
    last = rows["left"] <= LAST_S
    out = {
        "tokens": int(zero.size),
        "nll": float(zero.mean()),
        "gain": float(zero.mean() - new.mean()),
        "last_second_gain": float(zero[last].mean() - new[last].mean()),
    }
    for s in np.unique(rows["seconds"]):
        here = rows["seconds"] == s
        out[f"gain_{s:g}s"] = float(zero[here].mean() - new[here].mean())
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.env import add_out_flag, environment, training_beside, write_json
    from benchmarks.infill import pick_gaps

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="an infilling checkpoint (default: the shipped one)")
    p.add_argument("--data", default=str(ROOT / "work" / "data"), help="prepare-data folder")
    p.add_argument("--gaps", type=float, nargs="+", default=[2.0, 5.0, 10.0], help="seconds")
    p.add_argument("--per-gap", type=int, default=16, help="middles per gap length and split")
    add_out_flag(p, RESULTS)
    args = p.parse_args(argv)
    if not 1 <= args.per_gap <= 256:
        p.error("--per-gap must be in [1, 256]")

    from perceiver_midi.model.checkpoint import default_checkpoint, load_model
    from perceiver_midi.tokenizer.dataset import load_split

    ckpt = args.checkpoint or str(default_checkpoint("infill"))
    model = load_model(ckpt)
    if not model.config.infill:
        print(f"error: {ckpt} was not trained to infill", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = {}
    for split, seed in (("validation", 1), ("test", 0)):  # test: benchmarks/infill.py's gaps
        data = load_split(args.data, split)
        picks = [(s, g) for s in args.gaps for g in pick_gaps(data, s, args.per_gap, seed)]
        gaps = [{**g, "gap_s": s} for s, g in picks]
        rows[split] = middle_rows(model, gaps)
    result = {"checkpoint": ckpt, "gaps": args.gaps, "per_gap": args.per_gap, "arms": {}}
    for name, sets in ARMS.items():
        use = [s in sets for s in SETS]
        bonus = fit(rows["validation"], use)
        arm = {"sets": list(sets), "bonus_by_bucket": {s: bonus[k].round(3).tolist()
               for k, s in enumerate(SETS) if s in sets}}  # fmt: skip
        for split in rows:
            arm[split] = gains(rows[split], bonus)
        result["arms"][name] = arm
        print(f"{name:30s} test gain {arm['test']['gain']:.4f} (last second "
              f"{arm['test']['last_second_gain']:.4f}); fitted on validation: gain "
              f"{arm['validation']['gain']:.4f}", flush=True)  # fmt: skip
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["training_beside"] = training_beside()
    result["environment"] = environment()
    write_json(pathlib.Path(args.out), result)
    print(json.dumps({k: v["test"] for k, v in result["arms"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
