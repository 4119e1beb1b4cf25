"""User mistakes on every subcommand: one line on stderr naming the problem, exit status 2, never
a traceback (tokenize, detokenize, prepare-data, train, eval, export)."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from perceiver_midi.app.cli import main

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples/bach_prelude_c.mid"


def run(argv, capsys) -> tuple[int, str]:
    """main(argv) -> (exit status, stderr); argparse errors exit through SystemExit."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def assert_one_line(rc: int, err: str, message: str) -> None:
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err


@pytest.fixture
def paths(tmp_path):
    """A plain file, an empty folder, a non-MIDI file, ids and a MIDI folder to (mis)use."""
    (tmp_path / "afile").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.mid").write_text("not midi")
    (tmp_path / "ids.json").write_text("[63, 308, 191]")
    (tmp_path / "midi").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "midi")
    return tmp_path


CASES = {
    "tokenize a missing file": (["tokenize", "{p}/no.mid"], "{p}/no.mid: no such file"),
    "tokenize a folder": (["tokenize", "{p}/empty"], "is a directory, not a MIDI file"),
    "tokenize a non-MIDI file": (["tokenize", "{p}/text.mid"], "not a MIDI file (no MThd"),
    "tokenize --json is gone": (["tokenize", "--json", "{p}/afile"], "unrecognized arguments"),
    "detokenize a missing file": (["detokenize", "{p}/no.json", "-o", "{p}/o.mid"], "cannot read"),
    "detokenize into a folder": (
        ["detokenize", "{p}/ids.json", "-o", "{p}/empty"],
        "{p}/empty: cannot write (Is a directory)",
    ),
    "prepare-data --out a file": (
        ["prepare-data", "--midi-dir", "{p}/midi", "--out", "{p}/afile"],
        "{p}/afile: cannot create the output folder",
    ),
    "prepare-data --out under a file": (
        ["prepare-data", "--midi-dir", "{p}/midi", "--out", "{p}/afile/sub"],
        "{p}/afile/sub: cannot create the output folder",
    ),
    "prepare-data negative workers": (
        ["prepare-data", "--midi-dir", "{p}/midi", "--out", "{p}/o", "--workers", "-1"],
        "argument --workers: must be at least 0",
    ),
    "train --workdir a file": (
        ["train", "--workdir", "{p}/afile", "--preset", "tiny"],
        "{p}/afile: exists and is not a folder",
    ),
    "train --set a word for a number": (
        ["train", "--workdir", "{p}/w", "--set", "d_model=abc"],
        "--set d_model='abc': expected int",
    ),
    "train --set a zero batch": (
        ["train", "--workdir", "{p}/w", "--set", "batch_size=0"],
        "--set batch_size=0: must be at least 1",
    ),
    "train --set a number for a flag": (
        ["train", "--workdir", "{p}/w", "--set", "augment=1"],
        "--set augment=1: expected bool",
    ),
    "train --set an unknown dtype": (
        ["train", "--workdir", "{p}/w", "--set", "dtype=float7"],
        "--set dtype='float7': expected a float dtype",
    ),
    "train --set preset": (["train", "--workdir", "{p}/w", "--set", "preset=cpu"], "use --preset"),
    "train --set without =": (["train", "--workdir", "{p}/w", "--set", "lr"], "expected KEY=VALUE"),
    "train negative --steps": (
        ["train", "--workdir", "{p}/w", "--steps", "-1"],
        "argument --steps: must be at least 0",
    ),
    "train --init-from nothing": (
        ["train", "--workdir", "{p}/w", "--preset", "tiny", "--init-from", "{p}/nockpt"],
        "--init-from: {p}/nockpt: no such checkpoint",
    ),
    "train without data": (
        "train --workdir {p}/w --init-from none --data {p}/empty --maestro {p}/nomaestro".split(),
        "{p}/empty: no prepared data, and no MAESTRO at {p}/nomaestro",
    ),
    "eval a missing checkpoint": (["eval", "--checkpoint", "{p}/nockpt"], "no such checkpoint"),
    "eval a file as checkpoint": (
        ["eval", "--checkpoint", "{p}/afile"],
        "{p}/afile: not a checkpoint (a file",
    ),
    "eval an empty folder": (
        ["eval", "--checkpoint", "{p}/empty"],
        "{p}/empty: not a checkpoint (no config.json)",
    ),
    "eval a zero batch": (
        ["eval", "--checkpoint", "{p}/empty", "--batch-size", "0"],
        "argument --batch-size: must be at least 1",
    ),
    "eval an unknown split": (["eval", "--split", "dev"], "argument --split: invalid choice"),
    "export a missing work dir": (
        ["export", "--workdir", "{p}/nowhere", "--out", "{p}/e"],
        "{p}/nowhere: no such training work dir",
    ),
    "export an empty work dir": (
        ["export", "--workdir", "{p}/empty", "--out", "{p}/e"],
        "{p}/empty/best: no best checkpoint yet",
    ),
    "no command": ([], "the following arguments are required: COMMAND"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistake_is_one_line_exit_2(case, paths, capsys):
    argv, message = CASES[case]
    rc, err = run([a.format(p=paths) for a in argv], capsys)
    assert_one_line(rc, err, message.format(p=paths))


def test_eval_missing_and_empty_split(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "data"
    args = ["eval", "--checkpoint", tiny_checkpoint, "--data", data, "--maestro", tmp_path / "no"]
    rc, err = run([*args, "--split", "validation"], capsys)
    assert_one_line(rc, err, f"{data}: no prepared data, and no MAESTRO at {tmp_path / 'no'}")
    split = data / "test"  # a prepared split without pieces
    split.mkdir(parents=True)
    (split / "tokens.u16").write_bytes(b"")
    np.zeros(1, "<i8").tofile(split / "offsets.i64")
    (split / "pieces.jsonl").write_text("")
    (split / "DONE.json").write_text("{}")
    rc, err = run([*args, "--split", "test"], capsys)
    assert_one_line(rc, err, f"{split}: the split has no pieces to evaluate")


def test_checkpoint_of_another_shape_names_the_parameters(tiny_checkpoint, tmp_path, capsys):
    # eval: a checkpoint whose config.json does not describe its params.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    info = json.loads((ckpt / "config.json").read_text())
    info["config"]["num_layers"] += 1
    (ckpt / "config.json").write_text(json.dumps(info))
    rc, err = run(["eval", "--checkpoint", ckpt], capsys)
    layer = info["config"]["num_layers"] - 1
    assert_one_line(rc, err, f"{ckpt}: params/ do not fit config.json: layers.{layer}.")
    assert "is missing from the checkpoint" in err
    # train --init-from a checkpoint of another width.
    argv = ["train", "--workdir", tmp_path / "w", "--preset", "tiny", "--set", "d_model=32"]
    rc, err = run([*argv, "--init-from", tiny_checkpoint], capsys)
    assert_one_line(rc, err, f"--init-from {tiny_checkpoint}: its params do not fit")
    assert "has shape (" in err and "the model expects (" in err
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_resume_with_another_model_shape_is_refused(tmp_path, capsys):
    from perceiver_midi.model.train import TrainConfig, build, save_state

    work = tmp_path / "w"
    tc = TrainConfig(preset="tiny", init_from="none")
    model, optimizer, manager, _, _ = build(tc, work)
    save_state(manager, 3, model, optimizer)
    record = json.dumps({"preset": "tiny", "init_from": "none"})
    (work / "train_config.json").write_text(record)
    rc, err = run(["train", "--workdir", work, "--preset", "tiny", "--set", "num_layers=1"], capsys)
    assert_one_line(rc, err, f"{work}: holds training state of another model shape (layers.1.")
    assert (work / "train_config.json").read_text() == record  # the record stays as it was


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "perceiver_midi.app.cli",
            "export",
            "--workdir",
            str(tmp_path),
            "--out",
            "x",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {tmp_path}/best: no best checkpoint yet")
    assert proc.stderr.count("\n") == 1
