"""The one sampler every surface (CLI, batch, web app) calls: compiled, cached, batched.

``sample(model, prompts, SampleOptions(max_new_tokens=...))`` returns the new ids of every prompt.

How decoding works (paper Appendix E.3; flaxformer's ``decoding_latent_reset_fill``):
  * Every prompt gets SOS prepended (unless it already starts with SOS) and is cut to its last
    ``W = N - R`` tokens, left-padded to W. ``R`` (``refill_headroom``) is the number of tokens
    decoded one at a time between two latent fills.
  * The prompt's inputs are encoded once: their cross-attention keys/values go into a ring cache
    of N slots (keys carry rotary encodings of absolute positions, so they stay valid).
  * A *fill* appends the newest token to the input cache and computes ``f = num_latents - R``
    latents (the last f positions) from scratch over the last W inputs, caching their
    keys/values in every self-attention layer; it yields the logits of the next token.
  * Each following *step* feeds the newly sampled token: its keys/values are appended to the
    input ring and, as a new latent, to every latent cache. After R steps the window holds N
    inputs and the latent caches ``num_latents`` latents; the next token triggers a *reset*: a
    new fill over the last W inputs (the window slides; no input is re-encoded). Every prediction
    therefore sees between N - R and N inputs, inside the range seen in training, and equals a
    full forward over the same window and latents (tested to 1e-4 in float32).
  * ``use_cache=False`` instead runs a full forward over the last N tokens for every token: the
    uncached baseline.

A NOTE_OFF is only sampled for a pitch that sounds (a running count per pitch, from the prompt
and every kept token), with the model's total NOTE_OFF probability kept
(``end_sounding_only``); this stops the note pile-up of a model that spreads its note ends over
silent keys.

``max_note_seconds`` bounds how long a note sounds: a note sounding for that long gets its
NOTE_OFF before time moves further. The loop keeps per pitch the onsets (music time) of its
sounding notes, oldest first, as decoding pairs a NOTE_OFF with the oldest open note of its pitch
(a queue of ``ONSET_SLOTS`` per pitch, from the prompt and every kept token; ``onset_queues``).
While the oldest note of any pitch is that old, only the NOTE_OFFs of such pitches may be
sampled, in the model's proportions (``end_overlong_notes``). A note therefore lasts less than
the limit plus one TIME_SHIFT, however many notes of its pitch overlap (exactly up to
``ONSET_SLOTS`` at once; beyond, the newest slot stands for the newest notes).

The whole loop (fills, steps, sampling, stopping) is one ``jax.jit`` function built from
``lax.while_loop``/``lax.cond``; it is compiled once per (model, batch bucket, length bucket,
num_latents, headroom) and reused: batch sizes are padded to powers of two and
``max_new_tokens`` to a power of two (>= 64); sampling settings are traced values, so changing
temperature, top-k, top-p, seed, budgets, the note-length limit or chunking never
recompiles.

Determinism: prompt i of a request draws from ``key(seed + i)`` (or ``key(seeds[i])``) folded with
the step number, and sees only its own tokens, so the same seeds and settings give the same ids
whatever the batch composition or chunking: prompt i of a batch run with ``seed=s`` equals a
single run of that prompt with ``seed=s + i``. (Different batch buckets compile to different
programs whose float rounding may differ in the last bits; in practice this does not change
sampled ids.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perceiver_midi.model import infill
from perceiver_midi.model.vocab import (
    DEFAULT_VELOCITY,
    EOS_ID,
    NOTE_OFF_FIRST_ID,
    NOTE_ON_FIRST_ID,
    NUM_PITCHES,
    NUM_VELOCITY_BINS,
    PAD_ID,
    SOS_ID,
    STEPS_PER_SECOND,
    TIME_SHIFT_FIRST_ID,
    TIME_SHIFT_LAST_ID,
    VELOCITY_BIN_SIZE,
    VELOCITY_FIRST_ID,
)

DEFAULT_REFILL_HEADROOM = 128  # flaxformer's default: refill the latent cache to num_latents - 128
DEFAULT_CHUNK_WITH_CALLBACK = 64
_NO_TIME_LIMIT = np.iinfo(np.int32).max // 2
MAX_GUIDANCE = 4.0  # SampleOptions.guidance: beyond this the short context's logits dominate
ONSET_SLOTS = 16  # onsets kept per pitch for max_note_seconds (overlapping notes of one pitch)


def bin_velocity(token):
    """The MIDI velocity a VELOCITY token sets (the lowest of its bin, as note-seq decodes)."""
    return 1 + (token - VELOCITY_FIRST_ID) * VELOCITY_BIN_SIZE


class StopSampling(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raise from a callback (or return True) to stop early, keeping what was generated."""


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """Progress passed to ``callback`` after every compiled chunk (per prompt, request order)."""

    step: int  # decoding steps done (every live sequence gains at most one token per step)
    max_new_tokens: int
    num_tokens: np.ndarray  # [P] new tokens kept so far
    seconds: np.ndarray  # [P] music time so far (sum of TIME_SHIFTs x 10 ms)
    done: np.ndarray  # [P] bool: stopped (EOS or time budget)
    tokens: list[np.ndarray]  # [P] the new ids so far


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """What to sample: the budgets, the sampling controls and the musical controls, in one frozen
    object, checked here once for every caller (``ValueError`` naming the field). The app builds
    it from its request ``Settings`` (``Settings.sample_options()``); a new control is one field
    here, its masking in ``apply_controls``, and its field in ``Settings``.

    Every field is a traced value of the compiled loop except ``num_latents`` (part of the
    compilation key): changing them never recompiles.
    """

    max_new_tokens: int  # token budget per prompt
    temperature: float = 1.0  # softmax temperature; 0 = greedy
    top_k: int = 0  # keep the k most likely tokens (0 = off; 1 = greedy)
    top_p: float = 1.0  # nucleus: the smallest set with probability >= top_p (1 = off)
    min_p: float = 0.0  # tokens at least min_p times as likely as the most likely (0 = off)
    # Music-time budget per sequence: it stops once the sum of its TIME_SHIFTs (x 10 ms) reaches
    # the budget; the token that reaches it is kept. None: no time budget.
    max_seconds: float | None = None
    num_latents: int | None = None  # latents while sampling (None: the model's): compute knob
    stop_at_eos: bool = True  # stop at EOS (not returned); False never samples EOS
    # NOTE_OFF only for sounding pitches (prompt and generated), the model's total NOTE_OFF
    # probability kept (``end_sounding_only``). False samples the raw model.
    sounding_note_offs: bool = True
    # Longest note (None: no limit): once a pitch has sounded this long, only NOTE_OFFs of such
    # pitches may be sampled, in the model's proportions, before time moves on.
    max_note_seconds: float | None = None
    allowed_pitches: tuple[int, ...] | None = None  # pitches a NOTE_ON may start (None: all)
    # (low, high) MIDI velocities: VELOCITY tokens only inside, no NOTE_ON while the velocity in
    # force (from the prompt, else 100) is outside.
    velocity_range: tuple[int, int] | None = None
    max_polyphony: int | None = None  # no NOTE_ON while this many notes sound (prompt's count)
    # Longest run of notes on at most two pitches (None: no limit): once the latest notes (the
    # prompt's included) have stayed on two pitches this long, neither may start the next note.
    # A stuck continuation repeats one note or a trill for hundreds of notes. Off in the app: at
    # 48 the round-7 model's stuck loops go on between single forced notes (benchmarks/results/
    # experiments/quality_test_runcap48-round7.json).
    max_pitch_run: int | None = None
    # Context guidance (0 = off): each prompt is also decoded from its last ``guidance_tokens``
    # tokens alone, and the tokens are drawn from ``full + guidance * (full - short)`` logits,
    # so what the older part of the prompt changes in the model's prediction counts more
    # (contrastive / classifier-free guidance with the prompt's past as the condition). Doubles
    # the sampler's batch.
    guidance: float = 0.0
    guidance_tokens: int = 0

    def __post_init__(self):
        def fix(name, value):
            object.__setattr__(self, name, value)

        if int(self.max_new_tokens) < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        fix("max_new_tokens", int(self.max_new_tokens))
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.max_note_seconds is not None and not 0 < self.max_note_seconds < np.inf:
            raise ValueError(
                f"max_note_seconds must be > 0 and finite, got {self.max_note_seconds}"
            )
        if not 0.0 <= self.guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be in [0, {MAX_GUIDANCE:g}], got {self.guidance}")
        if int(self.guidance_tokens) < 0:
            raise ValueError(f"guidance_tokens must be >= 0, got {self.guidance_tokens}")
        fix("guidance_tokens", int(self.guidance_tokens))
        if self.num_latents is not None and int(self.num_latents) < 1:
            raise ValueError(f"num_latents must be >= 1, got {self.num_latents}")
        if self.allowed_pitches is not None:  # any iterable in, a sorted tuple stored (hashable)
            pitches = np.unique(np.asarray(self.allowed_pitches, np.int64).reshape(-1))
            fix("allowed_pitches", tuple(int(p) for p in pitches))
        if self.velocity_range is not None:
            fix("velocity_range", tuple(int(v) for v in self.velocity_range))
        _control_settings(self.allowed_pitches, self.velocity_range, self.max_polyphony)
        if self.max_pitch_run is not None and int(self.max_pitch_run) < 2:
            raise ValueError(f"max_pitch_run must be >= 2, got {self.max_pitch_run}")

    def replace(self, **changes) -> SampleOptions:
        return dataclasses.replace(self, **changes)


