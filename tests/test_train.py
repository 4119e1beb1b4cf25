"""Training: loss drops, exact resume, data-parallel equals single device, eval/train CLI."""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from token_splits import synthetic_data

from perceiver_midi.app.cli import main
from perceiver_midi.model.checkpoint import default_checkpoint, load_model, save_model
from perceiver_midi.model.train import TrainConfig, build, make_optimizer, step_rng, train
from perceiver_midi.model.train_step import train_step
from perceiver_midi.tokenizer.dataset import load_split

ROOT = pathlib.Path(__file__).resolve().parent.parent


TINY = TrainConfig(
    preset="tiny",
    batch_size=4,
    learning_rate=3e-3,
    warmup_steps=5,
    total_steps=200,
    augment=False,
    log_every=5,
    eval_every=20,
    eval_pieces=4,
    eval_tokens_per_piece=128,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("data"))


def test_tiny_training_loss_drops(data, tmp_path):
    result = train(TINY, data, tmp_path / "w", max_steps=60, progress=False)
    assert result["step"] == 60
    rows = (tmp_path / "w/log.csv").read_text().splitlines()[1:]
    nll = [float(r.split(",")[2]) for r in rows]
    assert nll[-1] < nll[0] - 1.5  # from ~ln(391) = 5.97 to well below
    assert result["best_val_nll"] < 4.5
    assert (tmp_path / "w/curve.png").stat().st_size > 1000
    assert (tmp_path / "w/best/config.json").exists()


def _params(model):
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


def test_interrupt_and_resume_is_bit_identical(data, tmp_path):
    tc = dataclasses.replace(TINY, augment=True, eval_every=1000)
    train(tc, data, tmp_path / "straight", max_steps=8, progress=False)
    train(tc, data, tmp_path / "resumed", max_steps=5, progress=False)  # "interrupted" at 5
    train(tc, data, tmp_path / "resumed", max_steps=8, progress=False)  # new process state
    a, _, _, step_a, _ = build(tc, tmp_path / "straight")
    b, _, _, step_b, _ = build(tc, tmp_path / "resumed")
    assert step_a == step_b == 8
    jax.tree.map(np.testing.assert_array_equal, _params(a), _params(b))


