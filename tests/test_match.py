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


def _is_on(t) -> bool:
    return vocab.NOTE_ON_FIRST_ID <= t < vocab.NOTE_ON_FIRST_ID + vocab.NUM_PITCHES


def _oracle(tokens: np.ndarray, q: int, max_len: int, min_notes: int = 0):
    """Brute force over every (p, t): the latest t <= p with the longest coarse agreement;
    dropped (length 0) when tokens t..p hold fewer than ``min_notes`` NOTE_ONs."""
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
            near = sum(_is_on(x) for x in tokens[bi, best[1] : p + 1]) < min_notes
            length[bi, qi] = 0 if near else best[0]
            follow[bi, qi] = tokens[bi, best[1]] if best[0] else tokens[bi, 0]
    return follow, length


@pytest.mark.parametrize("seed, min_notes", [(0, 0), (1, 0), (2, 0), (3, 0), (0, 2), (1, 3)])
def test_lookup_equals_brute_force(seed, min_notes):
    rng = np.random.default_rng(seed)
    alphabet = np.array([5, 60, 140, 260, 261, 270, 365, 380])  # few ids: many matches
    tokens = rng.choice(alphabet, size=(2, 48)).astype(np.int32)
    tokens[1, :9] = vocab.PAD_ID  # left padding never matches
    follow, length = match.lookup(jnp.asarray(tokens), 16, 5, min_notes)
    want_follow, want_len = _oracle(tokens, 16, 5, min_notes)
    if min_notes:  # some matches are dropped, not all
        kept = _oracle(tokens, 16, 5)[1] > 0
        assert 0 < (want_len[kept] == 0).sum() < kept.sum()
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


