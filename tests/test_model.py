"""Perceiver AR model tests (tiny preset, CPU, float32)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from perceiver_midi.model import infill, vocab
from perceiver_midi.model.config import PRESETS, Config, get_config
from perceiver_midi.model.losses import cross_entropy_with_z_loss, loss_fn
from perceiver_midi.model.perceiver_ar import (
    PerceiverAR,
    apply_rotary,
    count_params,
    event_kind,
    noise_inputs,
)
from perceiver_midi.model.sampler import prompt_window, sample_with_logits
from perceiver_midi.model.train_step import (
    create_train_state,
    make_eval_step,
    make_train_step,
    train_step,
)

TINY = get_config("tiny")


def make_model(cfg: Config = TINY, seed: int = 0) -> PerceiverAR:
    """A tiny model with random (not zero-initialised) logits so every output matters (and, with
    ``note_state``, a random note-state map)."""
    model = PerceiverAR(cfg, rngs=nnx.Rngs(seed))
    kernel = model.logits.kernel
    kernel[...] = 0.3 * jax.random.normal(jax.random.key(seed + 1), kernel.shape)
    if model.note_in is not None:
        k = model.note_in.kernel
        k[...] = 0.5 * jax.random.normal(jax.random.key(seed + 2), k.shape)
    smears = [(model.cross.k_smear, model.cross.q_smear)] if cfg.cross_smear else []
    if cfg.latent_smear:
        smears += [(layer.k_smear, layer.q_smear) for layer in model.layers]
    for j, w in enumerate(w for pair in smears for w in pair):
        w[...] = 0.2 * jax.random.normal(jax.random.key(seed + 3 + j), w.shape)
    if cfg.match_lookup:
        for j, table in enumerate((model.match_follow.embedding, model.match_len.embedding)):
            table[...] = 0.5 * jax.random.normal(jax.random.key(seed + 20 + j), table.shape)
        bonus = model.match_bonus
        bonus[...] = 2.0 * jax.random.normal(jax.random.key(seed + 30), bonus.shape)
    if cfg.gap_clock:
        table = model.gap_clock.embedding
        table[...] = 0.5 * jax.random.normal(jax.random.key(seed + 60), table.shape)
    if cfg.gap_join:
        k = model.gap_join.kernel
        k[...] = 0.5 * jax.random.normal(jax.random.key(seed + 61), k.shape)
    if cfg.gap_held:
        k = model.gap_held.kernel
        k[...] = 0.5 * jax.random.normal(jax.random.key(seed + 63), k.shape)
        model.gap_held_bonus[...] = 0.1 + 0.05 * jax.random.normal(
            jax.random.key(seed + 64), model.gap_held_bonus.shape
        )
    if cfg.gap_segments:
        table = model.gap_segments.embedding
        table[...] = 0.5 * jax.random.normal(jax.random.key(seed + 62), table.shape)
    if cfg.note_lookup:
        tables = (model.match_note_follow.embedding, model.match_note_len.embedding)
        for j, table in enumerate(tables):
            table[...] = 0.5 * jax.random.normal(jax.random.key(seed + 40 + j), table.shape)
        bonus = model.match_note_bonus
        bonus[...] = 0.3 + 0.1 * jax.random.normal(jax.random.key(seed + 50), bonus.shape)
    return model


def jit_forward(model):
    """``f(tokens, num_latents=None)``: the model's forward, compiled (eager dispatch is slow)."""
    graphdef, params = nnx.split(model)
    fn = jax.jit(lambda p, t, m: nnx.merge(graphdef, p)(t, num_latents=m), static_argnums=2)
    return lambda tokens, num_latents=None: fn(params, tokens, num_latents)


def random_tokens(key, batch, length, num_pad=0):
    tokens = jax.random.randint(key, (batch, length), vocab.NUM_RESERVED, vocab.VOCAB_SIZE)
    tokens = tokens.at[:, 0].set(vocab.SOS_ID)
    if num_pad:
        tokens = jnp.concatenate(
            [jnp.full((batch, num_pad), vocab.PAD_ID, jnp.int32), tokens[:, : length - num_pad]],
            axis=1,
        )
    return tokens.astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Causality
# ---------------------------------------------------------------------------------------------


