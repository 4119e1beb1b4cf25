"""Training: ``perceiver-midi train`` (a thin loop around a pure, jitted ``train_step``).

* Data: random crops of N + 1 tokens with Magenta's augmentation (model/data.py); the batch of a
  step is a pure function of (seed, step), and so is the dropout key: resuming from a checkpoint
  replays exactly what an uninterrupted run would have done.
* Optimisation: optax AdamW, linear warmup then cosine decay, global-norm clipping.
* Checkpoints: orbax ``CheckpointManager`` in ``WORKDIR/ckpt`` every ``save_minutes`` and on
  SIGTERM/SIGINT; the best validation params are exported with ``save_model`` to ``WORKDIR/best``.
* Data parallel over all devices (``jax.sharding``: batch axis sharded, parameters replicated);
  the same code runs on one CPU, two forced host devices, or a GPU/TPU slice.
* Logs: console progress, ``WORKDIR/log.csv``, ``WORKDIR/curve.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import signal
import time
import warnings

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from model.checkpoint import default_checkpoint, load_model, save_model
from model.config import Config, get_config
from model.data import NO_AUGMENTATION, Augmentation, TrainBatches
from model.perceiver_ar import PerceiverAR
from model.train_step import train_step
from tokenizer.dataset import TokenSplit, load_split


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    preset: str = "cpu"
    model_overrides: tuple = ()  # (("num_layers", 6), ...)
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 500
    total_steps: int = 100_000  # length of the cosine schedule
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    augment: bool = True
    log_every: int = 10
    eval_every: int = 500
    eval_pieces: int = 24  # validation subset: this many pieces ...
    eval_tokens_per_piece: int = 2048  # ... cut to this many tokens each
    save_minutes: float = 5.0
    init_from: str | None = None  # params to start from when the work dir is new

    def model_config(self) -> Config:
        return get_config(self.preset, **dict(self.model_overrides))


# -- the pure parts -------------------------------------------------------------------------------


def make_optimizer(model: PerceiverAR, tc: TrainConfig) -> nnx.Optimizer:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=tc.learning_rate,
        warmup_steps=tc.warmup_steps,
        decay_steps=max(tc.total_steps, tc.warmup_steps + 1),
        end_value=tc.learning_rate * tc.min_lr_ratio,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=tc.weight_decay),
    )
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def learning_rate(tc: TrainConfig, step: int) -> float:
    if step < tc.warmup_steps:
        return tc.learning_rate * step / max(tc.warmup_steps, 1)
    frac = min(1.0, (step - tc.warmup_steps) / max(tc.total_steps - tc.warmup_steps, 1))
    cos = 0.5 * (1 + math.cos(math.pi * frac))
    return tc.learning_rate * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * cos)


def step_rng(seed: int, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), step)


# -- sharding ---------------------------------------------------------------------------------


def data_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def replicate(model, optimizer, mesh: Mesh) -> None:
    rep = NamedSharding(mesh, PartitionSpec())
    for obj in (model, optimizer):
        state = nnx.state(obj)
        nnx.update(obj, jax.device_put(state, rep))


def shard_batch(batch: np.ndarray, mesh: Mesh) -> jax.Array:
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))


# -- checkpoints for exact resume ---------------------------------------------------------------


def _manager(workdir: pathlib.Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (workdir / "ckpt").resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )


def save_state(manager, step: int, model, optimizer) -> None:
    import orbax.checkpoint as ocp

    state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
    manager.save(step, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()


def restore_state(manager, model, optimizer) -> int | None:
    """Restores the latest checkpoint into model/optimizer; returns its step (None if none)."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    target = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    nnx.update(model, restored["model"])
    nnx.update(optimizer, restored["optimizer"])
    return int(step)


# -- the loop -----------------------------------------------------------------------------------


def validation_subset(split: TokenSplit, pieces: int, tokens_per_piece: int) -> TokenSplit:
    """A fixed, spread-out subset of a split for quick validation during training."""
    picks = np.linspace(0, len(split) - 1, min(pieces, len(split))).round().astype(int)
    parts = [np.asarray(split.piece(int(k))[:tokens_per_piece]) for k in picks]
    offsets = np.concatenate([[0], np.cumsum([p.size for p in parts])]).astype(np.int64)
    return TokenSplit(
        tokens=np.concatenate(parts), offsets=offsets, pieces=[split.pieces[k] for k in picks]
    )


class _StopFlag:
    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def build(tc: TrainConfig, workdir: pathlib.Path):
    """Model + optimizer, restored from WORKDIR/ckpt if present, else initialised."""
    config = tc.model_config()
    model = PerceiverAR(config, rngs=nnx.Rngs(tc.seed))
    optimizer = make_optimizer(model, tc)
    manager = _manager(workdir)
    step = restore_state(manager, model, optimizer)
    source = "resumed" if step is not None else "initialised"
    if step is None:
        step = 0
        init, explicit = tc.init_from, bool(tc.init_from)
        if not init and default_checkpoint() is not None:
            init = str(default_checkpoint())
        if init:
            pretrained = load_model(init)
            if pretrained.config == config:
                nnx.update(model, nnx.state(pretrained, nnx.Param))
                source = f"initialised from {init}"
            elif explicit:
                raise ValueError(f"--init-from {init}: its config differs from the training config")
    return model, optimizer, manager, step, source


