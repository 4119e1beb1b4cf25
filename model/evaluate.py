"""NLL the way the paper reports it: nats per token over a whole split, every token scored once.

Each piece is scored as ``[SOS] + ids`` (targets: every id). Windows of M new targets slide over the
piece; each target sees all the context the model takes (up to N inputs, ``context``), and the
first window of a piece scores its positions with growing context. ``context=1024`` shows what long
context buys.

``note_off_rule=True`` also scores (``nll_note_off_rule``) the distribution users sample from:
the sampler only ends sounding notes, giving them the model's whole NOTE_OFF probability
(``model.sampler.end_sounding_only``), with the notes sounding before each target counted from
the piece's start, from the same forward passes. ``nll`` (the paper's measure) is always the
raw model's.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perceiver_midi.model.data import eval_windows, window_arrays
from perceiver_midi.model.perceiver_ar import PerceiverAR
from perceiver_midi.model.sampler import end_sounding_only, sounding_pitches
from perceiver_midi.model.vocab import NOTE_OFF_FIRST_ID, NOTE_ON_FIRST_ID, NUM_PITCHES, SOS_ID
from perceiver_midi.tokenizer.dataset import TokenSplit


@functools.lru_cache(maxsize=8)
def _nll_fn(graphdef, num_latents: int):
    def window_sums(logits_BxMxV, targets_BxM, mask_BxM):
        logp_BxMxV = jax.nn.log_softmax(logits_BxMxV, axis=-1)
        tgt_logp_BxM = jnp.take_along_axis(logp_BxMxV, targets_BxM[..., None], axis=-1)[..., 0]
        return -jnp.where(mask_BxM, tgt_logp_BxM, 0.0).sum(axis=-1)  # per window

    @jax.jit
    def nll(state, inputs_BxN, targets_BxM, mask_BxM, sounding_BxMxP=None):
        """Per-window NLL sums: the raw model's, and (given the sounding pitches) the rule's."""
        model = nnx.merge(graphdef, state)
        logits_BxMxV = model(inputs_BxN, num_latents=num_latents).astype(jnp.float32)
        raw_B = window_sums(logits_BxMxV, targets_BxM, mask_BxM)
        if sounding_BxMxP is None:
            return raw_B, raw_B
        b, m, v = logits_BxMxV.shape
        ruled_BxMxV = end_sounding_only(
            logits_BxMxV.reshape(b * m, v), sounding_BxMxP.reshape(b * m, -1)
        ).reshape(b, m, v)
        return raw_B, window_sums(ruled_BxMxV, targets_BxM, mask_BxM)

    return nll


def evaluate(
    model: PerceiverAR,
    split: TokenSplit,
    *,
    context: int | None = None,
    num_latents: int | None = None,
    batch_size: int = 8,
    max_pieces: int | None = None,
    progress: bool = True,
    note_off_rule: bool = False,
) -> dict:
    """Mean NLL (nats/token) over every token of the split's (first ``max_pieces``) pieces."""
    c = model.config
    context = min(context or c.max_len, c.max_len)
    m = min(num_latents or c.num_latents, context)
    n_pieces = len(split) if max_pieces is None else min(max_pieces, len(split))
    lengths = np.diff(split.offsets)[:n_pieces]
    windows = eval_windows(lengths, m)
    graphdef, state = nnx.split(model)
    nll = _nll_fn(graphdef, m)
    sounding = _SoundingCounts()
    total, total_rule, counted = 0.0, 0.0, 0
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(
        total=int(lengths.sum()), unit="tok", desc=f"eval ctx {context}", disable=not progress
    )
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        inputs, targets, mask = window_arrays(split, chunk, context, m)
        extra = ()
        if note_off_rule:
            extra = (np.stack([sounding.before_targets(split, w, m) for w in chunk]),)
        pad = batch_size - len(chunk)  # one compiled shape: pad the last batch
        if pad:
            inputs = np.concatenate([inputs, np.zeros((pad, context), np.int32)])
            targets = np.concatenate([targets, np.zeros((pad, m), np.int32)])
            mask = np.concatenate([mask, np.zeros((pad, m), bool)])
            extra = tuple(np.concatenate([e, np.zeros((pad, *e.shape[1:]), bool)]) for e in extra)
        raw_W, ruled_W = nll(state, inputs, targets, mask, *extra)
        total += float(np.asarray(raw_W, np.float64).sum())
        total_rule += float(np.asarray(ruled_W, np.float64).sum())
        n = int(mask.sum())
        counted += n
        bar.update(n)
    bar.close()
    if counted != int(lengths.sum()):  # a bug guard: every token exactly once
        raise AssertionError(f"scored {counted} tokens, expected {int(lengths.sum())}")
    return {
        "nll": total / max(counted, 1),
        "tokens": counted,
        "pieces": n_pieces,
        "context": context,
        "num_latents": m,
        "windows": len(windows),
        **({"nll_note_off_rule": total_rule / max(counted, 1)} if note_off_rule else {}),
        "seconds": time.perf_counter() - t0,
    }


class _SoundingCounts:
    """Notes sounding per pitch before every position of a piece, one piece at a time."""

    def __init__(self):
        self._piece, self._counts = -1, np.zeros((0, NUM_PITCHES), np.int16)

    def _for_piece(self, split: TokenSplit, piece: int) -> np.ndarray:
        if piece != self._piece:
            seq = np.concatenate([[SOS_ID], np.asarray(split.piece(piece), np.int64)])
            is_on = (seq >= NOTE_ON_FIRST_ID) & (seq < NOTE_ON_FIRST_ID + NUM_PITCHES)
            is_off = (seq >= NOTE_OFF_FIRST_ID) & (seq < NOTE_OFF_FIRST_ID + NUM_PITCHES)
            delta = np.zeros((seq.size + 1, NUM_PITCHES), np.int16)
            rows = np.arange(1, seq.size + 1)
            delta[rows[is_on], seq[is_on] - NOTE_ON_FIRST_ID] += 1
            delta[rows[is_off], seq[is_off] - NOTE_OFF_FIRST_ID] -= 1
            counts = np.cumsum(delta, axis=0, dtype=np.int16)  # counts[t]: before seq[t]
            if counts.min() < 0:  # an unmatched NOTE_OFF (never in note-seq data): count exactly
                counts = np.zeros_like(counts)
                for t in range(1, seq.size + 1):
                    counts[t] = sounding_pitches(seq[t - 1 : t], counts[t - 1])
            self._piece, self._counts = piece, counts
        return self._counts

    def before_targets(self, split: TokenSplit, win, m: int) -> np.ndarray:
        """bool [m, 128]: pitches sounding before each of the window's m target positions."""
        counts = self._for_piece(split, win.piece)
        out = np.zeros((m, NUM_PITCHES), bool)
        lo = max(0, win.end - m + 1)  # targets are seq[end - m + 1 .. end]
        rows = counts[lo : win.end + 1] > 0
        out[m - rows.shape[0] :] = rows
        return out