def _input_jacobian(model, tokens_1xN, rng=None):
    """|d logit_i / d emb_j| summed over channels: [M, N] (latent i at input index N - M + i)."""
    graphdef, params = nnx.split(model)
    probe_V = jax.random.normal(jax.random.key(7), (model.config.vocab_size,))

    @jax.jit
    def jacobian(params, tokens_1xN, rng):
        m = nnx.merge(graphdef, params)

        def outputs(emb):
            logits_1xMxV = m(tokens_1xN, embeddings=emb, deterministic=rng is None, rng=rng)
            return logits_1xMxV[0] @ probe_V  # [M]

        jac_MxNxE = jax.jacrev(outputs)(m.embed(tokens_1xN))[:, 0]
        return jnp.abs(jac_MxNxE).sum(-1)

    return np.asarray(jacobian(params, tokens_1xN, rng))


@pytest.mark.parametrize(
    "cfg_overrides, num_pad, train",
    [
        ({}, 0, False),
        ({}, 5, False),
        ({"dropout": 0.1, "cross_attend_dropout": 0.3}, 3, True),
        ({"num_latents": 64}, 4, False),  # M == N: the plain decoder-only Transformer
        ({"input_dim": 32, "cross_heads": 1}, 0, False),
        ({"cross_smear": 3}, 4, False),
        ({"cross_smear": 3, "latent_smear": 2}, 4, False),
        ({"cross_smear": 2, "dropout": 0.1, "cross_attend_dropout": 0.3}, 0, True),
    ],
)
def test_causality_by_gradients(cfg_overrides, num_pad, train):
    cfg = dataclasses.replace(TINY, **cfg_overrides)
    model = make_model(cfg)
    n, m = cfg.max_len, cfg.num_latents
    tokens = random_tokens(jax.random.key(1), 1, n, num_pad)
    grads_MxN = _input_jacobian(model, tokens, jax.random.key(3) if train else None)
    for i in range(m):
        p = n - m + i
        assert np.all(grads_MxN[i, p + 1 :] == 0.0), f"latent {i} sees the future"
        if p >= num_pad:
            assert np.all(grads_MxN[i, :num_pad] == 0.0), f"latent {i} sees PAD inputs"
            assert grads_MxN[i, p] > 0.0, f"latent {i} ignores its own input"
        else:  # a PAD latent only sees itself (finite output, never used)
            assert np.all(np.delete(grads_MxN[i], p) == 0.0)
    # The last latent depends on (almost) every non-PAD input.
    assert np.mean(grads_MxN[-1, num_pad:] > 0) > 0.5


# ---------------------------------------------------------------------------------------------
# Forward-pass properties
# ---------------------------------------------------------------------------------------------


def test_output_shapes_and_initial_logits():
    model = PerceiverAR(TINY, rngs=nnx.Rngs(0))  # zero-initialised logits, as the official code
    tokens = random_tokens(jax.random.key(0), 3, TINY.max_len)
    forward = jit_forward(model)
    logits = forward(tokens)
    assert logits.shape == (3, TINY.num_latents, TINY.vocab_size)
    assert logits.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(logits), 0.0)
    assert forward(tokens, num_latents=5).shape == (3, 5, TINY.vocab_size)
    assert count_params(model) > 0


def test_left_padding_does_not_change_outputs():
    model = make_model()
    n = TINY.max_len
    tokens = random_tokens(jax.random.key(2), 1, 40)
    padded = jnp.concatenate([jnp.zeros((1, n - 40), jnp.int32), tokens], axis=1)
    forward = jit_forward(model)
    out_short = forward(tokens, num_latents=10)
    out_padded = forward(padded, num_latents=10)
    np.testing.assert_allclose(np.asarray(out_padded), np.asarray(out_short), atol=1e-5)


def test_short_sequences_give_finite_outputs_and_grads():
    model = make_model()
    n = TINY.max_len
    tokens = jnp.zeros((2, n + 1), jnp.int32)
    tokens = tokens.at[0, -3:].set(jnp.array([vocab.SOS_ID, 40, 41]))  # 2 targets, many PAD latents
    tokens = tokens.at[1, -1].set(vocab.SOS_ID)  # no target at all
    graphdef, params = nnx.split(model)

    @jax.jit
    def loss_and_grads(params):
        return jax.value_and_grad(
            lambda p: loss_fn(nnx.merge(graphdef, p), tokens, deterministic=True), has_aux=True
        )(params)

    (loss, metrics), grads = loss_and_grads(params)
    assert np.isfinite(float(loss)) and float(metrics["num_tokens"]) == 2.0
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    assert np.all(np.isfinite(np.asarray(jit_forward(model)(tokens[:, :-1]))))


