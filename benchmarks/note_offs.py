"""Why do notes hang? Teacher-forced NOTE_OFF diagnostics on MAESTRO validation (issue 9).

Two questions, answered on real validation performances with every window given its full
context (no sampling involved):

1. *Does the model lose notes whose NOTE_ON left the latent window?* For every NOTE_OFF target we
   find its NOTE_ON (FIFO per pitch, as decoding does) and its distance d in tokens. The NOTE_ON is
   either inside the target's latent window (visible to the latent self-attention) or only visible
   through the single cross-attention. Within one distance bucket both cases occur (a latent late
   in the window sees further back), so "same distance, different path" isolates the path.
2. *Is the model calibrated about ending notes?* At every target position we sum the model's
   probability of a NOTE_OFF for a sounding pitch (a real note end) and for a silent pitch (a
   no-op: decoding ignores it, but it takes the place of a real event), against how often a
   NOTE_OFF really comes next, bucketed by the number of sounding notes. A model that
   under-predicts note ends as polyphony grows drifts to ever more sounding notes when sampled.

    python benchmarks/note_offs.py [--checkpoint DIR] [--pieces 24] [--tokens 6144]

Writes ``benchmarks/results/note_offs.json`` (or ``--out``); MAESTRO-derived numbers only.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.env import (  # noqa: E402
    add_checkpoint_flag,
    add_note_flag,
    add_out_flag,
    environment,
    write_json,
)
from perceiver_midi.tokenizer.constants import (  # noqa: E402
    NOTE_OFF_FIRST_ID,
    NOTE_ON_FIRST_ID,
    NUM_PITCHES,
)

DISTANCE_EDGES = [0, 32, 64, 128, 256, 384, 512, 1024, 2048, 4096, 10**9]
POLYPHONY_EDGES = [0, 1, 3, 5, 8, 12, 20, 10**9]


def note_on_positions(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position: the NOTE_ON position matched by a NOTE_OFF there (-1 if none), and the
    number of notes sounding *before* the token at that position (FIFO per pitch)."""
    matched = np.full(seq.size, -1, np.int64)
    sounding = np.zeros(seq.size, np.int64)
    queues: list[list[int]] = [[] for _ in range(NUM_PITCHES)]
    count = 0
    for i, tok in enumerate(seq.tolist()):
        sounding[i] = count
        if NOTE_ON_FIRST_ID <= tok < NOTE_ON_FIRST_ID + NUM_PITCHES:
            queues[tok - NOTE_ON_FIRST_ID].append(i)
            count += 1
        elif NOTE_OFF_FIRST_ID <= tok < NOTE_OFF_FIRST_ID + NUM_PITCHES:
            q = queues[tok - NOTE_OFF_FIRST_ID]
            if q:
                matched[i] = q.pop(0)
                count -= 1
    return matched, sounding


def sounding_masks(seq: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """bool [len(positions), 128]: pitches sounding just before each position."""
    state = np.zeros(NUM_PITCHES, np.int64)
    out = np.zeros((positions.size, NUM_PITCHES), bool)
    want = {int(p): k for k, p in enumerate(positions.tolist())}
    for i, tok in enumerate(seq.tolist()):
        if i in want:
            out[want[i]] = state > 0
        if NOTE_ON_FIRST_ID <= tok < NOTE_ON_FIRST_ID + NUM_PITCHES:
            state[tok - NOTE_ON_FIRST_ID] += 1
        elif NOTE_OFF_FIRST_ID <= tok < NOTE_OFF_FIRST_ID + NUM_PITCHES:
            p = tok - NOTE_OFF_FIRST_ID
            state[p] = max(0, state[p] - 1)
    return out


def bucket(values: np.ndarray, edges: list[int]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), values, side="right") - 1


def label(edges: list[int], k: int) -> str:
    hi = edges[k + 1]
    return f"{edges[k]}+" if hi >= 10**9 else f"{edges[k]}-{hi - 1}"