@pytest.mark.parametrize(
    "pitches, kept",
    [
        ([72], False),  # one note struck again and again: dropped
        ([72, 76], False),  # a trill: dropped
        ([60, 64, 67], True),  # a broken chord of three notes: kept
        ([60, 67, 64, 67], True),  # an Alberti bass: kept
    ],
)
def test_min_notes_drops_a_note_or_trill_repeating_itself_and_keeps_a_figure(pitches, kept):
    """The loop a free-running sampler falls into (a note or trill feeding the lookup its own
    repeats) finds no match with ``min_notes=3``; a figure of three notes or more still does,
    in both lookups and in the decoding step's ring form."""
    on, off, shift = vocab.NOTE_ON_FIRST_ID, vocab.NOTE_OFF_FIRST_ID, vocab.TIME_SHIFT_FIRST_ID
    play = [t for p in pitches for t in (on + p, shift + 9, off + p, shift + 4)]
    tokens = np.array([[vocab.SOS_ID] + play * (24 // len(pitches))], np.int32)
    for lookup in (match.lookup, match.note_lookup):
        plain = lookup(jnp.asarray(tokens), 8, 8)[1]
        assert (np.asarray(plain) == 8).all()
        lengths = np.asarray(lookup(jnp.asarray(tokens), 8, 8, 3)[1])
        assert (lengths == 8).all() if kept else (lengths == 0).all()
    cap, cur = tokens.shape[1], tokens.shape[1] - 1  # the ring holds the whole stream
    col = jnp.arange(cap)
    first = jnp.asarray([0])
    ring_len = match.ring_lengths(jnp.asarray(tokens), col, first, cur, 8)
    _, length = match.best_in_ring(jnp.asarray(tokens), ring_len, col, first, cur, 3)
    assert int(length[0]) == (int(match.lookup(jnp.asarray(tokens), 1, 8)[1][0, 0]) if kept else 0)


def test_coarse_view_table():
    table = match.coarse_table()
    assert table[vocab.PAD_ID] == 0
    assert table[vocab.NOTE_ON_FIRST_ID + 60] == vocab.NOTE_ON_FIRST_ID + 60  # pitch kept
    assert table[vocab.NOTE_OFF_FIRST_ID + 60] != table[vocab.NOTE_ON_FIRST_ID + 60]
    assert len(set(table[vocab.VELOCITY_FIRST_ID : vocab.VOCAB_SIZE])) == 1  # one loudness class
    sentinels = range(vocab.VOCAB_SIZE, vocab.INPUT_VOCAB_SIZE)  # infilling: each its own class
    assert table[vocab.VOCAB_SIZE :].tolist() == list(sentinels)
    shift = vocab.TIME_SHIFT_FIRST_ID - 1  # + k: a shift of k steps
    assert table[shift + 4] == table[shift + 5] != table[shift + 6]  # 4-5 steps, then 6-7
    assert table[shift + 1] != table[shift + 2] != table[shift + 3]
    assert table[shift + 100] == table[shift + 98]  # long shifts share wide buckets


def _grown_and_base(**lookup):
    """A tiny model with ``lookup`` added and the same model without it (same seed, the same
    random logits map), and a repetitive token row; the zero-initialised addition changes
    nothing yet."""
    cfg = dataclasses.replace(get_config("tiny"), **lookup)
    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    base = PerceiverAR(dataclasses.replace(cfg, **{k: 0 for k in lookup}), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    tokens = np.tile(rng.integers(3, 359, size=7), 10)[None, : cfg.max_len].astype(np.int32)
    kernel = model.logits.kernel
    kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), kernel.shape)
    base.logits.kernel[...] = kernel[...]
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(base(tokens)))
    return cfg, model, base, tokens, rng


def _assert_causal(cfg, model, tokens, logits, rng) -> None:
    """Changing the tokens after a latent's position leaves that latent's logits as they were."""
    n, m = cfg.max_len, cfg.num_latents
    for i in (0, 5, m - 2):
        p = n - m + i
        changed = tokens.copy()
        changed[0, p + 1 :] = rng.integers(3, 359, size=n - p - 1)
        np.testing.assert_allclose(np.asarray(model(changed))[0, i], logits[0, i], atol=1e-5)


def test_match_lookup_is_causal_and_starts_as_the_model_was():
    """Changing the tokens after a latent's position never changes its logits (the lookup has no
    gradient to check causality with), and zero-initialised embeddings change nothing."""
    cfg, model, base, tokens, rng = _grown_and_base(match_lookup=6)
    for table in (model.match_follow.embedding, model.match_len.embedding):
        table[...] = jax.random.normal(jax.random.key(2), table.shape)
    model.match_bonus[...] = jax.random.normal(jax.random.key(3), model.match_bonus.shape)
    logits = np.asarray(model(tokens))
    assert not np.allclose(logits, np.asarray(base(tokens)), atol=1e-3)  # the lookup is used
    _assert_causal(cfg, model, tokens, logits, rng)


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


# -- the note lookup (NOTE_ON pitches only) --------------------------------------------------


def _note_oracle(tokens: np.ndarray, q: int, max_len: int, min_notes: int = 0):
    """Brute force: the NOTE_ONs up to p as a list; the latest earlier run equal to the longest
    suffix (<= max_len notes) that has a follower; that follower and the length (0 when that
    run ends fewer than ``min_notes`` notes before the newest)."""
    b, n = tokens.shape
    follow = np.zeros((b, q), np.int64)
    length = np.zeros((b, q), np.int64)
    first, last = vocab.NOTE_ON_FIRST_ID, vocab.NOTE_ON_FIRST_ID + vocab.NUM_PITCHES
    for bi in range(b):
        for qi, p in enumerate(range(n - q, n)):
            notes = [int(t) for t in tokens[bi, : p + 1] if first <= t < last]
            i = len(notes) - 1
            best = (0, -1)
            for j in range(i):  # the run ends at note j; note j + 1 followed it
                k = 0
                while k < max_len and j - k >= 0 and notes[i - k] == notes[j - k]:
                    k += 1
                if k > 0 and (k, j) > best:
                    best = (k, j)
            length[bi, qi] = 0 if i - best[1] < min_notes else best[0]
            follow[bi, qi] = notes[best[1] + 1] if best[0] else 0
    return follow, length


@pytest.mark.parametrize("seed, min_notes", [(0, 0), (1, 0), (2, 0), (3, 0), (0, 2), (1, 3)])
def test_note_lookup_equals_brute_force(seed, min_notes):
    rng = np.random.default_rng(seed)
    on = vocab.NOTE_ON_FIRST_ID
    alphabet = np.array([on + 60, on + 62, on + 64, 140, 260, 261, 365, 380])  # 3 pitches
    tokens = rng.choice(alphabet, size=(3, 64)).astype(np.int32)
    tokens[1, :9] = vocab.PAD_ID  # left padding is no note
    tokens[2, :] = 260  # no note at all: no match anywhere
    follow, length = match.note_lookup(jnp.asarray(tokens), 24, 5, min_notes)
    want_follow, want_len = _note_oracle(tokens, 24, 5, min_notes)
    np.testing.assert_array_equal(np.asarray(length), want_len)
    found = want_len > 0
    assert found[:2].mean() > (0.2 if min_notes else 0.5) and not found[2].any()
    np.testing.assert_array_equal(np.asarray(follow)[found], want_follow[found])


def test_note_lookup_ignores_timing_loudness_and_note_offs():
    """A figure played again with other shifts, velocities and NOTE_OFF order: the token lookup
    loses the thread, the note lookup names the next pitch at once."""
    rng = np.random.default_rng(1)
    on, off = vocab.NOTE_ON_FIRST_ID, vocab.NOTE_OFF_FIRST_ID
    pitches = [48, 55, 52, 55, 50, 57, 53, 57]

    def play():
        out, prev = [], None
        for p in pitches:
            out += [vocab.VELOCITY_FIRST_ID + int(rng.integers(10, 20)), on + p]
            if prev is not None and rng.random() < 0.5:
                out += [off + prev]  # the previous note ends after this one starts, or before
            out += [vocab.TIME_SHIFT_FIRST_ID + int(rng.integers(20, 30))]
            if prev is not None and out[-2] != off + prev:
                out += [off + prev]
            prev = p
        return out

    tokens = np.array([[vocab.SOS_ID] + play() + play()], np.int32)
    n = tokens.shape[1]
    second = [i for i in range(n // 2, n) if tokens[0, i] in {on + p for p in pitches}][2:-1]
    q = n - second[0]
    follow, length = match.note_lookup(jnp.asarray(tokens), q, 8)
    for i in second:
        notes_so_far = sum(1 for t in tokens[0, : i + 1] if on <= t < on + 128)
        k = (notes_so_far - 1) % len(pitches)
        assert int(length[0, i - (n - q)]) >= 3
        assert int(follow[0, i - (n - q)]) == on + pitches[(k + 1) % len(pitches)]
    # Where a NOTE_ON comes next, the note lookup names it; the token lookup often does not.
    before = [i - 1 for i in second[1:]]
    token_follow, _ = match.lookup(jnp.asarray(tokens), q, 8)
    right = [int(token_follow[0, i - (n - q)]) == tokens[0, i + 1] for i in before]
    assert all(int(follow[0, i - (n - q)]) == tokens[0, i + 1] for i in before)
    assert np.mean(right) < 0.75, right


@pytest.mark.parametrize("min_notes", [0, 3])
def test_note_lookup_ring_equals_window(min_notes):
    """The decoding form (a ring of columns, window from ``first``) answers as the full form."""
    rng = np.random.default_rng(2)
    on = vocab.NOTE_ON_FIRST_ID
    alphabet = np.array([on + 60, on + 62, on + 64, on + 67, 140, 262, 370])
    cap, cur = 32, 45  # columns 14..45 are in the ring
    cols = np.arange(cur + 1)
    seq = rng.choice(alphabet, size=(2, cur + 1)).astype(np.int32)
    ring = np.zeros((2, cap), np.int32)
    ring[:, cols[-cap:] % cap] = seq[:, -cap:]
    first = np.array([20, 30], np.int32)  # each row's window starts here
    follow, length = match.note_lookup_ring(
        jnp.asarray(ring), jnp.asarray(first), cur, 6, min_notes
    )
    for bi in range(2):
        window = seq[bi : bi + 1, first[bi] :]
        want_f, want_l = match.note_lookup(jnp.asarray(window), 1, 6, min_notes)
        assert int(length[bi]) == int(want_l[0, 0])
        if int(want_l[0, 0]):
            assert int(follow[bi]) == int(want_f[0, 0])


def test_note_lookup_is_causal_keeps_the_note_on_total_and_starts_as_the_model_was():
    cfg, model, base, tokens, rng = _grown_and_base(note_lookup=6)
    model.match_note_bonus[...] = jnp.full(model.match_note_bonus.shape, 0.25)  # 4 nats
    logits = np.asarray(model(tokens))
    plain = np.asarray(base(tokens))
    on = slice(vocab.NOTE_ON_FIRST_ID, vocab.NOTE_ON_FIRST_ID + vocab.NUM_PITCHES)
    assert not np.allclose(logits[..., on], plain[..., on], atol=1e-3)  # the bonus is used
    # Only the NOTE_ONs move, and their total probability is the model's.
    rest = np.ones(logits.shape[-1], bool)
    rest[on] = False
    np.testing.assert_allclose(logits[..., rest], plain[..., rest], atol=1e-5)
    lse = jax.scipy.special.logsumexp
    np.testing.assert_allclose(lse(logits[..., on], -1), lse(plain[..., on], -1), atol=1e-4)
    for table in (model.match_note_follow.embedding, model.match_note_len.embedding):
        table[...] = jax.random.normal(jax.random.key(2), table.shape)
    logits = np.asarray(model(tokens))
    _assert_causal(cfg, model, tokens, logits, rng)