def _as_options(options: SampleOptions | None, fields: dict) -> SampleOptions:
    """``options`` with ``fields`` replaced, or ``SampleOptions(**fields)``."""
    if options is None:
        return SampleOptions(**fields)
    return options.replace(**fields) if fields else options


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static shape decisions; part of the compilation key."""

    max_len: int  # N (cross-attention cache capacity)
    window: int  # W = N - R: inputs of a fill
    num_latents: int  # latent cache capacity
    fill: int  # latents computed by a fill
    period: int  # R + 1 tokens per fill
    batch: int  # padded batch size
    buffer: int  # W + padded max_new_tokens
    uncached: bool  # recompute a full forward for every token
    record_logits: bool
    guided: bool = False  # rows [batch/2:] are the short-context rows of rows [:batch/2]


class _Settings(NamedTuple):
    keys: jax.Array  # [B] PRNG keys
    temperature: jax.Array  # [] f32 (0 = greedy)
    top_k: jax.Array  # [] i32 (0 = off)
    top_p: jax.Array  # [] f32 (1 = off)
    min_p: jax.Array  # [] f32 (0 = off)
    stop_at_eos: jax.Array  # [] bool
    max_time: jax.Array  # [B] i32 budget in 10 ms steps
    sounding_offs: jax.Array  # [] bool: NOTE_OFF only for sounding pitches (see end_sounding_only)
    max_note: jax.Array  # [] i32 longest note in 10 ms steps (_NO_TIME_LIMIT = no limit)
    pitch_ok: jax.Array  # [128] bool: pitches a NOTE_ON may start (all: no constraint)
    velocity_lo: jax.Array  # [] i32: VELOCITY tokens only for velocities in [lo, hi]
    velocity_hi: jax.Array  # [] i32
    max_polyphony: jax.Array  # [] i32: no NOTE_ON while this many notes sound
    max_run: jax.Array  # [] i32: longest run of notes on two pitches (_NO_TIME_LIMIT = no limit)
    guidance: jax.Array  # [] f32: weight of (full - short) logits (guided plans only)


class _Carry(NamedTuple):
    tokens: jax.Array  # [B, S] window of the prompt followed by the generated ids
    cache: Any
    g: jax.Array  # [] i32 decoding steps done
    done: jax.Array  # [B] bool
    n_out: jax.Array  # [B] i32 tokens kept
    time: jax.Array  # [B] i32 music time in 10 ms steps
    sounding: jax.Array  # [B, 128] i32 notes sounding per pitch (prompt + kept tokens)
    onsets: jax.Array  # [B, 128, ONSET_SLOTS] i32 ring of the onsets of sounding notes per pitch
    head: jax.Array  # [B, 128] i32 slot of the oldest sounding note's onset
    velocity: jax.Array  # [B] i32 MIDI velocity of the next NOTE_ON (prompt + kept tokens)
    run: jax.Array  # [B, 4] i32 the latest run on two pitches: last pitch, other, length, streak
    logits: jax.Array  # [B, G, V] f32 when recording, else [0]


def _next_pow2(x: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(0, int(x) - 1).bit_length())


def end_sounding_only(logits_BxV: jax.Array, sounding_BxP: jax.Array) -> jax.Array:
    """NOTE_OFF only for sounding pitches, keeping the model's probability that a note ends now.

    A NOTE_OFF of a silent pitch is a no-op when decoded, yet it takes the place of a real event:
    teacher-forced on MAESTRO validation, the shipped model gives such no-ops a third of its
    NOTE_OFF mass (0.086 of 0.259; the real NOTE_OFF rate is 0.243: results/note_offs.json), so
    sampled notes end too rarely and pile up. Here the total NOTE_OFF mass stays the model's and is
    shared among the sounding pitches in the model's proportions; with nothing sounding, NOTE_OFF
    is impossible and the other tokens are renormalised.
    """
    off_BxP = logits_BxV[:, NOTE_OFF_FIRST_ID : NOTE_OFF_FIRST_ID + NUM_PITCHES]
    on_BxP = sounding_BxP > 0
    any_B1 = jnp.any(on_BxP, axis=-1, keepdims=True)
    lse_all_B1 = jax.nn.logsumexp(off_BxP, axis=-1, keepdims=True)
    lse_on_B1 = jax.nn.logsumexp(jnp.where(on_BxP, off_BxP, -jnp.inf), axis=-1, keepdims=True)
    shift_B1 = jnp.where(any_B1, lse_all_B1 - jnp.where(any_B1, lse_on_B1, 0.0), 0.0)
    new_off_BxP = jnp.where(on_BxP, off_BxP + shift_B1, -jnp.inf)
    return jax.lax.dynamic_update_slice_in_dim(logits_BxV, new_off_BxP, NOTE_OFF_FIRST_ID, axis=1)


def end_overlong_notes(logits_BxV: jax.Array, overlong_BxP: jax.Array) -> jax.Array:
    """In a row where some pitch has sounded too long, only the NOTE_OFFs of such pitches stay.

    Everything else becomes -inf; those NOTE_OFFs keep the model's relative probabilities (a
    logit of -inf is raised to -1e30, so a row always has a token to draw). Rows without an
    over-long note are returned unchanged, bit for bit.
    """
    off_BxP = logits_BxV[:, NOTE_OFF_FIRST_ID : NOTE_OFF_FIRST_ID + NUM_PITCHES]
    forced_BxP = jnp.where(overlong_BxP, jnp.maximum(off_BxP, -1e30), -jnp.inf)
    forced_BxV = jax.lax.dynamic_update_slice_in_dim(
        jnp.full_like(logits_BxV, -jnp.inf), forced_BxP, NOTE_OFF_FIRST_ID, axis=1
    )
    any_B1 = jnp.any(overlong_BxP, axis=-1, keepdims=True)
    return jnp.where(any_B1, forced_BxV, logits_BxV)


def apply_controls(
    logits_BxV: jax.Array,
    sounding_BxP: jax.Array,
    velocity_B: jax.Array,
    s: _Settings,
) -> jax.Array:
    """The musical controls, by masking (to -inf) the tokens that would break one:

    * NOTE_ON of a pitch outside ``pitch_ok`` (pitch range and key);
    * every NOTE_ON while ``max_polyphony`` notes sound, or while the velocity in force is
      outside ``[velocity_lo, velocity_hi]`` (then a VELOCITY comes first);
    * VELOCITY tokens of velocities outside ``[velocity_lo, velocity_hi]``.
    TIME_SHIFTs are never masked, so a row always keeps a token. With no control set every mask
    is all-true and the logits are returned bit for bit.
    """
    vel_ok_B = (velocity_B >= s.velocity_lo) & (velocity_B <= s.velocity_hi)
    poly_ok_B = jnp.sum(sounding_BxP, axis=-1) < s.max_polyphony
    on_ok_BxP = s.pitch_ok[None] & (vel_ok_B & poly_ok_B)[:, None]
    on_BxP = logits_BxV[:, NOTE_ON_FIRST_ID : NOTE_ON_FIRST_ID + NUM_PITCHES]
    logits_BxV = jax.lax.dynamic_update_slice_in_dim(
        logits_BxV, jnp.where(on_ok_BxP, on_BxP, -jnp.inf), NOTE_ON_FIRST_ID, axis=1
    )
    bins_N = bin_velocity(VELOCITY_FIRST_ID + jnp.arange(NUM_VELOCITY_BINS))
    bin_ok_N = (bins_N >= s.velocity_lo) & (bins_N <= s.velocity_hi)
    vel_BxN = logits_BxV[:, VELOCITY_FIRST_ID:]
    return jax.lax.dynamic_update_slice_in_dim(
        logits_BxV, jnp.where(bin_ok_N[None], vel_BxN, -jnp.inf), VELOCITY_FIRST_ID, axis=1
    )


def _choose_tokens(logits_BxV: jax.Array, c: _Carry, s: _Settings) -> jax.Array:
    """Note-off corrections, temperature, top-k, top-p, min-p; a draw with key fold_in(key_b, g)."""
    vocab = logits_BxV.shape[-1]
    ids_V = jnp.arange(vocab)
    banned_V = (ids_V == PAD_ID) | (ids_V == SOS_ID) | ((ids_V == EOS_ID) & ~s.stop_at_eos)
    logits_BxV = jnp.where(banned_V[None], -jnp.inf, logits_BxV.astype(jnp.float32))
    logits_BxV = jnp.where(s.sounding_offs, end_sounding_only(logits_BxV, c.sounding), logits_BxV)
    logits_BxV = apply_controls(logits_BxV, c.sounding, c.velocity, s)
    oldest_BxP = jnp.take_along_axis(c.onsets, c.head[..., None], axis=-1)[..., 0]
    overlong_BxP = (c.sounding > 0) & (c.time[:, None] - oldest_BxP >= s.max_note)
    logits_BxV = end_overlong_notes(logits_BxV, overlong_BxP)
    logits_BxV = end_pitch_runs(logits_BxV, c.run, s.max_run)
    greedy_B = jnp.argmax(logits_BxV, axis=-1)

    x_BxV = logits_BxV / jnp.maximum(s.temperature, 1e-6)
    x_BxV = jax.lax.cond(
        (s.top_k > 0) | (s.top_p < 1.0) | (s.min_p > 0.0),
        functools.partial(_truncate, s=s),
        lambda x: x,
        x_BxV,
    )
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(s.keys, c.g)
    sampled_B = jax.vmap(jax.random.categorical)(step_keys, x_BxV)
    return jnp.where(s.temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


def _truncate(x_BxV: jax.Array, s: _Settings) -> jax.Array:
    """Masks (to -inf) tokens outside the top-k, outside the top-p nucleus, and below min-p.

    min-p keeps a token whose probability (after temperature) is at least ``min_p`` times the
    most likely token's (Nguyen et al. 2024); the most likely token always stays.
    """
    vocab = x_BxV.shape[-1]
    ids_V = jnp.arange(vocab)
    sorted_BxV = -jnp.sort(-x_BxV, axis=-1)
    k = jnp.where(s.top_k > 0, jnp.minimum(s.top_k, vocab), vocab)
    sorted_BxV = jnp.where(ids_V[None] < k, sorted_BxV, -jnp.inf)
    kth_Bx1 = jax.lax.dynamic_slice_in_dim(sorted_BxV, k - 1, 1, axis=1)
    x_BxV = jnp.where(x_BxV < kth_Bx1, -jnp.inf, x_BxV)
    p_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(p_BxV, axis=-1) - p_BxV
    keep_B = jnp.maximum(jnp.sum(before_BxV < s.top_p, axis=-1), 1)
    thresh_Bx1 = jnp.take_along_axis(sorted_BxV, (keep_B - 1)[:, None], axis=-1)
    thresh_Bx1 = jnp.where(s.top_p >= 1.0, -jnp.inf, thresh_Bx1)
    x_BxV = jnp.where(x_BxV < thresh_Bx1, -jnp.inf, x_BxV)
    floor_Bx1 = jnp.max(x_BxV, axis=-1, keepdims=True) + jnp.log(jnp.maximum(s.min_p, 1e-30))
    floor_Bx1 = jnp.where(s.min_p > 0.0, floor_Bx1, -jnp.inf)
    return jnp.where(x_BxV < floor_Bx1, -jnp.inf, x_BxV)


def guided_logits(full_HxV: jax.Array, short_HxV: jax.Array, guidance: jax.Array) -> jax.Array:
    """Context guidance: ``full + guidance * (full - short)`` (log-probabilities up to a constant
    per row, which the softmax drops)."""
    full_HxV = full_HxV.astype(jnp.float32)
    return full_HxV + guidance * (full_HxV - short_HxV.astype(jnp.float32))


def _choose_guided(logits_BxV: jax.Array, c: _Carry, s: _Settings) -> jax.Array:
    """One token per prompt from its two rows' logits (``guided_logits``), chosen with the full
    rows' state and keys, and fed to both rows."""
    h = logits_BxV.shape[0] // 2
    mixed_HxV = guided_logits(logits_BxV[:h], logits_BxV[h:], s.guidance)
    c_h = c._replace(
        sounding=c.sounding[:h], onsets=c.onsets[:h], head=c.head[:h],
        velocity=c.velocity[:h], time=c.time[:h], run=c.run[:h],
    )  # fmt: skip
    tok_H = _choose_tokens(mixed_HxV, c_h, s._replace(keys=s.keys[:h]))
    return jnp.concatenate([tok_H, tok_H])