def train(
    tc: TrainConfig,
    data_dir: str | os.PathLike,
    workdir: str | os.PathLike,
    *,
    max_steps: int | None = None,
    max_hours: float | None = None,
    progress: bool = True,
) -> dict:
    """Train until ``max_steps`` (absolute step) or ``max_hours`` or a signal; resumable."""
    from model.evaluate import evaluate

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "train_config.json").write_text(json.dumps(dataclasses.asdict(tc), indent=1))
    train_split = load_split(data_dir, "train")
    val = validation_subset(
        load_split(data_dir, "validation"), tc.eval_pieces, tc.eval_tokens_per_piece
    )
    model, optimizer, manager, step, source = build(tc, workdir)
    config = model.config
    mesh = data_mesh()
    if tc.batch_size % mesh.size:
        raise ValueError(f"batch_size {tc.batch_size} is not divisible by {mesh.size} devices")
    replicate(model, optimizer, mesh)
    batches = TrainBatches(
        train_split,
        seq_len=config.max_len + 1,
        num_targets=config.num_latents,
        batch_size=tc.batch_size,
        seed=tc.seed,
        augmentation=Augmentation() if tc.augment else NO_AUGMENTATION,
    )
    print(
        f"{source} at step {step}; {config.max_len} context, {config.num_latents} latents, "
        f"batch {tc.batch_size} on {mesh.size} device(s)",
        flush=True,
    )
    log_path = workdir / "log.csv"
    new_log = not log_path.exists()
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "nll", "tokens_per_s", "lr", "val_nll", "hours"])
    best_file = workdir / "best.json"
    best = json.loads(best_file.read_text())["val_nll"] if best_file.exists() else float("inf")
    t_start = time.time()
    last_save = time.time()
    window_tokens, window_t = 0, time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(initial=step, total=max_steps, unit="step", disable=not progress, dynamic_ncols=True)
    stop_reason = "max_steps"
    with _StopFlag() as flag:
        while max_steps is None or step < max_steps:
            if max_hours is not None and time.time() - t_start > max_hours * 3600:
                stop_reason = "max_hours"
                break
            if flag.stop:
                stop_reason = "signal"
                break
            batch = shard_batch(batches.batch(step), mesh)
            metrics = train_step(model, optimizer, {"tokens": batch}, step_rng(tc.seed, step))
            loss, nll, ntok = metrics["loss"], metrics["nll"], metrics["num_tokens"]
            step += 1
            bar.update(1)
            window_tokens += int(ntok)
            val_nll = ""
            if step % tc.eval_every == 0:
                t_eval = time.perf_counter()
                val_nll = evaluate(model, val, batch_size=8, progress=False)["nll"]
                window_t += time.perf_counter() - t_eval  # tokens/s counts training time only
                if val_nll < best:
                    best = val_nll
                    save_model(model, workdir / "best", metadata={"step": step, "val_nll": val_nll})
                    best_file.write_text(json.dumps({"step": step, "val_nll": val_nll}))
            if step % tc.log_every == 0 or val_nll != "":
                dt = time.perf_counter() - window_t
                tps = window_tokens / max(dt, 1e-9)
                window_tokens, window_t = 0, time.perf_counter()
                lr = learning_rate(tc, step)
                hours = (time.time() - t_start) / 3600
                writer.writerow(
                    [
                        step,
                        f"{float(loss):.4f}",
                        f"{float(nll):.4f}",
                        f"{tps:.0f}",
                        f"{lr:.3e}",
                        val_nll,
                        f"{hours:.3f}",
                    ]
                )
                log.flush()
                bar.set_postfix(
                    loss=f"{float(loss):.3f}",
                    tok_s=f"{tps:.0f}",
                    lr=f"{lr:.1e}",
                    best_val=f"{best:.3f}",
                )
                if val_nll != "":
                    plot_curve(log_path, workdir / "curve.png")
            if time.time() - last_save > tc.save_minutes * 60:
                save_state(manager, step, model, optimizer)
                last_save = time.time()
    bar.close()
    save_state(manager, step, model, optimizer)
    log.close()
    return {"step": step, "stopped": stop_reason, "best_val_nll": best}


def plot_curve(log_path: pathlib.Path, out: pathlib.Path) -> None:
    """Training NLL and validation NLL against step, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, nll, vsteps, vnll = [], [], [], []
    with open(log_path, newline="") as f:
        for row in csv.DictReader(f):
            steps.append(int(row["step"]))
            nll.append(float(row["nll"]))
            if row["val_nll"]:
                vsteps.append(int(row["step"]))
                vnll.append(float(row["val_nll"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, nll, lw=0.8, alpha=0.6, label="train NLL (batch)")
    if vsteps:
        ax.plot(vsteps, vnll, "o-", label="validation NLL")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
