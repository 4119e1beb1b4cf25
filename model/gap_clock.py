"""The gap clock: how much of an infilling gap's music time is left at each position.

An infilling prompt (``model/infill.py``) states the gap's length as TIME_SHIFTs between GAP and
SUFFIX; the middle starts after MIDDLE. Summing the middle's TIME_SHIFTs and comparing them with
that length is the kind of counting attention does badly, and the model needs it most at the
end, where the middle must meet the part after the gap. With ``Config.infill`` every latent's
initial state also gets a zero-initialised embedding of the time left at its position:

  * bucket 0: not inside a middle (plain music, the prompt);
  * bucket 1: the gap's time is used up (the next event belongs after the join);
  * buckets 2-9: time left in (0, 0.1], (0.1, 0.25], (0.25, 0.5], (0.5, 1], (1, 2], (2, 4],
    (4, 8] and over 8 seconds.

With ``Config.gap_join`` the latents of a middle also get a (zero-initialised) linear map of the
pitches the part after the gap starts in its first second (``JOIN_STEPS``; a 128-wide multi-hot,
the same for the whole middle): what the middle must lead into, read exactly rather than found by
the one cross-attention among thousands of inputs.

With ``Config.gap_held`` a middle also knows which notes it still owes the part after the gap:
that part starts with a NOTE_OFF for every note struck in the gap and sounding across its end
(``held``; about 5 pitches, and half of the NOTE_ONs of a middle's last second). A pitch is
*pending* at a middle's position when it is held and not sounding there (its last event in the
part before the gap and the middle so far is not a NOTE_ON): the middle must still strike it
before the join (``pending``).

With ``Config.gap_segments`` every input token also gets a (zero-initialised) embedding of its
segment (``segments``): 0 anything else (plain music, the part before the gap, the sentinels
SOS and PREFIX), 1 the gap's length (GAP and its TIME_SHIFTs), 2 the part after the gap (SUFFIX
and what follows it), 3 the middle (MIDDLE and what follows it).

Exact functions of earlier ids (no new information): the model stays an autoregressive model of
the same tokens, and cached decoding (``advance``) equals the full forward (``buckets``,
``join_pitches``) counted over the same window, as ``note_state`` does.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from perceiver_midi.model.vocab import (
    FIM_GAP_ID,
    FIM_MIDDLE_ID,
    FIM_PREFIX_ID,
    FIM_SUFFIX_ID,
    NOTE_OFF_FIRST_ID,
    NOTE_ON_FIRST_ID,
    NUM_PITCHES,
    TIME_SHIFT_FIRST_ID,
    TIME_SHIFT_LAST_ID,
)

EDGES = (10, 25, 50, 100, 200, 400, 800)  # 10 ms steps left: the bucket boundaries above 0
NUM_BUCKETS = len(EDGES) + 3  # outside, used up, then one per interval
JOIN_STEPS = 100  # the part after the gap: the pitches it starts in its first second
NUM_SEGMENTS = 4  # other, the gap's length, the part after the gap, the middle


class GapClock(NamedTuple):
    """Running state after a token (a pytree, carried by the decoding cache)."""

    header: jax.Array  # [B] bool: between GAP and SUFFIX (the gap's length is being stated)
    length: jax.Array  # [B] int32: the gap's length so far (10 ms steps)
    middle: jax.Array  # [B] bool: at or after MIDDLE
    elapsed: jax.Array  # [B] int32: music time since MIDDLE
    suffix: jax.Array  # [B] bool: from SUFFIX to PREFIX or MIDDLE (the part after the gap)
    since: jax.Array  # [B] int32: music time since SUFFIX
    join: jax.Array  # [B, P] bool: pitches started in the part after the gap's first second
    held: jax.Array  # [B, P] bool: pitches the part after the gap first meets as a NOTE_OFF
    seen: jax.Array  # [B, P] bool: pitches with an event in the part after the gap
    sounding: jax.Array  # [B, P] bool: pitches whose last event in the music (the part
    # before the gap, the middle) is a NOTE_ON
    prefixed: jax.Array  # [B] bool: at or after a PREFIX (the part before the gap, the middle)


def empty(batch_size: int) -> GapClock:
    no, zero = jnp.zeros((batch_size,), bool), jnp.zeros((batch_size,), jnp.int32)
    none = jnp.zeros((batch_size, NUM_PITCHES), bool)
    return GapClock(no, zero, no, zero, no, zero, none, none, none, none, no)


def _steps(tokens):
    is_shift = (tokens >= TIME_SHIFT_FIRST_ID) & (tokens <= TIME_SHIFT_LAST_ID)
    return jnp.where(is_shift, tokens - TIME_SHIFT_FIRST_ID + 1, 0).astype(jnp.int32)


def bucket(middle: jax.Array, length: jax.Array, elapsed: jax.Array) -> jax.Array:
    """int32 bucket (0..NUM_BUCKETS-1) of the time left, elementwise."""
    left = length - elapsed
    above = sum((left > e).astype(jnp.int32) for e in EDGES)
    return jnp.where(middle, 1 + (left > 0).astype(jnp.int32) + above, 0)


def _segment(header: jax.Array, suffix: jax.Array, middle: jax.Array) -> jax.Array:
    return jnp.where(middle, 3, jnp.where(suffix, 2, jnp.where(header, 1, 0))).astype(jnp.int32)


def segment(state: GapClock) -> jax.Array:
    """int32 ``[B]``: the segment of the token that led to ``state``."""
    return _segment(state.header, state.suffix, state.middle)


def _flags(tokens_BxL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(header, suffix, middle) ``[B, L]`` bool: each position's state after its token."""
    count = functools.partial(jnp.cumsum, axis=1)
    header = count(tokens_BxL == FIM_GAP_ID) > count(tokens_BxL == FIM_SUFFIX_ID)
    # the part after the gap: from a SUFFIX to the next PREFIX or MIDDLE (``infill.Layout`` shows
    # its start a second time, between the part before the gap and MIDDLE)
    pos = jnp.arange(tokens_BxL.shape[1])
    last = functools.partial(jax.lax.cummax, axis=1)
    suffix_at = last(jnp.where(tokens_BxL == FIM_SUFFIX_ID, pos, -1))
    ended_at = last(
        jnp.where((tokens_BxL == FIM_PREFIX_ID) | (tokens_BxL == FIM_MIDDLE_ID), pos, -1)
    )
    suffix = suffix_at > ended_at
    middle = count(tokens_BxL == FIM_MIDDLE_ID) > 0
    return header, suffix, middle


