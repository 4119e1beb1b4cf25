"""Re-timings (tokenizer.retime). The sketch view of a crop: a whole piece seen this way equals
encoding its notes snapped to the grid (an oracle built from notes, not ids); a crop's edges keep
their meaning (a table of ids); grid 1 with velocities kept changes a piece without meetings of
one pitch not at all. Humanizing moves every note by at most its bounds and keeps the end.
looks_quantized: the figured primes' sketches yes, MAESTRO's performances never."""

import pathlib

import numpy as np
import pytest

from perceiver_midi.model.data import NO_SKETCHES, Sketches, TrainBatches
from perceiver_midi.model.vocab import PAD_ID
from perceiver_midi.tokenizer import decode_notes, encode, notes_to_pretty_midi
from perceiver_midi.tokenizer.dataset import TokenSplit
from perceiver_midi.tokenizer.decode import Note, velocity_from_bin
from perceiver_midi.tokenizer.retime import humanize, looks_quantized, sketch_view

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
ON, OFF, TS, VEL, SOS = 3, 131, 259, 359, 2  # NOTE_ON/NOTE_OFF pitch 0, shift 1 step, bin 1


def _oracle(notes: list[Note], grid: int, vbin: int) -> np.ndarray:
    """Snap notes (in steps), resolve meetings of one pitch (the later onset wins), re-encode."""
    by_pitch: dict[int, list[list[int]]] = {}
    for n in sorted(notes, key=lambda n: (n.start, n.pitch)):
        on = round(n.start * 100)
        end = round(n.end * 100)
        on_q = int(np.floor(on / grid + 0.5))  # grid points
        end_q = max(int(np.floor(end / grid + 0.5)), on_q + 1)
        vel = velocity_from_bin(vbin) if vbin else n.velocity
        run = by_pitch.setdefault(n.pitch, [])
        if run and run[-1][0] == on_q:
            continue
        if run and run[-1][1] > on_q:
            run[-1][1] = on_q
        run.append([on_q, end_q, vel])
    step = lambda k: np.floor(k * grid + 0.5) / 100  # noqa: E731 (grid point -> seconds)
    out = [Note(p, v, step(on), step(end)) for p, run in by_pitch.items() for on, end, v in run]
    return encode(notes_to_pretty_midi(out))


def _crowded_piece(seed: int = 0) -> np.ndarray:
    """A minute of random notes on 16 pitches: one pitch's notes meet and overlap often."""
    rng = np.random.default_rng(seed)
    notes = []
    for _ in range(400):
        start = float(rng.uniform(0, 60))
        length = max(0.01, float(rng.exponential(0.3)))
        notes.append(
            Note(int(rng.integers(55, 71)), int(rng.integers(1, 128)), start, start + length)
        )
    return encode(notes_to_pretty_midi(notes))


PIECES = {"bach": lambda: encode(EXAMPLES / "bach_prelude_c.mid"), "crowded": _crowded_piece}


@pytest.mark.parametrize("name", sorted(PIECES))
@pytest.mark.parametrize(("grid", "vbin"), [(5, 0), (12, 0), (12.5, 16), (25, 9), (17.86, 0)])
def test_a_whole_piece_equals_its_snapped_notes_encoded(name, grid, vbin):
    ids = PIECES[name]()
    want = _oracle(decode_notes(ids), grid, vbin)
    got = sketch_view(ids, grid, vbin)
    np.testing.assert_array_equal(got, want)
    starts = np.array([round(n.start * 100) for n in decode_notes(got)])
    on_grid = np.floor(np.round(starts / grid) * grid + 0.5)
    np.testing.assert_array_equal(starts, on_grid)
    if vbin:
        assert set(got[got >= VEL].tolist()) == {VEL + vbin - 1}


def test_grid_one_keeps_a_piece_without_meetings():
    ids = PIECES["bach"]()
    np.testing.assert_array_equal(sketch_view(ids, 1), ids)
    assert sketch_view(ids.astype(np.uint16), 1).dtype == np.uint16


