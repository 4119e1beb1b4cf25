"""Match lookup (model/match.py): a brute-force oracle, repeats, the coarse view, causality."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_midi.model import match, vocab
from perceiver_midi.model.config import get_config
from perceiver_midi.model.perceiver_ar import PerceiverAR


def _oracle(tokens: np.ndarray, q: int, max_len: int):
    """Brute force over every (p, t): the latest t <= p with the longest coarse agreement."""
    c = match.coarse_table()[tokens]
    b, n = tokens.shape
    follow = np.zeros((b, q), np.int64)
    length = np.zeros((b, q), np.int64)
    for bi in range(b):
        for qi, p in enumerate(range(n - q, n)):
            best = (0, -1)
            for t in range(p + 1):
                k = 0
                while k < max_len and p - k >= 0 and t - 1 - k >= 0:
                    a, bb = c[bi, p - k], c[bi, t - 1 - k]
                    if a == 0 or a != bb:
                        break
                    k += 1
                if k > 0 and (k, t) > best:
                    best = (k, t)
            length[bi, qi] = best[0]
            follow[bi, qi] = tokens[bi, best[1]] if best[0] else tokens[bi, 0]
    return follow, length


@pytest.mark.parametrize("seed", range(4))
def test_lookup_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    alphabet = np.array([5, 60, 140, 260, 261, 270, 365, 380])  # few ids: many matches
    tokens = rng.choice(alphabet, size=(2, 48)).astype(np.int32)
    tokens[1, :9] = vocab.PAD_ID  # left padding never matches
    follow, length = match.lookup(jnp.asarray(tokens), 16, 5)
    want_follow, want_len = _oracle(tokens, 16, 5)
    np.testing.assert_array_equal(np.asarray(length), want_len)
    found = want_len > 0
    np.testing.assert_array_equal(np.asarray(follow)[found], want_follow[found])


def test_a_repeat_is_found_and_gives_the_next_token():
    rng = np.random.default_rng(0)
    phrase = rng.integers(3, 359, size=30).astype(np.int32)
    tokens = np.concatenate([[vocab.SOS_ID], phrase, phrase])[None].astype(np.int32)
    q = 20  # the last 20 positions: inside the second playing, well past its first 8 tokens
    follow, length = match.lookup(jnp.asarray(tokens), q, 8)
    n = tokens.shape[1]
    want = np.concatenate([phrase[1:], [phrase[0]]])  # what followed each position last time
    np.testing.assert_array_equal(np.asarray(follow)[0], want[30 - q : 30])
    assert np.all(np.asarray(length) == 8)
    assert n == 61


def test_coarse_view_table():
    table = match.coarse_table()
    assert table[vocab.PAD_ID] == 0
    assert table[vocab.NOTE_ON_FIRST_ID + 60] == vocab.NOTE_ON_FIRST_ID + 60  # pitch kept
    assert table[vocab.NOTE_OFF_FIRST_ID + 60] != table[vocab.NOTE_ON_FIRST_ID + 60]
    assert len(set(table[vocab.VELOCITY_FIRST_ID :])) == 1  # one loudness class
    shift = vocab.TIME_SHIFT_FIRST_ID - 1  # + k: a shift of k steps
    assert table[shift + 4] == table[shift + 5] != table[shift + 6]  # 4-5 steps, then 6-7
    assert table[shift + 1] != table[shift + 2] != table[shift + 3]
    assert table[shift + 100] == table[shift + 98]  # long shifts share wide buckets


def test_match_lookup_is_causal_and_starts_as_the_model_was():
    """Changing the tokens after a latent's position never changes its logits (the lookup has no
    gradient to check causality with), and zero-initialised embeddings change nothing."""
    cfg = dataclasses.replace(get_config("tiny"), match_lookup=6)
    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    base = PerceiverAR(dataclasses.replace(cfg, match_lookup=0), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    tokens = np.tile(rng.integers(3, 359, size=7), 10)[None, : cfg.max_len].astype(np.int32)
    kernel = model.logits.kernel
    kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), kernel.shape)
    base.logits.kernel[...] = kernel[...]
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(base(tokens)))
    for table in (model.match_follow.embedding, model.match_len.embedding):
        table[...] = jax.random.normal(jax.random.key(2), table.shape)
    model.match_bonus[...] = jax.random.normal(jax.random.key(3), model.match_bonus.shape)
    logits = np.asarray(model(tokens))
    assert not np.allclose(logits, np.asarray(base(tokens)), atol=1e-3)  # the lookup is used
    n, m = cfg.max_len, cfg.num_latents
    for i in (0, 5, m - 2):
        p = n - m + i
        changed = tokens.copy()
        changed[0, p + 1 :] = rng.integers(3, 359, size=n - p - 1)
        np.testing.assert_allclose(np.asarray(model(changed))[0, i], logits[0, i], atol=1e-5)


def test_advancing_ring_lengths_equals_recomputing_them():
    """A decoding step's O(C) update gives the lengths the O(L C) recomputation gives, also
    after the ring wraps (columns beyond its capacity overwrite the oldest slots)."""
    rng = np.random.default_rng(5)
    alphabet = np.array([5, 60, 140, 260, 365])
    cap, max_len, first = 24, 5, 3
    stream = rng.choice(alphabet, size=60).astype(np.int32)
    ring = np.zeros((1, cap), np.int32)
    length = None
    for cur, tok in enumerate(stream):
        ring[0, cur % cap] = tok
        col = cur - (cur - np.arange(cap)) % cap
        first_b = jnp.asarray([max(first, cur - cap + 1)])  # the window fits the ring
        args = (jnp.asarray(ring), jnp.asarray(col), first_b, jnp.asarray(cur))
        full = match.ring_lengths(*args, max_len)
        if length is not None and cur - cap + 1 <= first:  # the window did not move
            np.testing.assert_array_equal(
                np.asarray(match.advance_lengths(length, *args, max_len)), np.asarray(full)
            )
        length = full
