"""Match lookup: what followed the last time the music went like this? (``Config.match_lookup``)

For every latent position p, find the earlier position t whose preceding tokens agree longest
with the tokens up to p (at most L of them, compared on a coarse view), the most recent one
among equals; the model then gets the token at t (the one that followed that context) and the
length of the agreement as zero-initialised embeddings added to the latent's initial state.
It is an induction head computed exactly instead of learned: a trained attention layer can
only find such a match after a long plateau of training, and performance tokens make exact
matches rare (a repeat comes back with other time shifts and velocities), so the comparison
uses a coarse view of each token:

* NOTE_ON and NOTE_OFF keep their pitch; SOS and EOS are themselves;
* a TIME_SHIFT becomes its bucket on a log scale (ratio ~1.4: 1, 2, 3, 4-5, 6-7, 8-10, ...);
* every VELOCITY is one class (a re-performed passage is louder or softer, not another one);
* PAD never matches anything.

The token view above breaks where a pianist repeats the notes but not the timing: a figure played
with human timing comes back with other time shifts, and with the NOTE_OFFs and VELOCITYs in
another order around the notes, so a run of agreeing tokens stays short. ``note_lookup``
(``Config.note_lookup``) is the same search over the NOTE_ON pitches alone: which pitch
followed the last time the latest notes were played in this order?

A match one or two notes back is a note or a trill repeating itself; in free-running sampling the
model's own repeats then find ever longer matches, whose logit bonus makes the next repeat more
likely: a continuation stuck on one note for 15 s. ``min_notes`` (``Config.match_min_notes``) N > 0
drops a match (length 0) that lies fewer than N notes back: for ``lookup``, fewer than N NOTE_ONs
from the followed token to the query, both included; for ``note_lookup``, a matched run that ends
fewer than N notes before the query's. A figure of N notes or more is still found.

Pure functions of token ids (no parameters); ``lookup`` serves the full forward and a latent
refill; a decoding step keeps each ring slot's match length (``ring_lengths`` at a refill,
``advance_lengths`` per token) and reads the answer with ``best_in_ring``. Both give the same
result for the same window, so cached decoding equals a full forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from perceiver_midi.model.vocab import (
    INPUT_VOCAB_SIZE,
    NOTE_ON_FIRST_ID,
    NUM_PITCHES,
    PAD_ID,
    TIME_SHIFT_FIRST_ID,
    TIME_SHIFT_LAST_ID,
    VELOCITY_FIRST_ID,
    VOCAB_SIZE,
)

SHIFT_BUCKET_RATIO = 1.4


def coarse_table() -> np.ndarray:
    """int32 [V + sentinels]: the coarse class of every id; 0 for PAD (never matches)."""
    table = np.arange(INPUT_VOCAB_SIZE, dtype=np.int32)  # notes, SOS, EOS, sentinels: themselves
    table[PAD_ID] = 0
    steps = np.arange(1, TIME_SHIFT_LAST_ID - TIME_SHIFT_FIRST_ID + 2)
    buckets = np.floor(np.log(steps) / np.log(SHIFT_BUCKET_RATIO) + 1e-9).astype(np.int32)
    table[TIME_SHIFT_FIRST_ID : TIME_SHIFT_LAST_ID + 1] = TIME_SHIFT_FIRST_ID + buckets
    table[VELOCITY_FIRST_ID:VOCAB_SIZE] = VELOCITY_FIRST_ID
    assert table[NOTE_ON_FIRST_ID] == NOTE_ON_FIRST_ID
    return table


_COARSE = coarse_table()


def coarse(tokens):
    return jnp.asarray(_COARSE)[tokens]


def _best(len_BxQxT: jax.Array, order_T: jax.Array, ok_BxQxT: jax.Array):
    """Index of the longest match, the latest (largest ``order``) among equals, and its length."""
    big = order_T.shape[-1] + 1
    score = jnp.where(ok_BxQxT, len_BxQxT * big + order_T, -1)
    best_BxQ = jnp.argmax(score, axis=-1)
    best_len_BxQ = jnp.take_along_axis(len_BxQxT, best_BxQ[..., None], axis=-1)[..., 0]
    return best_BxQ, jnp.where(jnp.max(score, axis=-1) >= 0, best_len_BxQ, 0)


def lookup(tokens_BxL: jax.Array, num_queries: int, max_len: int, min_notes: int = 0):
    """For the last Q positions p of ``tokens`` (left-padded): (follow_BxQ, length_BxQ), the token
    at the best t <= p (its L preceding coarse tokens vs the L ending at p) and the match length
    (0..L; with 0 the token is meaningless; 0 too when tokens t..p hold fewer than ``min_notes``
    NOTE_ONs)."""
    b, n = tokens_BxL.shape
    q = num_queries
    c_BxL = coarse(tokens_BxL)
    p_Q = jnp.arange(n - q, n)
    t_T = jnp.arange(n)
    alive = jnp.ones((b, q, n), bool)
    length = jnp.zeros((b, q, n), jnp.int32)
    for j in range(max_len):
        q_BxQ = jnp.where(p_Q - j >= 0, c_BxL[:, jnp.maximum(p_Q - j, 0)], 0)
        src_T = t_T - 1 - j
        k_BxT = jnp.where(src_T >= 0, c_BxL[:, jnp.maximum(src_T, 0)], 0)
        alive = alive & (q_BxQ[:, :, None] == k_BxT[:, None, :]) & (q_BxQ[:, :, None] > 0)
        length = length + alive
    ok = (t_T[None, :] <= p_Q[:, None])[None] & (length > 0)
    best_BxQ, len_BxQ = _best(length, t_T, ok)
    if min_notes:
        on_BxL = _is_note_on(tokens_BxL).astype(jnp.int32)
        upto_BxL = jnp.cumsum(on_BxL, axis=1)  # NOTE_ONs up to and with each position
        before_BxQ = jnp.take_along_axis(upto_BxL - on_BxL, best_BxQ, axis=1)  # before t
        notes_BxQ = upto_BxL[:, n - q :] - before_BxQ
        len_BxQ = jnp.where(notes_BxQ < min_notes, 0, len_BxQ)
    return jnp.take_along_axis(tokens_BxL, best_BxQ, axis=1), len_BxQ


def ring_lengths(ring_BxC: jax.Array, col_C: jax.Array, first_B: jax.Array, cur, max_len: int):
    """Match length of every ring slot's column (as a candidate t) against the newest column
    ``cur`` (as p), within the window that starts at column ``first_B``: ``lookup``'s lengths
    for a ring of token ids (column c in slot c % C; ``col_C``: the column each slot holds).
    O(L C): used at a latent refill; a decoding step advances it with ``advance_lengths``."""
    cap = ring_BxC.shape[1]
    c_BxC = coarse(ring_BxC)
    alive = jnp.ones(c_BxC.shape, bool)
    length = jnp.zeros(c_BxC.shape, jnp.int32)
    for j in range(max_len):
        q_col = cur - j
        q_B = jnp.where(q_col >= first_B, c_BxC[:, q_col % cap], 0)
        src_ok_BxC = (col_C[None] - 1 - j) >= first_B[:, None]
        k_BxC = jnp.where(src_ok_BxC, jnp.roll(c_BxC, 1 + j, axis=1), 0)
        alive = alive & (q_B[:, None] == k_BxC) & (q_B[:, None] > 0)
        length = length + alive
    return length


def advance_lengths(
    length_BxC: jax.Array, ring_BxC: jax.Array, col_C: jax.Array, first_B: jax.Array, cur, max_len
):
    """``ring_lengths`` for the newest column ``cur`` from those for ``cur - 1``, in O(C): a
    candidate agrees for k + 1 tokens iff the token before it agrees with the newest one and the
    candidate before it agreed for k (the window unchanged since the lengths were computed)."""
    cap = ring_BxC.shape[1]
    c_BxC = coarse(ring_BxC)
    q_B = c_BxC[:, cur % cap]
    prev_ok_BxC = (col_C[None] - 1) >= first_B[:, None]
    agree_BxC = (jnp.roll(c_BxC, 1, axis=1) == q_B[:, None]) & (q_B[:, None] > 0) & prev_ok_BxC
    grown = jnp.minimum(jnp.roll(length_BxC, 1, axis=1) + 1, max_len)
    return jnp.where(agree_BxC & (cur >= first_B)[:, None], grown, 0)


def best_in_ring(
    ring_BxC: jax.Array, length_BxC: jax.Array, col_C, first_B, cur, min_notes: int = 0
):
    """(follow_B, length_B) from the ring's match lengths: ``lookup``'s answer for ``cur``."""
    inside_BxC = (col_C[None] >= first_B[:, None]) & (col_C[None] <= cur)
    ok = inside_BxC & (length_BxC > 0)
    order_C = col_C - jnp.min(col_C)  # recency, >= 0
    best_B1, len_B1 = _best(length_BxC[:, None], order_C, ok[:, None])
    len_B = len_B1[:, 0]
    if min_notes:
        since_BxC = inside_BxC & (col_C[None] >= col_C[best_B1[:, 0]][:, None])
        notes_B = jnp.sum(_is_note_on(ring_BxC) & since_BxC, axis=1)
        len_B = jnp.where(notes_B < min_notes, 0, len_B)
    return jnp.take_along_axis(ring_BxC, best_B1, axis=1)[:, 0], len_B


def _is_note_on(tokens):
    return (tokens >= NOTE_ON_FIRST_ID) & (tokens < NOTE_ON_FIRST_ID + NUM_PITCHES)


def note_lookup(tokens_BxL: jax.Array, num_queries: int, max_len: int, min_notes: int = 0):
    """For the last Q positions p of ``tokens``: (follow_BxQ, length_BxQ) over the NOTE_ONs only.

    The notes up to p, in order, end with pitches a_1..a_k; the answer is the NOTE_ON id that
    followed the latest earlier run of notes equal to the longest such suffix (at most L notes;
    the most recent among equals), and that length (0..L; with 0 the id is meaningless; 0 too
    when that run ends fewer than ``min_notes`` notes before a_k). Every other token is
    ignored, so timing, NOTE_OFFs and loudness never break a match."""
    b, n = tokens_BxL.shape
    on_BxL = _is_note_on(tokens_BxL)
    count_BxL = jnp.cumsum(on_BxL, axis=1, dtype=jnp.int32)  # notes up to and including p
    slot_BxL = jnp.where(on_BxL, count_BxL - 1, n)
    rows_Bx1 = jnp.arange(b)[:, None]
    notes_BxL = (
        jnp.full((b, n + 1), PAD_ID, tokens_BxL.dtype).at[rows_Bx1, slot_BxL].set(tokens_BxL)
    )[:, :n]  # the NOTE_ON ids in order, PAD after the last
    last_BxQ = count_BxL[:, n - num_queries :] - 1  # each query's newest note (-1: none yet)
    j_T = jnp.arange(n)  # a candidate run ends at note j; note j + 1 followed it
    alive = jnp.ones((b, num_queries, n), bool)
    length = jnp.zeros((b, num_queries, n), jnp.int32)
    for k in range(max_len):
        qi_BxQ = last_BxQ - k
        q_BxQ = jnp.where(qi_BxQ >= 0, jnp.take_along_axis(notes_BxL, jnp.maximum(qi_BxQ, 0), 1), 0)
        k_BxT = jnp.where(j_T >= k, notes_BxL[:, jnp.maximum(j_T - k, 0)], 0)
        alive = alive & (q_BxQ[:, :, None] == k_BxT[:, None, :]) & (q_BxQ[:, :, None] > 0)
        length = length + alive
    ok = (j_T[None, None, :] < last_BxQ[:, :, None]) & (length > 0)
    best_BxQ, len_BxQ = _best(length, j_T, ok)
    if min_notes:
        len_BxQ = jnp.where(last_BxQ - best_BxQ < min_notes, 0, len_BxQ)
    follow_BxQ = jnp.take_along_axis(notes_BxL, jnp.minimum(best_BxQ + 1, n - 1), axis=1)
    return follow_BxQ, len_BxQ


def note_lookup_ring(
    ring_BxC: jax.Array, first_B: jax.Array, cur, max_len: int, min_notes: int = 0
):
    """``note_lookup``'s answer for the newest column ``cur`` of a ring of token ids (column c in
    slot c % C) whose window starts at column ``first_B``: (follow_B, length_B). O(L C)."""
    cap = ring_BxC.shape[1]
    col_C = cur - cap + 1 + jnp.arange(cap, dtype=jnp.int32)  # oldest first, ``cur`` last
    ordered_BxC = ring_BxC[:, col_C % cap]
    ordered_BxC = jnp.where(col_C[None] >= first_B[:, None], ordered_BxC, PAD_ID)
    follow_Bx1, len_Bx1 = note_lookup(ordered_BxC, 1, max_len, min_notes)
    return follow_Bx1[:, 0], len_Bx1[:, 0]
