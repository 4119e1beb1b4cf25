"""Teacher-forced note density: does the model predict the real density when it reads real music?

    python benchmarks/teacher_forced.py --checkpoint A --checkpoint B [--pieces 32]

On the quality benchmark's validation pieces (``benchmarks/quality.py``: its prime window, 60-80 s,
and the real continuation, 80-100 s), each piece from SOS + 60 s to 100 s goes through the model
once (the logits of the last M positions, all inside the real continuation). At every position
the model's next-token distribution gives the expected number of NOTE_ONs and the expected time
advance (TIME_SHIFT steps x 10 ms); their ratio, summed over positions, is the density the model
predicts while reading real music ("teacher-forced"). The real density of the same positions is
counted from the tokens. ``benchmarks/quality.py`` measures the density the model *plays*
(free-running); comparing the two tells a calibration error (teacher-forced already off) from an
exposure-bias drift (teacher-forced right, free-running off).

``--time-shift-exponents 0,0.05,0.1`` also rescales, for each exponent b, the model's TIME_SHIFT
probabilities by k^b (k = the shift in 10 ms steps; the distribution renormalised) and reports
the NLL of the real tokens and the predicted time and density at those positions: whether the
model's time is off in a direction a calibration could fix, and at what NLL.

Writes ``benchmarks/results/teacher_forced.json``. Needs MAESTRO (``--maestro``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "teacher_forced.json"


def densities(model, pieces, exponents=()) -> dict:
    """Predicted and real notes/s over the last M positions of each piece's 60-100 s excerpt,
    and for each TIME_SHIFT exponent b the NLL, time and density with shifts reweighted by k^b."""
    import jax
    import jax.numpy as jnp

    from benchmarks.quality import CONTINUATION_S, PRIME_START_S, SPLIT_S
    from perceiver_midi.model import vocab
    from perceiver_midi.tokenizer import cut_range

    on = slice(vocab.NOTE_ON_FIRST_ID, vocab.NOTE_OFF_FIRST_ID)
    shift = slice(vocab.TIME_SHIFT_FIRST_ID, vocab.TIME_SHIFT_LAST_ID + 1)
    steps = np.arange(1, vocab.TIME_SHIFT_LAST_ID - vocab.TIME_SHIFT_FIRST_ID + 2)
    n, m = int(model.config.max_len), int(model.config.num_latents)
    forward = jax.jit(lambda t: jax.nn.log_softmax(model(t), axis=-1))
    rows, logps, tgts = [], [], []
    for piece in pieces:
        seq = cut_range(piece["ids"], PRIME_START_S, SPLIT_S + CONTINUATION_S)
        seq = np.concatenate([[vocab.SOS_ID], seq])[-(n + 1) :].astype(np.int32)
        inputs, targets = seq[:-1], seq[1:]
        tokens = np.full((1, n), vocab.PAD_ID, np.int32)
        tokens[0, n - inputs.size :] = inputs
        logp = np.asarray(forward(jnp.asarray(tokens))[0], np.float64)  # [M, V]
        k = min(m, inputs.size)
        logp, tgt = logp[-k:], targets[-k:]
        probs = np.exp(logp)
        logps.append(logp)
        tgts.append(tgt)
        rows.append(
            {
                "name": piece["name"],
                "positions": int(k),
                "expected_note_ons": float(probs[:, on].sum()),
                "expected_steps": float((probs[:, shift] * steps).sum()),
                "real_note_ons": int(((tgt >= on.start) & (tgt < on.stop)).sum()),
                "real_steps": int(
                    np.where(
                        (tgt >= shift.start) & (tgt < shift.stop), tgt - shift.start + 1, 0
                    ).sum()
                ),
            }
        )
    total = {key: sum(r[key] for r in rows) for key in rows[0] if key != "name"}
    predicted = total["expected_note_ons"] / (total["expected_steps"] / vocab.STEPS_PER_SECOND)
    real = total["real_note_ons"] / (total["real_steps"] / vocab.STEPS_PER_SECOND)
    logp, tgt = np.concatenate(logps), np.concatenate(tgts)
    scan = []
    for b in exponents:
        lp = logp.copy()
        lp[:, shift] += b * np.log(steps)
        lp -= np.logaddexp.reduce(lp, axis=1, keepdims=True)
        p = np.exp(lp)
        time_ratio = float((p[:, shift] * steps).sum() / total["real_steps"])
        on_ratio = float(p[:, on].sum() / total["real_note_ons"])
        scan.append(
            {
                "exponent": float(b),
                "nll": float(-lp[np.arange(tgt.size), tgt].mean()),
                "predicted_over_real_time": time_ratio,
                "predicted_over_real_density": on_ratio / time_ratio,
            }
        )
    return {
        "predicted_notes_per_s": predicted,
        "real_notes_per_s": real,
        "ratio": predicted / real,
        "totals": total,
        "time_shift_exponents": scan,
        "pieces": rows,
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.env import add_note_flag, add_out_flag, environment, write_json
    from benchmarks.quality import DEFAULT_PIECES, choose_pieces
    from perceiver_midi.app.train_cli import DEFAULT_MAESTRO
    from perceiver_midi.model.checkpoint import load_model, read_info

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", required=True, help="repeat to compare")
    p.add_argument("--maestro", default=str(DEFAULT_MAESTRO))
    p.add_argument("--pieces", type=int, default=DEFAULT_PIECES)
    add_out_flag(p, RESULTS)
    add_note_flag(p)
    p.add_argument(
        "--time-shift-exponents",
        default="",
        help="comma-separated exponents b: TIME_SHIFT k reweighted by k^b (e.g. 0,0.05,0.1)",
    )
    args = p.parse_args(argv)
    try:
        exponents = [float(x) for x in args.time_shift_exponents.split(",") if x.strip()]
    except ValueError:
        p.error(f"--time-shift-exponents: not numbers: {args.time_shift_exponents!r}")
    pieces = choose_pieces(pathlib.Path(args.maestro), args.pieces)
    results = {"environment": environment(), "pieces": len(pieces), "note": args.note, "by": {}}
    for ckpt in args.checkpoint:
        info = read_info(ckpt)
        d = densities(load_model(ckpt), pieces, exponents)
        d["metadata"] = info.get("metadata", {})
        results["by"][ckpt] = d
        print(f"{ckpt}: teacher-forced {d['predicted_notes_per_s']:.2f} notes/s vs real "
              f"{d['real_notes_per_s']:.2f} (ratio {d['ratio']:.3f})", flush=True)  # fmt: skip
        for row in d["time_shift_exponents"]:
            print(f"  shifts x k^{row['exponent']:g}: NLL {row['nll']:.4f}, time "
                  f"{row['predicted_over_real_time']:.3f}x, density "
                  f"{row['predicted_over_real_density']:.3f}x of the real", flush=True)  # fmt: skip
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
