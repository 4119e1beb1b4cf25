"""Infilling from the user's side: ranges, the piece outside the gap kept, the joins, the CLI."""

import pathlib
import subprocess
import sys

import numpy as np
import pretty_midi
import pytest

from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.infill import Gap, infill_piece, plan_gap, write_infill
from perceiver_midi.app.core.pipeline import OutputOptions, Settings
from perceiver_midi.tokenizer import encode
from perceiver_midi.tokenizer.decode import decode_notes


@pytest.fixture(scope="module")
def piece(tmp_path_factory) -> pathlib.Path:
    """8 s: a note every 0.5 s, 0.8 s long (so notes sound across any edge), and a long one."""
    pm = pretty_midi.PrettyMIDI(resolution=500, initial_tempo=120)
    piano = pretty_midi.Instrument(program=0)
    for k in range(16):
        piano.notes.append(pretty_midi.Note(60 + k % 5, 60 + (k * 7) % 12, 0.5 * k, 0.5 * k + 0.8))
    piano.notes.append(pretty_midi.Note(90, 40, 1.0, 7.5))  # across the whole gap
    pm.instruments.append(piano)
    path = tmp_path_factory.mktemp("pieces") / "piece.mid"
    pm.write(str(path))
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("30", "START:END"),
        ("a:b", "START:END"),
        ("3:", "START:END"),
        ("8:3", "must be after its start"),
        ("0:20", "at most 12 s"),
        ("-1:3", "infill range start must be in"),
        ("1:nan", "finite"),
    ],
)
def test_bad_ranges_are_one_line(text, message):
    with pytest.raises(UserError, match=message) as info:
        Gap.parse(text)
    assert "\n" not in str(info.value)


def test_range_outside_the_piece_and_a_model_that_cannot_infill(piece, tiny_infill, tiny_model):
    ids = encode(str(piece))
    with pytest.raises(UserError, match="after the piece's end"):
        plan_gap(tiny_infill, ids, Gap(9, 10), Settings())
    with pytest.raises(UserError, match="not trained to infill"):
        plan_gap(tiny_model, ids, Gap(1, 2), Settings())


def _key(n):
    return (n.pitch, round(n.start, 3), round(n.end, 3), n.velocity)


@pytest.fixture(scope="module")
def tiny_infill_join():
    """A tiny infilling model whose layout repeats the part after the gap's start before
    MIDDLE (``Config.infill_join``), with input segments; random logits."""
    import jax
    from flax import nnx

    from perceiver_midi.model.config import get_config
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    cfg = get_config("tiny", infill=True, gap_segments=True, infill_join=8)
    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    model.logits.kernel[...] = 0.5 * jax.random.normal(jax.random.key(1), model.logits.kernel.shape)
    return model


@pytest.mark.parametrize(
    "seed, which", [(0, "tiny_infill"), (3, "tiny_infill"), (0, "tiny_infill_join")]
)
def test_outside_the_gap_the_piece_is_kept_and_the_middle_is_closed(piece, request, seed, which):
    original = decode_notes(encode(str(piece)))
    model = request.getfixturevalue(which)
    filled = infill_piece(model, str(piece), Gap(2.35, 5.0), Settings(variations=2, seed=seed))
    assert [f.seed for f in filled] == [seed, seed + 1]
    for f in filled:
        assert (f.start, f.end) == (2.5, 5.0)  # the first events at or after 2.35 and 5.0
        notes = f.notes()
        before = {_key(n) for n in original if n.end <= f.start}
        after = {_key(n) for n in original if n.start >= f.end}
        got = {_key(n) for n in notes}
        assert before <= got and after <= got  # the outer parts, note for note
        # everything else starts before the gap's end and ends by it (nothing hangs over)
        for n in notes:
            if _key(n) not in before | after:
                assert n.start < f.end and n.end <= f.end + 1e-9, n
        # notes sounding across the gap's start begin where they did
        across = [n for n in original if n.start < f.start < n.end]
        assert across
        for n in across:
            assert any(m.pitch == n.pitch and abs(m.start - n.start) < 1e-6 for m in notes)
        assert f.stop in ("seconds", "tokens")
        middle = f.middle_notes()
        assert all(0 <= n.start and n.end <= f.end - f.start + 1e-9 for n in middle)