# (ids, grid, velocity_bin, expected ids): a crop's edges and one pitch's meetings.
# fmt: off
TABLE = [
    # A NOTE_OFF whose NOTE_ON came before the crop snaps (here to 10); SOS stays at time 0.
    ([SOS, TS + 6, OFF + 60, TS + 1, VEL + 20, ON + 64], 10, 0,
     [SOS, TS + 9, OFF + 60, VEL + 20, ON + 64]),
    # A note still sounding at the end gets no NOTE_OFF; trailing silence snaps (13 -> 10).
    ([VEL + 20, ON + 60, TS + 12], 10, 0, [VEL + 20, ON + 60, TS + 9]),
    # A short note lasts one grid step: on 0, off 2 -> off 10.
    ([VEL + 20, ON + 60, TS + 1, OFF + 60], 10, 0, [VEL + 20, ON + 60, TS + 9, OFF + 60]),
    # Re-struck onto the same grid step: the later note is dropped (and its NOTE_OFF).
    ([VEL + 20, ON + 60, TS + 0, OFF + 60, TS + 0, ON + 60, TS + 30, OFF + 60], 10, 0,
     [VEL + 20, ON + 60, TS + 9, OFF + 60]),
    # A note sounding into its pitch's next onset ends there: 60 struck at 0 and again at 12;
    # the NOTE_OFF at 40 ends the first struck (as the decoder pairs them), so the first ends at
    # the second's onset (10) and the second, never ended here, sounds on.
    ([VEL + 20, ON + 60, TS + 11, ON + 62, ON + 60, TS + 27, OFF + 60, OFF + 62], 10, 0,
     [VEL + 20, ON + 60, TS + 9, OFF + 60, ON + 60, ON + 62, TS + 29, OFF + 62]),
    # One loudness: a VELOCITY before the first NOTE_ON only.
    ([VEL + 20, ON + 60, TS + 20, VEL + 5, ON + 64], 10, 12,
     [VEL + 11, ON + 60, TS + 19, ON + 64]),
    # Each note's loudness kept (velocity_bin 0): written when it changes.
    ([VEL + 20, ON + 60, TS + 20, VEL + 5, ON + 64], 10, 0,
     [VEL + 20, ON + 60, TS + 19, VEL + 5, ON + 64]),
    # An orphan NOTE_OFF after its pitch was struck in the crop is dropped (it ends nothing).
    ([VEL + 20, ON + 60, TS + 9, OFF + 60, OFF + 60], 10, 0,
     [VEL + 20, ON + 60, TS + 9, OFF + 60]),
]
# fmt: on


@pytest.mark.parametrize(("ids", "grid", "vbin", "want"), TABLE)
def test_crop_table(ids, grid, vbin, want):
    got = sketch_view(np.asarray(ids, np.int32), grid, vbin)
    assert got.tolist() == want
    assert got.dtype == np.int32


@pytest.mark.parametrize(("grid", "vbin", "message"), [(0, 0, "grid"), (10, 33, "velocity_bin")])
def test_bad_arguments(grid, vbin, message):
    with pytest.raises(ValueError, match=message):
        sketch_view(np.asarray([ON + 60], np.int32), grid, vbin)


