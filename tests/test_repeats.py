"""Repeat crops (model.data.Repeats): the crop's end replays an earlier passage of the crop,
re-performed, and nothing else changes."""

import numpy as np
import pytest

from perceiver_midi.model.data import NO_REPEATS, Repeats, TrainBatches, replay
from perceiver_midi.model.vocab import NOTE_ON_FIRST_ID, TIME_SHIFT_FIRST_ID, VELOCITY_FIRST_ID
from perceiver_midi.tokenizer.dataset import TokenSplit

TS_LAST = VELOCITY_FIRST_ID - 1


def _music(n: int, seed: int = 0) -> np.ndarray:
    """Note-on, velocity, time-shift triples: a plausible token stream without PAD."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        out += [
            int(VELOCITY_FIRST_ID + rng.integers(0, 32)),
            int(NOTE_ON_FIRST_ID + rng.integers(30, 90)),
            int(TIME_SHIFT_FIRST_ID + rng.integers(0, 100)),
        ]
    return np.asarray(out[:n], np.int32)


@pytest.mark.parametrize("seed", range(6))
def test_replay_ends_with_an_earlier_passage_re_performed(seed):
    body = _music(1200, seed)
    rep = Repeats(share=1.0, min_tokens=40, max_tokens=120, max_back=600, jitter=0.3)
    out = replay(body, np.random.default_rng(seed), rep)
    assert out.size == body.size and out.dtype == np.int32
    cut = int(np.nonzero(out != body)[0][0])
    assert TIME_SHIFT_FIRST_ID <= body[cut - 1] <= TS_LAST  # the replay starts after a shift
    np.testing.assert_array_equal(out[:cut], body[:cut])  # the start of the crop is untouched
    tail = out[cut:]
    assert 40 <= tail.size <= 120 + 3
    # The source: the earlier passage that agrees best, within max_back and before the cut.
    starts = range(max(0, cut - 600), cut - tail.size + 1)
    src = max(starts, key=lambda a: int(np.sum(body[a : a + tail.size] == tail)))
    original = body[src : src + tail.size]
    same = tail == original
    assert same.mean() > 0.6  # mostly the same tokens ...
    moved = ~same
    # ... and what moved is timing (+-2 steps) and loudness (+-1 bin) only; notes never change.
    is_shift = (original >= TIME_SHIFT_FIRST_ID) & (original <= TS_LAST)
    is_vel = original >= VELOCITY_FIRST_ID
    assert np.all(is_shift[moved] | is_vel[moved])
    assert np.all(np.abs(tail[moved & is_shift] - original[moved & is_shift]) <= 2)
    assert np.all(np.abs(tail[moved & is_vel] - original[moved & is_vel]) <= 1)
    assert np.all((tail[is_shift] >= TIME_SHIFT_FIRST_ID) & (tail[is_shift] <= TS_LAST))


def test_short_body_is_left_alone():
    body = _music(50)
    out = replay(body, np.random.default_rng(0), Repeats(share=1.0, max_back=1500))
    np.testing.assert_array_equal(out, body)


def test_share_zero_changes_no_batch():
    """Without repeats the crops are exactly the old ones (same random stream)."""
    pieces = [_music(3000, s) for s in range(3)]
    split = TokenSplit(
        tokens=np.concatenate(pieces).astype(np.uint16),
        offsets=np.cumsum([0] + [p.size for p in pieces]).astype(np.int64),
        pieces=[{"name": str(i)} for i in range(3)],
    )
    kw = dict(seq_len=513, num_targets=64, batch_size=4, seed=3)
    plain = TrainBatches(split, **kw)
    none = TrainBatches(split, repeats=NO_REPEATS, **kw)
    half = TrainBatches(split, repeats=Repeats(share=0.5, max_back=400), **kw)
    np.testing.assert_array_equal(plain.batch(7), none.batch(7))
    changed = [not np.array_equal(plain.batch(s), half.batch(s)) for s in range(6)]
    assert any(changed)
    np.testing.assert_array_equal(half.batch(5), half.batch(5))  # a pure function of the step


def test_bad_repeat_settings_refused():
    with pytest.raises(ValueError):
        Repeats(share=1.5)
    with pytest.raises(ValueError):
        Repeats(min_tokens=300, max_tokens=200)