def test_sigterm_saves_and_exits(data, tmp_path):
    """A real training process gets SIGTERM, saves its step, and a re-run resumes from it."""
    work = tmp_path / "w"
    code = (
        "import sys; sys.argv = ['perceiver-midi', 'train', '--workdir', sys.argv[1], '--data',"
        " sys.argv[2], '--preset', 'tiny', '--set', 'eval_every=100000', '--set', 'batch_size=2'];"
        " from app.cli import main; sys.exit(main())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(work), str(data)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = work / "log.csv"
    for _ in range(600):  # wait (bounded) until it has logged some steps
        if log.exists() and len(log.read_text().splitlines()) > 3:
            break
        try:
            proc.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
    proc.terminate()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["stopped"] == "signal" and result["step"] >= 30
    _, _, _, step, source = build(TrainConfig(preset="tiny", batch_size=2, eval_every=100000), work)
    assert source == "resumed" and step == result["step"]


def test_sharded_step_equals_single_device(tmp_path):
    """The same step on 2 forced host devices (batch sharded) equals 1 device."""
    script = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[1]
import jax, numpy as np
from flax import nnx
from perceiver_midi.model.perceiver_ar import PerceiverAR
from perceiver_midi.model.train import TrainConfig, make_optimizer, step_rng, data_mesh, replicate
from perceiver_midi.model.train_step import train_step
from perceiver_midi.model.train import shard_batch
tc = TrainConfig(preset="tiny", batch_size=4, warmup_steps=1)
model = PerceiverAR(tc.model_config(), rngs=nnx.Rngs(0))
opt = make_optimizer(model, tc)
mesh = data_mesh()
assert mesh.size == int(sys.argv[1])
replicate(model, opt, mesh)
batch = np.random.default_rng(0).integers(3, 391, (4, 65)).astype(np.int32)
for step in range(3):
    train_step(model, opt, {"tokens": shard_batch(batch, mesh)}, step_rng(0, step))
params = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
flat = np.concatenate([x.ravel() for x in jax.tree.leaves(params)])
np.save(sys.argv[2], flat)
"""
    outs = []
    for n in (1, 2):
        out = tmp_path / f"p{n}.npy"
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        subprocess.run(
            [sys.executable, "-c", script, str(n), str(out)], check=True, env=env, cwd=ROOT
        )
        outs.append(np.load(out))
    # Float sums are reduced in a different order across devices; Adam amplifies that a little
    # for near-zero gradients (update steps are ~1e-3 here).
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=2e-5)
    assert np.abs(outs[0]).sum() > 0


def test_eval_cli_prints_json_last_line(data, tmp_path, capsys):
    model_dir = tmp_path / "ckpt"
    tc = TINY
    train(tc, data, tmp_path / "w", max_steps=20, progress=False)
    assert main(["export", "--workdir", str(tmp_path / "w"), "--out", str(model_dir)]) == 0
    capsys.readouterr()
    args = ["eval", "--checkpoint", str(model_dir), "--data", str(data), "--split", "test"]
    assert main([*args, "--json", "--compare-context", "32"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    test_tokens = int(load_split(data, "test").offsets[-1])
    assert last["tokens"] == test_tokens and last["pieces"] == 5 and last["context"] == 64
    assert 0 < last["nll"] < 6.5 and "32" in last["at_context"]


def test_train_cli_rejects_bad_settings(tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path), "--set", "nope=1"]) == 2
    assert "unknown setting" in capsys.readouterr().err
    assert main(["train", "--workdir", str(tmp_path), "--preset", "huge"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_checkpoint_round_trip(tmp_path):
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    tc = TINY
    model = PerceiverAR(tc.model_config(), rngs=nnx.Rngs(5))
    save_model(model, tmp_path / "m", metadata={"note": "x"})
    again = load_model(tmp_path / "m")
    x = np.random.default_rng(0).integers(3, 391, (2, 64)).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(again(x)))
    opt = make_optimizer(again, tc)  # a loaded model trains
    train_step(again, opt, {"tokens": np.concatenate([x, x[:, :1]], 1)}, step_rng(0, 0))


def test_checkpoint_that_does_not_fit_names_what_differs(tiny_checkpoint, tmp_path):
    import jax.numpy as jnp

    from perceiver_midi.model.checkpoint import CheckpointError
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    # Another width: the parameter with both shapes.
    with pytest.raises(CheckpointError) as exc:
        load_model(tiny_checkpoint, d_model=32)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{tiny_checkpoint}: params/ do not fit config.json")
    assert "cross.kv.kernel has shape (64, 128) in the checkpoint, the model expects (32, 64)" in (
        msg
    )
    assert "more differences" in msg
    # config.json saying more layers than saved: parameters missing; fewer: parameters extra.
    missing = "layers.2.mlp.fc1.bias (128,) float32 is missing from the checkpoint"
    extra = "layers.1.mlp.fc1.bias (128,) float32 is in the checkpoint but not in the model"
    for layers, says in [(3, missing), (1, extra)]:
        ckpt = tmp_path / f"layers{layers}"
        shutil.copytree(tiny_checkpoint, ckpt)
        info = json.loads((ckpt / "config.json").read_text())
        info["config"]["num_layers"] = layers
        (ckpt / "config.json").write_text(json.dumps(info))
        with pytest.raises(CheckpointError, match=re.escape(says)):
            load_model(ckpt)
    # A parameter saved in another dtype.
    model = PerceiverAR(TINY.model_config(), rngs=nnx.Rngs(0))
    model.cross.kv.kernel.set_value(model.cross.kv.kernel.get_value().astype(jnp.bfloat16))
    save_model(model, tmp_path / "bf16")
    dtype = "cross.kv.kernel is bfloat16 in the checkpoint, the model expects float32$"
    with pytest.raises(CheckpointError, match=dtype):
        load_model(tmp_path / "bf16")
    # No params at all.
    (tmp_path / "noparams").mkdir()
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "noparams")
    with pytest.raises(CheckpointError, match="not a checkpoint \\(no params/ folder\\)"):
        load_model(tmp_path / "noparams")


def test_params_mismatch_lists_the_first_differences():
    from perceiver_midi.model.checkpoint import params_mismatch

    f32 = "float32"
    found = {"a": ((2,), f32), "b": ((3,), f32), "c": ((1,), "bfloat16"), "x": ((1,), f32)}
    expected = {"a": ((2,), f32), "b": ((4,), f32), "c": ((1,), f32), "d": ((5, 6), f32)}
    assert params_mismatch(found, found) == ""
    assert params_mismatch(found, expected, limit=10) == (
        "b has shape (3,) in the checkpoint, the model expects (4,); "
        "c is bfloat16 in the checkpoint, the model expects float32; "
        "d (5, 6) float32 is missing from the checkpoint; "
        "x (1,) float32 is in the checkpoint but not in the model"
    )
    assert params_mismatch(found, expected, limit=1).endswith("(and 3 more differences)")


@pytest.mark.skipif(default_checkpoint() is None, reason="no shipped checkpoint in checkpoints/")
def test_shipped_checkpoint_loads_and_generates():
    from perceiver_midi.model.sampler import sample

    model = load_model()
    (new,) = sample(model, [np.array([], np.int32)], max_new_tokens=64, seed=0)
    assert 1 <= new.size <= 64 and new.min() >= 3 and new.max() < 391


# -- schedule, weight decay, initialisation, cooldown branches -----------------------------------


@pytest.mark.parametrize(
    "settings, step, expected",
    [
        ({}, 0, 0.0),  # warmup from 0 ...
        ({}, 250, 5e-4),
        ({}, 500, 1e-3),  # ... to the peak, then constant for as long as the run goes on
        ({}, 10**6, 1e-3),
        ({"decay_start": 1000, "decay_steps": 400}, 999, 1e-3),
        ({"decay_start": 1000, "decay_steps": 400}, 1100, 1e-3 * (1 - 0.5)),  # 1 - sqrt(1/4)
        ({"decay_start": 1000, "decay_steps": 400}, 1400, 0.0),
        ({"decay_start": 1000, "decay_steps": 400}, 5000, 0.0),
        ({"decay_start": 1000, "decay_steps": 400, "decay_shape": "linear"}, 1100, 7.5e-4),
        ({"schedule": "cosine", "total_steps": 1500}, 1000, 1e-3 * (0.1 + 0.9 * 0.5)),
        ({"schedule": "cosine", "total_steps": 1500}, 9999, 1e-4),
    ],
)
def test_learning_rate_table(settings, step, expected):
    from perceiver_midi.model.train import learning_rate

    tc = TrainConfig(learning_rate=1e-3, warmup_steps=500, **settings)
    assert float(learning_rate(tc, step)) == pytest.approx(expected, abs=1e-9)


def test_bad_schedule_settings_refused():
    with pytest.raises(ValueError, match="decay_steps"):
        TrainConfig(decay_start=10)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")


def test_weight_decay_skips_biases_and_norm_scales():
    """With zero gradients, AdamW's update is the decay alone: matrices shrink, 1-D params don't."""
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    tc = dataclasses.replace(TINY, warmup_steps=1, weight_decay=0.5)
    model = PerceiverAR(tc.model_config(), rngs=nnx.Rngs(0))
    opt = make_optimizer(model, tc)
    before = _params(model)
    opt.update(model, jax.tree.map(np.zeros_like, nnx.state(model, nnx.Param)))  # step 0: lr 0
    opt.update(model, jax.tree.map(np.zeros_like, nnx.state(model, nnx.Param)))
    after = _params(model)
    kinds = {1: 0, 2: 0}
    for (path, b), a in zip(
        jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after), strict=True
    ):
        if b.ndim == 1:
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
            kinds[1] += 1
        elif np.abs(b).sum() > 0:  # (zero-initialised matrices stay zero)
            assert np.abs(a).sum() < np.abs(b).sum(), jax.tree_util.keystr(path)
            kinds[2] += 1
    assert kinds[1] > 5 and kinds[2] > 5  # both kinds exist (norm scales, biases, kernels)


def test_init_from_none_shipped_and_mismatch(tmp_path):
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    model_dir = tmp_path / "ckpt"
    save_model(PerceiverAR(TINY.model_config(), rngs=nnx.Rngs(7)), model_dir)
    ref = _params(load_model(model_dir))
    # Latents and dropout shape no parameter: a checkpoint initialises such a config.
    tc = dataclasses.replace(
        TINY, init_from=str(model_dir), model_overrides=(("num_latents", 32), ("dropout", 0.2))
    )
    model, _, _, step, source = build(tc, tmp_path / "a")
    assert step == 0 and source.startswith("initialised from")
    jax.tree.map(np.testing.assert_array_equal, _params(model), ref)
    # "none" trains from scratch on purpose.
    model, _, _, _, source = build(dataclasses.replace(TINY, init_from="none"), tmp_path / "b")
    assert source == "initialised"
    differs = jax.tree.map(lambda a, b: not np.array_equal(a, b), _params(model), ref)
    assert any(jax.tree.leaves(differs))
    # A shape that differs is refused with the parameter named.
    bad = dataclasses.replace(TINY, init_from=str(model_dir), model_overrides=(("d_model", 32),))
    with pytest.raises(ValueError, match=r"cross\.kv\.kernel has shape \(64, 128\) in the"):
        build(bad, tmp_path / "c")
    # The note state is a zero-initialised addition: the checkpoint initialises the rest, and the
    # grown model computes the checkpoint's function.
    grown = dataclasses.replace(
        TINY, init_from=str(model_dir), model_overrides=(("note_state", True),)
    )
    model, _, _, step, source = build(grown, tmp_path / "d")
    assert step == 0 and source.startswith("initialised from")
    assert not np.any(np.asarray(model.note_in.kernel[...]))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 359, size=(1, 64)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(load_model(model_dir)(ids)))
    # So are the cross-attention's smeared keys and queries.
    smeared = dataclasses.replace(
        TINY,
        init_from=str(model_dir),
        model_overrides=(("cross_smear", 3), ("latent_smear", 2)),
    )
    model, _, _, step, source = build(smeared, tmp_path / "e")
    assert step == 0 and source.startswith("initialised from")
    assert model.cross.k_smear.shape == (3, 64, 64) and not np.any(model.cross.k_smear[...])
    assert model.layers[1].q_smear.shape == (2, 64, 64) and not np.any(model.layers[1].q_smear[...])
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(load_model(model_dir)(ids)))


def test_cooldown_branch_equals_one_uninterrupted_run(data, tmp_path):
    """A branch of the main run at step 6 that cools down over 4 steps gives the same params as
    one run whose schedule had that cooldown from the start; the main run is left untouched."""
    tc = dataclasses.replace(TINY, augment=True, eval_every=1000, save_minutes=1e9)
    train(tc, data, tmp_path / "main", max_steps=6, progress=False)
    main_params = _params(build(tc, tmp_path / "main")[0])
    args = ["train", "--workdir", str(tmp_path / "cool"), "--data", str(data)]
    assert main([*args, "--branch-from", str(tmp_path / "main"), "--cooldown-steps", "4"]) == 0
    cooled = dataclasses.replace(tc, decay_start=6, decay_steps=4)
    train(cooled, data, tmp_path / "straight", max_steps=50, progress=False)  # stops at 10
    a, _, _, step_a, _ = build(cooled, tmp_path / "straight")
    b, _, _, step_b, _ = build(cooled, tmp_path / "cool")
    assert step_a == step_b == 10
    jax.tree.map(np.testing.assert_array_equal, _params(a), _params(b))
    # The last cooldown step was validated and exported as the branch's best.
    best = json.loads((tmp_path / "cool/best.json").read_text())
    assert best["step"] == 10
    jax.tree.map(
        np.testing.assert_array_equal, _params(load_model(tmp_path / "cool/best")), _params(b)
    )
    m, _, _, step_m, _ = build(tc, tmp_path / "main")
    assert step_m == 6
    jax.tree.map(np.testing.assert_array_equal, _params(m), main_params)
    # Re-running the command resumes the branch (here: nothing is left to do).
    assert main([*args, "--branch-from", str(tmp_path / "main"), "--cooldown-steps", "4"]) == 0
    jax.tree.map(
        np.testing.assert_array_equal, _params(build(cooled, tmp_path / "cool")[0]), _params(b)
    )


def test_branch_cli_errors(tmp_path, capsys):
    args = ["train", "--workdir", str(tmp_path / "cool"), "--branch-from", str(tmp_path / "x")]
    assert main(args) == 2
    assert "--cooldown-steps" in capsys.readouterr().err
    assert main([*args, "--cooldown-steps", "5"]) == 2
    assert "not a training work dir" in capsys.readouterr().err


def test_export_replaces_only_a_checkpoint_folder(tiny_checkpoint, tmp_path, capsys):
    import shutil

    work = tmp_path / "w"
    work.mkdir()
    shutil.copytree(tiny_checkpoint, work / "best")
    out = tmp_path / "ckpt"
    export = ["export", "--workdir", str(work), "--out"]
    (tmp_path / ".ckpt.tmp").mkdir()  # the temp name of earlier versions: not ours to delete
    (tmp_path / ".ckpt.tmp" / "keep.txt").write_text("mine")
    assert main([*export, str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "params"}
    # Re-export over a checkpoint this tool wrote replaces it and keeps its documentation.
    (out / "MODEL_CARD.md").write_text("card")
    (out / "curve.png").write_bytes(b"png")
    (out / "config.json").write_text(json.dumps({"config": {"stale": 1}}))
    assert main([*export, str(out)]) == 0
    assert (out / "MODEL_CARD.md").read_text() == "card" and (out / "curve.png").exists()
    assert load_model(out).config == load_model(tiny_checkpoint).config
    capsys.readouterr()
    # A user's folder (or one that is a checkpoint plus a file of theirs, or a file) survives.
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    (out / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for target in (home, out, tmp_path / "file", tmp_path):
        before = sorted(str(p) for p in target.rglob("*")) if target.is_dir() else None
        assert main([*export, str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{target}: exists and is not a checkpoint folder" in err
        if target.is_dir():
            assert sorted(str(p) for p in target.rglob("*")) == before
    assert (home / "notes.txt").read_text() == "mine" and (out / "notes.txt").exists()
    assert (tmp_path / "file").read_text() == "mine"
    assert (tmp_path / ".ckpt.tmp" / "keep.txt").read_text() == "mine"
    # No temporary folders are left behind; an empty folder is fine to export into.
    assert {p.name for p in tmp_path.iterdir()} == {"w", "ckpt", ".ckpt.tmp", "home", "file"}
    assert main([*export, str(home / "sub")]) == 0 and main([*export, str(home / "sub")]) == 0
    (home / "empty").mkdir()
    assert main([*export, str(home / "empty")]) == 0
    assert {p.name for p in home.iterdir()} == {"notes.txt", "sub", "empty"}
