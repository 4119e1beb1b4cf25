"""Continuing metrics (benchmarks/music_metrics.py), the figured primes (continuing.py) and the copy
test's layouts (copying.py)."""

import math

import numpy as np
import pytest

from benchmarks.continuing import figured_primes
from benchmarks.copying import EXCERPT_START, EXCERPT_TOKENS, FAR_GAP_TOKENS, copy_rows
from benchmarks.music_metrics import (
    interval_ngrams,
    melody,
    notes_of,
    pitch_variety,
    reuse,
    rhythm_ngrams,
    self_repetition,
    two_pitch_run,
)
from perceiver_midi.model.vocab import PAD_ID, SOS_ID


def _notes(rows):
    """(pitch, start) pairs -> note array rows (pitch, velocity 64, start, start + 0.2)."""
    return np.array([(p, 64, t, t + 0.2) for p, t in rows], np.float64).reshape(-1, 4)


ALBERTI = [(48, 0.0), (55, 0.25), (52, 0.5), (55, 0.75)] * 1
FIGURE_C = _notes([(p, t + bar) for bar in range(3) for p, t in ALBERTI])  # C-G-E-G x 3


def test_melody_reads_a_chord_from_the_lowest_note_even_when_spread():
    notes = _notes([(67, 0.0), (60, 0.012), (64, 0.03), (72, 0.5)])
    assert melody(notes).tolist() == [60, 64, 67, 72]
    assert melody(_notes([])).tolist() == []


def test_interval_ngrams_table():
    assert interval_ngrams(FIGURE_C, 4)[:4] == [
        (7, -3, 3, -7),
        (-3, 3, -7, 7),
        (3, -7, 7, -3),
        (-7, 7, -3, 3),
    ]


def test_a_figure_moved_to_another_chord_is_kept_and_other_music_is_not():
    moved = FIGURE_C.copy()
    moved[:, 0] += 5  # the same figure on F
    assert reuse(FIGURE_C, moved) == 1.0
    scale = _notes([(60 + s, 0.25 * i) for i, s in enumerate([0, 2, 4, 5, 7, 9, 11, 12])])
    assert reuse(FIGURE_C, scale) == 0.0
    assert math.isnan(reuse(FIGURE_C, _notes([(60, 0.0)])))  # no 4-gram at all


def test_self_repetition_and_variety():
    assert self_repetition(FIGURE_C) == pytest.approx(4 / 8)  # 8 4-grams, the first 4 new
    rising = _notes([(40 + i, 0.25 * i) for i in range(12)])  # one interval, repeated
    assert self_repetition(rising) == pytest.approx(7 / 8)
    zigzag = _notes([(60 + (i * 7) % 13, 0.25 * i) for i in range(9)])
    v = pitch_variety(FIGURE_C)
    assert v["distinct_pitches"] == 3.0
    counts = np.array([3, 3, 6]) / 12
    assert v["pitch_class_entropy"] == pytest.approx(-(counts * np.log2(counts)).sum())
    assert pitch_variety(zigzag)["distinct_pitches"] == 9.0


@pytest.mark.parametrize(
    "rows, run",
    [
        ([], 0),
        ([(60, 0.0)], 1),
        ([(60, 0.1 * i) for i in range(30)], 30),  # one note repeated: stuck
        ([(60 + 2 * (i % 2), 0.1 * i) for i in range(30)], 30),  # a two-note loop (trill)
        ([(48, 0.0), (55, 0.25), (52, 0.5), (55, 0.75)], 3),  # Alberti: G-E-G, then C again
        ([(60, 0.0), (60, 0.1), (62, 0.2), (64, 0.3), (64, 0.4), (64, 0.5), (60, 0.6)], 4),
        # chords are read lowest note up: C-E C-E, then the G of C-E-G ends the run
        ([(60, 0.0), (64, 0.0), (60, 0.5), (64, 0.5), (67, 0.5), (60, 1.0)], 4),
    ],
)
def test_two_pitch_run_table(rows, run):
    assert two_pitch_run(_notes(rows)) == run