def test_rotary_is_relative():
    """Shifting all positions by a constant leaves q.k unchanged (why caches stay valid)."""
    q = jax.random.normal(jax.random.key(0), (1, 2, 5, 16))
    k = jax.random.normal(jax.random.key(1), (1, 2, 5, 16))
    pos = jnp.arange(5)[None]

    def scores(shift):
        qr = apply_rotary(q, pos + shift, 8, 10_000.0)
        kr = apply_rotary(k, pos + shift, 8, 10_000.0)
        return jnp.einsum("bhqd,bhkd->bhqk", qr, kr)

    np.testing.assert_allclose(np.asarray(scores(0)), np.asarray(scores(1000)), atol=1e-4)
    assert not np.allclose(np.asarray(apply_rotary(q, pos, 8, 1e4)), np.asarray(q))


def test_cross_attend_dropout_only_drops_prefix_inputs():
    cfg = dataclasses.replace(TINY, cross_attend_dropout=0.9)
    model = make_model(cfg)
    n, m = cfg.max_len, cfg.num_latents
    tokens = random_tokens(jax.random.key(4), 1, n)
    grads_MxN = _input_jacobian(model, tokens, jax.random.key(5))
    dropped = grads_MxN[-1, : n - m] == 0.0
    assert 0.6 < dropped.mean() < 1.0  # ~90% of the prefix is masked for this draw
    assert np.all(grads_MxN[-1, n - m :] > 0.0)  # latent positions are never dropped
    forward = jit_forward(model)
    eval_a = forward(tokens)
    eval_b = forward(tokens)
    train = nnx.jit(lambda m, t, r: m(t, deterministic=False, rng=r))(
        model, tokens, jax.random.key(5)
    )
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    assert not np.allclose(np.asarray(train), np.asarray(eval_a))


def test_input_noise_draws_only_from_earlier_real_tokens():
    """Causal unigram noising: a replaced token is a copy of a real token earlier in its own row;
    PAD and SOS are never replaced; about ``rate`` of the real tokens change."""
    b, n, pad = 8, 300, 20
    rows = [
        jax.random.permutation(jax.random.key(i), jnp.arange(3, 391))[: n - pad - 1]
        for i in range(b)
    ]
    body = jnp.stack(rows).astype(jnp.int32)
    tokens = jnp.concatenate(
        [
            jnp.full((b, pad), vocab.PAD_ID, jnp.int32),
            jnp.full((b, 1), vocab.SOS_ID, jnp.int32),
            body,
        ],
        axis=1,
    )
    noised = np.asarray(noise_inputs(jax.random.key(9), tokens, 0.5))
    tokens = np.asarray(tokens)
    np.testing.assert_array_equal(noised[:, : pad + 1], tokens[:, : pad + 1])
    changed = noised != tokens
    # rate 0.5, and a draw lands on a real token (not PAD/SOS) with probability ~ (t - 21) / t.
    assert 0.3 < changed[:, pad + 1 :].mean() < 0.5
    for r, t in zip(*np.nonzero(changed), strict=True):
        (src,) = np.nonzero(tokens[r] == noised[r, t])
        assert src.size == 1 and pad < src[0] < t, (r, t, src)
    # Off: nothing changes.
    np.testing.assert_array_equal(np.asarray(noise_inputs(jax.random.key(9), tokens, 0.0)), tokens)


def test_timing_noise_leaves_notes_and_keeps_each_kind():
    """``events="timing"``: NOTE_ONs and NOTE_OFFs never change; a TIME_SHIFT or VELOCITY is
    replaced only by an earlier token of its own kind."""
    ids = np.asarray(random_tokens(jax.random.key(3), 8, 400))
    noised = np.asarray(noise_inputs(jax.random.key(4), jnp.asarray(ids), 0.6, "timing"))
    kind = np.asarray(event_kind(jnp.asarray(ids)))
    changed = noised != ids
    assert not changed[(kind == 1) | (kind == 2)].any()
    timing = kind >= 3
    assert 0.05 < changed[timing].mean() < 0.5  # rate 0.6 x P(the draw is of the same kind)
    np.testing.assert_array_equal(np.asarray(event_kind(jnp.asarray(noised))), kind)
    for r, t in zip(*np.nonzero(changed), strict=True):
        assert noised[r, t] in ids[r, :t]
    with pytest.raises(ValueError, match="input_noise_events"):
        dataclasses.replace(TINY, input_noise_events="notes")


