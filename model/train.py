"""Training: ``perceiver-midi train`` (a thin loop around a pure, jitted ``train_step``).

* Data: random crops of N + 1 tokens with Magenta's augmentation (model/data.py); the batch of a
  step is a pure function of (seed, step), and so is the dropout key: resuming from a checkpoint
  replays exactly what an uninterrupted run would have done.
* Optimisation: optax AdamW (no weight decay on biases and norm scales), global-norm clipping,
  and a warmup-stable-decay schedule (Hägele et al. 2024): linear warmup, then a constant rate
  for as long as the run goes on. A cooldown is a *branch*: ``--branch-from MAIN`` copies the
  main run's latest state into a new work dir and decays the rate to 0 over ``decay_steps``
  (``1-sqrt`` shape by default), producing an exportable checkpoint while the main run goes on.
  ``schedule="cosine"`` keeps the classic warmup + cosine decay over ``total_steps``.
* Checkpoints: orbax ``CheckpointManager`` in ``WORKDIR/ckpt`` every ``save_minutes`` and on
  SIGTERM/SIGINT; the best validation params are exported with ``save_model`` to ``WORKDIR/best``.
* Data parallel over all devices (``jax.sharding``: batch axis sharded, parameters replicated);
  the same code runs on one CPU, two forced host devices, or a GPU/TPU slice.
* Several processes (hosts): ``init_distributed`` (``jax.distributed``) first; every process draws
  the same global batch and hands its own devices only their rows of it, so N processes train
  exactly what one process would. Every process takes part in the collective steps (train
  step, evaluation, orbax saves, stop/save decisions); only process 0 writes the logs,
  ``train_config.json``, the curve and ``best.json``. The work dir must be on a filesystem all
  hosts share.
* Logs: console progress, ``WORKDIR/log.csv``, ``WORKDIR/curve.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import signal
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from perceiver_midi.model.checkpoint import (
    CheckpointError,
    default_checkpoint,
    grow_params,
    is_additive,
    load_model,
    param_name,
    param_specs,
    params_mismatch,
    read_info,
    save_model,
)
from perceiver_midi.model.config import Config, get_config
from perceiver_midi.model.data import (
    NO_AUGMENTATION,
    Augmentation,
    Infill,
    Repeats,
    Sketches,
    TrainBatches,
)
from perceiver_midi.model.evaluate import evaluate
from perceiver_midi.model.perceiver_ar import PerceiverAR
from perceiver_midi.model.train_step import train_step
from perceiver_midi.tokenizer.dataset import TokenSplit, load_split


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    preset: str = "cpu"
    model_overrides: tuple = ()  # (("num_layers", 6), ...)
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 500
    schedule: str = "wsd"  # "wsd" (warmup-stable-decay) or "cosine"
    decay_start: int | None = None  # wsd: the step the cooldown starts (None: no cooldown)
    decay_steps: int = 0  # wsd: cooldown length; the rate reaches 0 at decay_start + decay_steps
    decay_shape: str = "1-sqrt"  # wsd cooldown: "1-sqrt" (Hägele et al.'s best) or "linear"
    total_steps: int = 100_000  # cosine: length of the schedule
    min_lr_ratio: float = 0.1  # cosine: final rate as a fraction of the peak
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    augment: bool = True
    repeat_share: float = 0.0  # crops ending in a replay of their own earlier passage (Repeats)
    repeat_max_back: int = 1500  # how far back the first playing may start, in tokens
    sketch_share: float = 0.0  # plain crops seen as a DAW sketch: on a grid, one loudness
    infill_share: float = 0.0  # infilling crops (data.Infill; the model needs Config.infill)
    infill_whole: float = 0.0  # of those, the share whose crop ends at the gap's end (the join)
    addition_lr_scale: float = 1.0  # rate multiplier of the zero-initialised additions
    infill_lr_scale: float = 1.0  # rate multiplier of the gap clock and join maps (gap_*)
    log_every: int = 10
    eval_every: int = 500
    eval_pieces: int = 24  # validation subset: this many pieces ...
    eval_tokens_per_piece: int = 2048  # ... cut to this many tokens each
    save_minutes: float = 5.0
    init_from: str | None = None  # params for a new work dir: a folder, "none", None = shipped

    def __post_init__(self):
        if self.infill_share > 0 and not dict(self.model_overrides).get("infill", False):
            raise ValueError("infill_share needs a model with infill (--set infill=True)")
        if self.schedule not in ("wsd", "cosine"):
            raise ValueError(f"schedule must be 'wsd' or 'cosine', got {self.schedule!r}")
        if self.decay_shape not in ("1-sqrt", "linear"):
            raise ValueError(f"decay_shape must be '1-sqrt' or 'linear', got {self.decay_shape!r}")
        if self.decay_start is not None and self.decay_steps < 1:
            raise ValueError("a cooldown (decay_start) needs decay_steps >= 1")

    def model_config(self) -> Config:
        return get_config(self.preset, **dict(self.model_overrides))

    @property
    def end_step(self) -> int | None:
        """The step where a wsd cooldown reaches 0 (training stops there), else None."""
        if self.schedule == "wsd" and self.decay_start is not None:
            return self.decay_start + self.decay_steps
        return None


# -- the pure parts -------------------------------------------------------------------------------


def learning_rate(tc: TrainConfig, step):
    """The rate used by the update that takes the model from ``step`` to ``step + 1``.

    Pure in ``step`` (a Python int or a traced array): the optimizer's schedule and the logs use
    this one function.
    """
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, step / max(tc.warmup_steps, 1))
    if tc.schedule == "cosine":
        span = max(tc.total_steps - tc.warmup_steps, 1)
        frac = jnp.clip((step - tc.warmup_steps) / span, 0.0, 1.0)
        cos = 0.5 * (1 + jnp.cos(jnp.pi * frac))
        after = tc.min_lr_ratio + (1 - tc.min_lr_ratio) * cos
        return tc.learning_rate * jnp.where(step < tc.warmup_steps, warm, after)
    if tc.decay_start is None:
        return tc.learning_rate * warm
    frac = jnp.clip((step - tc.decay_start) / tc.decay_steps, 0.0, 1.0)
    decay = 1.0 - jnp.sqrt(frac) if tc.decay_shape == "1-sqrt" else 1.0 - frac
    return tc.learning_rate * warm * decay


def decay_mask(params):
    """Weight decay on matrices only: biases, norm scales (1-D) are not decayed."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def addition_mask(params):
    """True for the zero-initialised additions (``checkpoint.ADDITIVE_PARAMS``): a model grown
    from a trained checkpoint starts them at 0, far from where the trained weights are."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_additive(param_name(path)), params)


def infill_mask(params):
    """True for the gap clock's, the join's and the held pitches' maps (``Config.gap_clock``,
    ``gap_join``, ``gap_held``): small maps whose signal (the last notes before a join) is rare
    in a batch, so they learn slowly at the rate that suits the rest. (The input segments,
    ``gap_segments``, are in every token of an infilling crop: they keep the common rate.)"""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: param_name(path).startswith(("gap_clock.", "gap_join.", "gap_held")), params
    )


def make_optimizer(model: PerceiverAR, tc: TrainConfig) -> nnx.Optimizer:
    parts = [
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(
            functools.partial(learning_rate, tc),
            b1=0.9,
            b2=0.98,
            weight_decay=tc.weight_decay,
            mask=decay_mask,
        ),
    ]
    if tc.addition_lr_scale != 1.0:
        parts.append(optax.masked(optax.scale(tc.addition_lr_scale), addition_mask))
    if tc.infill_lr_scale != 1.0:
        parts.append(optax.masked(optax.scale(tc.infill_lr_scale), infill_mask))
    return nnx.Optimizer(model, optax.chain(*parts), wrt=nnx.Param)


def step_rng(seed: int, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), step)


# -- sharding ---------------------------------------------------------------------------------


def init_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins a multi-process run (``jax.distributed.initialize``); call it before any other use of
    JAX. Settings left out are detected from the cluster (Cloud TPU, SLURM, Open MPI, k8s)."""
    if jax.config.jax_cpu_collectives_implementation is None:  # (older JAX: none by default)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def is_lead() -> bool:
    """True in the process that writes logs and files (process 0; the only one, usually)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(*flags: bool) -> list[bool]:
    """Each flag, true on every process when it is true on any: decisions that every process must
    take together (stop, save) even though clocks and signals differ between hosts."""
    if jax.process_count() == 1:
        return [bool(f) for f in flags]
    from jax.experimental import multihost_utils

    seen = np.asarray(multihost_utils.process_allgather(np.array(flags, np.int32)))
    return [bool(f) for f in seen.reshape(-1, len(flags)).any(axis=0)]


def data_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def replicate(model, optimizer, mesh: Mesh) -> None:
    rep = NamedSharding(mesh, PartitionSpec())
    for obj in (model, optimizer):
        state = nnx.state(obj)
        if jax.process_count() > 1:  # the same values in every process, each on its own devices
            from jax.experimental import multihost_utils

            state = multihost_utils.host_local_array_to_global_array(state, mesh, PartitionSpec())
        nnx.update(obj, jax.device_put(state, rep))


def shard_batch(batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """The global batch as one array, rows split over the mesh's devices. Across processes every
    process passes the same global batch and copies only its own devices' rows to them."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])


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


