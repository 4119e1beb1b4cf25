"""Perceiver AR (Hawthorne et al., 2022) in Flax NNX.

Shapes in names: B batch, L input length (<= N), M latents, E input/cross-attention width,
D latent width, H heads, K channels per head, V vocabulary, C cache capacity.

Architecture (as the paper and the official code):
  * token embedding (width E) of the L inputs; no learned positions, rotary encodings instead;
  * the latents are the last M input positions: their initial state is their own input
    embedding (mapped to width D when E != D);
  * one causal cross-attention: the latent at input index p attends to the inputs <= p
    (PAD keys masked), pre-LayerNorm on queries and on keys/values, query residual, then an MLP;
  * L causal self-attention layers over the latents (pre-LayerNorm);
  * final LayerNorm and logits (zero-initialised as in the official code).
Rotary encoding rotates ``rotary_fraction`` of every head's channels by the absolute position of
the token inside the *unpadded* sequence (``cumsum(non_pad) - 1``), so left padding changes nothing
and cached keys stay valid while decoding. With ``num_latents == max_len`` this is a plain
decoder-only Transformer (the cross-attention is then just its first layer).

Inputs are left-padded with PAD so that the latents are always the last M positions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from perceiver_midi.model import gap_clock, match, note_state
from perceiver_midi.model.config import NOISE_EVENTS, Config
from perceiver_midi.model.vocab import (
    FIM_GAP_ID,
    FIM_SUFFIX_ID,
    NOTE_OFF_FIRST_ID,
    NOTE_ON_FIRST_ID,
    NUM_PITCHES,
    NUM_RESERVED,
    PAD_ID,
    TIME_SHIFT_FIRST_ID,
    VELOCITY_FIRST_ID,
    VOCAB_SIZE,
)

_NEG_INF = -1e30  # finite "minus infinity" for masked scores (a fully masked row stays finite)
# The match bonus is stored divided by this: Adam moves every parameter by about the learning
# rate a step, and a bonus worth having is several nats, which no other parameter needs to be.
MATCH_BONUS_SCALE = 16.0


# ----------------------------------------------------------------------------------------------
# Functional pieces
# ----------------------------------------------------------------------------------------------


def rotary_dims(head_dim: int, fraction: float) -> int:
    """Number of rotated channels per head: ``fraction * head_dim`` rounded down to even."""
    return int(head_dim * fraction) // 2 * 2


def apply_rotary(
    x_BxHxTxK: jax.Array, pos_BxT: jax.Array, rot_dims: int, max_wavelength: float
) -> jax.Array:
    """Rotates the first ``rot_dims`` channels of every head by angle ``pos / wavelength``."""
    if rot_dims == 0:
        return x_BxHxTxK
    half = rot_dims // 2
    inv_freq_R = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_BxTxR = pos_BxT.astype(jnp.float32)[..., None] * inv_freq_R
    cos_Bx1xTxR = jnp.cos(angle_BxTxR)[:, None].astype(x_BxHxTxK.dtype)
    sin_Bx1xTxR = jnp.sin(angle_BxTxR)[:, None].astype(x_BxHxTxK.dtype)
    x1 = x_BxHxTxK[..., :half]
    x2 = x_BxHxTxK[..., half:rot_dims]
    rotated = [x1 * cos_Bx1xTxR - x2 * sin_Bx1xTxR, x2 * cos_Bx1xTxR + x1 * sin_Bx1xTxR]
    return jnp.concatenate([*rotated, x_BxHxTxK[..., rot_dims:]], axis=-1)


def dot_product_attention(q_xQxK: jax.Array, k_xTxK: jax.Array, v_xTxK: jax.Array, mask_xQxT):
    """Softmax attention over the last two axes (any leading axes, e.g. ``[B, H]`` or ``[B*H]``)
    with a boolean mask broadcastable to the scores (True = may attend); softmax in float32."""
    scale = q_xQxK.shape[-1] ** -0.5
    s_xQxT = jnp.einsum("...qk,...tk->...qt", q_xQxK, k_xTxK, preferred_element_type=jnp.float32)
    s_xQxT = jnp.where(mask_xQxT, s_xQxT * scale, _NEG_INF)
    p_xQxT = jax.nn.softmax(s_xQxT, axis=-1).astype(v_xTxK.dtype)
    return jnp.einsum("...qt,...tk->...qk", p_xQxT, v_xTxK)


def per_sequence_attention(q_BxHxQxK, k_BxHxTxK, v_BxHxTxK, mask_Bx1xQxT) -> jax.Array:
    """``dot_product_attention`` one sequence at a time (a ``lax.map`` over the batch).

    Same result; for many queries over a long cache this keeps each score matrix cache-sized: at
    the latent refill's shape (batch 16) 1.2-1.8x faster on CPU (two runs) than one batched
    [B, H, Q, T] computation (``benchmarks/attention_kernels.py``: ``refill_cross_attention``).
    """

    def one(args):
        q, k, v, mask = (x[None] for x in args)
        return dot_product_attention(q, k, v, mask)[0]

    return jax.lax.map(one, (q_BxHxQxK, k_BxHxTxK, v_BxHxTxK, mask_Bx1xQxT))


def causal_attention(
    q_BxHxQxK: jax.Array,
    k_BxHxTxK: jax.Array,
    v_BxHxTxK: jax.Array,
    q_index_Q: jax.Array,
    key_ok_BxT: jax.Array,
    query_chunk: int = 0,
) -> jax.Array:
    """Causal attention where query i sits at key index ``q_index_Q[i]``.

    Query i sees key j iff ``j <= q_index[i]`` and (``key_ok[j]`` or ``j == q_index[i]``): a query
    always sees itself, so PAD queries (short sequences) give finite outputs, never NaN.
    With ``query_chunk > 0`` queries are processed in rematerialised chunks (bounded memory).
    """
    t_T = jnp.arange(k_BxHxTxK.shape[2], dtype=jnp.int32)

    def block(q_blk, qi_blk):
        causal_QxT = t_T[None, :] <= qi_blk[:, None]
        self_QxT = t_T[None, :] == qi_blk[:, None]
        mask_BxQxT = causal_QxT[None] & (key_ok_BxT[:, None, :] | self_QxT[None])
        return dot_product_attention(q_blk, k_BxHxTxK, v_BxHxTxK, mask_BxQxT[:, None])

    num_q = q_BxHxQxK.shape[2]
    if query_chunk <= 0 or num_q <= query_chunk:
        return block(q_BxHxQxK, q_index_Q)
    n_chunks = -(-num_q // query_chunk)
    pad = n_chunks * query_chunk - num_q
    q_pad = jnp.pad(q_BxHxQxK, ((0, 0), (0, 0), (0, pad), (0, 0)))
    qi_pad = jnp.pad(q_index_Q, (0, pad), constant_values=q_index_Q[-1])
    b, h, _, kd = q_BxHxQxK.shape
    q_NxBxHxCxK = q_pad.reshape(b, h, n_chunks, query_chunk, kd).transpose(2, 0, 1, 3, 4)
    qi_NxC = qi_pad.reshape(n_chunks, query_chunk)
    out_NxBxHxCxK = jax.lax.map(lambda a: jax.checkpoint(block)(*a), (q_NxBxHxCxK, qi_NxC))
    out = out_NxBxHxCxK.transpose(1, 2, 0, 3, 4).reshape(b, h, n_chunks * query_chunk, -1)
    return out[:, :, :num_q]


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "sq_relu":
        return jnp.square(jax.nn.relu(x))
    if name == "gelu":
        return jax.nn.gelu(x)
    return jax.nn.relu(x)


RESERVED_KIND, NOTE_ON_KIND, NOTE_OFF_KIND, TIME_SHIFT_KIND, VELOCITY_KIND = range(5)


def event_kind(tokens):
    """Each token's kind: RESERVED_KIND (PAD/EOS/SOS and the infilling sentinels),
    NOTE_ON_KIND, NOTE_OFF_KIND, TIME_SHIFT_KIND or VELOCITY_KIND (0-4, in id order)."""
    kind = (
        (tokens >= NUM_RESERVED).astype(jnp.int32)
        + (tokens >= NOTE_OFF_FIRST_ID)
        + (tokens >= TIME_SHIFT_FIRST_ID)
        + (tokens >= VELOCITY_FIRST_ID)
    )
    return jnp.where(tokens >= VOCAB_SIZE, RESERVED_KIND, kind)  # infilling sentinels


def noise_inputs(
    rng: jax.Array, tokens_BxL: jax.Array, rate: float, events: str = "all", first_latent: int = 0
):
    """Training-time input noise (``Config.input_noise``; the targets stay the real tokens).

    Each eligible token changes with probability ``rate``:
      * ``"all"``: causal unigram noising (after Xie et al. 2017): any real token (id >=
        NUM_RESERVED) becomes the token at a uniformly drawn earlier position of its own
        sequence, so replacements follow the piece's own event frequencies and nothing from the
        future is seen; a draw that lands on PAD, SOS or EOS leaves the token as it was;
      * ``"timing"``: the same, for TIME_SHIFT and VELOCITY tokens only and only from an
        earlier token of their own kind, so the notes and their NOTE_ON/NOTE_OFF pairing stay;
      * ``"compress"``: a TIME_SHIFT of k steps becomes max(1, round(u k)) steps, u ~ U(0.5, 1):
        the context looks busier than the music the targets continue (the state a free-running
        model drifts into); every other token stays;
      * ``"compress_far"``: the same, only at positions before ``first_latent`` (the inputs
        only the cross-attention sees), so notes sounding around the latents keep their length.
    """
    if events not in NOISE_EVENTS:
        raise ValueError(f"events must be one of {NOISE_EVENTS}, got {events!r}")
    k_mask, k_draw = jax.random.split(rng)
    b, n = tokens_BxL.shape
    # An infilling prompt's gap length (the TIME_SHIFTs between GAP and SUFFIX) is a fact, not
    # music: it stays as written.
    header_BxL = jnp.cumsum(tokens_BxL == FIM_GAP_ID, axis=1) > jnp.cumsum(
        tokens_BxL == FIM_SUFFIX_ID, axis=1
    )
    hit_BxL = ~keep_mask(k_mask, rate, (b, n)) & ~header_BxL
    kind_BxL = event_kind(tokens_BxL)
    u_BxL = jax.random.uniform(k_draw, (b, n))
    if events in ("compress", "compress_far"):
        if events == "compress_far":
            hit_BxL = hit_BxL & (jnp.arange(n) < first_latent)[None]
        steps_BxL = (tokens_BxL - TIME_SHIFT_FIRST_ID + 1).astype(jnp.float32)
        short_BxL = jnp.maximum(1, jnp.round((0.5 + 0.5 * u_BxL) * steps_BxL)).astype(jnp.int32)
        is_shift_BxL = kind_BxL == TIME_SHIFT_KIND
        return jnp.where(hit_BxL & is_shift_BxL, TIME_SHIFT_FIRST_ID + short_BxL - 1, tokens_BxL)
    src_BxL = jnp.floor(u_BxL * jnp.arange(n, dtype=jnp.float32)).astype(jnp.int32)  # < t
    repl_BxL = jnp.take_along_axis(tokens_BxL, src_BxL, axis=1)
    repl_kind_BxL = event_kind(repl_BxL)
    if events == "timing":
        hit_BxL = hit_BxL & (kind_BxL >= TIME_SHIFT_KIND) & (repl_kind_BxL == kind_BxL)
    hit_BxL = hit_BxL & (kind_BxL != RESERVED_KIND) & (repl_kind_BxL != RESERVED_KIND)
    return jnp.where(hit_BxL, repl_BxL, tokens_BxL)


def pitch_bonus(logits_xV: jax.Array, hit_xP: jax.Array, bonus_x: jax.Array) -> jax.Array:
    """``logits`` with ``bonus_x`` added to the NOTE_ONs of the pitches ``hit_xP``, the NOTE_ONs
    then shifted so that their total probability (when a note starts) stays the model's: a
    bonus chooses among pitches, never the timing."""
    on_xP = logits_xV[..., NOTE_ON_FIRST_ID : NOTE_ON_FIRST_ID + NUM_PITCHES]
    new_xP = on_xP + jnp.where(hit_xP, bonus_x[..., None], 0.0)
    shift_x = jax.nn.logsumexp(on_xP, axis=-1) - jax.nn.logsumexp(new_xP, axis=-1)
    new_xP = new_xP + shift_x[..., None]
    return logits_xV.at[..., NOTE_ON_FIRST_ID : NOTE_ON_FIRST_ID + NUM_PITCHES].set(new_xP)


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Boolean mask, True with probability ``1 - rate`` (rate rounded to a multiple of 1/256).

    One random byte per element (four per 32-bit draw): 3-5x cheaper on CPU than
    ``jax.random.bernoulli`` (``benchmarks/attention_kernels.py``: ``dropout_mask`` in its
    results), which matters for dropout over every activation.
    """
    size = math.prod(shape)
    words = jax.random.bits(rng, ((size + 3) // 4,), jnp.uint32)
    bytes_ = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:size]
    return bytes_.reshape(shape) >= round(rate * 256)


def _dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    if rng is None or rate <= 0.0:
        return x
    keep_prob = 1.0 - round(rate * 256) / 256
    return jnp.where(keep_mask(rng, rate, x.shape), x / keep_prob, 0).astype(x.dtype)


def _split_heads(x_BxTxF: jax.Array, heads: int) -> jax.Array:
    b, t, f = x_BxTxF.shape
    return x_BxTxF.reshape(b, t, heads, f // heads).transpose(0, 2, 1, 3)


def _fold_heads(x_BxHxTxK: jax.Array) -> jax.Array:
    """[B, H, T, K] -> [B*H, T, K]: the decoding caches' layout (no size-1 axes when B == 1, which
    can make XLA copy the caches at every step; not measured by a benchmark)."""
    b, h, t, k = x_BxHxTxK.shape
    return x_BxHxTxK.reshape(b * h, t, k)


def _merge_heads(x_BxHxTxK: jax.Array) -> jax.Array:
    b, h, t, k = x_BxHxTxK.shape
    return x_BxHxTxK.transpose(0, 2, 1, 3).reshape(b, t, h * k)


def preceding(x_BxLxE: jax.Array, ok_BxL: jax.Array, width: int, hist_BxSxE=None) -> list:
    """``[prev_1, ..., prev_S]`` with ``prev_j[:, t] = x[:, t - j]`` (``S = width``), zero where
    that token is PAD (``ok`` False) or before the start; ``hist_BxSxE`` (already masked) holds
    the S tokens before ``x[:, 0]`` when decoding continues a sequence (None: zeros)."""
    b, n, e = x_BxLxE.shape
    if hist_BxSxE is None:
        hist_BxSxE = jnp.zeros((b, width, e), x_BxLxE.dtype)
    xp_BxSLxE = jnp.concatenate([hist_BxSxE, x_BxLxE * ok_BxL[..., None]], axis=1)
    return [xp_BxSLxE[:, width - j : width - j + n] for j in range(1, width + 1)]


def smear_term(w_SxExF: jax.Array, prev: list) -> jax.Array:
    """``sum_j prev_j @ w[j - 1]``: what the preceding tokens add to a key or query."""
    return sum(p_BxLxE @ w_SxExF[j].astype(p_BxLxE.dtype) for j, p_BxLxE in enumerate(prev))


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class MLP(nnx.Module):
    def __init__(self, width: int, hidden: int, activation: str, dtype, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(width, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, dtype=dtype, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(_activation(self.activation, self.fc1(x)))


class CrossAttendBlock(nnx.Module):
    """Latents (queries, width D) attend to the inputs (keys/values, width E); residual + MLP."""

    def __init__(self, c: Config, dtype, *, rngs: nnx.Rngs):
        e, d = c.embed_dim, c.d_model
        self.heads = c.num_cross_heads
        self.rot = rotary_dims(e // self.heads, c.rotary_fraction)
        self.max_wavelength = c.max_wavelength
        self.dropout = c.dropout
        self.query_init = nnx.Linear(e, d, dtype=dtype, rngs=rngs) if e != d else None
        self.q_norm = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
        self.kv_norm = nnx.LayerNorm(e, dtype=dtype, rngs=rngs)
        self.q = nnx.Linear(d, e, use_bias=False, dtype=dtype, rngs=rngs)
        self.kv = nnx.Linear(e, 2 * e, use_bias=False, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(e, d, dtype=dtype, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
        self.mlp = MLP(d, c.mlp_ratio * d, c.activation, dtype, rngs=rngs)
        self.smear = c.cross_smear
        if self.smear:  # zero-initialised: a model that gains them computes the same function
            self.k_smear = nnx.Param(jnp.zeros((self.smear, e, e), jnp.float32))
            self.q_smear = nnx.Param(jnp.zeros((self.smear, e, e), jnp.float32))

    def normed(self, emb_BxTxE: jax.Array) -> jax.Array:
        return self.kv_norm(emb_BxTxE)

    def init_latents(self, emb_BxMxE: jax.Array) -> jax.Array:
        return emb_BxMxE if self.query_init is None else self.query_init(emb_BxMxE)

    def keys_values(self, emb_BxTxE: jax.Array, pos_BxT: jax.Array, prev=None):
        """Keys (rotated) and values of T inputs; ``prev`` (``preceding`` of the normalised
        embeddings) feeds the key smear when ``cross_smear > 0``."""
        kv_BxTx2E = self.kv(self.kv_norm(emb_BxTxE))
        k_BxTxE, v_BxTxE = jnp.split(kv_BxTx2E, 2, axis=-1)
        if self.smear:
            k_BxTxE = k_BxTxE + smear_term(self.k_smear[...], prev)
        k_BxHxTxK = apply_rotary(
            _split_heads(k_BxTxE, self.heads), pos_BxT, self.rot, self.max_wavelength
        )
        return k_BxHxTxK, _split_heads(v_BxTxE, self.heads)

    def queries(self, z_BxMxD: jax.Array, pos_BxM: jax.Array, prev=None) -> jax.Array:
        q_BxMxE = self.q(self.q_norm(z_BxMxD))
        if self.smear:
            q_BxMxE = q_BxMxE + smear_term(self.q_smear[...], prev)
        q_BxHxMxK = _split_heads(q_BxMxE, self.heads)
        return apply_rotary(q_BxHxMxK, pos_BxM, self.rot, self.max_wavelength)

    def finish(self, z_BxMxD, attn_BxHxMxK, rng=None) -> jax.Array:
        r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
        z_BxMxD = z_BxMxD + _dropout(self.out(_merge_heads(attn_BxHxMxK)), self.dropout, r1)
        return z_BxMxD + _dropout(self.mlp(self.mlp_norm(z_BxMxD)), self.dropout, r2)


class SelfAttendBlock(nnx.Module):
    """Pre-LayerNorm causal self-attention over the latents, then an MLP."""

    def __init__(self, c: Config, dtype, *, rngs: nnx.Rngs):
        d = c.d_model
        self.heads = c.num_heads
        self.rot = rotary_dims(d // self.heads, c.rotary_fraction)
        self.max_wavelength = c.max_wavelength
        self.dropout = c.dropout
        self.norm = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, use_bias=False, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
        self.mlp = MLP(d, c.mlp_ratio * d, c.activation, dtype, rngs=rngs)
        self.smear = c.latent_smear
        if self.smear:  # zero-initialised, as the cross-attention's
            self.k_smear = nnx.Param(jnp.zeros((self.smear, c.embed_dim, d), jnp.float32))
            self.q_smear = nnx.Param(jnp.zeros((self.smear, c.embed_dim, d), jnp.float32))

    def project(self, z_BxMxD: jax.Array, pos_BxM: jax.Array, prev=None):
        """Rotated queries and keys, and values; ``prev`` (the cross-attention's ``preceding``
        list for these latents) feeds the smear when ``latent_smear > 0``."""
        q, k, v = jnp.split(self.qkv(self.norm(z_BxMxD)), 3, axis=-1)
        if self.smear:
            q = q + smear_term(self.q_smear[...], prev[: self.smear])
            k = k + smear_term(self.k_smear[...], prev[: self.smear])
        q_BxHxMxK = apply_rotary(
            _split_heads(q, self.heads), pos_BxM, self.rot, self.max_wavelength
        )
        k_BxHxMxK = apply_rotary(
            _split_heads(k, self.heads), pos_BxM, self.rot, self.max_wavelength
        )
        return q_BxHxMxK, k_BxHxMxK, _split_heads(v, self.heads)

    def finish(self, z_BxMxD, attn_BxHxMxK, rng=None) -> jax.Array:
        r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
        z_BxMxD = z_BxMxD + _dropout(self.out(_merge_heads(attn_BxHxMxK)), self.dropout, r1)
        return z_BxMxD + _dropout(self.mlp(self.mlp_norm(z_BxMxD)), self.dropout, r2)


class DecodeCache(NamedTuple):
    """State of cached decoding (a pytree of arrays, so it can be carried by a lax loop).

    Token *columns* are indices into the caller's token buffer: the (left-padded) prompt window
    occupies columns ``[0, W)`` and generated tokens follow. Column ``c`` of sequence ``b`` has
    position ``c - pad[b]``. The cross-attention cache is a ring: column ``c`` lives in slot
    ``c % C``, so a reset never recomputes the inputs' keys/values. The latent caches hold the
    latents of columns ``lat_col0 + j`` in slots ``j < lat_len`` for every self-attention layer.
    """

    cross_k: jax.Array  # [B*Hc, C, Kc]
    cross_v: jax.Array  # [B*Hc, C, Kc]
    lat_k: tuple  # L x [B*H, Mc, K]
    lat_v: tuple  # L x [B*H, Mc, K]
    pad: jax.Array  # [B] int32: PAD columns at the left of the prompt window
    cur: jax.Array  # [] int32: newest column in the cross-attention cache
    lo: jax.Array  # [] int32: first column of the current window
    lat_len: jax.Array  # [] int32
    lat_col0: jax.Array  # [] int32
    notes: note_state.NoteState  # after the newest column, counted from column ``lo``
    recent: jax.Array  # [B, S] int32: tokens of the S newest columns (PAD before the first)
    toks: jax.Array  # [B, C] int32: token ids, a ring like the cross-attention's ([B, 0]: unused)
    mlen: jax.Array  # [B, C] int32: each slot's match length against the newest column (match.py)
    clock: gap_clock.GapClock  # after the newest column, counted from column ``lo``


class PerceiverAR(nnx.Module):
    """Perceiver AR; ``PerceiverAR(get_config("tiny"), rngs=nnx.Rngs(0))``."""

    def __init__(self, config: Config, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        self.embed = nnx.Embed(config.input_vocab_size, config.embed_dim, dtype=dtype, rngs=rngs)
        self.cross = CrossAttendBlock(config, dtype, rngs=rngs)
        self.layers = nnx.List(
            [SelfAttendBlock(config, dtype, rngs=rngs) for _ in range(config.num_layers)]
        )
        # Zero-initialised, so a model that gains it computes the same function.
        self.note_in = (
            nnx.Linear(
                note_state.NUM_FEATURES,
                config.d_model,
                use_bias=False,
                kernel_init=nnx.initializers.zeros_init(),
                dtype=dtype,
                rngs=rngs,
            )
            if config.note_state
            else None
        )
        if config.match_lookup:  # zero-initialised, as note_in
            zeros = nnx.initializers.zeros_init()
            self.match_follow = nnx.Embed(
                config.vocab_size, config.d_model, embedding_init=zeros, dtype=dtype, rngs=rngs
            )
            self.match_len = nnx.Embed(
                config.match_lookup + 1,
                config.d_model,
                embedding_init=zeros,
                dtype=dtype,
                rngs=rngs,
            )
            # A logit bonus for the followed token, by match length and the token's kind: the
            # n-gram-cache path that needs no learned attention (a copy at once).
            self.match_bonus = nnx.Param(jnp.zeros((config.match_lookup + 1, 5), jnp.float32))
        if config.note_lookup:  # the note lookup's: zero-initialised, as the match lookup's
            zeros = nnx.initializers.zeros_init()
            self.match_note_follow = nnx.Embed(
                NUM_PITCHES, config.d_model, embedding_init=zeros, dtype=dtype, rngs=rngs
            )
            self.match_note_len = nnx.Embed(
                config.note_lookup + 1, config.d_model, embedding_init=zeros, dtype=dtype, rngs=rngs
            )
            self.match_note_bonus = nnx.Param(jnp.zeros((config.note_lookup + 1,), jnp.float32))
        zeros = nnx.initializers.zeros_init()  # the gap's maps: as note_in
        if config.gap_clock:
            self.gap_clock = nnx.Embed(
                gap_clock.NUM_BUCKETS, config.d_model, embedding_init=zeros, dtype=dtype, rngs=rngs
            )
        if config.gap_join:
            self.gap_join = nnx.Linear(NUM_PITCHES, config.d_model, use_bias=False,
                                       kernel_init=zeros, dtype=dtype, rngs=rngs)  # fmt: skip
        if config.gap_held:  # the pending pitches (model/gap_clock.py): into the latents, and a
            # NOTE_ON bonus by the time left in the gap (stored / MATCH_BONUS_SCALE, as the match's)
            self.gap_held = nnx.Linear(NUM_PITCHES, config.d_model, use_bias=False,
                                       kernel_init=zeros, dtype=dtype, rngs=rngs)  # fmt: skip
            self.gap_held_bonus = nnx.Param(jnp.zeros((gap_clock.NUM_BUCKETS,), jnp.float32))
        if config.gap_segments:
            self.gap_segments = nnx.Embed(gap_clock.NUM_SEGMENTS, config.embed_dim,
                                          embedding_init=zeros, dtype=dtype, rngs=rngs)  # fmt: skip
        self.final_norm = nnx.LayerNorm(config.d_model, dtype=dtype, rngs=rngs)
        self.logits = nnx.Linear(
            config.d_model,
            config.vocab_size,
            kernel_init=nnx.initializers.zeros_init(),
            dtype=dtype,
            rngs=rngs,
        )

    def _match_logits(self, logits_xV: jax.Array, follow_x: jax.Array, length_x: jax.Array):
        """``logits`` plus the match bonus on the followed token (nothing without a match)."""
        table = MATCH_BONUS_SCALE * self.match_bonus[...]
        bonus_x = table[length_x, event_kind(follow_x)] * (length_x > 0)
        hit_xV = jnp.arange(logits_xV.shape[-1]) == follow_x[..., None]
        return logits_xV + jnp.where(hit_xV, bonus_x[..., None], 0.0)

    def _note_logits(self, logits_xV: jax.Array, follow_x: jax.Array, length_x: jax.Array):
        """``logits`` with the note lookup's bonus on the followed pitch's NOTE_ON."""
        bonus_x = MATCH_BONUS_SCALE * self.match_note_bonus[...][length_x] * (length_x > 0)
        hit_xP = jnp.arange(NUM_PITCHES) == (follow_x - NOTE_ON_FIRST_ID)[..., None]
        return pitch_bonus(logits_xV, hit_xP, bonus_x)

    def _held_logits(self, logits_xV: jax.Array, pending_xP: jax.Array, bucket_x: jax.Array):
        """``logits`` with the held bonus (by the time left) on the pending pitches' NOTE_ONs."""
        bonus_x = MATCH_BONUS_SCALE * self.gap_held_bonus[...][bucket_x]
        return pitch_bonus(logits_xV, pending_xP, bonus_x)

    def _note_term(self, follow: jax.Array, length: jax.Array) -> jax.Array:
        """What the note lookup adds to a latent: the followed pitch (when found), the length."""
        found = (length > 0)[..., None].astype(self.match_note_follow.embedding.dtype)
        pitch = jnp.clip(follow - NOTE_ON_FIRST_ID, 0, NUM_PITCHES - 1)
        return self.match_note_follow(pitch) * found + self.match_note_len(length)

    def _match_term(self, follow: jax.Array, length: jax.Array) -> jax.Array:
        """What a match lookup adds to a latent: the followed token (when there is a match) and
        the match length."""
        ok = (length > 0) & (follow < self.config.vocab_size)  # a sentinel is never followed
        found = ok[..., None].astype(self.match_follow.embedding.dtype)
        return self.match_follow(jnp.where(ok, follow, 0)) * found + self.match_len(length)

    def _gap_terms(self, bucket_BxM: jax.Array, join_BxP: jax.Array, pending_BxMxP) -> jax.Array:
        """What the gap clock, the join's pitches and the pending pitches add to latents
        (``model/gap_clock.py``)."""
        out = 0.0
        if self.config.gap_clock:
            out = out + self.gap_clock(bucket_BxM)
        if self.config.gap_join:
            out = out + self.gap_join(gap_clock.join_features(join_BxP, bucket_BxM > 0))
        if self.config.gap_held:
            out = out + self.gap_held(pending_BxMxP.astype(self.gap_held.kernel.dtype))
        return out

    @property
    def _uses_clock(self) -> bool:
        c = self.config
        return c.gap_clock or c.gap_join or c.gap_held

    # -- full forward -------------------------------------------------------------------------

    def _inputs(self, emb_BxTxE: jax.Array, segment_BxT: jax.Array | None) -> jax.Array:
        """What the keys, values and latents read of tokens: their embeddings, plus their
        segments' with ``gap_segments`` (``segment_BxT``; the smears read the embeddings)."""
        if segment_BxT is None:
            return emb_BxTxE
        return emb_BxTxE + self.gap_segments(segment_BxT)

    def __call__(
        self,
        tokens_BxL: jax.Array,
        *,
        num_latents: int | None = None,
        deterministic: bool = True,
        rng: jax.Array | None = None,
        embeddings: jax.Array | None = None,
    ) -> jax.Array:
        """Logits ``[B, M, V]`` (float32) predicting the token after each of the last M inputs.

        ``tokens_BxL`` is left-padded with PAD; L may be anything >= 1 (normally N). With
        ``deterministic=False`` dropout and cross-attend input dropout use ``rng``.
        ``embeddings`` (``[B, L, E]``) replaces ``embed(tokens)``, e.g. to take gradients with
        respect to the inputs; ``tokens`` still define PAD and positions.
        """
        c = self.config
        b, n = tokens_BxL.shape
        m = min(num_latents or c.num_latents, n)
        if deterministic:
            rng = None
        elif rng is None and (c.dropout > 0 or c.cross_attend_dropout > 0):
            raise ValueError("training mode (deterministic=False) needs an rng")
        rngs = list(jax.random.split(rng, c.num_layers + 2)) if rng is not None else None

        valid_BxL = tokens_BxL != PAD_ID
        pos_BxL = jnp.maximum(jnp.cumsum(valid_BxL, axis=1, dtype=jnp.int32) - 1, 0)
        if rng is not None and c.input_noise > 0:  # PAD stays PAD: positions are unchanged
            tokens_BxL = noise_inputs(
                jax.random.fold_in(rng, 1), tokens_BxL, c.input_noise, c.input_noise_events, n - m
            )
        emb_BxLxE = self.embed(tokens_BxL) if embeddings is None else embeddings
        seg_BxL = gap_clock.segments(tokens_BxL) if c.gap_segments else None
        in_BxLxE = self._inputs(emb_BxLxE, seg_BxL)

        # Cross-attend input dropout: drop non-latent input positions from the keys.
        key_ok_BxL = valid_BxL
        if rngs is not None and c.cross_attend_dropout > 0:
            keep_BxL = keep_mask(rngs[-1], c.cross_attend_dropout, (b, n))
            keep_BxL = keep_BxL | (jnp.arange(n) >= n - m)[None]
            key_ok_BxL = key_ok_BxL & keep_BxL

        q_index_M = jnp.arange(n - m, n, dtype=jnp.int32)
        lat_pos_BxM = pos_BxL[:, n - m :]
        z_BxMxD = self.cross.init_latents(in_BxLxE[:, n - m :])
        if self.note_in is not None:
            z_BxMxD = z_BxMxD + self.note_in(note_state.state_features(tokens_BxL, m)[0])
        if c.match_lookup:
            found = match.lookup(tokens_BxL, m, c.match_lookup, c.match_min_notes)
            z_BxMxD = z_BxMxD + self._match_term(*found)
        if c.note_lookup:
            found_notes = match.note_lookup(tokens_BxL, m, c.note_lookup, c.match_min_notes)
            z_BxMxD = z_BxMxD + self._note_term(*found_notes)
        if self._uses_clock:
            clock_BxM, clock, pending_BxMxP = gap_clock.buckets(tokens_BxL, m, c.gap_held)
            z_BxMxD = z_BxMxD + self._gap_terms(clock_BxM, clock.join, pending_BxMxP)
        prev = (
            preceding(self.cross.normed(emb_BxLxE), valid_BxL, c.cross_smear)
            if c.cross_smear
            else None
        )
        k_BxHxLxK, v_BxHxLxK = self.cross.keys_values(in_BxLxE, pos_BxL, prev)
        lat_prev = [p[:, n - m :] for p in prev] if prev else None
        q_BxHxMxK = self.cross.queries(z_BxMxD, lat_pos_BxM, lat_prev)
        attn = causal_attention(
            q_BxHxMxK, k_BxHxLxK, v_BxHxLxK, q_index_M, key_ok_BxL, c.attn_query_chunk
        )
        z_BxMxD = self.cross.finish(z_BxMxD, attn, rngs[0] if rngs else None)

        lat_ok_BxM = valid_BxL[:, n - m :]
        lat_index_M = jnp.arange(m, dtype=jnp.int32)
        for i, layer in enumerate(self.layers):
            q_BxHxMxK, k_BxHxMxK, v_BxHxMxK = layer.project(z_BxMxD, lat_pos_BxM, lat_prev)
            attn = causal_attention(
                q_BxHxMxK, k_BxHxMxK, v_BxHxMxK, lat_index_M, lat_ok_BxM, c.attn_query_chunk
            )
            z_BxMxD = layer.finish(z_BxMxD, attn, rngs[i + 1] if rngs else None)
        logits_BxMxV = self.logits(self.final_norm(z_BxMxD)).astype(jnp.float32)
        if c.match_lookup:
            logits_BxMxV = self._match_logits(logits_BxMxV, *found)
        if c.note_lookup:
            logits_BxMxV = self._note_logits(logits_BxMxV, *found_notes)
        if c.gap_held:
            logits_BxMxV = self._held_logits(logits_BxMxV, pending_BxMxP, clock_BxM)
        return logits_BxMxV

    # -- cached decoding ----------------------------------------------------------------------
    #
    # init_cache -> encode_prompt (window columns [0, W-1)) -> refill (column W-1, f latents)
    # -> decode_step ... -> refill (reset: newest token, f latents over the last W columns) -> ...

    def init_cache(self, batch_size: int, *, num_latents: int, cross_capacity: int) -> DecodeCache:
        """Empty cache for ``cross_capacity`` (= N) input columns and ``num_latents`` latents."""
        c = self.config
        dtype = jnp.dtype(c.dtype)
        hc, kc = c.num_cross_heads, c.embed_dim // c.num_cross_heads
        h, k = c.num_heads, c.d_model // c.num_heads
        cross = jnp.zeros((batch_size * hc, cross_capacity, kc), dtype)
        lat = tuple(jnp.zeros((batch_size * h, num_latents, k), dtype) for _ in range(c.num_layers))
        zero = jnp.zeros((), jnp.int32)
        return DecodeCache(
            cross,
            cross,
            lat,
            lat,
            jnp.zeros((batch_size,), jnp.int32),
            zero - 1,
            zero,
            zero,
            zero,
            note_state.empty(batch_size),
            jnp.full((batch_size, c.cross_smear), PAD_ID, jnp.int32),
            jnp.full((batch_size, cross_capacity if self._keeps_ring else 0), PAD_ID, jnp.int32),
            jnp.zeros((batch_size, cross_capacity if c.match_lookup else 0), jnp.int32),
            gap_clock.empty(batch_size),
        )

    def _write_inputs(
        self, cache: DecodeCache, tokens_BxT: jax.Array, segment_BxT: jax.Array | None = None
    ) -> DecodeCache:
        """Cross-attention keys/values of T tokens at columns ``cur+1 .. cur+T`` (no ring wrap;
        ``segment_BxT``: their segments, with ``gap_segments``)."""
        t = tokens_BxT.shape[1]
        col_T = cache.cur + 1 + jnp.arange(t, dtype=jnp.int32)
        pos_BxT = col_T[None] - cache.pad[:, None]
        emb_BxTxE = self.embed(tokens_BxT)
        prev = None
        if self.config.cross_smear:
            prev = self._preceding(cache.recent, tokens_BxT, emb_BxTxE)
            s = self.config.cross_smear
            cache = cache._replace(
                recent=jnp.concatenate([cache.recent, tokens_BxT], axis=1)[:, -s:]
            )
        k_BxHxTxK, v_BxHxTxK = self.cross.keys_values(
            self._inputs(emb_BxTxE, segment_BxT), pos_BxT, prev
        )
        if self._keeps_ring:
            at_slot = (0, (cache.cur + 1) % cache.toks.shape[1])
            cache = cache._replace(
                toks=jax.lax.dynamic_update_slice(cache.toks, tokens_BxT, at_slot)
            )
        at = (0, (cache.cur + 1) % cache.cross_k.shape[1], 0)
        dt = cache.cross_k.dtype
        return cache._replace(
            cross_k=jax.lax.dynamic_update_slice(
                cache.cross_k, _fold_heads(k_BxHxTxK).astype(dt), at
            ),
            cross_v=jax.lax.dynamic_update_slice(
                cache.cross_v, _fold_heads(v_BxHxTxK).astype(dt), at
            ),
            cur=cache.cur + t,
        )

    def _preceding(self, recent_BxS: jax.Array, tokens_BxT: jax.Array, emb_BxTxE: jax.Array):
        """``preceding`` for T new tokens whose S predecessors are ``recent``."""
        hist_BxSxE = self.cross.normed(self.embed(recent_BxS)) * (recent_BxS != PAD_ID)[..., None]
        return preceding(
            self.cross.normed(emb_BxTxE), tokens_BxT != PAD_ID, self.config.cross_smear, hist_BxSxE
        )

    def _reencode(
        self, cache: DecodeCache, tokens_BxW: jax.Array, segment_BxW: jax.Array | None
    ) -> DecodeCache:
        """Recomputes keys/values of the window's first columns as a full forward over the window
        (and a training crop) computes them: the first S without the tokens before the window
        (``cross_smear``), or, with ``gap_segments`` (``segment_BxW``), every column, each
        token's segment counted from the window's first token (a sentinel that left the window
        changes the segments after it)."""
        s = tokens_BxW.shape[1] if segment_BxW is not None else self.config.cross_smear
        first_BxS = tokens_BxW[:, :s]
        s = first_BxS.shape[1]
        col_S = cache.lo + jnp.arange(s, dtype=jnp.int32)
        emb_BxSxE = self.embed(first_BxS)
        prev = None
        if self.config.cross_smear:
            prev = preceding(
                self.cross.normed(emb_BxSxE), first_BxS != PAD_ID, self.config.cross_smear
            )
        seg_BxS = None if segment_BxW is None else segment_BxW[:, :s]
        k_BxHxSxK, v_BxHxSxK = self.cross.keys_values(
            self._inputs(emb_BxSxE, seg_BxS), col_S[None] - cache.pad[:, None], prev
        )
        slots_S = col_S % cache.cross_k.shape[1]
        dt = cache.cross_k.dtype
        return cache._replace(
            cross_k=cache.cross_k.at[:, slots_S].set(_fold_heads(k_BxHxSxK).astype(dt)),
            cross_v=cache.cross_v.at[:, slots_S].set(_fold_heads(v_BxHxSxK).astype(dt)),
        )

    @property
    def _keeps_ring(self) -> bool:
        """The cache keeps the window's token ids (``DecodeCache.toks``) for the lookups."""
        return bool(self.config.match_lookup or self.config.note_lookup)

    def _ring_columns(self, cache: DecodeCache):
        """(col_C, first_B): the column each ring slot holds, and each window's first column."""
        cap = cache.toks.shape[1]
        col_C = cache.cur - (cache.cur - jnp.arange(cap, dtype=jnp.int32)) % cap
        return col_C, jnp.maximum(cache.lo, cache.pad)

    def _cross_mask(self, cache: DecodeCache, q_col_Q: jax.Array) -> jax.Array:
        """[B, 1, Q, C]: query at column q sees window columns in [max(lo, pad), q], and itself."""
        cap = cache.cross_k.shape[1]
        slot_C = jnp.arange(cap, dtype=jnp.int32)
        col_C = cache.cur - (cache.cur - slot_C) % cap  # column held by each ring slot
        first_B = jnp.maximum(cache.lo, cache.pad)
        ok_BxC = col_C[None] >= first_B[:, None]
        mask_BxQxC = (col_C[None, None] <= q_col_Q[None, :, None]) & ok_BxC[:, None]
        mask_BxQxC = mask_BxQxC | (col_C[None, None] == q_col_Q[None, :, None])
        return mask_BxQxC[:, None]

    def encode_prompt(self, cache: DecodeCache, tokens_BxT: jax.Array) -> DecodeCache:
        """Writes a left-padded prompt window's keys/values at columns ``[0, T)``."""
        pad_B = jnp.sum(tokens_BxT == PAD_ID, axis=1, dtype=jnp.int32)
        cache = cache._replace(pad=pad_B, cur=jnp.full((), -1, jnp.int32))
        seg_BxT = gap_clock.segments(tokens_BxT) if self.config.gap_segments else None
        return self._write_inputs(cache, tokens_BxT, seg_BxT)

    def refill(
        self, cache: DecodeCache, tokens_BxW: jax.Array, *, fill: int
    ) -> tuple[jax.Array, DecodeCache]:
        """Latent reset fill (paper Appendix E.3; flaxformer ``decoding_latent_reset_fill``).

        ``tokens_BxW`` are the tokens of the last W columns; the last one is new (column
        ``cur + 1``) and is appended to the input cache. The window becomes these W columns;
        ``fill`` latents (the last F columns) are computed from scratch over it, their keys/values
        replace the latent caches. Returns the logits ``[B, V]`` of the next token and the new
        cache; the result equals a full forward over the window with F latents.
        """
        f = fill
        latent_tokens_BxF = tokens_BxW[:, -f:]
        seg_BxW = gap_clock.segments(tokens_BxW) if self.config.gap_segments else None
        cache = self._write_inputs(
            cache, latent_tokens_BxF[:, -1:], None if seg_BxW is None else seg_BxW[:, -1:]
        )
        cache = cache._replace(lo=cache.cur - tokens_BxW.shape[1] + 1)
        if self.config.gap_segments or self.config.cross_smear:
            cache = self._reencode(cache, tokens_BxW, seg_BxW)
        if self.config.match_lookup:  # the lengths the decoding steps advance
            col_C, first_B = self._ring_columns(cache)
            cache = cache._replace(
                mlen=match.ring_lengths(
                    cache.toks, col_C, first_B, cache.cur, self.config.match_lookup
                )
            )
        col_F = cache.cur - f + 1 + jnp.arange(f, dtype=jnp.int32)
        pos_BxF = col_F[None] - cache.pad[:, None]
        z_BxFxD = self.cross.init_latents(
            self._inputs(
                self.embed(latent_tokens_BxF), None if seg_BxW is None else seg_BxW[:, -f:]
            )
        )
        if self.note_in is not None:
            feats_BxFxS, notes = note_state.state_features(tokens_BxW, f)
            z_BxFxD = z_BxFxD + self.note_in(feats_BxFxS)
            cache = cache._replace(notes=notes)
        if self.config.match_lookup:
            found = match.lookup(
                tokens_BxW, f, self.config.match_lookup, self.config.match_min_notes
            )
            z_BxFxD = z_BxFxD + self._match_term(*found)
        if self.config.note_lookup:
            found_notes = match.note_lookup(
                tokens_BxW, f, self.config.note_lookup, self.config.match_min_notes
            )
            z_BxFxD = z_BxFxD + self._note_term(*found_notes)
        if self._uses_clock or self.config.gap_segments:
            clock_BxF, clock, pending_BxFxP = gap_clock.buckets(tokens_BxW, f, self.config.gap_held)
            z_BxFxD = z_BxFxD + self._gap_terms(clock_BxF, clock.join, pending_BxFxP)
            cache = cache._replace(clock=clock)
        prev = None
        if self.config.cross_smear:
            normed_BxWxE = self.cross.normed(self.embed(tokens_BxW))
            prev = preceding(normed_BxWxE, tokens_BxW != PAD_ID, self.config.cross_smear)
            prev = [p[:, -f:] for p in prev]
        q_BxHxFxK = self.cross.queries(z_BxFxD, pos_BxF, prev)
        b, hc = q_BxHxFxK.shape[:2]
        cache_shape = (b, hc) + cache.cross_k.shape[1:]
        attn = per_sequence_attention(
            q_BxHxFxK,
            cache.cross_k.reshape(cache_shape),
            cache.cross_v.reshape(cache_shape),
            self._cross_mask(cache, col_F),
        )
        z_BxFxD = self.cross.finish(z_BxFxD, attn)

        idx_F = jnp.arange(f)
        causal_FxF = idx_F[None, :] <= idx_F[:, None]
        lat_ok_BxF = col_F[None] >= cache.pad[:, None]
        mask_Bx1xFxF = (causal_FxF[None] & (lat_ok_BxF[:, None] | jnp.eye(f, dtype=bool)[None]))[
            :, None
        ]
        lat_k, lat_v = [], []
        dt = cache.lat_k[0].dtype if cache.lat_k else None
        for i, layer in enumerate(self.layers):
            q_BxHxFxK, k_BxHxFxK, v_BxHxFxK = layer.project(z_BxFxD, pos_BxF, prev)
            attn = dot_product_attention(q_BxHxFxK, k_BxHxFxK, v_BxHxFxK, mask_Bx1xFxF)
            z_BxFxD = layer.finish(z_BxFxD, attn)
            k_new, v_new = _fold_heads(k_BxHxFxK).astype(dt), _fold_heads(v_BxHxFxK).astype(dt)
            lat_k.append(jax.lax.dynamic_update_slice(cache.lat_k[i], k_new, (0, 0, 0)))
            lat_v.append(jax.lax.dynamic_update_slice(cache.lat_v[i], v_new, (0, 0, 0)))
        logits_BxV = self.logits(self.final_norm(z_BxFxD[:, -1])).astype(jnp.float32)
        if self.config.match_lookup:
            logits_BxV = self._match_logits(logits_BxV, found[0][:, -1], found[1][:, -1])
        if self.config.note_lookup:
            logits_BxV = self._note_logits(logits_BxV, found_notes[0][:, -1], found_notes[1][:, -1])
        if self.config.gap_held:
            logits_BxV = self._held_logits(logits_BxV, pending_BxFxP[:, -1], clock_BxF[:, -1])
        cache = cache._replace(
            lat_k=tuple(lat_k),
            lat_v=tuple(lat_v),
            lat_len=jnp.asarray(f, jnp.int32),
            lat_col0=cache.cur - f + 1,
        )
        return logits_BxV, cache

    def decode_step(self, cache: DecodeCache, token_B: jax.Array) -> tuple[jax.Array, DecodeCache]:
        """Appends one token per sequence (as an input and as a new latent); logits ``[B, V]``.

        The caller guarantees room: at most ``C - W`` steps and ``Mc - F`` steps after a refill.
        """
        prev = None
        if self.config.cross_smear:
            new_Bx1 = token_B[:, None]
            prev = self._preceding(cache.recent, new_Bx1, self.embed(new_Bx1))
        c = self.config
        seg_Bx1 = None
        if self._uses_clock or c.gap_segments:
            cache = cache._replace(clock=gap_clock.advance(cache.clock, token_B))
            if c.gap_segments:
                seg_Bx1 = gap_clock.segment(cache.clock)[:, None]
        cache = self._write_inputs(cache, token_B[:, None], seg_Bx1)
        col_1 = cache.cur[None]
        pos_Bx1 = col_1[None] - cache.pad[:, None]
        z_Bx1xD = self.cross.init_latents(self._inputs(self.embed(token_B[:, None]), seg_Bx1))
        if self.note_in is not None:
            cache = cache._replace(notes=note_state.advance(cache.notes, token_B))
            z_Bx1xD = z_Bx1xD + self.note_in(note_state.features(cache.notes))[:, None]
        if self.config.match_lookup:
            col_C, first_B = self._ring_columns(cache)
            mlen = match.advance_lengths(
                cache.mlen, cache.toks, col_C, first_B, cache.cur, self.config.match_lookup
            )
            cache = cache._replace(mlen=mlen)
            follow_B, len_B = match.best_in_ring(
                cache.toks, mlen, col_C, first_B, cache.cur, self.config.match_min_notes
            )
            z_Bx1xD = z_Bx1xD + self._match_term(follow_B, len_B)[:, None]
        if self.config.note_lookup:
            note_B, note_len_B = match.note_lookup_ring(
                cache.toks, self._ring_columns(cache)[1], cache.cur, self.config.note_lookup,
                self.config.match_min_notes,
            )  # fmt: skip
            z_Bx1xD = z_Bx1xD + self._note_term(note_B, note_len_B)[:, None]
        if self._uses_clock:
            clock = cache.clock
            bucket_Bx1 = gap_clock.bucket(clock.middle, clock.length, clock.elapsed)[:, None]
            pending_Bx1xP = gap_clock.pending(clock.held, clock.sounding[:, None], bucket_Bx1)
            z_Bx1xD = z_Bx1xD + self._gap_terms(bucket_Bx1, clock.join, pending_Bx1xP)
        q_BxHx1xK = self.cross.queries(z_Bx1xD, pos_Bx1, prev)
        b, hc = q_BxHx1xK.shape[:2]
        mask_BxHx1xC = jnp.broadcast_to(
            self._cross_mask(cache, col_1), (b, hc, 1, cache.cross_k.shape[1])
        )
        attn = dot_product_attention(
            _fold_heads(q_BxHx1xK), cache.cross_k, cache.cross_v, _fold_heads(mask_BxHx1xC)
        )
        z_Bx1xD = self.cross.finish(z_Bx1xD, attn.reshape(q_BxHx1xK.shape))

        num_slots = cache.lat_k[0].shape[1] if cache.lat_k else 1
        slot_M = jnp.arange(num_slots, dtype=jnp.int32)
        lat_ok_BxM = (slot_M[None] <= cache.lat_len) & (
            cache.lat_col0 + slot_M[None] >= cache.pad[:, None]
        )
        h = self.config.num_heads
        mask_NxM = jnp.broadcast_to(lat_ok_BxM[:, None], (b, h, num_slots)).reshape(b * h, 1, -1)
        at = (0, cache.lat_len, 0)
        lat_k, lat_v = [], []
        for i, layer in enumerate(self.layers):
            q_BxHx1xK, k_BxHx1xK, v_BxHx1xK = layer.project(z_Bx1xD, pos_Bx1, prev)
            dt = cache.lat_k[i].dtype
            lk = jax.lax.dynamic_update_slice(cache.lat_k[i], _fold_heads(k_BxHx1xK).astype(dt), at)
            lv = jax.lax.dynamic_update_slice(cache.lat_v[i], _fold_heads(v_BxHx1xK).astype(dt), at)
            attn = dot_product_attention(_fold_heads(q_BxHx1xK), lk, lv, mask_NxM)
            z_Bx1xD = layer.finish(z_Bx1xD, attn.reshape(q_BxHx1xK.shape))
            lat_k.append(lk)
            lat_v.append(lv)

        logits_BxV = self.logits(self.final_norm(z_Bx1xD[:, 0])).astype(jnp.float32)
        if self.config.match_lookup:
            logits_BxV = self._match_logits(logits_BxV, follow_B, len_B)
        if self.config.note_lookup:
            logits_BxV = self._note_logits(logits_BxV, note_B, note_len_B)
        if c.gap_held:
            logits_BxV = self._held_logits(logits_BxV, pending_Bx1xP[:, 0], bucket_Bx1[:, 0])
        cache = cache._replace(lat_k=tuple(lat_k), lat_v=tuple(lat_v), lat_len=cache.lat_len + 1)
        return logits_BxV, cache


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
