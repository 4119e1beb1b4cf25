"""Batch generation (app/batch/run.py): manifest, identity-derived seeds, failures, resume after
SIGKILL, and the Ray path giving the same manifest as the local one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pretty_midi
import pytest
import soundfile

from perceiver_midi.app.batch.manifest import MANIFEST
from perceiver_midi.app.batch.plan import load_primes, prime_seed
from perceiver_midi.app.cli import main
from perceiver_midi.app.core.pipeline import Settings, continue_prime
from perceiver_midi.app.core.render import DEFAULT_TAIL_SECONDS
from perceiver_midi.tokenizer import decode_notes, encode, midi_bytes

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
SECONDS = 3.0  # same token bucket as tests/test_pipeline.py


def _run(args, capsys=None):
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr() if capsys else None
    return rc, out


def _manifest(out_dir):
    return [json.loads(line) for line in (out_dir / MANIFEST).read_text().splitlines()]


def _check_complete(out_dir, records):
    """Every listed file exists and is complete (MIDI parses, audio decodes to its length)."""
    for rec in records:
        # Parses (a tiny random model may write a continuation without notes: still a MIDI file).
        pm = pretty_midi.PrettyMIDI(str(out_dir / rec["outputs"]["midi"]))
        if "audio" in rec["outputs"]:
            data, rate = soundfile.read(str(out_dir / rec["outputs"]["audio"]))
            assert rate == rec["settings"]["sample_rate"]
            expected = (pm.get_end_time() + DEFAULT_TAIL_SECONDS) * rate
            assert abs(len(data) - expected) <= 2
    assert not [p for p in out_dir.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture()
def primes(tmp_path, short_prime):
    """A folder: two good primes (one in a subfolder, .midi), a non-MIDI file, a note-less MIDI."""
    d = tmp_path / "primes"
    (d / "sub").mkdir(parents=True)
    shutil.copy(short_prime, d / "a.mid")
    shutil.copy(short_prime, d / "sub" / "b.midi")
    (d / "bad.mid").write_text("this is not MIDI\n")
    empty = pretty_midi.PrettyMIDI()
    empty.instruments.append(pretty_midi.Instrument(0))
    empty.write(str(d / "empty.mid"))
    return d


def _batch_args(src, out, ckpt, *extra):
    return ["batch", src, "--out", out, "--checkpoint", ckpt, "--seconds", SECONDS,
            "--variations", 2, "--batch-size", 2, *extra]  # fmt: skip


def test_folder_batch_writes_manifest_and_records_failures(
    primes, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "out"
    rc, cap = _run(_batch_args(primes, out, tiny_checkpoint, "--audio", "wav", "--seed", 9), capsys)
    assert rc == 0
    records = _manifest(out)
    assert [r["id"] for r in records] == ["a.mid#v1", "a.mid#v2", "sub/b.midi#v1", "sub/b.midi#v2"]
    for r in records:
        assert r["seed"] == prime_seed(9, r["prime"]) + r["variation"] - 1
        assert r["window"] == {"kind": "last_seconds", "seconds": 20.0}
        assert r["settings"]["seconds"] == SECONDS and r["settings"]["audio"] == "wav"
        assert r["checkpoint"]["path"] == str(tiny_checkpoint) and r["checkpoint"]["fingerprint"]
        assert r["tokens"] > 0 and 0 < r["music_seconds"] <= SECONDS
        assert r["prime_tokens"] > 0
    assert records[2]["outputs"] == {"midi": "sub/b_v1.mid", "audio": "sub/b_v1.wav"}
    _check_complete(out, records)
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert sorted(f["id"] for f in failed) == [
        "bad.mid#v1",
        "bad.mid#v2",
        "empty.mid#v1",
        "empty.mid#v2",
    ]
    assert any("not a MIDI file" in f["reason"] for f in failed)
    assert any("no notes" in f["reason"] for f in failed)
    assert "4 done, 0 skipped" in cap.out and "4 failed" in cap.out
    assert "not a MIDI file" in cap.out

    # Re-running skips every finished item (failed ones are tried again).
    rc, cap = _run(_batch_args(primes, out, tiny_checkpoint, "--audio", "wav", "--seed", 9), capsys)
    assert rc == 0 and "0 done, 4 skipped" in cap.out
    assert _manifest(out) == records


def test_seeds_come_from_identity_not_position(primes, tmp_path):
    defaults = Settings(seconds=SECONDS)
    by_folder = {p.identity: p.settings.seed for p in load_primes(primes, defaults, 5)}
    listing = tmp_path / "list.jsonl"  # the same primes in another order, paths relative to it
    rows = ["primes/sub/b.midi", "primes/a.mid"]
    listing.write_text("".join(json.dumps({"prime": r, "id": r[7:]}) + "\n" for r in rows))
    by_listing = {p.identity: p.settings.seed for p in load_primes(listing, defaults, 5)}
    assert by_listing == {k: by_folder[k] for k in ("sub/b.midi", "a.mid")}
    assert prime_seed(5, "a.mid") != prime_seed(6, "a.mid") != prime_seed(5, "b.mid")
    assert prime_seed(5, "a.mid") == prime_seed(5, "a.mid") < 2**31


def test_same_seed_same_midi_from_batch_continue_and_pipeline(
    primes, tiny_checkpoint, tiny_model, tmp_path, capsys
):
    out = tmp_path / "out"
    assert _run(_batch_args(primes, out, tiny_checkpoint, "--seed", 1), capsys)[0] == 0
    rec = {r["id"]: r for r in _manifest(out)}
    seed = rec["sub/b.midi#v1"]["seed"]
    assert rec["sub/b.midi#v2"]["seed"] == seed + 1
    settings = Settings(seconds=SECONDS, variations=2, seed=seed)
    conts = continue_prime(tiny_model, primes / "sub" / "b.midi", settings)
    rc, _ = _run(
        ["continue", primes / "sub" / "b.midi", "--checkpoint", tiny_checkpoint, "--out",
         tmp_path / "cont", "--seconds", SECONDS, "--variations", 2, "--seed", seed,
         "--audio", "none"],
        capsys,
    )  # fmt: skip
    assert rc == 0
    for c in conts:
        from_batch = (out / rec[f"sub/b.midi#v{c.variation}"]["outputs"]["midi"]).read_bytes()
        assert from_batch == midi_bytes(c.midi())
        assert from_batch == (tmp_path / "cont" / f"b_v{c.variation}.mid").read_bytes()


def test_listing_with_per_item_settings(short_prime, tiny_checkpoint, tmp_path, capsys):
    csv = tmp_path / "list.csv"
    csv.write_text(
        "prime,id,seconds,prime_range,seed,variations,max_note_seconds\n"
        f"{short_prime},first,,,,,\n"
        f"{short_prime},second,4,0.5:1.5,123,1,0.25\n"
        "missing.mid,third,,,,,\n"
    )
    out = tmp_path / "out"
    args = ["batch", csv, "--out", out, "--checkpoint", tiny_checkpoint, "--seconds", SECONDS,
            "--variations", 2, "--ignore-eos", "--batch-size", 2,
            "--max-note-seconds", 2]  # fmt: skip
    rc, cap = _run(args, capsys)
    assert rc == 0
    rec = {r["id"]: r for r in _manifest(out)}
    assert sorted(rec) == ["first#v1", "first#v2", "second#v1"]
    assert rec["second#v1"]["seed"] == 123
    assert rec["second#v1"]["window"] == {"kind": "range", "start": 0.5, "end": 1.5}
    assert rec["second#v1"]["settings"]["seconds"] == 4.0
    assert rec["first#v1"]["settings"]["max_note_seconds"] == 2.0  # the command line's
    assert rec["second#v1"]["settings"]["max_note_seconds"] == 0.25  # the row's
    notes = decode_notes(encode(out / "second_v1.mid"))  # no note outlasts the limit by more
    assert notes and max(n.end - n.start for n in notes) <= 0.25 + 1.0  # than one (1 s) shift
    assert rec["second#v1"]["music_seconds"] == pytest.approx(4.0, abs=0.01)
    assert rec["first#v1"]["music_seconds"] == pytest.approx(SECONDS, abs=0.01)
    assert rec["first#v1"]["outputs"] == {"midi": "first_v1.mid"}
    assert "third#v1" in (out / "failed.jsonl").read_text()
    assert "missing.mid" in cap.out and "no such file" in cap.out

    bad = tmp_path / "bad.csv"
    bad.write_text(f"prime,temprature\n{short_prime},0.5\n")
    rc, cap = _run(["batch", bad, "--out", out, "--checkpoint", tiny_checkpoint], capsys)
    assert rc == 2 and "unknown column 'temprature'" in cap.err and cap.err.count("\n") == 1


def test_bad_rows_go_to_failed_while_the_good_row_finishes(
    short_prime, tiny_checkpoint, tmp_path, capsys
):
    rows = [
        {"prime": str(short_prime), "id": "good"},
        {"prime": str(short_prime), "id": "latents", "latents": 17},  # the model has 16
        {"prime": str(short_prime), "id": "range", "prime_range": "0:inf"},
        {"prime": str(short_prime), "id": "tokens", "tokens": "inf"},  # inf in an int column
        {"prime": str(short_prime), "id": "variations", "variations": 1e9},
        {"prime": str(short_prime), "id": "seconds", "seconds": "nan"},
        {"prime": str(short_prime), "id": "half", "top_k": 2.5},
        {"prime": str(short_prime), "id": "note", "max_note_seconds": -1},
    ]
    listing = tmp_path / "list.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    out = tmp_path / "out"
    args = ["batch", listing, "--out", out, "--checkpoint", tiny_checkpoint, "--seconds", SECONDS]
    rc, cap = _run(args, capsys)
    assert rc == 0
    assert [r["id"] for r in _manifest(out)] == ["good#v1"]
    failed = {f["id"]: f["reason"] for f in map(json.loads, (out / "failed.jsonl").open())}
    assert set(failed) == {"latents", "range", "tokens", "variations", "seconds", "half", "note",
                           f"{listing} line 9"}  # fmt: skip
    assert "latents must be in 1..16" in failed["latents"]
    assert "prime range end must be a finite number" in failed["range"]
    assert "tokens must be a whole number" in failed["tokens"]
    assert "variations must be in [1, 16]" in failed["variations"]
    assert "seconds must be a finite number" in failed["seconds"]
    assert "top-k must be a whole number" in failed["half"]
    assert "max-note-seconds must be in [0, 600]" in failed["note"]
    assert "not JSON" in failed[f"{listing} line 9"]
    assert all("line" in reason for k, reason in failed.items() if k != "latents")
    assert "1 done, 0 skipped (already in the manifest), 8 failed" in cap.out


def test_resume_repairs_torn_lines_leftovers_and_missing_files(
    primes, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "out"
    args = _batch_args(primes, out, tiny_checkpoint, "--audio", "flac")
    assert _run(args, capsys)[0] == 0
    first = _manifest(out)
    # Simulate a crash: a torn manifest line, a temporary file, and an item's file gone.
    with open(out / MANIFEST, "a") as f:
        f.write('{"id":"a.mid#v1","prime":"a.m')
    (out / ".a_v1.mid.abc_1234.tmp").write_bytes(b"partial")  # as atomic_write_bytes names it
    (out / first[1]["outputs"]["audio"]).unlink()
    rc, cap = _run(args, capsys)
    assert rc == 0 and "1 done, 3 skipped" in cap.out
    again = _manifest(out)
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in first)  # exactly once
    assert {json.dumps(r, sort_keys=True) for r in again} == {
        json.dumps(r, sort_keys=True) for r in first
    }
    _check_complete(out, again)
    # A manifest from before a setting existed (no max_note_seconds: there was no limit) is
    # resumed with the limit off, and refused with today's default limit.
    older = [{**r, "settings": {k: v for k, v in r["settings"].items() if k != "max_note_seconds"}}
             for r in again]  # fmt: skip
    (out / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in older))
    rc, cap = _run(args, capsys)
    assert rc == 2 and "different settings.max_note_seconds" in cap.err
    rc, cap = _run([*args, "--max-note-seconds", "0"], capsys)
    assert rc == 0 and "0 done, 4 skipped" in cap.out
    # Other settings into the same folder are refused, not mixed in.
    rc, cap = _run([*args, "--max-note-seconds", "0", "--temperature", "0.5"], capsys)
    assert rc == 2 and "different settings.temperature" in cap.err


def test_batch_deletes_only_its_own_temporary_files(primes, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    args = _batch_args(primes, out, tiny_checkpoint, "--audio", "none")
    assert _run(args, capsys)[0] == 0
    # Leftovers of batch's own writes (next to files it writes, named as atomic_write_bytes and
    # ensure_out_dir name them), and the user's files, some with look-alike names.
    ours = [".a_v1.mid.k3j_9x0q.tmp", "sub/.b_v2.mid.abcdefgh.tmp", ".manifest.jsonl.x1y2z3w4.tmp",
            ".a_v1.wav.12345678.tmp", ".write-test-ab12cd34"]  # fmt: skip
    theirs = ["notes.txt", ".notes.tmp", ".a_v1.mid.tmp", ".a_v1.mid.mine.tmp", "sub/.x.tmp",
              ".zz_v1.mid.abcdefgh.tmp", "mine/.a_v1.mid.abcdefgh.tmp", ".write-test-mine",
              "sub/.write-test-ab12cd34"]  # fmt: skip
    for rel in ours + theirs:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(rel)
    (out / ".a_v2.mid.abcdefgh.tmp").mkdir()  # a folder, even with our name: not ours
    rc, cap = _run(args, capsys)
    assert rc == 0 and "0 done, 4 skipped" in cap.out
    assert not [rel for rel in ours if (out / rel).exists()]
    assert all((out / rel).read_text() == rel for rel in theirs)
    assert (out / ".a_v2.mid.abcdefgh.tmp").is_dir()
    # A manifest line pointing outside DIR does not point the cleanup there.
    outside = tmp_path / ".evil_v1.mid.abcdefgh.tmp"
    outside.write_text("mine")
    rec = _manifest(out)[0] | {"id": "gone#v1", "outputs": {"midi": "../evil_v1.mid"}}
    with open(out / MANIFEST, "a") as f:
        f.write(json.dumps(rec) + "\n")
    assert _run(args, capsys)[0] == 0 and outside.read_text() == "mine"


def test_batch_killed_with_sigkill_resumes_exactly_once(short_prime, tiny_checkpoint, tmp_path):
    src = tmp_path / "primes"
    src.mkdir()
    for i in range(16):
        shutil.copy(short_prime, src / f"p{i:02d}.mid")
    out = tmp_path / "out"
    args = _batch_args(src, out, tiny_checkpoint, "--audio", "wav")
    args[args.index("--batch-size") + 1] = 1
    total = 32
    proc = subprocess.Popen(
        [sys.executable, "-m", "perceiver_midi.app.cli", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    manifest = out / MANIFEST
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the batch ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines_at_kill = manifest.read_bytes().count(b"\n")
    assert 2 <= lines_at_kill < total

    rc, _ = _run(args)
    assert rc == 0
    records = _manifest(out)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == total
    _check_complete(out, records)

    # The resumed dataset equals an uninterrupted run.
    fresh = tmp_path / "fresh"
    assert (
        _run(_batch_args(src, fresh, tiny_checkpoint, "--audio", "wav", "--batch-size", 1))[0] == 0
    )
    assert sorted(map(json.dumps, _manifest(fresh))) == sorted(map(json.dumps, records))
    for r in records:
        for rel in r["outputs"].values():
            assert (out / rel).read_bytes() == (fresh / rel).read_bytes()


def test_ray_gives_the_same_manifest_and_files_as_local(primes, tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("ray")
    (primes / "empty.mid").unlink()
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    common = ["--audio", "wav", "--variations", 1, "--batch-size", 1]
    assert _run([*_batch_args(primes, local, tiny_checkpoint), *common], capsys)[0] == 0
    rc, cap = _run(
        [*_batch_args(primes, on_ray, tiny_checkpoint), *common, "--ray", "--workers", 2], capsys
    )
    assert rc == 0, cap.err
    assert (on_ray / MANIFEST).read_bytes() == (local / MANIFEST).read_bytes()
    assert (on_ray / "failed.jsonl").read_bytes() == (local / "failed.jsonl").read_bytes()
    records = _manifest(local)
    assert len(records) == 2
    for r in records:
        for rel in r["outputs"].values():
            assert (on_ray / rel).read_bytes() == (local / rel).read_bytes()


def test_a_second_run_on_the_same_folder_is_refused(primes, tiny_checkpoint, tmp_path, capsys):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".batch.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        rc, cap = _run(_batch_args(primes, out, tiny_checkpoint), capsys)
    assert rc == 2 and "another batch run is writing here" in cap.err


def test_unreachable_ray_address_is_one_line(primes, tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("ray")
    args = [*_batch_args(primes, tmp_path / "out", tiny_checkpoint), "--ray", "127.0.0.1:1"]
    rc, cap = _run(args, capsys)
    assert rc == 2 and cap.err == "error: cannot reach Ray at 127.0.0.1:1 (Connection refused)\n"