def read_train_config(workdir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig a work dir was trained with (its ``train_config.json``)."""
    raw = json.loads((pathlib.Path(workdir) / "train_config.json").read_text())
    raw["model_overrides"] = tuple(tuple(kv) for kv in raw.get("model_overrides", ()))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in raw.items() if k in known})


def has_state(workdir: str | os.PathLike) -> bool:
    work = pathlib.Path(workdir)
    return (work / "ckpt").is_dir() and _manager(work).latest_step() is not None


def branch(main_workdir: str | os.PathLike, workdir: str | os.PathLike) -> int:
    """Starts a cooldown branch: copies MAIN's latest saved state into WORKDIR/ckpt.

    Returns the step branched from. Refuses a WORKDIR that already holds training state (resume
    it instead) and a MAIN without any.
    """
    main, work = pathlib.Path(main_workdir), pathlib.Path(workdir)
    step = _manager(main).latest_step()
    if step is None:
        raise ValueError(f"{main}: no saved training state to branch from")
    if has_state(work):
        raise ValueError(f"{work}: already holds training state; resume it without --branch-from")
    sync("branch: checked")  # (every process has looked before process 0 copies)
    if is_lead():
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / f".ckpt-{step}.tmp"
        shutil.copytree(main / "ckpt" / str(step), tmp)
        (work / "ckpt").mkdir(exist_ok=True)
        os.replace(tmp, work / "ckpt" / str(step))
    sync("branch: copied")
    return int(step)


def export_best(model, directory: pathlib.Path, metadata: dict) -> None:
    """``save_model`` to ``directory``; across processes, a collective save of the replicated
    params (orbax saves need every process, and no host-local arrays) into a fixed temporary
    folder that process 0 completes (the same ``config.json`` as ``save_model``) and moves."""
    if jax.process_count() == 1:
        save_model(model, directory, metadata=metadata)
        return
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).resolve()
    tmp = directory.parent / f".{directory.name}.saving"
    if is_lead():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    sync("best: folder")
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp / "params", nnx.state(model, nnx.Param))
    ckpt.wait_until_finished()
    if is_lead():
        # Saved as spread over every process's devices, the params would restore only onto as
        # many; name one device instead, as ``save_model`` in one process does (process 0's
        # first), so that the checkpoint loads with ``load_model`` anywhere.
        one = ocp.metadata.SingleDeviceShardingMetadata.from_jax_sharding(
            jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        ).to_serialized_string()
        shardings = tmp / "params" / "_sharding"
        shardings.write_text(json.dumps(dict.fromkeys(json.loads(shardings.read_text()), one)))
        info = {"config": dataclasses.asdict(model.config), "metadata": metadata}
        (tmp / "config.json").write_text(json.dumps(info, indent=1) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    sync("best: saved")


def load_params(directory: str | os.PathLike) -> nnx.State:
    """The params of the checkpoint in ``directory`` (``load_model``'s). Across processes every
    process restores them together (orbax) onto its own first device: ``load_model`` restores
    onto the device the checkpoint names, which the other processes do not have."""
    if jax.process_count() == 1:
        return nnx.state(load_model(directory), nnx.Param)
    import orbax.checkpoint as ocp

    config = Config(**read_info(directory)["config"])
    abstract = nnx.state(nnx.eval_shape(lambda: PerceiverAR(config, rngs=nnx.Rngs(0))), nnx.Param)
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), abstract)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params_dir = pathlib.Path(directory).resolve() / "params"
            return ocp.StandardCheckpointer().restore(params_dir, target)
    except Exception as exc:  # orbax raises many types; the user needs one line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{directory}: cannot restore params ({type(exc).__name__}: {first})"
        ) from None


def build(tc: TrainConfig, workdir: pathlib.Path):
    """Model + optimizer, restored from WORKDIR/ckpt if present, else initialised.

    A new work dir starts from ``tc.init_from`` (a checkpoint folder), from random weights when it
    is ``"none"``, and from the shipped checkpoint when it is unset and the shapes match.
    """
    config = tc.model_config()
    model = PerceiverAR(config, rngs=nnx.Rngs(tc.seed))
    optimizer = make_optimizer(model, tc)
    manager = _manager(workdir)
    step = restore_state(manager, model, optimizer)
    source = "resumed" if step is not None else "initialised"
    if step is None:
        step = 0
        init, explicit = tc.init_from, bool(tc.init_from)
        if init and init.lower() == "none":
            init = None
        elif not init and default_checkpoint() is not None:
            init = str(default_checkpoint())
        if init:
            pretrained = load_params(init)
            mismatch = params_mismatch(
                param_specs(pretrained),
                param_specs(nnx.state(model, nnx.Param)),
                allow_additions=True,
            )
            if not mismatch:  # settings that shape no parameter (latents, dropout) may differ
                grow_params(pretrained, model)
                nnx.update(model, pretrained)
                source = f"initialised from {init}"
            elif explicit:
                raise ValueError(f"--init-from {init}: {mismatch}")
            else:
                source = f"initialised at random (the shipped checkpoint's {mismatch})"
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
    """Train until ``max_steps`` (absolute step), the end of a cooldown, ``max_hours`` or a
    signal; resumable. A cooldown's last step is always validated, so its final params land in
    WORKDIR/best when they are the best seen there."""
    workdir = pathlib.Path(workdir)
    lead = is_lead()
    workdir.mkdir(parents=True, exist_ok=True)
    if lead:
        (workdir / "train_config.json").write_text(json.dumps(dataclasses.asdict(tc), indent=1))
    train_split = load_split(data_dir, "train")
    val = validation_subset(
        load_split(data_dir, "validation"), tc.eval_pieces, tc.eval_tokens_per_piece
    )
    model, optimizer, manager, step, source = build(tc, workdir)
    config = model.config
    if tc.end_step is not None:
        max_steps = tc.end_step if max_steps is None else min(max_steps, tc.end_step)
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
        repeats=Repeats(share=tc.repeat_share, max_back=tc.repeat_max_back),
        sketches=Sketches(share=tc.sketch_share),
        infill=Infill(share=tc.infill_share, whole=tc.infill_whole, layout=config.infill_layout),
    )
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    if lead:
        print(
            f"{source} at step {step}; {config.max_len} context, {config.num_latents} latents, "
            f"batch {tc.batch_size} on {mesh.size} device(s){processes}",
            flush=True,
        )
    log_path = workdir / "log.csv"
    new_log = lead and not log_path.exists()
    log = open(log_path if lead else os.devnull, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "nll", "tokens_per_s", "lr", "val_nll", "hours"])
    best_file = workdir / "best.json"
    best = json.loads(best_file.read_text())["val_nll"] if best_file.exists() else float("inf")
    t_start = time.time()
    last_save = time.time()
    window_tokens, window_t = 0, time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(
        initial=step,
        total=max_steps,
        unit="step",
        disable=not (progress and lead),
        dynamic_ncols=True,
    )
    stop_reason = "max_steps"
    with _StopFlag() as flag:
        while max_steps is None or step < max_steps:
            over_time, signalled, save_due = agree(  # (the same decisions on every process)
                max_hours is not None and time.time() - t_start > max_hours * 3600,
                flag.stop,
                time.time() - last_save > tc.save_minutes * 60,
            )
            if over_time:
                stop_reason = "max_hours"
                break
            if signalled:
                stop_reason = "signal"
                break
            if save_due:
                save_state(manager, step, model, optimizer)
                last_save = time.time()
            # Every process draws the whole global batch (its rows share one random stream) and
            # copies only its own devices' rows to them.
            batch = shard_batch(batches.batch(step), mesh)
            metrics = train_step(model, optimizer, {"tokens": batch}, step_rng(tc.seed, step))
            loss, nll, ntok = metrics["loss"], metrics["nll"], metrics["num_tokens"]
            step += 1
            bar.update(1)
            window_tokens += int(ntok)
            val_nll = ""
            if step % tc.eval_every == 0 or step == tc.end_step:
                t_eval = time.perf_counter()
                val_nll = evaluate(model, val, batch_size=8, progress=False)["nll"]
                window_t += time.perf_counter() - t_eval  # tokens/s counts training time only
                if val_nll < best:  # (the same on every process: the same params and data)
                    best = val_nll
                    export_best(model, workdir / "best", {"step": step, "val_nll": val_nll})
                    if lead:
                        best_file.write_text(json.dumps({"step": step, "val_nll": val_nll}))
            if lead and (step % tc.log_every == 0 or val_nll != ""):
                dt = time.perf_counter() - window_t
                tps = window_tokens / max(dt, 1e-9)
                window_tokens, window_t = 0, time.perf_counter()
                lr = float(learning_rate(tc, step - 1))  # the rate of the step just taken
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
    bar.close()
    if manager.latest_step() != step:  # (a resumed run with nothing left to do saves nothing)
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