def _maestro_pieces(root: pathlib.Path, split: str, n: int) -> list[np.ndarray]:
    import csv

    with open(root / "maestro-v3.0.0.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return [encode(root / r["midi_filename"]) for r in rows[:: max(1, len(rows) // n)][:n]]


def test_maestro_pieces_equal_their_snapped_notes_encoded(maestro_root):
    ids = _maestro_pieces(maestro_root, "validation", 1)[0]
    for grid, vbin in [(1, 0), (9, 0), (11, 20), (17.86, 0)]:
        want = _oracle(decode_notes(ids), grid, vbin)
        np.testing.assert_array_equal(sketch_view(ids, grid, vbin), want)


def _split() -> TokenSplit:
    pieces = [_crowded_piece(s) for s in range(3)] + [PIECES["bach"]()]
    return TokenSplit(
        tokens=np.concatenate(pieces).astype(np.uint16),
        offsets=np.cumsum([0] + [p.size for p in pieces]).astype(np.int64),
        pieces=[{"name": str(i)} for i in range(len(pieces))],
    )


def test_sketch_crops_sit_on_a_grid_and_leave_other_crops_alone():
    split = _split()
    kw = dict(seq_len=513, num_targets=64, batch_size=4, seed=3)
    plain = TrainBatches(split, **kw)
    np.testing.assert_array_equal(
        plain.batch(2), TrainBatches(split, sketches=NO_SKETCHES, **kw).batch(2)
    )
    all_ = TrainBatches(split, sketches=Sketches(share=1.0, min_grid=10, max_grid=10), **kw)
    one_loudness = 0
    for step in range(4):
        for row in all_.batch(step):
            body = row[row != PAD_ID]
            assert 0 < body.size <= 513
            # The crop's onsets lie on one grid of 10 steps, up to the crop's own first onset.
            starts = np.array([round(n.start * 100) for n in decode_notes(body)])
            assert np.all((starts - starts[0]) % 10 == 0)
            one_loudness += len(set(body[body >= VEL].tolist())) == 1
    assert 0 < one_loudness < 16  # the one_velocity share (0.5) of 16 rows
    np.testing.assert_array_equal(all_.batch(3), all_.batch(3))  # a pure function of the step


def test_bad_sketch_settings_refused():
    for bad in (
        dict(share=1.5),
        dict(min_grid=0.5),
        dict(min_grid=9, max_grid=8),
        dict(max_bin=33),
    ):
        with pytest.raises(ValueError):
            Sketches(**bad)


# -- humanize ---------------------------------------------------------------------------------


def _notes(ids) -> list[tuple[int, int, int, int]]:
    """(pitch, onset, end, velocity) in steps, in onset order (the decoder's notes)."""
    return [
        (n.pitch, round(n.start * 100), round(n.end * 100), n.velocity) for n in decode_notes(ids)
    ]


@pytest.mark.parametrize("seed", range(4))
def test_humanize_moves_each_note_within_its_bounds_and_keeps_the_end(seed):
    from perceiver_midi.tokenizer import music_seconds

    ids = PIECES["bach"]()
    got = humanize(ids, np.random.default_rng(seed), timing=2, loudness=2)
    assert got.dtype == ids.dtype
    before, after = _notes(ids), _notes(got)
    assert len(after) == len(before)
    assert music_seconds(got) == music_seconds(ids)
    # Pair notes by pitch and order within the pitch (moves of 2 steps cannot reorder a pitch's
    # notes here: the example never strikes one pitch twice within 4 steps).
    by_pitch = lambda notes: sorted(notes, key=lambda n: (n[0], n[1]))  # noqa: E731
    moved = 0
    for a, b in zip(by_pitch(before), by_pitch(after), strict=True):
        assert a[0] == b[0]
        assert abs(a[1] - b[1]) <= 2 and abs(a[2] - b[2]) <= 2
        assert abs(a[3] - b[3]) <= 2 * 4  # two bins of 4 velocities
        moved += a != b
    assert moved > len(before) // 2
    np.testing.assert_array_equal(humanize(ids, np.random.default_rng(seed)), got)


def test_humanize_without_moves_keeps_a_piece():
    ids = PIECES["bach"]()
    np.testing.assert_array_equal(humanize(ids, np.random.default_rng(0), 0, 0), ids)


def test_humanize_keeps_what_sounds_at_a_crops_end():
    # 60 sounds on past the end; 64 ends exactly at the end; the crop ends on a TIME_SHIFT.
    ids = np.asarray([VEL + 20, ON + 60, TS + 4, ON + 64, TS + 4, OFF + 64, TS + 2], np.int32)
    for seed in range(20):
        got = humanize(ids, np.random.default_rng(seed), 2, 2).tolist()
        assert got.count(ON + 60) == 1 and OFF + 60 not in got  # still sounding
        assert got.count(OFF + 64) == 1
        steps = sum(t - TS + 1 for t in got if TS <= t < VEL)
        assert steps == 5 + 5 + 3  # the end's time


# -- looks_quantized --------------------------------------------------------------------------


def _figure(timing: bool, loudness: bool, seed: int = 0) -> np.ndarray:
    """Eight bars of an Alberti bass at 96 bpm, on the grid at one loudness, or with a pianist's
    ``timing`` (onsets and ends +-20 ms) and ``loudness`` (velocity +-12)."""
    rng = np.random.default_rng(seed)
    notes, beat = [], 60 / 96
    for i in range(64):
        start, end, vel = i * beat / 2, (i + 1) * beat / 2, 62
        if timing:
            start += rng.normal(0, 0.02)
            end += rng.normal(0, 0.02)
        if loudness:
            vel += int(rng.integers(-12, 13))
        notes.append(Note([48, 55, 52, 55][i % 4], vel, max(0.0, start), end))
    return encode(notes_to_pretty_midi(notes))


@pytest.mark.parametrize(
    ("timing", "loudness", "sketch"),
    [(False, False, True), (True, False, False), (False, True, False), (True, True, False)],
)
def test_looks_quantized_needs_a_grid_and_few_loudness_levels(timing, loudness, sketch):
    assert looks_quantized(_figure(timing, loudness)) == sketch
    assert not looks_quantized(_figure(timing, loudness)[:20])  # too few notes to tell


def test_the_readme_example_is_played():
    # On the grid to within 8 ms but with a pianist's loudness: continued as it is.
    assert not looks_quantized(PIECES["bach"]())


def test_no_maestro_window_looks_quantized(maestro_root):
    for split in ("validation", "test"):
        for ids in _maestro_pieces(maestro_root, split, 6):
            for start in range(0, max(1, ids.size - 1200), 3000):
                assert not looks_quantized(ids[start : start + 1200])


# -- what the model hears (app.core.pipeline, Settings.humanize) -----------------------------


@pytest.fixture(scope="module")
def wide_model():
    """A random tiny model whose context holds a whole figure (the sampler is faked here)."""
    from flax import nnx

    from perceiver_midi.model.config import get_config
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    return PerceiverAR(get_config("tiny", max_len=1024), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    ("prime", "mode", "changed"),
    [
        ("sketch", "auto", True),
        ("sketch", "on", True),
        ("sketch", "off", False),
        ("played", "auto", False),
        ("played", "on", True),
    ],
)
def test_the_model_hears_a_sketch_played(wide_model, monkeypatch, prime, mode, changed):
    from perceiver_midi.app.core import pipeline

    ids = _figure(False, False) if prime == "sketch" else _figure(True, True)
    heard = []

    def spy(model, primes, opts, seed, **kw):
        heard.extend(np.asarray(p) for p in primes)
        return [np.zeros(0, np.int32) for _ in primes]

    monkeypatch.setattr(pipeline, "sample", spy)
    settings = pipeline.Settings(seconds=1.0, humanize=mode)
    conts = pipeline.sample_continuations(wide_model, [ids, ids], [5, 6], settings)
    assert [c.prime.tolist() for c in conts] == [ids.tolist()] * 2  # files keep the prime
    if not changed:
        assert all(np.array_equal(h, ids) for h in heard)
        return
    for h, seed in zip(heard, [5, 6], strict=True):
        rng = np.random.default_rng([seed, pipeline.HUMANIZE_STREAM])
        np.testing.assert_array_equal(h, humanize(ids, rng))
        assert not looks_quantized(h)
    assert not np.array_equal(heard[0], heard[1])  # each variation its own playing


def test_an_infilling_prompt_is_never_humanized(wide_model, monkeypatch):
    from perceiver_midi.app.core import pipeline
    from perceiver_midi.model.vocab import FIM_MIDDLE_ID

    prompt = np.concatenate([_figure(False, False), [FIM_MIDDLE_ID]]).astype(np.int32)
    heard = []
    monkeypatch.setattr(
        pipeline, "sample", lambda m, p, o, seed, **kw: heard.extend(p) or [p[0][:0]]
    )
    pipeline.sample_continuations(wide_model, [prompt], [0], pipeline.Settings(seconds=1.0))
    np.testing.assert_array_equal(heard[0], prompt)


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_an_infilled_sketch_is_heard_played_and_kept_as_it_is(tiny_infill, monkeypatch, mode):
    """Infilling a sketch: the model hears the parts before and after the gap humanized (per
    variation), the prompt built from them as from the piece; the files keep the piece."""
    from perceiver_midi.app.core import infill, pipeline

    piece = _figure(False, False)
    gap = infill.Gap(8.0, 12.0)
    settings = pipeline.Settings(variations=2, humanize=mode)
    a, b, steps, plain, gap_settings = infill.plan_gap(tiny_infill, piece, gap, settings)
    heard_prompts = []

    def spy(model, primes, opts, seed, **kw):
        heard_prompts.extend(np.asarray(p) for p in primes)
        return [np.zeros(0, np.int32) for _ in primes]

    monkeypatch.setattr(pipeline, "sample", spy)
    filled = infill.infill_items(tiny_infill, piece, gap, settings, [3, 4], [1, 2])
    size = pipeline.context_tokens(tiny_infill) + 1 - gap_settings.tokens
    for prompt, seed, f in zip(heard_prompts, [3, 4], filled, strict=True):
        np.testing.assert_array_equal(f.piece, piece)
        if mode == "off":
            np.testing.assert_array_equal(prompt, plain)
            continue
        rng = np.random.default_rng([seed, pipeline.HUMANIZE_STREAM])
        before, after = humanize(piece[:a], rng), humanize(piece[b:], rng)
        want = infill._gap_prompt(tiny_infill, piece, a, b, steps, size, before, after)
        np.testing.assert_array_equal(prompt, want)
        assert not np.array_equal(prompt, plain)
