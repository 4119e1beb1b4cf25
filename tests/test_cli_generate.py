"""``perceiver-midi continue`` / ``generate`` end to end with a tiny random checkpoint, and the
one-line errors of every app subcommand."""

import subprocess
import sys

import pretty_midi
import pytest
import soundfile

from perceiver_midi.app.cli import main
from perceiver_midi.app.core.pipeline import Settings, continue_prime
from perceiver_midi.tokenizer import decode_notes, encode, midi_bytes, music_seconds

SECONDS = 3.0  # same token bucket as tests/test_pipeline.py


def _run(args, capsys):
    """main(args) -> (exit code, stdout, stderr); argparse errors exit through SystemExit."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_continue_end_to_end(tiny_checkpoint, short_prime, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, _ = _run(
        ["continue", short_prime, "--checkpoint", tiny_checkpoint, "--out", out,
         "--seconds", SECONDS, "--variations", 2, "--seed", 3, "--ignore-eos"],
        capsys,
    )  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "short_v1.mid",
        "short_v1.wav",
        "short_v2.mid",
        "short_v2.wav",
    ]
    # The summary table: files, music seconds, tokens, tokens/s.
    assert "music s" in stdout and "tokens/s" in stdout and "short_v2.mid" in stdout
    prime = encode(short_prime)
    for v in (1, 2):
        pm = pretty_midi.PrettyMIDI(str(out / f"short_v{v}.mid"))
        assert pm.instruments and pm.instruments[0].notes
        ids = encode(out / f"short_v{v}.mid")
        # The continuation alone starts at time 0 and lasts --seconds (to one 10 ms step).
        assert music_seconds(ids) <= SECONDS + 0.01
        assert pm.get_end_time() <= SECONDS + 0.01
        info = soundfile.info(str(out / f"short_v{v}.wav"))
        assert info.samplerate == 44100 and info.frames > 44100 * 0.5
        row = next(line for line in stdout.splitlines() if f"short_v{v}.mid" in line)
        assert row.split()[-3] == f"{SECONDS:.2f}"  # music seconds column
    # --full: the prime window then the continuation, starting after the prime.
    rc, _, _ = _run(
        ["continue", short_prime, "--checkpoint", tiny_checkpoint, "--out", out / "full",
         "--seconds", SECONDS, "--variations", 2, "--seed", 3, "--ignore-eos", "--full",
         "--audio", "none"],
        capsys,
    )  # fmt: skip
    assert rc == 0 and sorted(p.name for p in (out / "full").iterdir()) == [
        "short_v1.mid",
        "short_v2.mid",
    ]
    full = decode_notes(encode(out / "full" / "short_v1.mid"))
    alone = decode_notes(encode(out / "short_v1.mid"))
    prime_notes = decode_notes(prime)
    prime_end = music_seconds(prime)
    assert [(n.pitch, n.start) for n in full[: len(prime_notes)]] == [
        (n.pitch, n.start) for n in prime_notes
    ]
    later = [(n.pitch, round(n.start - prime_end, 2)) for n in full if n.start >= prime_end]
    assert later == [(n.pitch, round(n.start, 2)) for n in alone]
    assert pretty_midi.PrettyMIDI(str(out / "full" / "short_v1.mid")).get_end_time() <= (
        prime_end + SECONDS + 0.01
    )


def test_same_seed_same_midi_from_continue_and_the_pipeline(
    tiny_checkpoint, tiny_model, short_prime, tmp_path, capsys
):
    for run in ("a", "b"):
        rc, _, _ = _run(
            ["continue", short_prime, "--checkpoint", tiny_checkpoint, "--out", tmp_path / run,
             "--seconds", SECONDS, "--variations", 2, "--seed", 42, "--audio", "none"],
            capsys,
        )  # fmt: skip
        assert rc == 0
    conts = continue_prime(
        tiny_model, short_prime, Settings(seconds=SECONDS, variations=2, seed=42)
    )
    for c in conts:
        name = f"short_v{c.variation}.mid"
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes()
        assert a == midi_bytes(c.midi())
    assert (tmp_path / "a/short_v1.mid").read_bytes() != (tmp_path / "a/short_v2.mid").read_bytes()


def test_prime_window_options(tiny_checkpoint, tmp_path, capsys):
    rc, stdout, _ = _run(
        ["continue", "examples/bach_prelude_c.mid", "--checkpoint", tiny_checkpoint,
         "--out", tmp_path, "--prime-range", "4:5", "--seconds", SECONDS, "--audio", "none"],
        capsys,
    )  # fmt: skip
    assert rc == 0 and "prime window 4 s..5 s" in stdout
    rc, stdout, _ = _run(
        ["continue", "examples/bach_prelude_c.mid", "--checkpoint", tiny_checkpoint,
         "--out", tmp_path, "--prime-tokens", 30, "--tokens", 700, "--audio", "none"],
        capsys,
    )  # fmt: skip
    assert rc == 0 and "last 30 tokens" in stdout


def test_generate_from_sos(tiny_checkpoint, tmp_path, capsys):
    rc, stdout, _ = _run(
        ["generate", "--checkpoint", tiny_checkpoint, "--out", tmp_path, "--tokens", 700,
         "--ignore-eos", "--audio", "flac", "--sample-rate", 22050],
        capsys,
    )  # fmt: skip
    assert rc == 0 and "from SOS" in stdout
    ids = encode(tmp_path / "generated_v1.mid")
    assert ids.size > 0
    assert soundfile.info(str(tmp_path / "generated_v1.flac")).samplerate == 22050


@pytest.fixture()
def bad_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not midi\n")
    empty = pretty_midi.PrettyMIDI()
    empty.instruments.append(pretty_midi.Instrument(0))
    empty.write(str(tmp_path / "empty.mid"))
    (tmp_path / "a_file").write_text("x")
    return tmp_path


@pytest.mark.parametrize(
    "args, message",
    [
        (["continue", "{tmp}/missing.mid"], "missing.mid: no such file"),
        (["continue", "{tmp}/notes.txt"], "not a MIDI file"),
        (["continue", "{tmp}/empty.mid"], "contains no notes"),
        (
            ["continue", "{prime}", "--prime-range", "50:60"],
            "prime window (50 s..60 s) contains no",
        ),
        (["continue", "{prime}", "--out", "{tmp}/a_file/sub"], "cannot create the output folder"),
        (["continue", "{prime}", "--checkpoint", "{tmp}/nockpt"], "nockpt: no such checkpoint"),
        (["continue", "{prime}", "--checkpoint", "{tmp}"], "not a checkpoint"),
        (["continue", "{prime}", "--seconds", "5", "--tokens", "9"], "--seconds or --tokens"),
        (["continue", "{prime}", "--prime-seconds", "3", "--prime-range", "1:2"], "contradict"),
        (["continue", "{prime}", "--audio", "none", "--soundfont", "x.sf2"], "needs audio"),
        (["continue", "{prime}", "--temperature", "-1"], "temperature must be in [0, 100]"),
        (["continue", "{prime}", "--variations", "1000000000"], "variations must be in [1, 16]"),
        (["continue", "{prime}", "--seconds", "inf"], "seconds must be a finite number"),
        (["continue", "{prime}", "--seconds", "1e6"], "seconds must be in (0, 600]"),
        (["continue", "{prime}", "--tokens", "999999999"], "tokens must be in [1, 131072]"),
        (["continue", "{prime}", "--prime-range", "0:inf"], "must be a finite number"),
        (["continue", "{prime}", "--top-k", "100000"], "top-k must be in [0, 391]"),
        (["continue", "{prime}", "--prime-range", "abc"], "START:END"),
        (["continue", "{prime}", "--seconds", "abc"], "invalid float value"),
        (["continue", "{prime}", "--audio", "mp3"], "invalid choice"),
        (["continue", "{prime}", "--latents", "999"], "latents must be in 1..16"),
        (
            ["continue", "{prime}", "--max-note-seconds", "-0.5"],
            "max-note-seconds must be in [0, 600]",
        ),
        (["continue", "{prime}", "--max-note-seconds", "-1"], "max-note-seconds must be in [0,"),
        (["continue", "{prime}", "--max-note-seconds", "inf"], "max-note-seconds must be a finite"),
        (["generate", "--max-note-seconds", "1e9"], "max-note-seconds must be in [0, 600]"),
        (["generate", "--variations", "0"], "must be at least 1"),
        (["batch", "{tmp}/nothing", "--out", "{tmp}/o"], "no such folder or listing"),
        (["batch", "{tmp}", "--out", "{tmp}/o", "--workers", "2"], "--workers needs --ray"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(
    args, message, bad_files, tiny_checkpoint, short_prime, capsys
):
    args = [a.format(tmp=bad_files, prime=short_prime) for a in args]
    if "--checkpoint" not in args and args[0] != "render":
        args += ["--checkpoint", str(tiny_checkpoint)]
    if args[0] != "batch" and "--out" not in args:
        args += ["--out", str(bad_files / "out")]
    rc, _, err = _run(args, capsys)
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


def test_missing_default_checkpoint_is_one_line(short_prime, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERCEIVER_MIDI_CHECKPOINT", str(tmp_path / "none"))
    rc, _, err = _run(["continue", short_prime, "--out", tmp_path], capsys)
    assert rc == 2 and "pass --checkpoint DIR" in err and err.count("\n") == 1


def test_error_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "perceiver_midi.app.cli", "continue", str(tmp_path / "nope.mid")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: {tmp_path / 'nope.mid'}: no such file\n"


@pytest.mark.parametrize(
    "name, stem",
    [
        ("generated", "generated"),
        ("../escape", "_/escape"),
        ("../../a/../b", "_/_/a/_/b"),
        ("/etc/passwd", "etc/passwd"),
        ("C:\\Users\\x.mid", "C_/Users/x"),
        ("..", "_"),
        ("./.hidden", "hidden"),
        ("", "prime"),
    ],
)
def test_output_stem_never_leaves_the_folder(name, stem):
    from perceiver_midi.app.core.pipeline import output_stem

    assert output_stem(name) == stem


def test_generate_name_stays_inside_out(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "a" / "out"
    for name in ("../../escape", str(tmp_path / "abs")):
        rc, _, err = _run(
            ["generate", "--checkpoint", tiny_checkpoint, "--out", out, "--tokens", 40,
             "--audio", "none", "--name", name],
            capsys,
        )  # fmt: skip
        assert rc == 0 and "inside --out" in err
    assert (out / "_" / "_" / "escape_v1.mid").is_file()
    assert (out / tmp_path.relative_to("/") / "abs_v1.mid").is_file()
    written = [p for p in tmp_path.rglob("*.mid")]
    assert written and all(out in p.parents for p in written)
