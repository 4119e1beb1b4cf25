"""The note-state input features (model/note_state.py) and the models that use them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_midi.model import note_state, vocab
from perceiver_midi.model.config import get_config
from perceiver_midi.model.perceiver_ar import PerceiverAR

TINY = get_config("tiny")
ON, OFF, SHIFT = vocab.NOTE_ON_FIRST_ID, vocab.NOTE_OFF_FIRST_ID, vocab.TIME_SHIFT_FIRST_ID - 1
VEL = vocab.TIME_SHIFT_LAST_ID + 1


def oracle(ids):
    """Per position: {pitch: seconds since its NOTE_ON} of the sounding pitches (plain Python)."""
    onset, time, rows = {}, 0, []
    for t in ids:
        if ON <= t < ON + 128:
            onset[t - ON] = time
        elif OFF <= t < OFF + 128:
            onset.pop(t - OFF, None)
        elif vocab.TIME_SHIFT_FIRST_ID <= t <= vocab.TIME_SHIFT_LAST_ID:
            time += t - SHIFT
        rows.append({p: (time - s) / 100 for p, s in onset.items()})
    return rows


def as_dicts(feats_LxS):
    on, age = feats_LxS[:, :128], feats_LxS[:, 128:]
    return [
        {int(p): float(np.expm1(age[i, p])) for p in np.flatnonzero(on[i])} for i in range(len(on))
    ]


# (ids, the sounding pitches and their ages in seconds after the last id)
TABLE = [
    ([vocab.SOS_ID], {}),
    ([ON + 60], {60: 0.0}),
    ([ON + 60, SHIFT + 50], {60: 0.5}),
    ([ON + 60, SHIFT + 50, OFF + 60], {}),
    ([ON + 60, SHIFT + 100, ON + 64, SHIFT + 20, OFF + 60], {64: 0.2}),
    ([OFF + 60, ON + 60, SHIFT + 30], {60: 0.3}),  # an OFF before the ON changes nothing
    ([ON + 60, SHIFT + 30, ON + 60, SHIFT + 10], {60: 0.1}),  # a re-strike restarts the age
    ([ON + 60, ON + 60, OFF + 60, SHIFT + 10], {}),  # one OFF ends the pitch (flags, not counts)
    ([VEL + 5, ON + 21, vocab.PAD_ID, SHIFT + 100, SHIFT + 100, ON + 108], {21: 2.0, 108: 0.0}),
]


@pytest.mark.parametrize("ids, expected", TABLE)
def test_features_table(ids, expected):
    feats, last = note_state.state_features(jnp.asarray([ids], jnp.int32), 1)
    got = as_dicts(np.asarray(feats[0]))[-1]
    assert got.keys() == expected.keys()
    for p, age in expected.items():
        assert got[p] == pytest.approx(age, abs=1e-5)
    assert as_dicts(np.asarray(note_state.features(last)))[0] == got


@pytest.mark.parametrize("m", [1, 37, 300])
def test_features_equal_stepwise_advance_and_oracle(m):
    rng = np.random.default_rng(m)
    ids_BxL = rng.integers(3, 391, size=(3, 300)).astype(np.int32)
    ids_BxL[1, :50] = vocab.PAD_ID  # left padding
    feats_BxMxS, last = note_state.state_features(jnp.asarray(ids_BxL), m)
    state = note_state.empty(3)
    steps = []
    for t in range(ids_BxL.shape[1]):
        state = note_state.advance(state, jnp.asarray(ids_BxL[:, t]))
        steps.append(note_state.features(state))
    steps_BxLxS = np.stack(steps, axis=1)
    np.testing.assert_allclose(np.asarray(feats_BxMxS), steps_BxLxS[:, -m:], atol=1e-6)
    np.testing.assert_allclose(np.asarray(note_state.features(last)), steps_BxLxS[:, -1], atol=1e-6)
    for b in range(3):
        want = oracle(ids_BxL[b].tolist())[-m:]
        got = as_dicts(np.asarray(feats_BxMxS[b]))
        assert [sorted(g) for g in got] == [sorted(w) for w in want]
        for g, w in zip(got, want, strict=True):
            assert all(abs(g[p] - w[p]) < 1e-3 * (1 + w[p]) for p in w)


def _jit_forward(model):
    graphdef, params = nnx.split(model)
    fn = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
    return lambda tokens: fn(params, tokens)


def test_note_state_model_is_causal_and_uses_the_state():
    """Changing token j changes no prediction before j; the features reach the logits."""
    cfg = dataclasses.replace(TINY, note_state=True)
    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    for layer in (model.note_in, model.logits):
        layer.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), layer.kernel.shape)
    forward = _jit_forward(model)
    n, m = cfg.max_len, cfg.num_latents
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 359, size=(1, n)).astype(np.int32)
    base = np.asarray(forward(jnp.asarray(ids)))
    for j in (n - m - 20, n - m + 3, n - 2):  # before the latents, among them
        changed = ids.copy()
        changed[0, j] = ON + 60 if ids[0, j] != ON + 60 else OFF + 60
        out = np.asarray(forward(jnp.asarray(changed)))
        first = max(j - (n - m), 0)
        np.testing.assert_array_equal(out[:, :first], base[:, :first])
        assert np.abs(out[:, first:] - base[:, first:]).max() > 1e-4


def test_zero_initialised_note_state_leaves_the_model_unchanged():
    """A model gains the note state without changing its function (fine-tuning starts there)."""
    base = PerceiverAR(TINY, rngs=nnx.Rngs(0))
    base.logits.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), base.logits.kernel.shape)
    grown = PerceiverAR(dataclasses.replace(TINY, note_state=True), rngs=nnx.Rngs(5))
    nnx.update(grown, nnx.state(base, nnx.Param))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 359, size=(2, TINY.max_len)), jnp.int32)
    np.testing.assert_array_equal(
        np.asarray(_jit_forward(grown)(ids)), np.asarray(_jit_forward(base)(ids))
    )