def test_compress_noise_only_shortens_time_shifts():
    ids = np.asarray(random_tokens(jax.random.key(5), 8, 400))
    noised = np.asarray(noise_inputs(jax.random.key(6), jnp.asarray(ids), 0.5, "compress"))
    kind = np.asarray(event_kind(jnp.asarray(ids)))
    changed = noised != ids
    assert not changed[kind != 3].any()
    np.testing.assert_array_equal(np.asarray(event_kind(jnp.asarray(noised))), kind)
    steps = ids - vocab.TIME_SHIFT_FIRST_ID + 1
    new_steps = noised - vocab.TIME_SHIFT_FIRST_ID + 1
    shift = kind == 3
    assert np.all(new_steps[shift] <= steps[shift])
    assert np.all(new_steps[shift] >= np.maximum(1, np.floor(0.5 * steps[shift])))
    assert 0.3 < changed[shift & (steps > 4)].mean() < 0.55  # rate 0.5 (u ~ 1 may round back)
    far = np.asarray(noise_inputs(jax.random.key(6), jnp.asarray(ids), 0.5, "compress_far", 300))
    np.testing.assert_array_equal(far[:, :300], noised[:, :300])  # the same draws before 300
    np.testing.assert_array_equal(far[:, 300:], ids[:, 300:])  # nothing from the latents on


def test_input_noise_only_at_training_time():
    clean_cfg = dataclasses.replace(TINY, dropout=0.0, cross_attend_dropout=0.0)
    noisy_cfg = dataclasses.replace(clean_cfg, input_noise=0.3)
    clean, noisy = make_model(clean_cfg), make_model(clean_cfg)
    nnx.update(noisy, nnx.state(clean, nnx.Param))
    noisy.config = noisy_cfg
    tokens = random_tokens(jax.random.key(4), 2, clean_cfg.max_len)
    train = nnx.jit(lambda m, t, r: m(t, deterministic=False, rng=r))
    np.testing.assert_array_equal(
        np.asarray(jit_forward(noisy)(tokens)), np.asarray(jit_forward(clean)(tokens))
    )
    np.testing.assert_array_equal(  # no dropout: training mode without noise is the eval forward
        np.asarray(train(clean, tokens, jax.random.key(5))), np.asarray(jit_forward(clean)(tokens))
    )
    assert not np.allclose(
        np.asarray(train(noisy, tokens, jax.random.key(5))), np.asarray(jit_forward(clean)(tokens))
    )
    with pytest.raises(ValueError, match="input_noise"):
        dataclasses.replace(TINY, input_noise=1.0)


def test_training_mode_requires_rng():
    cfg = dataclasses.replace(TINY, dropout=0.1)
    model = make_model(cfg)
    with pytest.raises(ValueError, match="rng"):
        model(random_tokens(jax.random.key(0), 1, 8), deterministic=False)