def test_rhythm_ngrams_are_tempo_free():
    fast = rhythm_ngrams(FIGURE_C)
    slow = FIGURE_C.copy()
    slow[:, 2:] *= 1.5
    assert fast == rhythm_ngrams(slow) and fast[0] == (4, 4, 4, 4)  # ratio 1 everywhere


def test_figured_primes_keep_their_own_figure():
    primes = figured_primes()
    assert len(primes) == 12 and len({p["name"] for p in primes}) == 12
    for p in primes:
        notes = notes_of(p["ids"])
        first, second = notes[notes[:, 2] < 10], notes[notes[:, 2] >= 10]
        assert reuse(first, second) > 0.8, p["name"]
        assert 19.0 < notes[:, 3].max() <= 20.05
    # Seeded: the same primes every time.
    again = figured_primes()
    assert all(np.array_equal(a["ids"], b["ids"]) for a, b in zip(primes, again, strict=True))


def test_flipped_timing_swaps_which_figures_are_quantized():
    from perceiver_midi.tokenizer.retime import looks_quantized

    primes, flipped = figured_primes(), figured_primes(flip_timing=True)
    for i, (a, b) in enumerate(zip(primes, flipped, strict=True)):
        assert a["name"].endswith("-human") == (i % 2 == 1) != b["name"].endswith("-human")
        assert a["name"].split("-")[:3] == b["name"].split("-")[:3]  # same figure, key, tempo
        quantized = a if i % 2 == 0 else b
        assert looks_quantized(quantized["ids"]), quantized["name"]
        same = [np.sort(notes_of(x["ids"])[:, 0]) for x in (a, b)]  # the same notes
        np.testing.assert_array_equal(*same)


def test_copy_rows_put_the_second_playing_at_the_end():
    n, e = 4096, EXCERPT_TOKENS
    piece = np.arange(EXCERPT_START + 2 * e + FAR_GAP_TOKENS, dtype=np.int32) % 300 + 3
    row = copy_rows([piece], n)[0]
    excerpt = piece[EXCERPT_START : EXCERPT_START + e]
    for name in ("near", "far"):
        inputs, targets, second_at, first_at = row[name]
        assert inputs.shape == targets.shape == (n,)
        np.testing.assert_array_equal(targets[second_at:], excerpt)  # the second playing
        scored = targets[:-1] != PAD_ID  # each target is the next input (SOS is never one)
        np.testing.assert_array_equal(targets[:-1][scored], inputs[1:][scored])
        assert SOS_ID in inputs
    inputs, targets, _, first_at = row["near"]
    np.testing.assert_array_equal(targets[first_at : first_at + e], excerpt)
    far_inputs = row["far"][0]
    # The far layout's first playing ends FAR_GAP_TOKENS before the second one starts.
    start = n - e - FAR_GAP_TOKENS - e
    np.testing.assert_array_equal(far_inputs[start + 1 : start + 1 + e], excerpt)


def test_retrieval_mrr_and_key_fit():
    from benchmarks.music_metrics import key_fit, retrieval_mrr, retrieval_vector

    rng = np.random.default_rng(0)
    primes = [
        _notes([(int(p), 0.2 * i) for i, p in enumerate(rng.integers(lo, lo + 12, 40))])
        for lo in (30, 45, 60, 75)
    ]
    vecs = [retrieval_vector(p, 8.0) for p in primes]
    assert retrieval_mrr(vecs, vecs) == 1.0  # each is nearest itself
    swapped = [vecs[1], vecs[0], vecs[3], vecs[2]]
    assert retrieval_mrr(vecs, swapped) < 1.0
    assert key_fit(FIGURE_C, FIGURE_C) == pytest.approx(1.0)
    up_a_tritone = FIGURE_C.copy()
    up_a_tritone[:, 0] += 6
    assert key_fit(FIGURE_C, up_a_tritone) < 0


def test_the_two_pitch_run_feature_is_its_log():
    from benchmarks.music_metrics import continuing_features

    stuck = _notes([(60, 0.1 * i) for i in range(31)])
    assert continuing_features(FIGURE_C, stuck)["two_pitch_run"] == pytest.approx(5.0)
