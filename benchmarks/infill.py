"""Infilling NLL: does the part after a gap help the model write the gap? (teacher-forced)

    python -m benchmarks.infill [--checkpoint DIR] [--split test] [--gaps 2 5 10] [--per-gap 32]

For each gap length (seconds), ``--per-gap`` real middles of the split: a piece drawn at random
(seeded), the gap's start uniform over [10 s, end - gap - 2 s], both edges moved to the piece's
events as the app does (``model/infill.py: span``). Each middle is scored twice by the same model,
every middle token once:

* **both sides**: the infilling prompt (the gap's length, up to ``MAX_SUFFIX_TOKENS`` of the part
  after it, then the part before it; ``infill.prompt`` with the room the middle leaves) and the
  middle, as ``perceiver-midi infill`` samples it;
* **before only**: the part before the gap and the middle, the plain continuation, with all the
  context the model takes;
* **wrong after** (``--wrong-after``): the infilling prompt with the part after the gap taken from
  the next middle of the draw (another place, mostly another piece). Its NLL minus both sides'
  is what the model reads from the true part after the gap, without the cost of the prompt's
  layout that "before only" also counts (``reads_after``).

**Windows** (``--chunk C``): by default a middle's tokens are scored M at a time from its start,
each window's latents ending at its last target (the paper's way); the first tokens of a middle
longer than M minus the prompt's tail then see few latents, in both arms. With ``--chunk 128``
the middle is scored in spans of about 128 tokens, each with the latent window ending at the
span's end, so every token has at least M - 128 latents before it, as the sampler has between
two fills. ``--reanchor`` also gives each span a prompt of its own for the rest of the gap (the
part before the gap and the middle so far as its part before), keeping the repeat of the part
after the gap near every span (measured: it gains over plain chunked windows no more than the
windows themselves do; ``benchmarks/README.md``).

Reported per gap and overall: mean NLL (nats/token) of the middle tokens in both arms and their
difference, also over the tokens in the last second before the join (where the part after the
gap should help most) and by position in the gap (quarters). Bars of the issue: both sides at
least 0.05 lower overall and 0.15 lower over the last second.

``--sample K`` also plays: K gaps of ``--sample-gap`` seconds (default 5) are regenerated
free-running through ``app.core.infill.infill_items`` (the shipped sampler defaults, one seed each),
and the generated middles are compared with the real ones as music: mean polyphony and notes/s
(ratios of the means; the bar is +-30%), notes left sounding across the gap's end (by
construction none), the share of the pitches the real piece holds across the gap's end (the
part after it starts with their NOTE_OFFs) that the generated middle has sounding there (does
it lead into what follows?), and piano rolls of the first
few (``--rolls``: 3 s of context each side, real middle above, generated below).

Writes ``benchmarks/results/infill.json``. Needs the prepared MAESTRO tokens (``--data``).
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

RESULTS = ROOT / "benchmarks" / "results" / "infill.json"
MIN_START_S = 10.0  # the part before a gap has at least this much music
MIN_AFTER_S = 2.0  # and the part after it
LAST_S = 1.0  # "near the join": middle tokens this close to the gap's end
QUARTERS = 4
MAX_CHUNK = 4096  # --chunk: at most a context's worth


def pick_gaps(split, gap_s: float, count: int, seed: int) -> list[dict]:
    """``count`` gaps of ``gap_s`` seconds in random pieces of ``split`` (token positions in
    [SOS] + piece; pieces too short for one are redrawn)."""
    from perceiver_midi.model import infill
    from perceiver_midi.model.vocab import SOS_ID

    rng = np.random.default_rng([seed, int(gap_s * 100)])
    out, tries = [], 0
    while len(out) < count and tries < 100 * count:
        tries += 1
        k = int(rng.integers(len(split)))
        seq = np.concatenate([[SOS_ID], np.asarray(split.piece(k))]).astype(np.int32)
        total = infill.time_before(seq)[-1] / 100
        hi = total - gap_s - MIN_AFTER_S
        if hi <= MIN_START_S:
            continue
        start = float(rng.uniform(MIN_START_S, hi))
        a, b = infill.span(seq, round(start * 100), round((start + gap_s) * 100))
        if b <= a or b >= seq.size:
            continue
        out.append({"piece": k, "seq": seq, "a": a, "b": b})
    return out


def _score_windows(seq: np.ndarray, score_from: int, n: int, m: int):
    """Windows scoring ``seq[score_from:]``, each target with the last N tokens before it:
    (inputs [W, N], targets [W, M], mask [W, M], target index [W, M])."""
    rows = []
    t0 = score_from
    while t0 < seq.size:
        t1 = min(t0 + m, seq.size)  # targets seq[t0:t1], predicted from inputs seq[:t1 - 1]
        inp = seq[max(0, t1 - 1 - n) : t1 - 1]
        x = np.zeros(n, np.int32)
        x[n - inp.size :] = inp
        idx = np.arange(t1 - m, t1)
        y = np.where(idx >= 0, seq[np.maximum(idx, 0)], 0)
        rows.append((x, y, idx >= t0, idx))
        t0 = t1
    return [np.stack(c) for c in zip(*rows, strict=True)]


def log_probs(model, batch: int = 4):
    """``f(seq, score_from)`` -> float32 ``[len(seq) - score_from, V]``: the model's
    log-probabilities of the token at each position from ``score_from`` on, each with the last
    N tokens before it (windows of M targets, ``batch`` windows per call)."""
    import jax
    import jax.numpy as jnp

    n, m = int(model.config.max_len), int(model.config.num_latents)
    forward = jax.jit(lambda t: jax.nn.log_softmax(model(t), axis=-1))

    def run(seq: np.ndarray, score_from: int) -> np.ndarray:
        x, _, mask, idx = _score_windows(seq, score_from, n, m)
        out = None
        for i in range(0, len(x), batch):
            xb = np.zeros((batch, n), np.int32)
            xb[: len(x[i : i + batch])] = x[i : i + batch]
            logp = np.asarray(forward(jnp.asarray(xb)))[: len(x[i : i + batch])]
            if out is None:
                out = np.zeros((seq.size, logp.shape[-1]), np.float32)
            for j in range(logp.shape[0]):
                keep = mask[i + j]
                out[idx[i + j][keep]] = logp[j][keep]
        return out[score_from:]

    return run


def chunks(seq: np.ndarray, a: int, b: int, size: int) -> list[tuple[int, int]]:
    """[a, b) cut into spans of about ``size`` tokens, each cut just after a TIME_SHIFT (where
    an infilling prompt's gap may start); ``size`` 0: the whole span."""
    from perceiver_midi.tokenizer.windows import shift_steps

    if size <= 0:
        return [(a, b)]
    is_shift = shift_steps(np.asarray(seq)) > 0
    out, c = [], a
    while c < b:
        e = min(b, c + size)
        while e < b and not is_shift[e - 1]:
            e += 1
        out.append((c, e))
        c = e
    return out


def check_windows(chunk: int, reanchor: bool, equal_prefix: bool) -> None:
    """ValueError for a combination of ``middle_nll``'s window options it cannot score."""
    if not 0 <= chunk <= MAX_CHUNK:
        raise ValueError(f"--chunk must be in [0, {MAX_CHUNK}], got {chunk}")
    if reanchor and not chunk:
        raise ValueError("reanchor needs chunk > 0 (--reanchor needs --chunk)")
    if equal_prefix and chunk:
        raise ValueError("equal_prefix scores the middle in one piece: no chunk")


def middle_nll(
    model,
    gaps: list[dict],
    batch: int = 4,
    equal_prefix: bool = False,
    wrong_after: bool = False,
    chunk: int = 0,
    reanchor: bool = False,
) -> list[dict]:
    """Per gap: the NLL of every middle token in both arms and its time before the join.
    ``equal_prefix``: the before-only arm gets the same part before the gap as the infilling
    prompt holds (isolates what the part after the gap adds from the context it costs).
    ``wrong_after``: a third arm, the prompt with the next gap's part after the gap.
    ``chunk`` C > 0: the middle is scored in spans of about C tokens (``chunks``), each with
    the latent window ending at the span's end in both arms, so every token has at least
    M - C latents before it, as in the sampler between two fills (C = its headroom, 128);
    0: windows of M targets from the middle's start, the paper's way, where the first tokens of
    a middle longer than M - the prompt's tail see few latents. ``reanchor`` (with ``chunk``):
    each span gets an infilling prompt of its own, for the rest of the gap, with the part
    before the gap and the middle so far as its part before (the join's repeat stays near)."""
    from perceiver_midi.model import infill

    check_windows(chunk, reanchor, equal_prefix)
    n = int(model.config.max_len)
    layout = model.config.infill_layout
    forward = log_probs(model, batch)

    def nll_of(seq, score_from):
        logp_TxV = forward(seq, score_from)
        return -np.take_along_axis(logp_TxV, seq[score_from:, None], axis=-1)[:, 0]

    def both_sides(seq, a, b, after):
        middle = seq[a:b]
        spans = chunks(seq, a, b, chunk)
        steps = infill.gap_steps(seq, a, b)
        prompt = infill.prompt(seq[:a], after, steps, n + 1 - middle.size, layout)
        if reanchor:
            out = []
            for c, e in spans:
                rest = infill.prompt(
                    seq[:c], after, infill.gap_steps(seq, c, b), n + 1 - (e - c), layout
                )
                out.append(nll_of(np.concatenate([rest, seq[c:e]]).astype(np.int32), rest.size))
            return prompt, np.concatenate(out)
        full = np.concatenate([prompt, middle]).astype(np.int32)
        p = prompt.size - a  # full[p + t] is seq[t] for t in [a, b)
        return prompt, np.concatenate([nll_of(full[: p + e], p + c) for c, e in spans])

    rows = []
    for i, g in enumerate(gaps):
        seq, a, b = g["seq"], g["a"], g["b"]
        middle = seq[a:b]
        steps = infill.gap_steps(seq, a, b)
        prompt, both = both_sides(seq, a, b, seq[b:])
        if equal_prefix:
            kept = infill.music_before_middle(prompt).size - 1  # without MIDDLE
            before = nll_of(seq[a - kept : b], kept)
        else:
            before = np.concatenate([nll_of(seq[:e], c) for c, e in chunks(seq, a, b, chunk)])
        times = infill.time_before(seq)
        to_join = (times[b] - times[a:b]) / 100.0
        pos = (times[a:b] - times[a]) / max(1, steps)
        row = {"piece": g["piece"], "tokens": int(middle.size), "seconds": steps / 100,
               "both": both, "before": before, "to_join": to_join, "position": pos}  # fmt: skip
        if wrong_after:
            other = gaps[(i + 1) % len(gaps)]
            row["wrong"] = both_sides(seq, a, b, other["seq"][other["b"] :])[1]
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict:
    both = np.concatenate([r["both"] for r in rows])
    before = np.concatenate([r["before"] for r in rows])
    to_join = np.concatenate([r["to_join"] for r in rows])
    pos = np.concatenate([r["position"] for r in rows])
    near = to_join <= LAST_S
    out = {
        "middles": len(rows),
        "tokens": int(both.size),
        "nll_both_sides": float(both.mean()),
        "nll_before_only": float(before.mean()),
        "gain": float(before.mean() - both.mean()),
        "last_second_tokens": int(near.sum()),
        "last_second_both_sides": float(both[near].mean()),
        "last_second_before_only": float(before[near].mean()),
        "last_second_gain": float(before[near].mean() - both[near].mean()),
    }
    if all("wrong" in r for r in rows):
        wrong = np.concatenate([r["wrong"] for r in rows])
        out["nll_wrong_after"] = float(wrong.mean())
        out["reads_after"] = float(wrong.mean() - both.mean())
        out["last_second_reads_after"] = float(wrong[near].mean() - both[near].mean())
    q = np.minimum((pos * QUARTERS).astype(int), QUARTERS - 1)
    out["gain_by_quarter"] = [
        float(before[q == i].mean() - both[q == i].mean()) if np.any(q == i) else None
        for i in range(QUARTERS)
    ]
    return out


ROLL_CONTEXT_S = 3.0
ROLL_COUNT = 4


def _middle_notes(notes: np.ndarray, start: float, end: float) -> np.ndarray:
    """Notes that start inside [start, end), clipped to it, on the gap's clock."""
    inside = notes[(notes[:, 2] >= start - 1e-9) & (notes[:, 2] < end - 1e-9)].copy()
    inside[:, 3] = np.minimum(inside[:, 3], end)
    inside[:, 2:4] -= start
    return inside


def held_pitches(after: np.ndarray) -> np.ndarray:
    """bool [128]: the pitches the part after a gap first meets as a NOTE_OFF (notes sounding
    across the gap's end; ``gap_clock``'s ``held``, counted over ``MAX_SUFFIX_TOKENS``)."""
    import jax.numpy as jnp

    from perceiver_midi.model import gap_clock, infill
    from perceiver_midi.model.vocab import FIM_SUFFIX_ID

    seq = np.concatenate([[FIM_SUFFIX_ID], np.asarray(after)[: infill.MAX_SUFFIX_TOKENS]])
    return np.asarray(gap_clock.buckets(jnp.asarray(seq[None], jnp.int32), 1, held=True)[1].held)[0]


def held_at_end(notes: np.ndarray, end: float, held: np.ndarray) -> int:
    """How many ``held`` pitches sound at ``end`` (a note from before it lasting to it or past
    it) in ``notes`` (rows of pitch, velocity, start, end in seconds)."""
    sounding = notes[(notes[:, 2] < end - 1e-9) & (notes[:, 3] >= end - 1e-6), 0].astype(int)
    return int(held[np.unique(sounding)].sum())


def play_middles(model, gaps: list[dict], seed: int) -> dict:
    """Regenerates each gap once (free-running) and compares the middles with the real ones."""
    from benchmarks.music_metrics import mean_polyphony, notes_of
    from perceiver_midi.app.core.infill import Gap, infill_items
    from perceiver_midi.app.core.pipeline import Settings
    from perceiver_midi.model import infill

    rows, rolls = [], []
    for i, g in enumerate(gaps):
        piece = g["seq"][1:]  # no SOS: as the app reads a file
        times = infill.time_before(piece) / 100
        a, b = g["a"] - 1, g["b"] - 1
        start, end = float(times[a]), float(times[b])
        f = infill_items(model, piece, Gap(start, end), Settings(seed=seed + i), [seed + i], [1])[0]
        real_all, gen_all = (
            notes_of(piece),
            np.asarray(
                [(n.pitch, n.velocity, n.start, n.end) for n in f.notes()], np.float64
            ).reshape(-1, 4),
        )
        real, gen = _middle_notes(real_all, start, end), _middle_notes(gen_all, start, end)
        seconds = end - start
        over = gen_all[(gen_all[:, 2] < end - 1e-9) & (gen_all[:, 3] > end + 1e-9)]
        held = held_pitches(piece[b:])
        rows.append(
            {"seconds": seconds, "stop": f.stop,
             "polyphony": (mean_polyphony(real, seconds), mean_polyphony(gen, seconds)),
             "density": (len(real) / seconds, len(gen) / seconds),
             "sounding_across_end": int(len(over)),
             "held": (int(held.sum()), held_at_end(real_all, end, held),
                      held_at_end(gen_all, end, held))}
        )  # fmt: skip
        if len(rolls) < ROLL_COUNT:
            rolls.append((g["piece"], start, end, real_all, gen_all))
    poly = np.asarray([r["polyphony"] for r in rows])
    held = np.asarray([r["held"] for r in rows]).sum(axis=0)
    dens = np.asarray([r["density"] for r in rows])
    return {
        "middles": len(rows),
        "polyphony_real": float(poly[:, 0].mean()),
        "polyphony_generated": float(poly[:, 1].mean()),
        "polyphony_ratio": float(poly[:, 1].mean() / max(1e-9, poly[:, 0].mean())),
        "density_real": float(dens[:, 0].mean()),
        "density_generated": float(dens[:, 1].mean()),
        "density_ratio": float(dens[:, 1].mean() / max(1e-9, dens[:, 0].mean())),
        "sounding_across_end": int(sum(r["sounding_across_end"] for r in rows)),
        # of the pitches the real piece holds across the gap's end, the share sounding there
        "held_pitches": int(held[0]),
        "held_sounding_real": float(held[1] / max(1, held[0])),
        "held_sounding_generated": float(held[2] / max(1, held[0])),
        "filled_to_the_end": int(sum(r["stop"] == "seconds" for r in rows)),
        "_rolls": rolls,
    }


def draw_rolls(path: pathlib.Path, rolls: list) -> None:
    """Per infill: the real piece around the gap (above) and the regenerated one (below)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.env import save_png

    fig, axes = plt.subplots(2 * len(rolls), 1, figsize=(10, 1.4 * 2 * len(rolls)), squeeze=False)
    for k, (piece, start, end, real, gen) in enumerate(rolls):
        lo, hi = start - ROLL_CONTEXT_S, end + ROLL_CONTEXT_S
        for j, (notes, label) in enumerate(((real, "real"), (gen, "infilled"))):
            ax = axes[2 * k + j, 0]
            for pitch, _vel, a, b in notes:
                if b <= lo or a >= hi:
                    continue
                inside = start - 1e-9 <= a < end - 1e-9
                color = ("tab:blue" if j == 0 else "tab:orange") if inside else "0.55"
                ax.plot([max(a, lo), min(b, hi)], [pitch, pitch], color=color, lw=2)
            for t in (start, end):
                ax.axvline(t, color="k", lw=0.6, ls="--")
            ax.set_xlim(lo, hi)
            ax.set_ylabel(f"{piece}\n{label}", rotation=0, ha="right", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("seconds of the piece (the gap between the dashed lines)")
    fig.tight_layout()
    save_png(fig, path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.env import (
        add_out_flag,
        add_rolls_flag,
        environment,
        rolls_path,
        training_beside,
        write_json,
    )

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="an infilling checkpoint (default: the shipped one)")
    p.add_argument("--data", default=str(ROOT / "work" / "data"), help="prepare-data folder")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--gaps", type=float, nargs="+", default=[2.0, 5.0, 10.0], help="seconds")
    p.add_argument("--per-gap", type=int, default=32, help="middles per gap length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--equal-prefix",
        action="store_true",
        help="the before-only arm gets only the part before the gap the prompt holds",
    )
    p.add_argument(
        "--wrong-after",
        action="store_true",
        help="a third arm: the prompt with another gap's part after the gap (reads_after)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="score each middle in spans of about this many tokens, the latent window ending at"
        " each span's end (128: as the sampler between fills; 0: the paper's windows)",
    )
    p.add_argument(
        "--reanchor",
        action="store_true",
        help="with --chunk: each span gets a prompt of its own for the rest of the gap",
    )
    p.add_argument("--sample", type=int, default=0, help="also regenerate this many gaps")
    p.add_argument("--sample-gap", type=float, default=5.0, help="their length (seconds)")
    add_rolls_flag(p, None, "piano rolls of the first regenerated gaps (PNG)")
    add_out_flag(p, RESULTS)
    args = p.parse_args(argv)
    try:
        check_windows(args.chunk, args.reanchor, args.equal_prefix)
    except ValueError as exc:
        p.error(str(exc))

    from perceiver_midi.model.checkpoint import default_checkpoint, load_model
    from perceiver_midi.tokenizer.dataset import load_split

    ckpt = args.checkpoint or str(default_checkpoint("infill"))
    model = load_model(ckpt)
    if not model.config.infill:
        print(f"error: {ckpt} was not trained to infill", file=sys.stderr)
        return 2
    split = load_split(args.data, args.split)
    t0 = time.perf_counter()
    result = {"checkpoint": ckpt, "split": args.split, "seed": args.seed, "gaps": {},
              "equal_prefix": args.equal_prefix, "wrong_after": args.wrong_after,
              "chunk": args.chunk, "reanchor": args.reanchor}  # fmt: skip
    all_rows = []
    for gap_s in args.gaps:
        gaps = pick_gaps(split, gap_s, args.per_gap, args.seed)
        rows = middle_nll(
            model, gaps, equal_prefix=args.equal_prefix, wrong_after=args.wrong_after,
            chunk=args.chunk, reanchor=args.reanchor,
        )  # fmt: skip
        all_rows += rows
        result["gaps"][f"{gap_s:g}"] = summarise(rows)
        print(json.dumps({f"gap {gap_s:g} s": result["gaps"][f"{gap_s:g}"]}), flush=True)
    result["overall"] = summarise(all_rows)
    if args.sample:
        played = play_middles(
            model, pick_gaps(split, args.sample_gap, args.sample, args.seed + 1), args.seed
        )
        rolls = played.pop("_rolls")
        result["played"] = {"gap_seconds": args.sample_gap, **played}
        print(json.dumps({"played": result["played"]}), flush=True)
        if (png := rolls_path(args.rolls)) is not None:
            draw_rolls(png, rolls)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["training_beside"] = training_beside()
    result["environment"] = environment()
    print(json.dumps({"overall": result["overall"]}), flush=True)
    print(
        f"infill NLL ({args.split}, {len(all_rows)} middles): both sides "
        f"{result['overall']['nll_both_sides']:.4f}, before only "
        f"{result['overall']['nll_before_only']:.4f} (gain {result['overall']['gain']:.4f}; "
        f"last second: gain {result['overall']['last_second_gain']:.4f})"
    )
    if args.wrong_after:
        o = result["overall"]
        print(
            f"reads the part after the gap: wrong after {o['nll_wrong_after']:.4f} - both sides "
            f"= {o['reads_after']:.4f} (last second {o['last_second_reads_after']:.4f})"
        )
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
