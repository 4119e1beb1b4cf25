"""The tokenizer's command line (tokenize, detokenize, prepare-data) and the prepared data."""

import json
import pathlib
import subprocess
import sys

import midi_factory as mf
import numpy as np
import pretty_midi
import pytest

from perceiver_midi.app.cli import main
from perceiver_midi.tokenizer import encode
from perceiver_midi.tokenizer.dataset import load_split

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples/bach_prelude_c.mid"


def test_tokenize_and_detokenize_round_trip(tmp_path, capsys):
    assert main(["tokenize", str(EXAMPLE)]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["file"] == str(EXAMPLE)
    assert line["ids"] == encode(EXAMPLE).tolist()
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(line))
    out = tmp_path / "back.mid"
    assert main(["detokenize", str(ids_file), "-o", str(out)]) == 0
    assert encode(out).tolist() == line["ids"]
    assert len(pretty_midi.PrettyMIDI(str(out)).instruments[0].notes) == 256


def test_tokenize_sos_eos(capsys):
    assert main(["tokenize", str(EXAMPLE), "--sos", "--eos"]) == 0
    ids = json.loads(capsys.readouterr().out)["ids"]
    assert ids[0] == 2 and ids[-1] == 1


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["tokenize", "/no/such.mid"], 2, "/no/such.mid: no such file"),
        (["detokenize", "/no/ids.json", "-o", "x.mid"], 2, "/no/ids.json: cannot read"),
        (["prepare-data", "--maestro", "/no/maestro", "--out", "w"], 2, "MAESTRO folder not found"),
        (["prepare-data", "--midi-dir", "/no/dir", "--out", "w"], 2, "/no/dir: not a folder"),
    ],
)
def test_errors_are_one_line(argv, code, message, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_detokenize_bad_inputs(tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    assert main(["detokenize", str(bad_json), "-o", str(tmp_path / "o.mid")]) == 2
    assert "not JSON" in capsys.readouterr().err
    out_of_vocab = tmp_path / "oov.json"
    out_of_vocab.write_text("[3, 999]")
    assert main(["detokenize", str(out_of_vocab), "-o", str(tmp_path / "o.mid")]) == 2
    assert "id 999 is outside the vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "o.mid").exists()  # nothing half-written
    good = tmp_path / "good.json"
    good.write_text("[63, 308, 191]")
    assert main(["detokenize", str(good), "-o", str(tmp_path / "nodir/o.mid")]) == 2
    assert "output folder does not exist" in capsys.readouterr().err


def test_console_script_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "song.mid"
    bad.write_text("hello")
    proc = subprocess.run(
        [sys.executable, "-m", "perceiver_midi.app.cli", "tokenize", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2  # as every refused input
    assert proc.stderr.strip() == f"error: {bad}: not a MIDI file (no MThd header)"


def test_tokenize_refused_file_among_good_ones(tmp_path, capsys):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd\x00\x00")
    assert main(["tokenize", str(EXAMPLE), str(bad), str(EXAMPLE)]) == 2
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2  # the good files are still tokenized
    assert out.err == f"error: {bad}: truncated MIDI file (data ends inside a chunk or event)\n"


def test_note_sequence_without_note_seq_is_one_clear_error(monkeypatch):
    from perceiver_midi.tokenizer import decode_to_note_sequence

    monkeypatch.setitem(sys.modules, "note_seq", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "note_seq.protobuf", None)
    with pytest.raises(ImportError, match=r"needs note-seq.*: pip install note-seq$"):
        decode_to_note_sequence([378, 63, 308, 191])


def _write_folder(folder: pathlib.Path, n: int) -> None:
    folder.mkdir()
    for k in range(n):
        notes = [mf.on(100 * i, 60 + (i + k) % 12) for i in range(10)]
        notes += [mf.off(100 * i + 90, 60 + (i + k) % 12) for i in range(10)]
        (folder / f"piece{k:02d}.mid").write_bytes(mf.midi_bytes([[mf.tempo(0, 120)], notes]))
    (folder / "broken.mid").write_bytes(b"MThd\x00\x00")


def test_prepare_data_folder_split_memmap_and_skip(tmp_path, capsys):
    midi = tmp_path / "midi"
    _write_folder(midi, 40)
    out = tmp_path / "work"
    assert main(["prepare-data", "--midi-dir", str(midi), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr()
    assert "broken.mid: truncated" in printed.err
    total, names = 0, set()
    for split in ("train", "validation", "test"):
        if not (out / split).exists():
            continue
        data = load_split(out, split)
        assert isinstance(data.tokens, np.memmap)
        for k, piece in enumerate(data.pieces):
            np.testing.assert_array_equal(data.piece(k), encode(midi / piece["name"]))
            names.add(piece["name"])
        total += len(data)
    assert total == 40 and len(names) == 40
    # A re-run skips the finished splits.
    assert main(["prepare-data", "--midi-dir", str(midi), "--out", str(out)]) == 0
    assert "already done, skipped" in capsys.readouterr().out
    assert not list(out.glob(".*.tmp"))


def test_prepare_data_maestro_test_split(maestro_root, tmp_path, capsys):
    out = tmp_path / "work"
    args = ["prepare-data", "--maestro", str(maestro_root), "--out", str(out), "--split", "test"]
    assert main(args) == 0
    assert "test: 177 pieces" in capsys.readouterr().out
    data = load_split(out, "test")
    assert len(data) == 177 and data.offsets[-1] == data.tokens.size
    k = 5
    np.testing.assert_array_equal(data.piece(k), encode(maestro_root / data.pieces[k]["name"]))
    assert data.pieces[k]["canonical_composer"]


def _split_names(folder):
    return {p.name for p in folder.iterdir()}


def test_prepare_data_replaces_only_its_own_split_folders(tmp_path, capsys):
    midi = tmp_path / "midi"
    _write_folder(midi, 40)  # piece names hash into all three splits
    out = tmp_path / "work"
    args = ["prepare-data", "--midi-dir", str(midi), "--out", str(out), "--workers", "1"]
    # A user's folder where a split would go survives, untouched, and nothing is written.
    (out / "test").mkdir(parents=True)
    (out / "test" / "notes.txt").write_text("mine")
    (out / ".train.tmp").mkdir()  # the temp name of earlier versions: not ours to delete
    (out / ".train.tmp" / "keep.txt").write_text("mine too")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test: not a split folder prepare-data wrote" in err
    assert "'notes.txt'" in err
    assert _split_names(out) == {"test", ".train.tmp"}
    assert (out / "test" / "notes.txt").read_text() == "mine"
    # A link or a file in a split's place is refused too.
    (out / "test" / "notes.txt").rename(out / "notes.txt")
    (out / "test").rmdir()
    (out / "test").symlink_to(tmp_path / "midi")
    assert main(args) == 2
    assert "test: not a split folder prepare-data wrote (is a link)" in capsys.readouterr().err
    (out / "test").unlink()
    # A split folder a killed run left half written is replaced, and so are temp folders of
    # killed runs (tempfile names holding split files only); the user's folders stay.
    (out / "test").mkdir()
    (out / "test" / "tokens.u16").write_bytes(b"\0\0")
    stale = out / ".validation.abcd_123.tmp"
    stale.mkdir()
    (stale / "tokens.u16").write_bytes(b"\0\0")
    assert main(args) == 0
    capsys.readouterr()
    assert _split_names(out) == {"train", "validation", "test", ".train.tmp", "notes.txt"}
    assert (out / ".train.tmp" / "keep.txt").read_text() == "mine too"
    assert _split_names(out / "test") == {"tokens.u16", "offsets.i64", "pieces.jsonl", "DONE.json"}
    assert len(load_split(out, "test")) > 0
    # A re-run skips finished splits, even if the user dropped a file into one.
    (out / "validation" / "README").write_text("mine")
    assert main(args) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 3
    assert (out / "validation" / "README").read_text() == "mine"
