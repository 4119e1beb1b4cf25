"""NLL the way the paper reports it: nats per token over a whole split, every token scored once.

Each piece is scored as ``[SOS] + ids`` (targets: every id). Windows of M new targets slide over the
piece; each target sees all the context the model takes (up to N inputs, ``context``), and the
first window of a piece scores its positions with growing context. ``context=1024`` shows what long
context buys.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.data import eval_windows, window_arrays
from model.perceiver_ar import PerceiverAR
from tokenizer.dataset import TokenSplit


@functools.lru_cache(maxsize=8)
def _nll_fn(graphdef, num_latents: int):
    @jax.jit
    def nll(state, inputs_BxN, targets_BxM, mask_BxM):
        model = nnx.merge(graphdef, state)
        logits_BxMxV = model(inputs_BxN, num_latents=num_latents)
        logp_BxMxV = jax.nn.log_softmax(logits_BxMxV.astype(jnp.float32), axis=-1)
        tgt_logp_BxM = jnp.take_along_axis(logp_BxMxV, targets_BxM[..., None], axis=-1)[..., 0]
        return -jnp.where(mask_BxM, tgt_logp_BxM, 0.0).sum(axis=-1)  # per window

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
    total, counted = 0.0, 0
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(
        total=int(lengths.sum()), unit="tok", desc=f"eval ctx {context}", disable=not progress
    )
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        inputs, targets, mask = window_arrays(split, chunk, context, m)
        pad = batch_size - len(chunk)  # one compiled shape: pad the last batch
        if pad:
            inputs = np.concatenate([inputs, np.zeros((pad, context), np.int32)])
            targets = np.concatenate([targets, np.zeros((pad, m), np.int32)])
            mask = np.concatenate([mask, np.zeros((pad, m), bool)])
        per_window = np.asarray(nll(state, inputs, targets, mask), np.float64)
        total += float(per_window.sum())
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
        "seconds": time.perf_counter() - t0,
    }