def segments(tokens_BxL: jax.Array) -> jax.Array:
    """int32 ``[B, L]``: each token's segment, counted from the first token of the input."""
    return _segment(*_flags(tokens_BxL))


def advance(state: GapClock, token_B: jax.Array) -> GapClock:
    """The state after one more token per sequence."""
    header = jnp.where(
        token_B == FIM_GAP_ID, True, jnp.where(token_B == FIM_SUFFIX_ID, False, state.header)
    )
    middle = state.middle | (token_B == FIM_MIDDLE_ID)
    ends = (token_B == FIM_PREFIX_ID) | (token_B == FIM_MIDDLE_ID)
    suffix = jnp.where(token_B == FIM_SUFFIX_ID, True, jnp.where(ends, False, state.suffix))
    steps = _steps(token_B)
    early = suffix & (state.since < JOIN_STEPS)  # a NOTE_ON happens at the time before it
    on_BxP = token_B[:, None] - NOTE_ON_FIRST_ID == jnp.arange(NUM_PITCHES)
    off_BxP = token_B[:, None] - NOTE_OFF_FIRST_ID == jnp.arange(NUM_PITCHES)
    prefixed = state.prefixed | (token_B == FIM_PREFIX_ID)
    in_suffix, music = suffix[:, None], ((prefixed & ~suffix) | middle)[:, None]
    sounding = jnp.where(music & on_BxP, True, state.sounding & ~(music & off_BxP))
    return GapClock(
        header=header,
        length=state.length + steps * header,
        middle=middle,
        elapsed=state.elapsed + steps * middle,
        suffix=suffix,
        since=state.since + steps * suffix,
        join=state.join | (on_BxP & early[:, None]),
        held=state.held | (off_BxP & in_suffix & ~state.seen),
        seen=state.seen | ((on_BxP | off_BxP) & in_suffix),
        sounding=sounding,
        prefixed=prefixed,
    )