def test_same_seed_same_files_and_controls_hold(piece, tiny_infill, tmp_path):
    settings = Settings(variations=4, seed=5, pitch_range="70:90", max_polyphony=8)
    filled = infill_piece(tiny_infill, str(piece), Gap(1, 4), settings)
    a = filled[0]
    b = infill_piece(tiny_infill, str(piece), Gap(1, 4), settings.replace(variations=1))[0]
    np.testing.assert_array_equal(a.middle, b.middle)
    opts = OutputOptions(audio="none")
    pa = write_infill(a, tmp_path / "a", "p", opts)
    pb = write_infill(b, tmp_path / "b", "p", opts)
    for kind in pa:
        assert pa[kind].read_bytes() == pb[kind].read_bytes()
    assert sorted(p.name for p in pa.values()) == ["p_infill_v1.mid", "p_infill_v1_middle.mid"]
    middles = np.concatenate([f.middle for f in filled])
    new_ons = middles[(middles >= 3) & (middles < 131)] - 3
    assert new_ons.size and new_ons.min() >= 70 and new_ons.max() <= 90


def test_context_preview_is_the_stretch_around_the_middle(piece, tiny_infill):
    f = infill_piece(tiny_infill, str(piece), Gap(3, 5), Settings(seed=1))[0]
    pm = f.context_midi(1.0)
    notes = pm.instruments[0].notes
    assert notes and min(n.start for n in notes) >= 0
    assert max(n.end for n in notes) <= f.end - f.start + 2.0 + 1e-6


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "perceiver_midi.app.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_cli_infill_writes_piece_and_middle_and_refuses_bad_ranges(
    piece, tiny_infill_checkpoint, tmp_path
):
    out = tmp_path / "out"
    ok = _cli(
        "infill", str(piece), "--range", "2:4.5", "--variations", "2", "--seed", "3",
        "--checkpoint", str(tiny_infill_checkpoint), "--out", str(out), "--audio", "wav",
        cwd=tmp_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "piece_infill_v1.mid", "piece_infill_v1.wav", "piece_infill_v1_middle.mid",
        "piece_infill_v1_middle.wav", "piece_infill_v2.mid", "piece_infill_v2.wav",
        "piece_infill_v2_middle.mid", "piece_infill_v2_middle.wav",
    ]  # fmt: skip
    assert "2.00..4.50 s regenerated" in ok.stdout
    for bad, message in [
        ("9:10", "after the piece's end"),
        ("4:2", "must be after its start"),
        ("0:30", "at most 12 s"),
    ]:
        r = _cli(
            "infill", str(piece), "--range", bad, "--checkpoint", str(tiny_infill_checkpoint),
            "--out", str(tmp_path / "bad"), cwd=tmp_path,
        )  # fmt: skip
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not any((tmp_path / "bad").glob("*.mid"))


def test_batch_rows_with_an_infill_range_match_the_cli(piece, tiny_infill_checkpoint, tmp_path):
    import json

    from perceiver_midi.app.cli import main

    listing = tmp_path / "list.csv"
    listing.write_text(
        "prime,id,seed,variations,infill_range\n"
        f"{piece},fill,7,2,2:4.5\n"
        f"{piece},cont,7,1,\n"
        f"{piece},late,7,1,9:10\n"
        f"{piece},long,7,1,0:30\n"
    )
    out = tmp_path / "batch"
    args = ["batch", listing, "--out", out, "--checkpoint", tiny_infill_checkpoint,
            "--seconds", 2, "--audio", "none"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    recs = {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert sorted(recs) == ["cont#v1", "fill#v1", "fill#v2"]
    fill = recs["fill#v2"]
    assert fill["seed"] == 8 and fill["infill"] == {"start": 2.0, "end": 4.5}
    assert fill["settings"]["infill_range"] == "2:4.5"
    assert fill["outputs"] == {
        "midi": "fill_infill_v2.mid", "middle_midi": "fill_infill_v2_middle.mid"
    }  # fmt: skip
    assert recs["cont#v1"]["outputs"] == {"midi": "cont_v1.mid"}
    failed = (out / "failed.jsonl").read_text()
    assert "after the piece's end" in failed and "at most 12 s" in failed
    # the same request and seed through the CLI: the same files
    cli = tmp_path / "cli"
    assert main([
        "infill", str(piece), "--range", "2:4.5", "--variations", "2", "--seed", "7",
        "--checkpoint", str(tiny_infill_checkpoint), "--out", str(cli), "--audio", "none",
    ]) == 0  # fmt: skip
    for v in (1, 2):
        for name in (f"piece_infill_v{v}.mid", f"piece_infill_v{v}_middle.mid"):
            assert (cli / name).read_bytes() == (out / name.replace("piece", "fill")).read_bytes()
    # a second run finds everything done
    assert main([str(a) for a in args]) == 0
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3
