"""benchmarks/quality.py: its features (benchmarks/music_metrics.py) on hand-built notes, and the
quick run end to end."""

import json
import math

import numpy as np
import pytest

from benchmarks import music_metrics as M
from benchmarks import quality as Q
from perceiver_midi.tokenizer import constants as C


def _notes(*rows):
    """(pitch, velocity, start, end) rows -> the benchmark's note array."""
    return np.asarray(rows, np.float64).reshape(-1, 4)


def on(pitch):
    return C.NOTE_ON_FIRST_ID + pitch


def off(pitch):
    return C.NOTE_OFF_FIRST_ID + pitch


SHIFT_100MS = C.TIME_SHIFT_FIRST_ID + 9


def test_polyphony_of_a_chord_then_silence():
    chord = _notes((60, 80, 0.0, 1.0), (64, 80, 0.0, 1.0), (67, 80, 0.0, 1.0))
    assert M.mean_polyphony(chord, 2.0) == pytest.approx(1.5)  # 3 notes for half the time
    arpeggio = _notes((60, 80, 0.0, 2.0), (64, 80, 1.0, 2.0))  # 1 then 2 sounding
    assert M.mean_polyphony(arpeggio, 2.0) == pytest.approx(1.5)
    assert M.mean_polyphony(_notes(), 2.0) == 0.0


def test_polyphony_by_segment_shows_a_pile_up():
    # One note per second that never ends before 8 s: 1, 2, ... notes sounding.
    piling = _notes(*[(60 + k, 80, float(k), 8.0) for k in range(8)])
    assert M.polyphony_by_segment(piling, 8.0, 4.0) == pytest.approx([2.5, 6.5])
    steady = _notes(*[(60, 80, float(k), k + 0.5) for k in range(8)])
    assert M.polyphony_by_segment(steady, 8.0, 2.0) == pytest.approx([0.5] * 4)


def test_held_shares_density_and_durations():
    notes = _notes(
        (60, 64, 0.0, 1.0), (62, 64, 1.0, 6.0), (64, 64, 2.0, 11.0), (65, 64, 3.0, 3.5)
    )  # durations 1, 5, 9, 0.5
    f = M.features(notes, 20.0)
    assert f["held_over_4s_share"] == pytest.approx(0.5)
    assert f["held_over_8s_share"] == pytest.approx(0.25)
    assert f["notes_held_over_8s"] == 1
    assert f["density_notes_per_s"] == pytest.approx(4 / 20)
    assert f["duration_median_s"] == pytest.approx(3.0)
    assert f["pitch_range"] == 5
    assert f["ioi_median_s"] == pytest.approx(1.0)


def test_ioi_counts_a_chord_as_one_onset_and_velocity_stats():
    notes = _notes((60, 40, 0.0, 0.5), (64, 80, 0.0, 0.5), (67, 60, 0.5, 1.0), (72, 60, 1.0, 2))
    f = M.features(notes, 2.0)
    assert f["ioi_median_s"] == pytest.approx(0.5)  # onsets 0 (a chord), 0.5, 1
    assert f["velocity_mean"] == pytest.approx(60.0)
    assert f["velocity_std"] == pytest.approx(np.std([40, 80, 60, 60]))


def test_longest_silence():
    notes = _notes((60, 80, 1.0, 2.0), (62, 80, 4.0, 6.0), (64, 80, 5.0, 7.5))
    assert M.longest_silence(notes, 8.0) == pytest.approx(2.0)  # 2..4
    assert M.longest_silence(notes, 12.0) == pytest.approx(4.5)  # 7.5..12, trailing
    assert M.longest_silence(_notes((60, 80, 3.0, 4.0)), 4.0) == pytest.approx(3.0)  # leading
    assert M.longest_silence(_notes(), 5.0) == 5.0