def buckets(
    tokens_BxL: jax.Array, m: int, held: bool = False
) -> tuple[jax.Array, GapClock, jax.Array | None]:
    """Buckets ``[B, m]`` of the last ``m`` positions (counting tokens ``0..t`` of the input),
    the state after the last token, and with ``held`` the pending pitches ``[B, m, P]`` of those
    positions (``pending``; else None, and the state's held, seen and sounding are empty)."""
    steps = _steps(tokens_BxL)
    header, suffix, middle = _flags(tokens_BxL)
    length = jnp.cumsum(steps * header, axis=1, dtype=jnp.int32)
    elapsed = jnp.cumsum(steps * middle, axis=1, dtype=jnp.int32)
    since = jnp.cumsum(steps * suffix, axis=1, dtype=jnp.int32)
    early = suffix & (since - steps * suffix < JOIN_STEPS)  # the time before the token
    on_BxLxP = tokens_BxL[..., None] - NOTE_ON_FIRST_ID == jnp.arange(NUM_PITCHES)
    join = jnp.any(on_BxLxP & early[..., None], axis=1)  # the prompt precedes every latent
    bucket_BxM = bucket(middle, length, elapsed)[:, -m:]
    prefixed = jnp.cumsum(tokens_BxL == FIM_PREFIX_ID, axis=1) > 0
    none = jnp.zeros_like(join)
    held_BxP, seen_BxP, sounding_BxP, pending_BxMxP = none, none, none, None
    if held:
        off_BxLxP = tokens_BxL[..., None] - NOTE_OFF_FIRST_ID == jnp.arange(NUM_PITCHES)
        event_BxLxP = (on_BxLxP | off_BxLxP) & suffix[..., None]
        before = jnp.cumsum(event_BxLxP, axis=1, dtype=jnp.int32) - event_BxLxP
        held_BxP = jnp.any(off_BxLxP & suffix[..., None] & (before == 0), axis=1)
        seen_BxP = jnp.any(event_BxLxP, axis=1)
        pos = jnp.arange(tokens_BxL.shape[1])[None, :, None]
        latest = functools.partial(jax.lax.cummax, axis=1)
        music = ((prefixed & ~suffix) | middle)[..., None]
        last_on = latest(jnp.where(on_BxLxP & music, pos, -1))[:, -m:]
        last_off = latest(jnp.where(off_BxLxP & music, pos, -1))[:, -m:]
        sounding_BxMxP = last_on > last_off
        pending_BxMxP = pending(held_BxP, sounding_BxMxP, bucket_BxM)
        sounding_BxP = sounding_BxMxP[:, -1]
    last = GapClock(
        header[:, -1], length[:, -1], middle[:, -1], elapsed[:, -1], suffix[:, -1], since[:, -1],
        join, held_BxP, seen_BxP, sounding_BxP, prefixed[:, -1],
    )  # fmt: skip
    return bucket_BxM, last, pending_BxMxP


def pending(held_BxP: jax.Array, sounding_BxMxP: jax.Array, bucket_BxM: jax.Array) -> jax.Array:
    """bool ``[B, M, P]``: the held pitches not sounding at each position inside a middle."""
    return held_BxP[:, None, :] & ~sounding_BxMxP & (bucket_BxM > 0)[..., None]


def join_features(join_BxP: jax.Array, middle_BxM: jax.Array) -> jax.Array:
    """float32 ``[B, M, P]``: the join's pitches at the latents inside a middle, else 0 (every
    token of the part after the gap comes before MIDDLE, so a middle's latent has seen them)."""
    return (join_BxP[:, None, :] & middle_BxM[..., None]).astype(jnp.float32)