def _advance(c: _Carry, cache, logits_BxV, s: _Settings, plan: _Plan) -> _Carry:
    tok_B = (_choose_guided if plan.guided else _choose_tokens)(logits_BxV, c, s)
    tokens = jax.lax.dynamic_update_slice(c.tokens, tok_B[:, None], (0, plan.window + c.g))
    is_eos_B = (tok_B == EOS_ID) & s.stop_at_eos
    keep_B = ~c.done & ~is_eos_B
    is_shift_B = (tok_B >= TIME_SHIFT_FIRST_ID) & (tok_B <= TIME_SHIFT_LAST_ID)
    shift_B = jnp.where(is_shift_B & keep_B, tok_B - TIME_SHIFT_FIRST_ID + 1, 0)
    time_B = c.time + shift_B
    sounding = _update_sounding(c.sounding, tok_B, keep_B)
    onsets, head = _update_onsets(c, tok_B, keep_B)
    is_vel_B = (tok_B >= VELOCITY_FIRST_ID) & keep_B
    velocity_B = jnp.where(is_vel_B, bin_velocity(tok_B), c.velocity)
    logits = c.logits
    if plan.record_logits:
        logits = jax.lax.dynamic_update_slice(logits, logits_BxV[:, None], (0, c.g, 0))
    return _Carry(
        tokens=tokens,
        cache=cache,
        g=c.g + 1,
        done=c.done | is_eos_B | (time_B >= s.max_time),
        n_out=c.n_out + keep_B.astype(jnp.int32),
        time=time_B,
        sounding=sounding,
        onsets=onsets,
        head=head,
        velocity=velocity_B,
        run=_update_run(c.run, tok_B, keep_B),
        logits=logits,
    )