def test_features_of_no_notes_are_nan_not_errors():
    f = M.features(_notes(), 5.0)
    assert f["density_notes_per_s"] == 0 and f["polyphony"] == 0
    assert math.isnan(f["duration_median_s"]) and math.isnan(f["ioi_median_s"])
    assert f["longest_silence_s"] == 5.0


def test_looped_notes_repeat_the_prime_and_cut_at_the_end():
    prime = _notes((60, 80, 0.0, 1.0), (62, 80, 7.0, 8.0))  # an 8 s prime
    looped = M.looped_notes(prime, 8.0, 20.0)
    np.testing.assert_allclose(looped[:, 2], [0, 7, 8, 15, 16])  # the note at 23 s is dropped
    assert looped[:, 3].max() == 17.0
    cut = M.looped_notes(_notes((60, 80, 0.0, 8.0)), 8.0, 12.0)
    np.testing.assert_allclose(cut[:, 2:4], [[0, 8], [8, 12]])


def test_kde_overlap_identical_far_and_between():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 32)
    assert M.kde_overlap(a, a) == pytest.approx(1.0, abs=1e-3)
    assert M.kde_overlap(a, a + 100) < 1e-3
    shifted = M.kde_overlap(a, a + 1.0)
    assert 0.3 < shifted < 0.9
    assert M.kde_overlap([0.0, 0.0], [0.0, 0.0]) == 1.0  # both constant, same value
    assert M.kde_overlap([0.0, 0.0], [1.0, 1.0]) == 0.0
    assert M.kde_overlap([0.0, math.nan, 1.0], [0.0, 1.0]) == pytest.approx(1.0, abs=1e-3)
    assert math.isnan(M.kde_overlap([], [1.0]))


def test_token_diagnostics_count_noop_offs_and_open_notes():
    prime = [on(60), SHIFT_100MS, on(67), SHIFT_100MS, off(67)]  # 60 is open at the split
    ids = [
        SHIFT_100MS,
        off(60),  # closes the prime's note
        off(60),  # no-op: nothing of pitch 60 sounds
        on(62),  # never closed
        off(64),  # no-op
        on(65),
        SHIFT_100MS,
        off(65),
    ]
    d = M.token_diagnostics(prime, ids)
    assert d["tokens"] == 8
    assert (d["note_offs"], d["noop_offs"]) == (4, 2)
    assert d["noop_off_share"] == pytest.approx(0.5)
    assert (d["note_ons"], d["unclosed_ons"]) == (2, 1)
    assert d["unclosed_on_share"] == pytest.approx(0.5)
    assert (d["carried_open"], d["carried_unclosed"]) == (1, 0)
    left_open = M.token_diagnostics(prime, [SHIFT_100MS])
    assert (left_open["carried_unclosed"], left_open["note_offs"]) == (1, 0)
    assert math.isnan(left_open["noop_off_share"])


def _piece(real_notes, real_held, gen_notes, gen_held, poly=(2.0, 2.0), density=(5.0, 5.0)):
    row = {}
    for s, n, h, p, dens in (
        ("real", real_notes, real_held, poly[0], density[0]),
        ("generated", gen_notes, gen_held, poly[1], density[1]),
        ("looped", real_notes, real_held, poly[0], density[0]),
    ):
        feats = dict.fromkeys(M.FEATURES, 1.0)
        feats.update(polyphony=p, density_notes_per_s=dens, notes=n, notes_held_over_8s=h)
        row[s] = {"features": feats}
    return row


def test_bars_held_share_uses_one_over_real_notes_when_real_share_is_zero():
    pieces = [_piece(100, 0, 100, 0), _piece(100, 0, 100, 1)]  # generated 1/200 held, real 0
    b = {r["bar"]: r for r in M.bars(M.summarise(pieces), pieces, judged=True)}
    held = b["notes held > 8 s"]
    assert held["reference"] == pytest.approx(1 / 200)
    assert held["value"] == pytest.approx(1 / 200) and held["met"] is True
    pieces = [_piece(100, 0, 100, 3), _piece(100, 0, 100, 0)]  # 3/200 > 2/200
    b = {r["bar"]: r for r in M.bars(M.summarise(pieces), pieces, judged=True)}
    assert b["notes held > 8 s"]["met"] is False
    assert b["polyphony ratio"]["met"] is True and b["density ratio"]["met"] is True


