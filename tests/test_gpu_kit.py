"""scripts/gpu_kit.py end to end on CPU: pack -> train (a subprocess, tiny preset, MIDI libraries
and numba blocked) -> files in a fake $OUT -> status -> unpack -> load -> `perceiver-midi eval`."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from token_splits import synthetic_data

ROOT = pathlib.Path(__file__).resolve().parent.parent
KIT_SCRIPT = ROOT / "scripts" / "gpu_kit.py"
# What the GPU machine may lack; the training path must not need any of them.
BLOCKED = "numba,pretty_midi,mido,symusic,gradio,note_seq,soundfile,midirenderer"

_spec = importlib.util.spec_from_file_location("gpu_kit", KIT_SCRIPT)
gpu_kit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_kit)


def kit(*args) -> int:
    return gpu_kit.main([str(a) for a in args])


def test_end_to_end_on_cpu(tmp_path, capsys, monkeypatch):
    data = synthetic_data(tmp_path / "data")
    pack_dir = tmp_path / "gpu_kit"
    assert kit("pack", "--data", data, "--out", pack_dir) == 0
    manifest = json.loads((pack_dir / "MANIFEST.json").read_text())
    assert set(manifest["splits"]) == {"train", "validation"}  # test stays here
    assert not (pack_dir / "test").exists()
    assert (pack_dir / "train" / "tokens.u16.xz").exists()

    out, workdir = tmp_path / "OUT", tmp_path / "work"
    env = dict(os.environ, GPU_KIT_BLOCK_IMPORTS=BLOCKED, PYTHONUNBUFFERED="1")
    settings = "batch_size=4 learning_rate=3e-3 warmup_steps=3 augment=True log_every=2"
    settings += " eval_every=4 eval_pieces=4 eval_tokens_per_piece=128 save_minutes=5"
    cmd = [sys.executable, KIT_SCRIPT, "train", "--kit", pack_dir, "--workdir", workdir]
    cmd += ["--out", out, "--minutes", "0.8", "--preset", "tiny", "--param-dtype", "bfloat16"]
    cmd += ["--cooldown-fraction", "0.5", "--export-minutes", "0.05", "--poll-seconds", "1"]
    for s in settings.split():
        cmd += ["--set", s]
    proc = subprocess.run(
        [str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=150
    )
    log = (workdir / "worker.log").read_text() if (workdir / "worker.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log

    status = json.loads((out / "gpu_status.json").read_text())
    assert status["state"] == "done", status
    worker = status["worker"]
    assert worker["numba"] is False and worker["blocked_loaded"] == []  # the block held
    assert worker["backend"] == "cpu"
    plan = status["plan"]
    assert plan["final_step"] == plan["decay_start"] + plan["decay_steps"]  # cooled down to 0
    assert plan["decay_steps"] >= 2 and plan["steps_per_s"] > 0
    rows = (workdir / "log.csv").read_text().splitlines()[1:]
    assert float(rows[-1].split(",")[4]) < 3e-3  # the last rate is below the peak
    files = status["export"]["files"]
    assert files and all((out / f).exists() for f in files)
    assert all((out / f).stat().st_size < 16 * 2**20 for f in files)
    assert len(list(out.iterdir())) <= 8
    assert (out / "worker_log.txt").exists()

    # A polling command copies the same files into its own (empty) $OUT.
    out2 = tmp_path / "OUT2"
    st = subprocess.run(
        [sys.executable, str(KIT_SCRIPT), "status", "--workdir", str(workdir), "--out", str(out2)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert st.returncode == 0, st.stdout + st.stderr
    assert "done" in st.stdout and f"step {plan['final_step']}" in st.stdout
    assert sorted(p.name for p in out2.iterdir()) == sorted(
        ["gpu_status.json", "worker_log.txt", *files]
    )

    # Here: unpack into a checkpoint folder, load it, evaluate the synthetic test split.
    ckpt = tmp_path / "checkpoints" / "gpu"
    assert kit("unpack", "--file", out2, "--out", ckpt) == 0
    from perceiver_midi.model.checkpoint import load_model, read_info
    from perceiver_midi.model.perceiver_ar import count_params

    info = read_info(ckpt)
    assert info["metadata"]["gpu_kit"]["param_dtype"] == "bfloat16"
    model = load_model(ckpt)
    assert count_params(model) == status["export"]["num_params"]
    assert (ckpt / "GPU_KIT.json").exists() and (ckpt / "log.csv").exists()

    from perceiver_midi.app.cli import main as cli

    capsys.readouterr()
    assert cli(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["split"] == "test" and math.isfinite(result["nll"]) and result["tokens"] > 0
    assert result["nll"] < 5.9  # below the untrained model's uniform ln(391) = 5.97

    # The params are the trained ones rounded to bf16.
    _, trained = gpu_kit._restore_params(workdir / "best")
    _, unpacked = gpu_kit._restore_params(ckpt)
    for name, arr in trained.items():
        expect = (gpu_kit._bf16_bits(arr).astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(unpacked[name], expect)

    # Unpacking again over its own folder works (the model card stays); others are refused.
    (ckpt / "MODEL_CARD.md").write_text("card")
    assert kit("unpack", "--file", out2 / files[0], "--out", ckpt) == 0
    assert (ckpt / "MODEL_CARD.md").read_text() == "card"
    other = tmp_path / "checkpoints" / "mine"
    other.mkdir()
    capsys.readouterr()
    assert kit("unpack", "--file", out2, "--out", other) == 2
    err = capsys.readouterr().err
    assert "not written by gpu_kit" in err and len(err.strip().splitlines()) == 1


def test_parts_reassemble_and_missing_parts_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_kit, "PART_BYTES", 1000)
    blob = np.random.default_rng(0).bytes(3500)
    names = gpu_kit.write_model_files(tmp_path, blob, step=42)
    assert names == [f"model-s0000042.tar.{i:02d}" for i in range(4)]
    for start in (tmp_path / names[2], tmp_path):
        files = gpu_kit._model_set(start)
        assert b"".join(p.read_bytes() for p in files) == blob
    (tmp_path / names[1]).unlink()
    with pytest.raises(gpu_kit.UserError, match="missing"):
        gpu_kit._model_set(tmp_path / names[0])


def test_bf16_rounding_matches_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(size=10_000).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 10_000),
            np.array([0.0, -0.0, np.inf, -np.inf, 3.3895314e38, 1e-40, 1.00390625], np.float32),
        ]
    ).astype(np.float32)
    expect = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(gpu_kit._bf16_bits(x), expect)


def test_numpy_augmentation_matches_numba():
    from perceiver_midi.tokenizer import augment as aug

    if not aug.HAVE_NUMBA:
        pytest.skip("numba not installed: nothing to compare with")
    rng = np.random.default_rng(1)
    for _ in range(400):
        n = int(rng.integers(0, 80))
        kind = rng.integers(0, 4, n)
        lo, hi = np.array([0, 3, 259, 359])[kind], np.array([3, 259, 359, 391])[kind]
        ids = rng.integers(lo, hi).astype(np.int64)
        ids[rng.random(n) < 0.1] = rng.choice([3, 130, 131, 258])  # pitches 0 and 127
        semitones, stretch = int(rng.integers(-4, 5)), float(rng.uniform(0.5, 2.0))
        out = np.empty(int(n * max(1.0, stretch) * 2) + 16, np.int64)
        k = aug._augment(ids, semitones, stretch, out)
        np.testing.assert_array_equal(aug._augment_numpy(ids, semitones, stretch), out[:k])


def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # `train` sets it; keep the test process clean
    cases = [
        (["pack", "--data", tmp_path / "nothing", "--out", tmp_path / "k"], "no prepared split"),
        (["unpack", "--file", tmp_path / "nope.tar", "--out", tmp_path / "c"], "no such file"),
        (["status", "--workdir", tmp_path / "none"], "no kit training run"),
    ]
    data = synthetic_data(tmp_path / "data")
    assert kit("pack", "--data", data, "--out", tmp_path / "kit") == 0
    train = ["train", "--kit", tmp_path / "kit", "--minutes", "1"]
    cases += [
        ([*train, "--workdir", tmp_path / "w1", "--preset", "huge"], "unknown preset"),
        ([*train, "--workdir", tmp_path / "w2", "--set", "colour=3"], "unknown setting"),
        ([*train, "--workdir", tmp_path / "w3", "--set", "decay_start=3"], "plans the schedule"),
        (["pack", "--data", data, "--out", data], "not a GPU kit"),
    ]
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    cases.append((["pack", "--data", data, "--out", repo / "kit"], "not git-ignored"))
    for argv, message in cases:
        capsys.readouterr()
        assert kit(*argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    status = json.loads((tmp_path / "w1/export/gpu_status.json").read_text())
    assert status["state"] == "failed" and "unknown preset" in status["error"]
