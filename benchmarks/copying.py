"""The copy test: is a passage heard once predicted better the second time?

    python benchmarks/copying.py --checkpoint A --checkpoint B [--pieces 24] [--val-pieces 12]

On the first ``--pieces`` validation pieces long enough for it, a 240-token excerpt E starting at
token 2,048 is scored teacher-forced in two layouts, each one forward pass of the model's N-token
context (its last M positions are the latents):

* ``near``: the piece up to E, then E, then E again. Both playings lie inside the latent window,
  so the latent self-attention can copy. ``first`` is the NLL of E's first playing (the model's
  plain NLL on it), ``second`` of its second playing, ``second_half`` of the last 120 tokens of
  the second playing (the copy is established by then);
* ``far``: the piece up to E, E, the 1,500 tokens of the piece that follow E, then E again. The
  first playing lies far outside the latent window: only the cross-attention can reach it.

A model that copies in context falls far below ``first`` on both second playings. Also reported:
validation NLL (every token of the first ``--val-pieces`` pieces, with contexts 512, 1,024,
2,048 and the model's N), so a change that copies better can be checked not to model plain
music worse. Writes ``benchmarks/results/copying.json`` (one entry per checkpoint, merged into
what is there). Needs prepared MAESTRO data (``perceiver-midi prepare-data``).
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

RESULTS = ROOT / "benchmarks" / "results" / "copying.json"
EXCERPT_TOKENS = 240
EXCERPT_START = 2048
FAR_GAP_TOKENS = 1500
CONTEXTS = (512, 1024, 2048)


def copy_rows(pieces: list[np.ndarray], n: int) -> list[dict]:
    """For each piece: the two layouts as (inputs [N], targets [N], spans of E's playings)."""
    from perceiver_midi.model.vocab import PAD_ID, SOS_ID

    e, s = EXCERPT_TOKENS, EXCERPT_START
    rows = []
    for ids in pieces:
        ids = np.asarray(ids, np.int32)
        excerpt = ids[s : s + e]
        layouts = {
            "near": [ids[:s], excerpt, excerpt],
            "far": [ids[:s], excerpt, ids[s + e : s + e + FAR_GAP_TOKENS], excerpt],
        }
        row = {}
        for name, parts in layouts.items():
            seq = np.concatenate([[SOS_ID], *parts]).astype(np.int32)[-(n + 1) :]
            inputs = np.full(n, PAD_ID, np.int32)
            inputs[n - (seq.size - 1) :] = seq[:-1]
            targets = np.full(n, PAD_ID, np.int32)
            targets[n - (seq.size - 1) :] = seq[1:]
            # Target index t predicts seq position t + 1; the second playing is the last e tokens.
            row[name] = (inputs, targets, n - e, n - 2 * e)
        rows.append(row)
    return rows


def copy_test(model, pieces: list[np.ndarray], batch: int = 4) -> dict:
    """Mean NLL (nats/token) of E's first and second playings in both layouts."""
    import jax
    import jax.numpy as jnp

    n, m = int(model.config.max_len), int(model.config.num_latents)
    e = EXCERPT_TOKENS
    if m < 2 * e + 1:
        raise ValueError(f"the copy test needs at least {2 * e + 1} latents, the model has {m}")
    forward = jax.jit(lambda t: jax.nn.log_softmax(model(t), axis=-1))
    rows = copy_rows(pieces, n)
    out = {}
    for name in ("near", "far"):
        nll_first, nll_second, nll_half = [], [], []
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            inputs = np.stack([r[name][0] for r in chunk])
            targets = np.stack([r[name][1] for r in chunk])[:, n - m :]
            logp = np.asarray(forward(jnp.asarray(inputs)), np.float64)  # [B, M, V]
            nll = -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, M]
            second = slice(m - e, m)
            nll_second.append(nll[:, second].mean(axis=1))
            nll_half.append(nll[:, m - e // 2 : m].mean(axis=1))
            if name == "near":
                nll_first.append(nll[:, m - 2 * e : m - e].mean(axis=1))
        res = {
            "second": float(np.mean(np.concatenate(nll_second))),
            "second_half": float(np.mean(np.concatenate(nll_half))),
        }
        if nll_first:
            res["first"] = float(np.mean(np.concatenate(nll_first)))
        out[name] = res
    return out


def long_pieces(split, count: int) -> list[np.ndarray]:
    """The first ``count`` pieces of a split long enough for the far layout."""
    need = EXCERPT_START + 2 * EXCERPT_TOKENS + FAR_GAP_TOKENS
    picked = []
    for k in range(len(split)):
        piece = np.asarray(split.piece(k))
        if piece.size >= need:
            picked.append(piece)
        if len(picked) == count:
            break
    return picked


def main(argv: list[str] | None = None) -> int:
    from benchmarks.env import add_checkpoint_flag, add_out_flag, environment, write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_checkpoint_flag(p, repeatable=True)
    p.add_argument("--data", default=str(ROOT / "work" / "data"), help="prepare-data folder")
    p.add_argument("--pieces", type=int, default=24, help="validation pieces for the copy test")
    p.add_argument("--val-pieces", type=int, default=12, help="validation pieces for the NLL")
    p.add_argument("--contexts", action="store_true", help="also NLL at 512 / 1k / 2k context")
    add_out_flag(p, RESULTS)
    args = p.parse_args(argv)

    from perceiver_midi.model.checkpoint import default_checkpoint, load_model
    from perceiver_midi.model.evaluate import evaluate
    from perceiver_midi.tokenizer.dataset import load_split

    val = load_split(args.data, "validation")
    pieces = long_pieces(val, args.pieces)
    out_path = pathlib.Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    for ckpt in args.checkpoint or [str(default_checkpoint())]:
        t0 = time.perf_counter()
        model = load_model(ckpt)
        entry = {"copy": copy_test(model, pieces), "pieces": len(pieces)}
        contexts = (*CONTEXTS, model.config.max_len) if args.contexts else (model.config.max_len,)
        entry["val_nll"] = {
            str(c): evaluate(model, val, context=c, max_pieces=args.val_pieces, progress=False)[
                "nll"
            ]
            for c in contexts
        }
        entry["val_pieces"] = args.val_pieces
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        entry["environment"] = environment()
        results[str(ckpt)] = entry
        print(json.dumps({str(ckpt): entry}), flush=True)
    write_json(out_path, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