PITCH_RUN_NONE = (-1, -1, 0, 0)  # no note yet: (last pitch, other pitch, run length, streak)


def next_run(run: tuple[int, int, int, int], pitch: int) -> tuple[int, int, int, int]:
    """The run state after a NOTE_ON of ``pitch``: the latest notes on at most two pitches (the
    last one's and one other), how many, and how many of them end on the last pitch in a row."""
    last, other, n, streak = run
    if pitch == last:
        return last, other, n + 1, streak + 1
    if pitch == other:
        return pitch, last, n + 1, 1
    return pitch, last, streak + 1, 1  # a third pitch: the run is the last streak and it


def pitch_run(ids: np.ndarray) -> np.ndarray:
    """int32 [4]: the run state (``next_run``) after the NOTE_ONs of ``ids``."""
    ids = np.asarray(ids)
    run = PITCH_RUN_NONE
    for tok in ids[(ids >= NOTE_ON_FIRST_ID) & (ids < NOTE_ON_FIRST_ID + NUM_PITCHES)].tolist():
        run = next_run(run, tok - NOTE_ON_FIRST_ID)
    return np.asarray(run, np.int32)


def _update_run(run_Bx4: jax.Array, tok_B: jax.Array, keep_B: jax.Array) -> jax.Array:
    """``next_run`` for the rows whose kept token is a NOTE_ON."""
    last, other, n, streak = (run_Bx4[:, i] for i in range(4))
    pitch = tok_B - NOTE_ON_FIRST_ID
    is_on = (pitch >= 0) & (pitch < NUM_PITCHES) & keep_B
    same, back = pitch == last, pitch == other
    new = jnp.stack(
        [
            pitch,
            jnp.where(same, other, last),
            jnp.where(same | back, n + 1, streak + 1),
            jnp.where(same, streak + 1, 1),
        ],
        axis=1,
    )
    return jnp.where(is_on[:, None], new, run_Bx4).astype(jnp.int32)