# ---------------------------------------------------------------------------------------------
# Cached decoding == full forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_latents, note_state, smear, latent_smear, match_lookup, note_lookup, fim, min_notes",
    [
        (None, False, 0, 0, 0, 0, False, 0),
        (10, False, 0, 0, 0, 0, False, 0),
        (None, True, 0, 0, 0, 0, False, 0),
        (None, False, 3, 0, 0, 0, False, 0),
        (10, False, 3, 2, 0, 0, False, 0),
        (None, False, 0, 0, 4, 0, False, 0),
        (None, False, 0, 0, 0, 5, False, 0),
        (10, False, 3, 2, 6, 4, False, 0),
        (10, False, 3, 2, 6, 4, True, 0),
        (None, False, 0, 0, 0, 0, "segments", 0),
        (10, False, 3, 2, 6, 4, "segments", 0),
        (10, False, 3, 2, 6, 4, "join", 0),
        (10, False, 3, 2, 6, 4, "tail", 0),
        (10, False, 3, 2, 6, 4, False, 3),
    ],
)
def test_cached_step_logits_equal_full_forward(
    num_latents, note_state, smear, latent_smear, match_lookup, note_lookup, fim, min_notes
):
    """Every decoding step (fills, steps, resets, sliding window) against a full forward.
    ``fim``: infilling prompts, with the gap clock and join (True), and the input segments too
    ("segments"; the window slides past the sentinels, so the segments change), and with the
    start of the part after the gap repeated before MIDDLE ("join"), and the end of the part
    before the gap after that repeat, with the pending pitches' maps ("tail"). ``min_notes``:
    the lookups drop matches fewer than that many notes back."""
    cfg = dataclasses.replace(
        TINY,
        note_state=note_state,
        cross_smear=smear,
        latent_smear=latent_smear,
        match_lookup=match_lookup,
        note_lookup=note_lookup,
        match_min_notes=min_notes,
        infill=bool(fim),
        gap_clock=bool(fim),
        gap_join=bool(fim),
        gap_segments=fim in ("segments", "join", "tail"),
        infill_join=4 if fim in ("join", "tail") else 0,
        infill_tail=3 if fim == "tail" else 0,
        gap_held=fim == "tail",
    )
    fim = bool(fim)
    model = make_model(cfg, seed=3)
    rng = np.random.default_rng(0)
    # Notes and time shifts only (no VELOCITY), so many notes sound across windows.
    prompts = [rng.integers(3, 359, size=k) for k in (0, 7, 100)]  # 100 > N: keeps the last W
    if match_lookup:  # repeated figures, so the lookup finds long matches in the window
        prompts = [np.tile(rng.integers(3, 359, size=6), 20)[:k] for k in (0, 7, 100)]
    if note_lookup:  # three pitches and a few other ids: note runs agree often, and variously
        ids = vocab.NOTE_ON_FIRST_ID + np.array([60, 62, 64, 0, 0, 0]) + [0, 0, 0, 140, 256, 300]
        prompts = [rng.choice(ids, size=k) for k in (0, 7, 100)]
    if fim:  # infilling prompts: the sentinels and the gap's length before the notes
        # with gap_held the part after the gap starts with NOTE_OFFs: 8 pitches held, which
        # the middle's NOTE_ONs and NOTE_OFFs turn pending and back
        held = vocab.NOTE_OFF_FIRST_ID + np.arange(60, 68) if cfg.gap_held else []
        prompts = [
            infill.prompt(
                p[: len(p) // 2],
                np.concatenate([held, p[len(p) // 2 :]]).astype(np.int32),
                130,
                40,
                cfg.infill_layout,
            )  # fmt: skip
            for p in prompts
        ]
    outs, logits, plan = sample_with_logits(
        model,
        prompts,
        max_new_tokens=40,
        seed=5,
        stop_at_eos=False,
        num_latents=num_latents,
    )
    w, f, period, n = plan.window, plan.fill, plan.period, TINY.max_len
    assert 40 > 2 * period  # several latent resets happened
    assert plan.window == prompt_window(TINY, num_latents) < n
    graphdef, params = nnx.split(model)
    full_forward = jax.jit(
        lambda p, t, m: nnx.merge(graphdef, p)(t, num_latents=m)[:, -1], static_argnums=2
    )
    columns = []
    for prompt, out in zip(prompts, outs, strict=True):
        assert len(out) == 40
        prefix = (prompt if fim else np.concatenate([[vocab.SOS_ID], prompt]))[-w:]
        columns.append(np.concatenate([np.zeros(n + w - len(prefix), np.int64), prefix, out]))
    columns = np.stack(columns)  # [P, N + W + 40]: N PADs of margin, the window, the new ids
    max_err = 0.0
    for g in range(40):
        last_fill = g - g % period
        # What the cache has seen: columns [last_fill, W + g), left-padded to N (PAD-invariant).
        window = columns[:, n + w + g - n : n + w + g].copy()
        window[:, : n - (w + g - last_fill)] = vocab.PAD_ID
        full = full_forward(params, jnp.asarray(window), f + g - last_fill)
        max_err = max(max_err, float(jnp.max(jnp.abs(full - logits[:, g]))))
    assert max_err <= 1e-4, max_err


# ---------------------------------------------------------------------------------------------
# Loss and training
# ---------------------------------------------------------------------------------------------


def test_loss_ignores_pad_and_adds_z_loss():
    logits = jax.random.normal(jax.random.key(0), (2, 4, 11))
    targets = jnp.array([[3, 4, 0, 5], [0, 0, 7, 8]])
    sums = cross_entropy_with_z_loss(logits, targets, z_loss=0.5)
    logp = jax.nn.log_softmax(logits)
    mask = np.asarray(targets) != vocab.PAD_ID
    nll = -np.take_along_axis(np.asarray(logp), np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(sums["nll_sum"]), nll[mask].sum(), rtol=1e-5)
    lse = np.asarray(jax.nn.logsumexp(logits, -1))
    np.testing.assert_allclose(float(sums["z_loss_sum"]), 0.5 * (lse[mask] ** 2).sum(), rtol=1e-5)
    assert float(sums["num_tokens"]) == 5.0


def test_loss_only_at_latent_positions():
    """The loss is the cross-entropy of the M latents' logits against the last M tokens."""
    model = make_model()
    tokens = random_tokens(jax.random.key(0), 2, TINY.max_len + 1)
    eval_loss = nnx.jit(lambda m, t: loss_fn(m, t, deterministic=True))
    loss, metrics = eval_loss(model, tokens)
    m = TINY.num_latents
    logits = jit_forward(model)(tokens[:, :-1])
    sums = cross_entropy_with_z_loss(logits, tokens[:, -m:], TINY.z_loss)
    expected = (sums["nll_sum"] + sums["z_loss_sum"]) / sums["num_tokens"]
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    assert float(metrics["num_tokens"]) == 2 * m
    changed_last = tokens.at[:, -1].set(5)  # the last target is scored
    assert float(eval_loss(model, changed_last)[0]) != float(loss)


def test_tiny_model_overfits_repeated_sequence():
    cfg = dataclasses.replace(TINY, dropout=0.0, cross_attend_dropout=0.1)
    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    tx = optax.adam(3e-3)
    graphdef, state = create_train_state(model, tx)
    step = make_train_step(graphdef, tx)
    eval_step = make_eval_step(graphdef)
    pattern = np.array([60, 188, 260, 72, 200, 300, 50, 391 - 10, 280])
    seq = np.concatenate([[vocab.SOS_ID], np.tile(pattern, 20)])[: cfg.max_len + 1]
    batch = {"tokens": jnp.asarray(np.stack([seq] * 4), jnp.int32)}
    first = float(eval_step(state.params, batch)["nll"])
    for i in range(300):
        state, metrics = step(state, batch, jax.random.key(i))
    final = eval_step(state.params, batch)
    assert first > 5.0  # ~log(391) at init
    assert float(final["nll"]) < 0.05, float(final["nll"])
    assert float(final["accuracy"]) == 1.0
    assert int(state.step) == 300
    assert np.isfinite(float(metrics["grad_norm"]))


def test_nnx_train_step_updates_model_in_place():
    model = make_model()
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    tokens = random_tokens(jax.random.key(0), 2, TINY.max_len + 1)
    batch = {"tokens": tokens}
    losses = [
        float(train_step(model, optimizer, batch, jax.random.key(i))["loss"]) for i in range(5)
    ]
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------
# Config and vocabulary
# ---------------------------------------------------------------------------------------------


def test_presets_and_overrides():
    assert set(PRESETS) == {"tiny", "cpu", "paper"}
    paper = get_config("paper")
    assert paper.num_latents == 1024 and paper.num_layers >= 12 and paper.d_model == 1024
    assert paper.max_len >= 4096
    cpu = get_config("cpu", max_len=8192)
    assert cpu.max_len == 8192 and cpu.num_latents == PRESETS["cpu"].num_latents
    assert get_config("tiny", num_latents=64).is_transformer
    with pytest.raises(ValueError):
        get_config("huge")
    with pytest.raises(ValueError):
        get_config("tiny", num_latents=65)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cpu.max_len = 1  # type: ignore[misc]
    for cfg in PRESETS.values():
        assert cfg.vocab_size == vocab.VOCAB_SIZE


def test_vocab_constants():
    assert (vocab.PAD_ID, vocab.EOS_ID, vocab.SOS_ID, vocab.VOCAB_SIZE) == (0, 1, 2, 391)
    assert vocab.TIME_SHIFT_LAST_ID - vocab.TIME_SHIFT_FIRST_ID + 1 == 100
    assert vocab.TIME_SHIFT_FIRST_ID == 3 + 256 and vocab.STEPS_PER_SECOND == 100
    from perceiver_midi.tokenizer import constants as C
    from perceiver_midi.tokenizer.decode import velocity_from_bin

    assert vocab.VELOCITY_FIRST_ID == C.VELOCITY_FIRST_ID == vocab.TIME_SHIFT_LAST_ID + 1
    assert vocab.VELOCITY_FIRST_ID + vocab.NUM_VELOCITY_BINS == vocab.VOCAB_SIZE
    assert (vocab.NUM_VELOCITY_BINS, vocab.VELOCITY_BIN_SIZE) == (
        C.NUM_VELOCITY_BINS, C.VELOCITY_BIN_SIZE)  # fmt: skip
    from perceiver_midi.model.sampler import bin_velocity

    assert [bin_velocity(vocab.VELOCITY_FIRST_ID + b - 1) for b in (1, 2, 32)] == [
        velocity_from_bin(b) for b in (1, 2, 32)]  # fmt: skip