def run(checkpoint: str | None, data: pathlib.Path, pieces: int, tokens: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from perceiver_midi.model.checkpoint import default_checkpoint, load_model, read_info
    from perceiver_midi.model.data import eval_windows, window_arrays
    from perceiver_midi.model.train import validation_subset
    from perceiver_midi.tokenizer.dataset import load_split

    ckpt = checkpoint or str(default_checkpoint())
    model = load_model(ckpt)
    cfg = model.config
    m, n = cfg.num_latents, cfg.max_len
    split = validation_subset(load_split(data, "validation"), pieces, tokens)
    graphdef, state = nnx.split(model)

    @jax.jit
    def logprobs(state, inputs_BxN):
        logits_BxMxV = nnx.merge(graphdef, state)(inputs_BxN)
        return jax.nn.log_softmax(logits_BxMxV.astype(jnp.float32), axis=-1)

    off_d, off_in_window, off_nll = [], [], []
    poly, p_valid, p_noop, is_off = [], [], [], []
    lengths = np.diff(split.offsets)
    t0 = time.perf_counter()
    for k in range(len(split)):
        piece = np.asarray(split.piece(k), np.int64)
        seq = np.concatenate([[2], piece])  # [SOS] + ids: target t is seq[t]
        matched, sounding = note_on_positions(seq)
        windows = eval_windows(lengths[k : k + 1], m)
        for w in windows:
            w = type(w)(0, w.end, w.n_targets)
            sub = type(split)(
                tokens=piece, offsets=np.array([0, piece.size], np.int64), pieces=[None]
            )
            inputs, targets, mask = window_arrays(sub, [w], n, m)
            lp_MxV = np.asarray(logprobs(state, inputs))[0]
            # Target index t (in seq) for latent j: t = w.end - m + 1 + j.
            j_all = np.nonzero(mask[0])[0]
            t_all = w.end - m + 1 + j_all
            masks = sounding_masks(seq, t_all)
            probs = np.exp(lp_MxV[j_all])
            off_probs = probs[:, NOTE_OFF_FIRST_ID : NOTE_OFF_FIRST_ID + NUM_PITCHES]
            p_valid.append((off_probs * masks).sum(1))
            p_noop.append((off_probs * ~masks).sum(1))
            poly.append(sounding[t_all])
            tgt = seq[t_all]
            is_off.append((tgt >= NOTE_OFF_FIRST_ID) & (tgt < NOTE_OFF_FIRST_ID + NUM_PITCHES))
            for j, t in zip(j_all.tolist(), t_all.tolist(), strict=True):
                s = matched[t]
                if s < 0:
                    continue
                off_d.append(t - s)
                # The latent predicting t sits at input position t - 1; the window's latents
                # are the inputs [end - m, end - 1]: the NOTE_ON is among them iff s >= end - m.
                off_in_window.append(s >= w.end - m)
                off_nll.append(-float(lp_MxV[j, seq[t]]))
    off_d, off_in_window, off_nll = map(np.asarray, (off_d, off_in_window, off_nll))
    poly, p_valid, p_noop, is_off = map(np.concatenate, (poly, p_valid, p_noop, is_off))

    by_distance = []
    bd = bucket(off_d, DISTANCE_EDGES)
    for k in range(len(DISTANCE_EDGES) - 1):
        row = {"distance_tokens": label(DISTANCE_EDGES, k)}
        for name, sel in (
            ("latent_window", off_in_window),
            ("cross_attention_only", ~off_in_window),
        ):
            pick = (bd == k) & sel
            row[name] = {
                "count": int(pick.sum()),
                "nll": float(off_nll[pick].mean()) if pick.any() else None,
            }
        if row["latent_window"]["count"] or row["cross_attention_only"]["count"]:
            by_distance.append(row)

    by_polyphony = []
    bp = bucket(poly, POLYPHONY_EDGES)
    for k in range(len(POLYPHONY_EDGES) - 1):
        pick = bp == k
        if not pick.any():
            continue
        by_polyphony.append(
            {
                "sounding_notes": label(POLYPHONY_EDGES, k),
                "positions": int(pick.sum()),
                "real_note_off_rate": float(is_off[pick].mean()),
                "predicted_note_off_sounding": float(p_valid[pick].mean()),
                "predicted_note_off_silent_noop": float(p_noop[pick].mean()),
            }
        )
    return {
        "checkpoint": ckpt,
        "checkpoint_info": read_info(ckpt).get("metadata", {}),
        "num_latents": m,
        "context": n,
        "pieces": len(split),
        "tokens_per_piece": tokens,
        "note_off_targets": int(off_d.size),
        "note_off_nll": {
            "latent_window": float(off_nll[off_in_window].mean()),
            "cross_attention_only": float(off_nll[~off_in_window].mean()),
        },
        "by_distance": by_distance,
        "calibration": {
            "real_note_off_rate": float(is_off.mean()),
            "predicted_note_off_sounding": float(p_valid.mean()),
            "predicted_note_off_silent_noop": float(p_noop.mean()),
        },
        "by_polyphony": by_polyphony,
        "seconds": time.perf_counter() - t0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_flag(ap)
    ap.add_argument("--data", default=str(ROOT / "work/data"), help="prepare-data output")
    ap.add_argument("--pieces", type=int, default=24, help="validation pieces (spread out)")
    ap.add_argument("--tokens", type=int, default=6144, help="first tokens of each piece")
    add_out_flag(ap, ROOT / "benchmarks/results/note_offs.json")
    add_note_flag(ap)
    args = ap.parse_args(argv)
    if not (pathlib.Path(args.data) / "validation/DONE.json").exists():
        print(f"{args.data}: no prepared validation split (run perceiver-midi prepare-data)")
        return 2
    if not 1 <= args.pieces <= 137 or not 512 <= args.tokens <= 100_000:
        print("--pieces must be in 1..137 and --tokens in 512..100000")
        return 2
    result = run(args.checkpoint, pathlib.Path(args.data), args.pieces, args.tokens)
    result["note"] = args.note
    result["environment"] = environment()
    write_json(args.out, result)
    print(f"NOTE_OFF targets: {result['note_off_targets']:,}")
    print(f"{'distance':>10} {'in latents':>18} {'cross-attn only':>18}   (count, NLL)")
    for row in result["by_distance"]:
        a, b = row["latent_window"], row["cross_attention_only"]
        fa = f"{a['count']:6d} {a['nll']:.3f}" if a["count"] else " " * 12
        fb = f"{b['count']:6d} {b['nll']:.3f}" if b["count"] else " " * 12
        print(f"{row['distance_tokens']:>10} {fa:>18} {fb:>18}")
    print(f"{'sounding':>10} {'real off':>9} {'pred off':>9} {'pred no-op':>10}")
    for row in result["by_polyphony"]:
        print(
            f"{row['sounding_notes']:>10} {row['real_note_off_rate']:9.3f} "
            f"{row['predicted_note_off_sounding']:9.3f} "
            f"{row['predicted_note_off_silent_noop']:10.3f}"
        )
    c = result["calibration"]
    print(
        f"overall: real NOTE_OFF rate {c['real_note_off_rate']:.3f}, predicted "
        f"{c['predicted_note_off_sounding']:.3f} (+ {c['predicted_note_off_silent_noop']:.3f} "
        "on silent pitches)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