def end_pitch_runs(logits_BxV: jax.Array, run_Bx4: jax.Array, max_run: jax.Array) -> jax.Array:
    """No NOTE_ON of the run's two pitches once it is ``max_run`` notes long (``-inf``), so the
    next note is another pitch (other tokens, TIME_SHIFTs among them, stay as they were); unless
    no other pitch may start one (the controls allow only those two), so notes go on."""
    pitch_P = jnp.arange(NUM_PITCHES)
    in_run_BxP = (pitch_P == run_Bx4[:, :1]) | (pitch_P == run_Bx4[:, 1:2])
    ban_BxP = in_run_BxP & (run_Bx4[:, 2:3] >= max_run)
    on_BxP = logits_BxV[:, NOTE_ON_FIRST_ID : NOTE_ON_FIRST_ID + NUM_PITCHES]
    banned_BxP = jnp.where(ban_BxP, -jnp.inf, on_BxP)
    other_B = jnp.any(jnp.isfinite(banned_BxP), axis=-1)
    on_BxP = jnp.where(other_B[:, None], banned_BxP, on_BxP)
    return jax.lax.dynamic_update_slice_in_dim(logits_BxV, on_BxP, NOTE_ON_FIRST_ID, axis=1)


def _update_sounding(sounding_BxP: jax.Array, tok_B: jax.Array, keep_B: jax.Array) -> jax.Array:
    """Counts per pitch: +1 at a NOTE_ON, -1 (not below 0) at a NOTE_OFF, for kept tokens."""
    pitch_P = jnp.arange(NUM_PITCHES)
    on_BxP = (tok_B[:, None] - NOTE_ON_FIRST_ID == pitch_P) & keep_B[:, None]
    off_BxP = (tok_B[:, None] - NOTE_OFF_FIRST_ID == pitch_P) & keep_B[:, None]
    return jnp.maximum(sounding_BxP + on_BxP - off_BxP, 0).astype(jnp.int32)


def _update_onsets(c: _Carry, tok_B, keep_B) -> tuple[jax.Array, jax.Array]:
    """The onset queues after a kept token (at the current time ``c.time``; notes take no time).

    A NOTE_ON appends its onset to its pitch's queue; a NOTE_OFF of a sounding pitch removes the
    oldest (as decoding pairs them). A full queue keeps the newest onset in its last slot, and
    when a NOTE_OFF frees a slot while more notes sound than the queue holds, that slot gets
    the newest onset too (the notes beyond the queue count as started then).
    """
    k = ONSET_SLOTS
    pitch_P = jnp.arange(NUM_PITCHES)
    slot_K = jnp.arange(k)
    n_BxP = c.sounding  # before this token
    on_BxP = (tok_B[:, None] - NOTE_ON_FIRST_ID == pitch_P) & keep_B[:, None]
    off_BxP = (tok_B[:, None] - NOTE_OFF_FIRST_ID == pitch_P) & keep_B[:, None] & (n_BxP > 0)
    push_BxP = (c.head + jnp.minimum(n_BxP, k - 1)) % k
    put_BxPxK = on_BxP[..., None] & (slot_K == push_BxP[..., None])
    onsets = jnp.where(put_BxPxK, c.time[:, None, None], c.onsets)
    newest_BxP = jnp.take_along_axis(onsets, ((c.head + k - 1) % k)[..., None], axis=-1)[..., 0]
    refill_BxPxK = (off_BxP & (n_BxP > k))[..., None] & (slot_K == c.head[..., None])
    onsets = jnp.where(refill_BxPxK, newest_BxP[..., None], onsets)
    head = jnp.where(off_BxP, (c.head + 1) % k, c.head)
    return onsets, head