def test_bars_ratios_and_not_judged():
    pieces = [_piece(100, 0, 100, 0, poly=(2.0, 3.0), density=(5.0, 3.4))] * 3
    b = {r["bar"]: r for r in M.bars(M.summarise(pieces), pieces, judged=True)}
    assert b["polyphony ratio"]["value"] == pytest.approx(1.5) and not b["polyphony ratio"]["met"]
    assert b["density ratio"]["value"] == pytest.approx(0.68) and not b["density ratio"]["met"]
    unjudged = M.bars(M.summarise(pieces), pieces, judged=False)
    assert all(r["met"] is None for r in unjudged)


def test_bars_pool_the_draws_and_give_each_draw_its_value():
    draw0 = [_piece(100, 0, 100, 0, poly=(2.0, 3.0), density=(5.0, 5.0))] * 2
    draw1 = [_piece(100, 0, 100, 1, poly=(2.0, 2.0), density=(5.0, 6.0))] * 2
    pieces = [{**p, "draw": 0} for p in draw0] + [{**p, "draw": 1} for p in draw1]
    b = {r["bar"]: r for r in M.bars(M.summarise(pieces), pieces, judged=True)}
    poly, dens, held = b["polyphony ratio"], b["density ratio"], b["notes held > 8 s"]
    assert poly["by_draw"] == pytest.approx([1.5, 1.0]) and poly["value"] == pytest.approx(1.25)
    assert poly["met"] is True  # pooled 1.25 is within the bar though draw 0 alone is not
    assert dens["by_draw"] == pytest.approx([1.0, 1.2]) and dens["value"] == pytest.approx(1.1)
    assert held["by_draw"] == pytest.approx([0.0, 1 / 100]) and held["value"] == pytest.approx(
        1 / 200
    )
    single = M.bars(M.summarise(draw0), draw0, judged=True)  # rows without "draw": one draw
    assert [r["by_draw"] for r in single][:2] == [pytest.approx([1.5]), pytest.approx([1.0])]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pieces", "0"], "--pieces must be at least 1"),
        (["--seconds", "30"], "--seconds must be in"),
        (["--seconds", "0"], "--seconds must be in"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--draws", "0"], "--draws must be in [1, 8]"),
        (["--draws", "9"], "--draws must be in [1, 8]"),
        (["--max-note-seconds", "-1"], "--max-note-seconds must be in [0, 600]"),
        (["--maestro", "/no/maestro"], "/no/maestro: no maestro-v3.0.0.csv"),
    ],
)
def test_bad_arguments_are_one_line(args, message, tmp_path, capsys):
    safe = ["--out", str(tmp_path / "q.json"), "--rolls", "none", "--skip-nll"]
    assert Q.main(args + safe) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_quick_run_end_to_end(maestro_root, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "quality.json"
    rolls = tmp_path / "rolls.png"
    args = ["--quick", "--checkpoint", str(tiny_checkpoint), "--maestro", str(maestro_root),
            "--data", str(tmp_path / "data"), "--out", str(out), "--rolls", str(rolls),
            "--draws", "2"]  # fmt: skip
    assert Q.main(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("BAR notes held > 8 s") and "not judged" in printed[-1]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["judged"] is False
    assert [b["met"] for b in result["bars"]] == [None, None, None]
    assert len(result["pieces"]) == 2 * Q.QUICK_PIECES  # every prime sampled twice
    assert result["settings"]["seconds"] == Q.QUICK_SECONDS
    assert [p["seed"] for p in result["pieces"]] == [0, 1, 2, 3, 100, 101, 102, 103]
    assert [p["draw"] for p in result["pieces"]] == [0] * 4 + [1] * 4
    names = [p["name"] for p in result["pieces"]]
    assert names[:4] == sorted(names[:4]) and len(set(names)) == Q.QUICK_PIECES
    assert names[4:] == names[:4]
    first, second = result["pieces"][:4], result["pieces"][4:]
    assert [p["real"]["features"] for p in first] == [p["real"]["features"] for p in second]
    assert all(len(b["by_draw"]) == 2 for b in result["bars"])
    for p in result["pieces"]:
        real = p["real"]["features"]
        assert real["notes"] > 0 and 0 <= real["longest_silence_s"] <= Q.QUICK_SECONDS
        assert p["real"]["tokens"]["noop_offs"] == 0  # real MAESTRO never releases a silent key
        assert p["generated"]["stop"] in ("seconds", "tokens", "eos")
    assert set(result["summary"]) == set(M.FEATURES)
    # The looped set is the prime replayed: all of its interval 4-grams are the prime's.
    assert result["summary"]["prime_reuse"]["looped"]["mean"] > 0.95
    score = result["overall_score"]
    assert 0 <= score["pooled"] <= 1 and len(score["by_draw"]) == 2
    mrr = result["retrieval_mrr"]
    assert len(mrr["by_draw"]["generated"]) == 2 and 0 < mrr["chance"] < 1
    assert 0 < mrr["mean"]["real"] <= 1
    assert result["nll"]["pieces"] == Q.QUICK_NLL_PIECES and result["nll"]["nll"] > 0
    assert rolls.stat().st_size > 1000 and rolls.read_bytes()[:4] == b"\x89PNG"
    text = out.read_text()
    assert '"ids"' not in text and '"notes": [' not in text  # no MAESTRO tokens or note lists


def test_kde_bandwidth_is_silverman_on_the_pooled_within_set_std():
    a, b = np.array([0.0, 2.0]), np.array([10.0, 12.0])  # within-set std sqrt(2) each
    assert M.kde_bandwidth(a, b) == pytest.approx(1.06 * math.sqrt(2) * 2**-0.2)


def test_notes_carried_over_the_split_count_only_for_silence():
    one_second = C.TIME_SHIFT_LAST_ID
    prime = [on(60), one_second]  # pitch 60 still sounds at the split (1 s)
    ids = [C.TIME_SHIFT_FIRST_ID + 49, off(60), on(62), SHIFT_100MS, off(62)]
    carried = M.carried_notes(prime, ids, 1.0)
    np.testing.assert_allclose(carried, [[60, 100, 0.0, 0.5]])  # velocity 100: none stated
    notes = M.notes_of(ids)
    np.testing.assert_allclose(notes, [[62, 100, 0.5, 0.6]])
    alone, with_carried = M.features(notes, 1.0), M.features(notes, 1.0, carried)
    assert alone["longest_silence_s"] == pytest.approx(0.5)  # 0..0.5 looks silent alone
    assert with_carried["longest_silence_s"] == pytest.approx(0.4)  # 0.6..1.0
    assert alone["polyphony"] == with_carried["polyphony"] == pytest.approx(0.1)


def test_split_test_takes_its_primes_from_the_test_split(maestro_root):
    from perceiver_midi.tokenizer.dataset import maestro_sources

    sources = maestro_sources(maestro_root)
    test_names = {s.name for s in sources["test"]}
    val_names = {s.name for s in sources["validation"]}
    held_out = [p["name"] for p in Q.choose_pieces(maestro_root, 3, "test")]
    tuned_on = [p["name"] for p in Q.choose_pieces(maestro_root, 3)]
    assert len(set(held_out)) == 3 and set(held_out) <= test_names
    assert len(set(tuned_on)) == 3 and set(tuned_on) <= val_names
