"""The performance state an input position knows: which pitches sound, and for how long.

A Perceiver AR latent sees the last M tokens through self-attention and older ones only through
its single cross-attention, so whether a note started long ago still sounds is hard to recover;
a model that loses track stops ending notes (issue 9: continuations pile up notes). With
``Config.note_state`` the latents' initial state gets, besides the token's embedding, a linear map
of these features of the tokens up to and including it:

  * ``sounding[p]``: 1 if the newest NOTE_ON of pitch p is later than its newest NOTE_OFF;
  * ``age[p]``: ``log(1 + seconds since that NOTE_ON)`` for a sounding pitch, else 0.

Counted over the model's input only (a training crop, or the sampler's current window), never
from before it, so training and cached decoding see the same function of the same tokens. They
are exact functions of earlier ids (no new information), so the model stays an autoregressive
model of the same token sequence and its NLL stays comparable.

``state_features`` computes them for the last ``m`` positions of a token array (and the running
state after the last one); ``advance`` updates a running state by one token, as decoding does.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from perceiver_midi.model.vocab import (
    NOTE_OFF_FIRST_ID,
    NOTE_ON_FIRST_ID,
    NUM_PITCHES,
    STEPS_PER_SECOND,
    TIME_SHIFT_FIRST_ID,
    TIME_SHIFT_LAST_ID,
)

NUM_FEATURES = 2 * NUM_PITCHES


class NoteState(NamedTuple):
    """Running state after a token (a pytree, carried by the decoding cache)."""

    sounding: jax.Array  # [B, P] bool
    onset: jax.Array  # [B, P] int32: time of the newest NOTE_ON per pitch (10 ms steps)
    time: jax.Array  # [B] int32: time after the newest token, from the input's start


def empty(batch_size: int) -> NoteState:
    zeros_BxP = jnp.zeros((batch_size, NUM_PITCHES), jnp.int32)
    return NoteState(zeros_BxP.astype(bool), zeros_BxP, jnp.zeros((batch_size,), jnp.int32))


def features(state: NoteState) -> jax.Array:
    """``[..., 2P]`` float32: sounding flags, then log(1 + age in seconds) of sounding notes."""
    age = (state.time[..., None] - state.onset).astype(jnp.float32) / STEPS_PER_SECOND
    on = state.sounding.astype(jnp.float32)
    return jnp.concatenate([on, on * jnp.log1p(jnp.maximum(age, 0.0))], axis=-1)


def _shift_steps(tokens):
    is_shift = (tokens >= TIME_SHIFT_FIRST_ID) & (tokens <= TIME_SHIFT_LAST_ID)
    return jnp.where(is_shift, tokens - TIME_SHIFT_FIRST_ID + 1, 0).astype(jnp.int32)


def advance(state: NoteState, token_B: jax.Array) -> NoteState:
    """The state after one more token per sequence."""
    pitch_P = jnp.arange(NUM_PITCHES)
    on_BxP = token_B[:, None] - NOTE_ON_FIRST_ID == pitch_P
    off_BxP = token_B[:, None] - NOTE_OFF_FIRST_ID == pitch_P
    time_B = state.time + _shift_steps(token_B)
    return NoteState(
        sounding=jnp.where(on_BxP, True, jnp.where(off_BxP, False, state.sounding)),
        onset=jnp.where(on_BxP, time_B[:, None], state.onset),
        time=time_B,
    )


def state_features(tokens_BxL: jax.Array, m: int) -> tuple[jax.Array, NoteState]:
    """Features ``[B, m, 2P]`` of the last ``m`` positions, and the state after the last token.

    Position t's features count tokens ``0..t`` of ``tokens_BxL`` (PAD, SOS and VELOCITY change
    nothing). The prefix before the last m positions is reduced with a max (which XLA fuses
    without materialising ``[B, L, P]``); only the last m positions get a running max.
    """
    b, n = tokens_BxL.shape
    pitch_P = jnp.arange(NUM_PITCHES)
    index_L = jnp.arange(1, n + 1, dtype=jnp.int32)  # 0 = never
    time_BxL = jnp.cumsum(_shift_steps(tokens_BxL), axis=1, dtype=jnp.int32)

    def newest(hit_BxLxP, value_BxL):
        """Per position and pitch: ``value`` at the newest hit up to there (0 if none).

        Values must not decrease along L (indices and times do not), so a running max works."""
        x_BxLxP = jnp.where(hit_BxLxP, value_BxL[..., None], 0)
        before_BxP = jnp.max(x_BxLxP[:, : n - m], axis=1, initial=0)
        running_BxMxP = jax.lax.cummax(x_BxLxP[:, n - m :], axis=1)
        return jnp.maximum(running_BxMxP, before_BxP[:, None])

    on_BxLxP = tokens_BxL[..., None] - NOTE_ON_FIRST_ID == pitch_P
    off_BxLxP = tokens_BxL[..., None] - NOTE_OFF_FIRST_ID == pitch_P
    idx_BxL = jnp.broadcast_to(index_L, (b, n))
    state = NoteState(
        sounding=newest(on_BxLxP, idx_BxL) > newest(off_BxLxP, idx_BxL),
        onset=newest(on_BxLxP, time_BxL),
        time=time_BxL[:, n - m :],
    )
    last = NoteState(state.sounding[:, -1], state.onset[:, -1], state.time[:, -1])
    return features(state), last