def sounding_pitches(ids: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """int32 [128]: notes sounding per pitch after ``ids`` (as decoding pairs NOTE_ON/OFF),
    starting from the counts ``start`` (default: silence)."""
    ids = np.asarray(ids, np.int64)
    counts = np.zeros(NUM_PITCHES, np.int64) if start is None else np.array(start, np.int64)
    is_on = (ids >= NOTE_ON_FIRST_ID) & (ids < NOTE_ON_FIRST_ID + NUM_PITCHES)
    is_off = (ids >= NOTE_OFF_FIRST_ID) & (ids < NOTE_OFF_FIRST_ID + NUM_PITCHES)
    for tok, on in zip(ids[is_on | is_off].tolist(), is_on[is_on | is_off].tolist(), strict=True):
        if on:
            counts[tok - NOTE_ON_FIRST_ID] += 1
        else:
            p = tok - NOTE_OFF_FIRST_ID
            counts[p] = max(0, counts[p] - 1)
    return counts.astype(np.int32)


def onset_queues(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sampler's onset queues after ``ids`` (``_update_onsets``, the same rules): int32
    ``[128, ONSET_SLOTS]`` onsets in 10 ms steps relative to the end of ``ids`` (<= 0; the time
    is the sum of the TIME_SHIFTs) and int32 ``[128]`` the slot of each pitch's oldest."""
    ids = np.asarray(ids, np.int64)
    k = ONSET_SLOTS
    counts = np.zeros(NUM_PITCHES, np.int64)
    onsets = np.zeros((NUM_PITCHES, k), np.int64)
    head = np.zeros(NUM_PITCHES, np.int64)
    is_on = (ids >= NOTE_ON_FIRST_ID) & (ids < NOTE_ON_FIRST_ID + NUM_PITCHES)
    is_off = (ids >= NOTE_OFF_FIRST_ID) & (ids < NOTE_OFF_FIRST_ID + NUM_PITCHES)
    is_shift = (ids >= TIME_SHIFT_FIRST_ID) & (ids <= TIME_SHIFT_LAST_ID)
    steps = np.where(is_shift, ids - TIME_SHIFT_FIRST_ID + 1, 0)
    time_before = np.cumsum(steps) - steps  # a note event happens at the time before it
    events = np.nonzero(is_on | is_off)[0]
    for tok, on, t in zip(
        ids[events].tolist(), is_on[events].tolist(), time_before[events].tolist(), strict=True
    ):
        if on:
            p = tok - NOTE_ON_FIRST_ID
            onsets[p, (head[p] + min(counts[p], k - 1)) % k] = t
            counts[p] += 1
        else:
            p = tok - NOTE_OFF_FIRST_ID
            if counts[p] == 0:
                continue
            if counts[p] > k:
                onsets[p, head[p]] = onsets[p, (head[p] + k - 1) % k]
            head[p] = (head[p] + 1) % k
            counts[p] -= 1
    return (onsets - int(steps.sum())).astype(np.int32), head.astype(np.int32)


def current_velocity(ids: np.ndarray) -> int:
    """The MIDI velocity of a NOTE_ON after ``ids``: set by the last VELOCITY, else 100."""
    ids = np.asarray(ids, np.int64)
    vel = ids[ids >= VELOCITY_FIRST_ID]
    return int(bin_velocity(vel[-1])) if vel.size else DEFAULT_VELOCITY


def _control_settings(allowed_pitches, velocity_range, max_polyphony) -> dict:
    """The controls as traced sampler settings (ValueError for values no note can satisfy)."""
    pitch_ok = np.ones(NUM_PITCHES, bool)
    if allowed_pitches is not None:
        pitches = np.asarray(allowed_pitches, np.int64).reshape(-1)
        if pitches.size == 0 or pitches.min() < 0 or pitches.max() >= NUM_PITCHES:
            raise ValueError("allowed_pitches must be a non-empty set of pitches in 0..127")
        pitch_ok[:] = False
        pitch_ok[pitches] = True
    lo, hi = (1, 127) if velocity_range is None else (int(v) for v in velocity_range)
    bins = bin_velocity(VELOCITY_FIRST_ID + np.arange(NUM_VELOCITY_BINS))
    if not 1 <= lo <= hi <= 127 or not np.any((bins >= lo) & (bins <= hi)):
        raise ValueError(
            f"velocity_range must satisfy 1 <= low <= high <= 127 and hold a velocity of "
            f"{bins[0]}, {bins[1]}, ..., {bins[-1]} (the 32 bins), got {velocity_range}"
        )
    poly = _NO_TIME_LIMIT if max_polyphony is None else int(max_polyphony)
    if poly < 1:
        raise ValueError(f"max_polyphony must be >= 1, got {max_polyphony}")
    return dict(
        pitch_ok=jnp.asarray(pitch_ok),
        velocity_lo=jnp.int32(lo),
        velocity_hi=jnp.int32(hi),
        max_polyphony=jnp.int32(poly),
    )


def sounding_onsets(ids: np.ndarray) -> np.ndarray:
    """int32 [128]: per pitch sounding after ``ids``, when its oldest sounding note started, in
    10 ms steps relative to the end of ``ids`` (<= 0; time is the sum of the TIME_SHIFTs); 0 for
    silent pitches. Decoding pairs a NOTE_OFF with the oldest open note of its pitch."""
    onsets, head = onset_queues(ids)
    oldest = onsets[np.arange(NUM_PITCHES), head]
    return np.where(sounding_pitches(ids) > 0, oldest, 0).astype(np.int32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_carry(
    graphdef,
    plan: _Plan,
    params,
    tokens_BxS,
    done_B,
    sounding_BxP,
    onsets_BxPxK,
    head_BxP,
    velocity_B,
    run_Bx4,
) -> _Carry:
    model = nnx.merge(graphdef, params)
    b, s = tokens_BxS.shape
    if plan.uncached:
        cache = jnp.zeros((0,), jnp.float32)
    else:
        cache = model.init_cache(b, num_latents=plan.num_latents, cross_capacity=plan.max_len)
        cache = model.encode_prompt(cache, tokens_BxS[:, : plan.window - 1])
    if plan.record_logits:
        logits = jnp.zeros((b, s - plan.window, model.config.vocab_size), jnp.float32)
    else:
        logits = jnp.zeros((0,), jnp.float32)
    zero_b = jnp.zeros((b,), jnp.int32)
    g = jnp.zeros((), jnp.int32)
    return _Carry(
        tokens_BxS,
        cache,
        g,
        done_B,
        zero_b,
        zero_b,
        sounding_BxP,
        onsets_BxPxK,
        head_BxP,
        velocity_B,
        run_Bx4,
        logits,
    )


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def _run_chunk(graphdef, plan: _Plan, params, carry: _Carry, g_end, s: _Settings) -> _Carry:
    """Decodes until step ``g_end``, or until every sequence is done."""
    model = nnx.merge(graphdef, params)

    def live(c: _Carry):
        return (c.g < g_end) & ~jnp.all(c.done)

    def full_forward(c: _Carry) -> _Carry:  # uncached baseline: recompute everything
        window_BxN = jax.lax.dynamic_slice_in_dim(c.tokens, c.g, plan.window, axis=1)
        logits_BxV = model(window_BxN, num_latents=plan.num_latents)[:, -1]
        return _advance(c, c.cache, logits_BxV, s, plan)

    def refill(c: _Carry) -> _Carry:
        window_BxW = jax.lax.dynamic_slice_in_dim(c.tokens, c.g, plan.window, axis=1)
        logits_BxV, cache = model.refill(c.cache, window_BxW, fill=plan.fill)
        return _advance(c, cache, logits_BxV, s, plan)

    def step(c: _Carry) -> _Carry:
        last_B = jax.lax.dynamic_index_in_dim(
            c.tokens, plan.window - 1 + c.g, axis=1, keepdims=False
        )
        logits_BxV, cache = model.decode_step(c.cache, last_B)
        return _advance(c, cache, logits_BxV, s, plan)

    if plan.uncached:
        return jax.lax.while_loop(live, full_forward, carry)

    def segment(c: _Carry) -> _Carry:
        c = jax.lax.cond(c.g % plan.period == 0, refill, lambda c: c, c)
        if plan.period > 1:
            c = jax.lax.while_loop(lambda c: live(c) & (c.g % plan.period != 0), step, c)
        return c

    return jax.lax.while_loop(live, segment, carry)


def _as_prompt_list(prompts) -> list[np.ndarray]:
    if isinstance(prompts, np.ndarray | jax.Array):
        arr = np.asarray(prompts)
        if arr.ndim == 1:
            return [arr]
        if arr.ndim == 2:
            return list(arr)
        raise ValueError(f"prompts must be 1-D or 2-D, got shape {arr.shape}")
    if isinstance(prompts, Sequence):
        return [np.asarray(p) for p in prompts]
    raise TypeError("prompts must be a list of 1-D id arrays or a 2-D array")


def refill_headroom_for(num_latents: int, refill_headroom: int | None = None) -> int:
    """R: the default is flaxformer's ``num_latents - 128`` fill, capped at half the latents."""
    if refill_headroom is None:
        return min(DEFAULT_REFILL_HEADROOM, num_latents // 2)
    return int(refill_headroom)


def prompt_window(config, num_latents: int | None = None, refill_headroom: int | None = None):
    """How many tokens of a prompt (SOS included) the cached sampler conditions on: ``N - R``."""
    mc = config.num_latents if num_latents is None else int(num_latents)
    return config.max_len - refill_headroom_for(mc, refill_headroom)


def _prompt_window_ids(p: np.ndarray, i: int, vocab_size: int, window: int) -> np.ndarray:
    """Validates prompt ``i``, prepends SOS (unless present) and keeps its last ``window`` ids."""
    if p.ndim != 1:
        raise ValueError(f"prompt {i} must be 1-D, got shape {p.shape}")
    if p.size and not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"prompt {i} must hold integer ids, got dtype {p.dtype}")
    p = p.astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= vocab_size):
        raise ValueError(f"prompt {i} has ids outside [0, {vocab_size})")
    if np.any(p == PAD_ID):
        raise ValueError(f"prompt {i} contains PAD ({PAD_ID})")
    if p.size == 0 or p[0] != SOS_ID:
        p = np.concatenate([[SOS_ID], p])
    return p[-window:].astype(np.int32)


def _per_prompt_seeds(seed, n_prompts: int) -> np.ndarray:
    if isinstance(seed, int | np.integer):
        seeds = [int(seed) + i for i in range(n_prompts)]
    else:
        seeds = [int(x) for x in seed]
        if len(seeds) != n_prompts:
            raise ValueError(f"got {len(seeds)} seeds for {n_prompts} prompts")
    if any(not 0 <= x < 2**32 for x in seeds):
        raise ValueError("seeds must be in [0, 2**32)")
    return np.asarray(seeds, np.uint32)


def _generate(
    model,
    prompts,
    o: SampleOptions,
    *,
    seed: int | Sequence[int] = 0,
    chunk_size: int | None = None,
    callback: Callable[[StepInfo], Any] | None = None,
    refill_headroom: int | None = None,
    use_cache: bool = True,
    record_logits: bool = False,
    length_bucket: int = 0,
):
    cfg = model.config
    prompt_list = _as_prompt_list(prompts)
    n_prompts = len(prompt_list)
    if n_prompts == 0:
        return [], None, None
    max_new_tokens = o.max_new_tokens
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    controls = _control_settings(o.allowed_pitches, o.velocity_range, o.max_polyphony)
    mc = cfg.num_latents if o.num_latents is None else int(o.num_latents)
    if not 1 <= mc <= cfg.num_latents:
        raise ValueError(f"num_latents must be in [1, {cfg.num_latents}], got {o.num_latents}")
    headroom = refill_headroom_for(mc, refill_headroom) if use_cache else 0
    if not 0 <= headroom <= mc - 1:
        raise ValueError(f"refill_headroom must be in [0, num_latents - 1], got {headroom}")
    window = cfg.max_len - headroom
    windows = [
        _prompt_window_ids(p, i, cfg.input_vocab_size, window) for i, p in enumerate(prompt_list)
    ]
    rows = _next_pow2(n_prompts)  # rows per half: the batch, or its full-context half
    guided = o.guidance > 0
    befores = [infill.music_before_middle(p) for p in prompt_list]  # plain prompts: themselves
    if guided:  # the short-context rows: SOS and the last tokens of the music continued
        k = o.guidance_tokens
        windows += [
            _prompt_window_ids(m[max(0, m.size - k) :], i, cfg.input_vocab_size, window)
            for i, m in enumerate(befores)
        ]
    sounding = np.zeros((rows * (2 if guided else 1), NUM_PITCHES), np.int32)
    onsets = np.zeros((*sounding.shape, ONSET_SLOTS), np.int32)
    head = np.zeros_like(sounding)
    velocity = np.full(sounding.shape[0], DEFAULT_VELOCITY, np.int32)
    run = np.tile(np.asarray(PITCH_RUN_NONE, np.int32), (sounding.shape[0], 1))
    for i, p in enumerate(befores):  # the whole prompt (an infilling one: the part before the
        sounding[i] = sounding_pitches(p)  # gap): a note may outlast the window
        velocity[i] = current_velocity(p)
        run[i] = pitch_run(p)
        if o.max_note_seconds is not None:  # without a limit the onsets change no token
            onsets[i], head[i] = onset_queues(p)
    if guided:  # a short row carries its prompt's state (only the full rows' is read)
        for state in (sounding, onsets, head, velocity, run):
            state[rows : rows + n_prompts] = state[:n_prompts]
    seeds = _per_prompt_seeds(seed, n_prompts)
    if max_new_tokens == 0:
        return [np.zeros((0,), np.int32) for _ in range(n_prompts)], None, None

    bucket_g = _next_pow2(max(max_new_tokens, int(length_bucket)), 64)
    plan = _Plan(
        max_len=cfg.max_len,
        window=window,
        num_latents=mc,
        fill=mc - headroom,
        period=headroom + 1,
        batch=sounding.shape[0],
        buffer=window + bucket_g,
        uncached=not use_cache,
        record_logits=record_logits,
        guided=guided,
    )

    tokens = np.full((plan.batch, plan.buffer), PAD_ID, np.int32)
    tokens[:, window - 1] = SOS_ID  # batch-padding rows: a bare SOS, marked done
    for i, ids in enumerate(windows):
        tokens[i % n_prompts + rows * (i // n_prompts), window - ids.size : window] = ids
    done = np.arange(plan.batch) % rows >= n_prompts

    seeds = np.concatenate([seeds, np.zeros(rows - n_prompts, np.uint32)])
    seeds = np.tile(seeds, plan.batch // rows)  # a short row draws nothing: its keys are unused
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
    max_time = _NO_TIME_LIMIT
    if o.max_seconds is not None:
        max_time = max(1, int(round(o.max_seconds * STEPS_PER_SECOND)))
    max_note = _NO_TIME_LIMIT
    if o.max_note_seconds is not None:
        max_note = int(np.clip(round(o.max_note_seconds * STEPS_PER_SECOND), 1, _NO_TIME_LIMIT))
    settings = _Settings(
        keys=keys,
        temperature=jnp.float32(o.temperature),
        top_k=jnp.int32(o.top_k),
        top_p=jnp.float32(o.top_p),
        min_p=jnp.float32(o.min_p),
        stop_at_eos=jnp.bool_(o.stop_at_eos),
        max_time=jnp.full((plan.batch,), max_time, jnp.int32),
        sounding_offs=jnp.bool_(o.sounding_note_offs),
        max_note=jnp.int32(max_note),
        max_run=jnp.int32(_NO_TIME_LIMIT if o.max_pitch_run is None else int(o.max_pitch_run)),
        guidance=jnp.float32(o.guidance),
        **controls,
    )

    graphdef, params = nnx.split(model)
    carry = _init_carry(
        graphdef,
        plan,
        params,
        jnp.asarray(tokens),
        jnp.asarray(done),
        jnp.asarray(sounding),
        jnp.asarray(onsets),
        jnp.asarray(head),
        jnp.asarray(velocity),
        jnp.asarray(run),
    )
    if callback is not None and chunk_size is None:
        chunk_size = DEFAULT_CHUNK_WITH_CALLBACK
    chunk = max_new_tokens if chunk_size is None else int(chunk_size)

    g = 0
    while True:
        g_end = min(g + chunk, max_new_tokens)
        carry = _run_chunk(graphdef, plan, params, carry, jnp.int32(g_end), settings)
        g = int(carry.g)
        finished = g >= max_new_tokens or bool(np.all(np.asarray(carry.done)[:n_prompts]))
        if callback is not None:
            info = _step_info(carry, plan, n_prompts, max_new_tokens)
            try:
                stop = callback(info)
            except StopSampling:
                stop = True
            if stop:
                break
        if finished:
            break

    tokens_out = np.asarray(carry.tokens)
    n_out = np.asarray(carry.n_out)
    outputs = [tokens_out[i, window : window + n_out[i]].copy() for i in range(n_prompts)]
    logits = None
    if record_logits:
        logits = np.asarray(carry.logits)[:n_prompts, :g]
    return outputs, logits, plan


def _step_info(carry: _Carry, plan: _Plan, n_prompts: int, max_new_tokens: int) -> StepInfo:
    tokens = np.asarray(carry.tokens)
    n_out = np.asarray(carry.n_out)[:n_prompts]
    return StepInfo(
        step=int(carry.g),
        max_new_tokens=max_new_tokens,
        num_tokens=n_out.copy(),
        seconds=np.asarray(carry.time)[:n_prompts] / STEPS_PER_SECOND,
        done=np.asarray(carry.done)[:n_prompts].copy(),
        tokens=[tokens[i, plan.window : plan.window + n_out[i]].copy() for i in range(n_prompts)],
    )


def sample(
    model,
    prompts: list[np.ndarray] | np.ndarray,
    options: SampleOptions | None = None,
    *,
    seed: int | Sequence[int] = 0,
    callback: Callable[[StepInfo], Any] | None = None,
    chunk_size: int | None = None,
    refill_headroom: int | None = None,
    use_cache: bool = True,
    length_bucket: int = 0,
    **fields,
) -> list[np.ndarray]:
    """Continues every prompt; returns the new ids per prompt (request order).

    Args:
      model: a ``PerceiverAR`` (anything with ``config``, ``init_cache``, ``prefill`` and
        ``decode_step`` works).
      prompts: a list of 1-D int arrays (lengths may differ, may be empty) or a 2-D array.
        SOS is prepended to each prompt unless it already starts with SOS; only the last
        ``N - refill_headroom`` tokens are used. Prompts must not contain PAD.
      options: what to sample (``SampleOptions``: budgets, sampling and musical controls).
        ``**fields`` are ``SampleOptions`` fields, for short calls
        (``sample(model, prompts, max_new_tokens=64, top_k=1)``) or to replace fields of
        ``options``.
      seed: an int: prompt i draws from ``key(seed + i)`` (so a batch run equals single runs with
        seeds seed, seed+1, ...); or one seed per prompt. Keys are folded with the step number.

    How it runs (the notes do not depend on these, except the baseline ``use_cache=False``):
      callback: ``callback(StepInfo)`` after each chunk (default chunk 64 when given); returning
        True or raising ``StopSampling`` stops early, keeping what was generated.
      chunk_size: decode in compiled chunks of this many steps, returning to Python in between.
      refill_headroom: R, tokens decoded one by one between full forwards (default
        ``min(128, num_latents // 2)``); a fill computes ``num_latents - R`` latents.
      use_cache: False recomputes a full forward for every token (benchmark baseline).
      length_bucket: compile for at least this many new tokens (a server passes its largest
        budget, so every request runs the program compiled at start).

    The controls hold for every generated token (``apply_controls``); they are traced values:
    changing them never recompiles, and without them the ids are those of the sampler without
    controls, bit for bit. PAD and SOS are never sampled.
    """
    outputs, _, _ = _generate(
        model,
        prompts,
        _as_options(options, fields),
        seed=seed,
        callback=callback,
        chunk_size=chunk_size,
        refill_headroom=refill_headroom,
        use_cache=use_cache,
        length_bucket=length_bucket,
    )
    return outputs


def sample_with_logits(model, prompts, options: SampleOptions | None = None, *, seed=0, **kwargs):
    """Like ``sample`` but also returns the model's raw logits at every decoding step.

    Returns ``(outputs, logits[P, steps, V], plan)``; a diagnostic for tests (e.g. comparing cached
    logits with full forwards). ``plan`` tells the window ``W``, fill latents and period.
    """
    run = {k: kwargs.pop(k) for k in _RUN_KEYS if k in kwargs}
    return _generate(
        model, prompts, _as_options(options, kwargs), seed=seed, record_logits=True, **run
    )


_RUN_KEYS = ("callback", "chunk_size", "refill_headroom", "use_cache", "length_bucket")
