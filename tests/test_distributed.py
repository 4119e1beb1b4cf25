"""Multi-process training (``jax.distributed``): two local CPU processes, each with one device and
its own rows of the global batch, train exactly what one process trains on the same batches."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from token_splits import synthetic_data

from perceiver_midi.app.cli import main
from perceiver_midi.model.checkpoint import load_model
from perceiver_midi.model.train import build, read_train_config

# `perceiver-midi train` with its train step wrapped to record each step's loss (to argv[1]).
DRIVER = """
import json, sys
import perceiver_midi.model.train as train_module
losses, step = [], train_module.train_step
def recording(*args):
    metrics = step(*args)
    losses.append(float(metrics["loss"]))
    return metrics
train_module.train_step = recording
from perceiver_midi.app.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump(losses, f)
sys.exit(code)
"""

STEPS = 4
SETTINGS = {
    "batch_size": 4,
    "learning_rate": 3e-3,
    "warmup_steps": 2,
    "log_every": 1,
    "eval_every": 3,  # one validation (and a collective export of WORKDIR/best) at step 3
    "eval_pieces": 2,
    "eval_tokens_per_piece": 64,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(model):
    return np.concatenate(
        [np.asarray(x).ravel() for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    )


def _start(out, argv, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(out), *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs: dict) -> dict:
    """{name: output} once every process ended (all killed when one hangs); asserts exit 0."""
    outs = {}
    try:
        for name, proc in procs.items():
            outs[name], _ = proc.communicate(timeout=300)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}:\n{outs[name][-3000:]}"
    return outs


def test_two_processes_train_what_one_process_trains(tiny_checkpoint, tmp_path):
    """One process trains 4 steps; two processes train 2, stop, and resume to 4 (each process
    restores the checkpoint itself): the same losses, step for step, and the same params."""
    data = synthetic_data(tmp_path / "data")
    # (initial params from a checkpoint saved by one process: every process must restore it)
    train = ["train", "--data", str(data), "--preset", "tiny", "--init-from", str(tiny_checkpoint)]
    train += [f"--set={k}={v}" for k, v in SETTINGS.items()]

    def pair(stop: int, port: int) -> dict:
        return {
            f"two.{i}.{stop}": _start(
                tmp_path / f"two.{i}.{stop}.json",
                [*train, "--steps", str(stop), "--workdir", str(tmp_path / "two")]
                + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
                + ["--process-id", str(i)],
                tmp_path,
            )
            for i in range(2)
        }

    one = _start(
        tmp_path / "one.json",
        [*train, "--steps", str(STEPS), "--workdir", str(tmp_path / "one")],
        tmp_path,
    )
    outs = _finish(pair(2, _free_port()))
    outs |= _finish(pair(STEPS, _free_port()) | {"one": one})
    assert "initialised from" in outs["two.0.2"] and "resumed at step 2" in outs["two.0.4"]
    assert "batch 4 on 2 device(s) in 2 processes" in outs["two.0.4"]
    assert "batch 4 on" not in outs["two.1.4"]  # process 0 alone reports
    for name, out in outs.items():
        stop = STEPS if name == "one" else int(name.rsplit(".", 1)[1])
        assert json.loads(out.strip().splitlines()[-1])["step"] == stop

    losses = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in outs}
    assert len(losses["one"]) == STEPS
    for i in range(2):
        losses[f"two.{i}"] = losses[f"two.{i}.2"] + losses[f"two.{i}.4"]
    assert losses["two.0"] == losses["two.1"]  # one replicated loss
    np.testing.assert_allclose(losses["two.0"], losses["one"], rtol=1e-5)
    assert losses["one"][-1] < losses["one"][0]

    # The final state (orbax, saved by both processes together) and the exported best params.
    tc = read_train_config(tmp_path / "one")
    one, _, _, step_one, _ = build(tc, tmp_path / "one")
    two, _, _, step_two, _ = build(read_train_config(tmp_path / "two"), tmp_path / "two")
    assert step_one == step_two == STEPS
    # Sums over the batch are reduced across devices in another order; Adam amplifies that a
    # little for near-zero gradients (as in test_train's sharded-step test).
    np.testing.assert_allclose(_params(two), _params(one), rtol=1e-4, atol=2e-5)
    best_one, best_two = load_model(tmp_path / "one/best"), load_model(tmp_path / "two/best")
    np.testing.assert_allclose(_params(best_two), _params(best_one), rtol=1e-4, atol=2e-5)
    assert json.loads((tmp_path / "two/best.json").read_text())["step"] == 3
    assert not list(tmp_path.glob("two/.best*"))  # no temporary folder left

    # Only process 0 wrote the log: one header, one row per step, the same losses.
    rows = (tmp_path / "two/log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 1 + STEPS
    logged = [float(r.split(",")[1]) for r in rows[1:]]
    np.testing.assert_allclose(logged, np.round(losses["one"], 4), atol=2e-4)


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--process-id", "1"], "several processes need --coordinator HOST:PORT"),
        (["--coordinator", "h:1", "--num-processes", "2"], "--process-id I"),
        (["--coordinator", "h", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
        (
            ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
            "--process-id 2: must be below --num-processes 2",
        ),
    ],
)
def test_multi_process_flags_are_checked_before_joining(tmp_path, capsys, flags, says):
    assert main(["train", "--workdir", str(tmp_path / "w"), *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
