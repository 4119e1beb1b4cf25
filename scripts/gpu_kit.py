#!/usr/bin/env python3
"""GPU kit: turn a rare, short GPU lease into the best model it can train (see scripts/GPU_KIT.md).

    python scripts/gpu_kit.py pack --data work/data --out gpu_kit                # here
    python3 scripts/gpu_kit.py train --kit gpu_kit --workdir /tmp/gpu_train \\
        --minutes 9 --preset gpu                                                # on the GPU
    python3 scripts/gpu_kit.py status --workdir /tmp/gpu_train --out $OUT --wait 570   # ditto
    python scripts/gpu_kit.py unpack --file <files that came back> --out checkpoints/maestro-gpu

``pack`` writes the prepared train + validation tokens, lzma-compressed, into a git-ignored folder
that the device tool carries. ``train`` (start it with ``setsid -f``) unpacks them and runs
``model.train.train`` in a worker process: a stable phase at the peak rate until
``1 - cooldown_fraction`` of the time budget, then a cooldown to 0 whose length in steps comes
from the step rate measured in the stable phase. Every ``--export-minutes`` it packs the best
validation params (bf16 when float32 would not come back) into ``WORKDIR/export`` as
``model-sSTEP.tar`` (split into ``.tar.NN`` parts of < 16 MiB when larger) with
``gpu_status.json``; ``status`` prints progress and copies those files into ``--out`` ($OUT).
``unpack`` reassembles a normal float32 checkpoint folder here; evaluate it with
``perceiver-midi eval --checkpoint DIR --split test --json``.

The training path needs only numpy, JAX, flax, optax and orbax (tqdm, matplotlib if present):
``tokenizer`` works without numba. Errors a user can fix are one line and exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import lzma
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if __name__ == "__main__" and "perceiver_midi" not in sys.modules:
    # Run as a script, the kit uses the perceiver_midi of its own clone, installed or not (the GPU
    # machine gets the working tree and no install): a namespace whose folder is the repo root,
    # where app/, model/, tokenizer/ and checkpoints/ are, as `pip install -e .` maps them.
    import importlib.machinery
    import importlib.util

    _spec = importlib.machinery.ModuleSpec("perceiver_midi", None, is_package=True)
    _spec.submodule_search_locations = [str(ROOT)]
    sys.modules["perceiver_midi"] = importlib.util.module_from_spec(_spec)

# Test hook: GPU_KIT_BLOCK_IMPORTS=numba,mido makes those imports fail here and in the worker,
# which is how the tests prove that training needs nothing beyond numpy/JAX/flax/optax/orbax.
BLOCKED = [m.strip() for m in os.environ.get("GPU_KIT_BLOCK_IMPORTS", "").split(",") if m.strip()]
for _name in BLOCKED:
    sys.modules[_name] = None  # type: ignore[assignment]

KIT_FORMAT = 1
MODEL_FORMAT = 1
KIT_SPLITS = ("train", "validation")  # test stays here: it is evaluated here
SPLIT_FILES = ("offsets.i64", "pieces.jsonl", "DONE.json")
MIB = 2**20
PART_BYTES = 15 * MIB  # each file that comes back must be < 16 MiB
MAX_RETURN_BYTES = 58 * MIB  # at most 64 MiB come back: parts + status + log tail
MAX_KIT_BYTES = 48 * MIB
TREE_LIMIT = 64 * MIB  # what travels to the device: working tree + carried folders
STATUS_FILE = "gpu_status.json"
LOG_TAIL = "worker_log.txt"
MARKER = "GPU_KIT.json"  # in a checkpoint folder that `unpack` wrote
MODEL_RE = re.compile(r"^model-s(\d+)\.tar(\.\d\d)?$")

# Kit presets: a model preset of model/config.py plus model and training overrides. "gpu" was
# sized (an estimate, never run on a GPU) for ~20 minutes on one H100 in bf16 (28.8 M parameters,
# 4096 context, 1024 latents, 32 x 1024 = 32k target tokens a step); "gpu-small" (12.7 M) is
# the cheaper, smaller-to-ship one. A lease is now 15 minutes in all: --minutes defaults to 9.
KIT_PRESETS: dict[str, dict] = {
    "gpu": {
        "preset": "paper",
        "model": {
            "max_len": 4096,
            "num_latents": 1024,
            "d_model": 512,
            "num_heads": 8,
            "num_layers": 8,
            "mlp_ratio": 4,
            "input_dim": 512,
            "cross_heads": 8,
            "dropout": 0.1,
            "cross_attend_dropout": 0.15,
            "dtype": "bfloat16",
        },
        "train": {
            "batch_size": 32,
            "learning_rate": 6e-4,
            "warmup_steps": 500,
            "log_every": 50,
            "eval_every": 250,
            "eval_pieces": 48,
            "eval_tokens_per_piece": 4096,
            "save_minutes": 5.0,
        },
    },
    "gpu-small": {
        "preset": "paper",
        "model": {
            "max_len": 4096,
            "num_latents": 1024,
            "d_model": 384,
            "num_heads": 6,
            "num_layers": 6,
            "mlp_ratio": 4,
            "input_dim": 384,
            "cross_heads": 6,
            "dropout": 0.1,
            "cross_attend_dropout": 0.15,
            "dtype": "bfloat16",
        },
        "train": {
            "batch_size": 32,
            "learning_rate": 8e-4,
            "warmup_steps": 500,
            "log_every": 50,
            "eval_every": 250,
            "eval_pieces": 48,
            "eval_tokens_per_piece": 4096,
            "save_minutes": 5.0,
        },
    },
}


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


# -- small helpers ------------------------------------------------------------------------------


def _write_atomic(path: pathlib.Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _read_json(path: pathlib.Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return contextlib.nullcontext(type("NoBar", (), {"update": lambda self, n: None})())
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True)


# -- pack (here) --------------------------------------------------------------------------------


def _git_ignored(path: pathlib.Path) -> bool | None:
    """True/False if ``path`` is inside a git checkout, None when git cannot tell."""
    cwd = path.parent
    while not cwd.exists():
        cwd = cwd.parent
    try:
        r = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=cwd, capture_output=True)
    except OSError:
        return None
    return {0: True, 1: False}.get(r.returncode)


def _tree_bytes(repo: pathlib.Path) -> int | None:
    """Size of what the device tool sends: tracked + untracked-not-ignored files."""
    try:
        r = subprocess.run(
            ["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"],
            cwd=repo,
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in set(r.stdout.decode(errors="replace").split("\0")) - {""}:
        with contextlib.suppress(OSError):
            total += (repo / name).stat().st_size
    return total


def cmd_pack(args) -> int:
    data, out = pathlib.Path(args.data), pathlib.Path(args.out)
    for split in KIT_SPLITS:
        if not (data / split / "DONE.json").exists():
            raise UserError(f"{data / split}: no prepared split (run prepare-data first)")
    ours = {"MANIFEST.json", ".staging", *KIT_SPLITS}
    if out.exists() and not (out.is_dir() and {p.name for p in out.iterdir()} <= ours):
        raise UserError(f"{out}: exists and is not a GPU kit; choose another --out")
    if _git_ignored(out.resolve() / "MANIFEST.json") is False:
        raise UserError(
            f"{out}: not git-ignored; add it to .gitignore and .git/info/exclude "
            "(MAESTRO-derived data must never be committed, and `carry` takes ignored paths)"
        )
    staging = out / ".staging"  # inside the ignored folder: a killed run leaves nothing to commit
    shutil.rmtree(staging, ignore_errors=True)
    manifest = {"gpu_kit": KIT_FORMAT, "splits": {}}
    try:
        for split in KIT_SPLITS:
            src, dst = data / split, staging / split
            dst.mkdir(parents=True)
            raw = (src / "tokens.u16").read_bytes()
            comp = lzma.LZMACompressor(preset=6)
            with open(dst / "tokens.u16.xz", "wb") as f, _progress(len(raw), split) as bar:
                for i in range(0, len(raw), 4 * MIB):
                    f.write(comp.compress(raw[i : i + 4 * MIB]))
                    bar.update(min(4 * MIB, len(raw) - i))
                f.write(comp.flush())
            for name in SPLIT_FILES:
                shutil.copy2(src / name, dst / name)
            offsets = (src / "offsets.i64").read_bytes()
            manifest["splits"][split] = {
                "tokens": len(raw) // 2,
                "pieces": max(len(offsets) // 8 - 1, 0),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "bytes": len(raw),
                "compressed": (dst / "tokens.u16.xz").stat().st_size,
            }
        kit_bytes = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        for split, m in manifest["splits"].items():
            print(
                f"{split}: {m['pieces']} pieces, {m['tokens']:,} tokens, "
                f"{_mib(m['bytes'])} -> {_mib(m['compressed'])}"
            )
        print(f"kit: {_mib(kit_bytes)} in {out}")
        if kit_bytes > MAX_KIT_BYTES:
            raise UserError(f"{out}: the kit is {_mib(kit_bytes)}, over {_mib(MAX_KIT_BYTES)}")
        tree = _tree_bytes(ROOT) if out.resolve().is_relative_to(ROOT) else None
        if tree is not None:
            total = tree + kit_bytes
            print(
                f"working tree {_mib(tree)} + kit {_mib(kit_bytes)} = {_mib(total)} "
                f"of the {_mib(TREE_LIMIT)} that may travel"
            )
            if total > TREE_LIMIT - 4 * MIB:
                raise UserError(f"working tree + kit = {_mib(total)}: too close to 64 MiB")
        (out / "MANIFEST.json").unlink(missing_ok=True)  # no manifest: not a kit until done
        for split in KIT_SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
            os.replace(staging / split, out / split)
        _write_atomic(out / "MANIFEST.json", json.dumps(manifest, indent=1) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"carry it with the device tool: carry=[{str(out)!r}]")
    return 0


def unpack_data(kit: pathlib.Path, data: pathlib.Path) -> dict:
    """The kit's splits as a prepare-data folder (``tokenizer.dataset.load_split`` reads it)."""
    manifest = _read_json(kit / "MANIFEST.json")
    if not manifest or manifest.get("gpu_kit") != KIT_FORMAT:
        raise UserError(f"{kit}: not a GPU kit (no MANIFEST.json; run `gpu_kit.py pack` here)")
    for split, m in manifest["splits"].items():
        dst = data / split
        done = _read_json(dst / "KIT.json", {}) or {}
        if done.get("sha256") == m["sha256"] and (dst / "DONE.json").exists():
            continue
        tmp = data / f".{split}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        h = hashlib.sha256()
        dec = lzma.LZMADecompressor()
        with open(kit / split / "tokens.u16.xz", "rb") as f, open(tmp / "tokens.u16", "wb") as g:
            for chunk in iter(lambda f=f: f.read(4 * MIB), b""):
                raw = dec.decompress(chunk)
                h.update(raw)
                g.write(raw)
        if h.hexdigest() != m["sha256"]:
            raise UserError(f"{kit / split}: tokens do not match the manifest (damaged kit)")
        for name in SPLIT_FILES:
            shutil.copy2(kit / split / name, tmp / name)
        (tmp / "KIT.json").write_text(json.dumps(m))
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    return manifest


# -- configuration --------------------------------------------------------------------------------


def _parse_sets(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def make_train_config(preset: str, sets: dict):
    """A ``model.train.TrainConfig`` for a kit preset or a model/config.py preset + ``--set``."""
    from perceiver_midi.model.config import PRESETS, Config
    from perceiver_midi.model.train import TrainConfig

    if preset in KIT_PRESETS:
        kp = KIT_PRESETS[preset]
        base, model_over, train_over = kp["preset"], dict(kp["model"]), dict(kp["train"])
    elif preset in PRESETS:
        base, model_over, train_over = preset, {}, {}
    else:
        raise UserError(f"unknown preset {preset!r}; choose from {sorted(KIT_PRESETS | PRESETS)}")
    model_keys = {f.name for f in dataclasses.fields(Config)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"preset", "model_overrides"}
    unknown = set(sets) - model_keys - train_keys
    if unknown:
        raise UserError(f"unknown setting(s) {sorted(unknown)} for --set")
    model_over |= {k: v for k, v in sets.items() if k in model_keys}
    train_over |= {k: v for k, v in sets.items() if k in train_keys and k not in model_keys}
    train_over.setdefault("init_from", "none")  # a new model, not the shipped CPU one
    for key in ("schedule", "decay_start", "decay_steps"):
        if key in train_over:
            raise UserError(f"--set {key}: the kit plans the schedule (see --cooldown-fraction)")
    try:
        tc = TrainConfig(
            preset=base, model_overrides=tuple(sorted(model_over.items())), **train_over
        )
        tc.model_config()
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad settings: {exc}") from None
    return tc


def _train_config_from_json(raw: dict):
    from perceiver_midi.model.train import TrainConfig

    raw = dict(raw)
    raw["model_overrides"] = tuple(tuple(kv) for kv in raw.get("model_overrides", ()))
    return TrainConfig(**raw)


def _param_count(config) -> int:
    import jax
    from flax import nnx

    from perceiver_midi.model.perceiver_ar import PerceiverAR

    abstract = nnx.eval_shape(lambda: PerceiverAR(config, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


# -- model export (the supervisor, on CPU JAX) --------------------------------------------------


def _leaf_name(path) -> str:
    """A parameter's name independent of flax's pytree details (``cross/kv/kernel``)."""
    parts = []
    for k in path:
        name = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        if type(k).__name__ == "GetAttrKey" and name in ("value", "raw_value"):
            continue
        parts.append(str(name))
    return "/".join(parts)


def _abstract_params(config):
    from flax import nnx

    from perceiver_midi.model.perceiver_ar import PerceiverAR

    return nnx.state(nnx.eval_shape(lambda: PerceiverAR(config, rngs=nnx.Rngs(0))), nnx.Param)


def _restore_params(folder: pathlib.Path) -> tuple[dict, dict]:
    """(config.json content, {name: float32 array}) of a ``save_model`` folder."""
    import warnings

    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from perceiver_midi.model.config import Config

    info = json.loads((folder / "config.json").read_text())
    target = _abstract_params(Config(**info["config"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = ocp.StandardCheckpointer().restore(folder.resolve() / "params", target)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return info, {_leaf_name(p): np.asarray(x, np.float32) for p, x in leaves}


def _bf16_bits(x):
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (as ml_dtypes)."""
    import numpy as np

    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(x)
    return np.where(nan, 0x7FC0, rounded).astype(np.uint16)


def build_model_tar(best: pathlib.Path, workdir: pathlib.Path, param_dtype: str) -> tuple:
    """The bytes of a model tar for WORKDIR/best (copied first: training may replace it)."""
    import numpy as np

    snap = workdir / ".export-snapshot"
    for attempt in range(10):
        shutil.rmtree(snap, ignore_errors=True)
        try:
            shutil.copytree(best, snap)
            info, arrays = _restore_params(snap)
            now = (_read_json(best / "config.json", {}) or {}).get("metadata")
            if now != info.get("metadata"):  # replaced while copying: try again
                raise RuntimeError("best changed during the copy")
            break
        except Exception:  # replaced while copying: try again
            if attempt == 9:
                raise
            time.sleep(1.0)
    shutil.rmtree(snap, ignore_errors=True)
    f32_bytes = sum(a.nbytes for a in arrays.values())
    if param_dtype == "auto":
        param_dtype = "float32" if f32_bytes + MIB <= PART_BYTES else "bfloat16"
    if param_dtype == "bfloat16":
        stored = {k: _bf16_bits(a) for k, a in arrays.items()}
    else:
        stored = arrays
    buf = io.BytesIO()
    np.savez(buf, **stored)
    params = buf.getvalue()
    meta = info.get("metadata", {})
    manifest = {
        "gpu_kit_model": MODEL_FORMAT,
        "param_dtype": param_dtype,
        "params_sha256": hashlib.sha256(params).hexdigest(),
        "num_params": int(sum(a.size for a in arrays.values())),
        "step": meta.get("step"),
        "val_nll": meta.get("val_nll"),
        "packed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    files = {
        "MANIFEST.json": json.dumps(manifest, indent=1).encode(),
        "config.json": json.dumps(info, indent=1).encode(),
        "params.npz": params,
    }
    for name in ("log.csv", "train_config.json", "curve.png", "kit_plan.json", "kit_worker.json"):
        with contextlib.suppress(OSError):
            files[name] = (workdir / name).read_bytes()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), int(time.time())
            tar.addfile(ti, io.BytesIO(data))
    return out.getvalue(), manifest


def write_model_files(export: pathlib.Path, blob: bytes, step: int) -> list[str]:
    """Writes the tar (or its < 16 MiB parts) atomically; returns the file names."""
    if len(blob) > MAX_RETURN_BYTES:
        raise RuntimeError(f"model tar is {_mib(len(blob))}: too large to come back")
    stem = f"model-s{step:07d}.tar"
    chunks = [blob[i : i + PART_BYTES] for i in range(0, len(blob), PART_BYTES)] or [b""]
    names = [stem] if len(chunks) == 1 else [f"{stem}.{i:02d}" for i in range(len(chunks))]
    for name, chunk in zip(names, chunks, strict=True):
        _write_atomic(export / name, chunk)
    return names


class Exporter:
    """Packs WORKDIR/best into WORKDIR/export when it changed; keeps the last two sets."""

    def __init__(self, workdir: pathlib.Path, param_dtype: str, out: pathlib.Path | None):
        self.workdir, self.param_dtype, self.out = workdir, param_dtype, out
        self.export = workdir / "export"
        self.export.mkdir(parents=True, exist_ok=True)
        self.last_key = None
        self.info: dict | None = None
        self.sets: list[list[str]] = []
        self.error: str | None = None

    def maybe_export(self) -> bool:
        best = self.workdir / "best"
        meta = (_read_json(best / "config.json", {}) or {}).get("metadata")
        if not meta:
            return False
        key = (meta.get("step"), meta.get("val_nll"))
        if key == self.last_key:
            return False
        try:
            blob, manifest = build_model_tar(best, self.workdir, self.param_dtype)
            names = write_model_files(self.export, blob, int(manifest["step"] or 0))
        except Exception as exc:  # keep training; the status file tells
            self.error = f"export failed: {type(exc).__name__}: {exc}"
            print(self.error, file=sys.stderr, flush=True)
            return False
        self.error = None
        self.last_key = key
        self.info = {
            "files": names,
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "step": manifest["step"],
            "val_nll": manifest["val_nll"],
            "param_dtype": manifest["param_dtype"],
            "num_params": manifest["num_params"],
            "exported_at": time.time(),
        }
        if names not in self.sets:
            self.sets.append(names)
        for old in self.sets[:-2]:  # a `status` may still be copying the previous set
            for name in old:
                with contextlib.suppress(OSError):
                    (self.export / name).unlink()
        self.sets = self.sets[-2:]
        return True


# -- progress -------------------------------------------------------------------------------------


def _log_rows(log_csv: pathlib.Path) -> list[dict]:
    try:
        with open(log_csv, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def measured_rate(log_csv: pathlib.Path, min_seconds: float = 30.0) -> float | None:
    """Steps per second of the latest ``train()`` call, from its second half (compile excluded);
    None when that call logged less than ``min_seconds`` of it."""
    rows = _log_rows(log_csv)
    seg: list[tuple[int, float]] = []
    for r in rows:
        try:
            step, hours = int(r["step"]), float(r["hours"])
        except (KeyError, ValueError):
            continue
        if seg and hours < seg[-1][1]:  # "hours" restarts with every train() call
            seg = []
        seg.append((step, hours))
    if len(seg) < 3:
        return None
    (s0, h0), (s1, h1) = seg[max(1, len(seg) // 2)], seg[-1]
    seconds = (h1 - h0) * 3600
    if seconds < min_seconds or s1 <= s0:
        return None
    return (s1 - s0) / seconds


def progress_summary(workdir: pathlib.Path) -> dict:
    rows = _log_rows(workdir / "log.csv")
    last = rows[-1] if rows else {}
    vals = [r for r in rows if r.get("val_nll")]
    return {
        "step": int(last["step"]) if last else 0,
        "train_nll": float(last["nll"]) if last else None,
        "tokens_per_s": float(last["tokens_per_s"]) if last else None,
        "lr": float(last["lr"]) if last else None,
        "last_val": {"step": int(vals[-1]["step"]), "val_nll": float(vals[-1]["val_nll"])}
        if vals
        else None,
        "best": _read_json(workdir / "best.json"),
        "plan": _read_json(workdir / "kit_plan.json"),
        "worker": _read_json(workdir / "kit_worker.json"),
    }


# -- train: the supervisor (CPU JAX) and the worker (the accelerator) ----------------------------


def cmd_train(args) -> int:
    original_platforms = os.environ.get("JAX_PLATFORMS")
    os.environ["JAX_PLATFORMS"] = "cpu"  # this process only exports; the worker gets the GPU
    kit, workdir = pathlib.Path(args.kit), pathlib.Path(args.workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        lock = open(workdir / ".kit.lock", "w")  # held while this process lives
    except OSError as exc:
        raise UserError(f"{workdir}: cannot use it as the work dir ({exc.strerror})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"{workdir}: a kit training run is already running there") from None
    t0 = time.time()
    deadline = t0 + args.minutes * 60
    out = pathlib.Path(args.out) if args.out else None
    exporter = Exporter(workdir, args.param_dtype, out)
    run = {"num_params": None}

    def status(state: str, copy: bool = False, **extra) -> None:
        doc = {
            "state": state,
            "preset": args.preset,
            "minutes": args.minutes,
            "elapsed_s": round(time.time() - t0, 1),
            "left_s": round(deadline - time.time(), 1),
            "num_params": run["num_params"],
            "export": exporter.info,
            "export_error": exporter.error,
            "updated_at": time.time(),
        }
        doc |= progress_summary(workdir) | extra
        _write_atomic(exporter.export / STATUS_FILE, json.dumps(doc, indent=1))
        if out is not None and copy:
            copy_out(workdir, out)

    status("starting")
    try:
        return _supervise(
            args, kit, workdir, (t0, deadline), original_platforms, exporter, run, status
        )
    except UserError as exc:
        status("failed", copy=True, error=str(exc))
        raise
    except BaseException as exc:
        status("failed", copy=True, error=f"{type(exc).__name__}: {exc}")
        raise


def _supervise(args, kit, workdir, times, original_platforms, exporter, run, status):
    t0, deadline = times
    if not args.minutes > 0:
        raise UserError("--minutes must be > 0")
    if not 0.0 <= args.cooldown_fraction < 1.0:
        raise UserError("--cooldown-fraction must be in [0, 1)")
    if not (kit / "MANIFEST.json").exists():
        raise UserError(f"{kit}: not a GPU kit (no MANIFEST.json; run `gpu_kit.py pack` here)")
    tc = make_train_config(args.preset, _parse_sets(args.set))
    n_params = run["num_params"] = _param_count(tc.model_config())
    bytes_per = 4 if args.param_dtype == "float32" else 2
    if bytes_per * n_params > MAX_RETURN_BYTES - MIB:
        raise UserError(
            f"{n_params:,} parameters: too many to come back in {_mib(MAX_RETURN_BYTES)} "
            f"({'float32' if bytes_per == 4 else 'bf16'})"
        )
    status("unpacking data")
    manifest = unpack_data(kit, workdir / "data")
    (workdir / "kit_train_config.json").write_text(json.dumps(dataclasses.asdict(tc), indent=1))
    (workdir / "kit_run.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "t0": t0,
                "deadline": deadline,
                "args": {k: v for k, v in vars(args).items() if k != "func"},
            }
        )
    )
    env = dict(os.environ)
    env.pop("JAX_PLATFORMS")
    if original_platforms is not None:
        env["JAX_PLATFORMS"] = original_platforms
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "_worker", str(workdir)]
    cmd += ["--t0", repr(t0), "--deadline", repr(deadline)]
    cmd += ["--cooldown-fraction", repr(args.cooldown_fraction)]
    tokens = manifest["splits"]["train"]["tokens"]
    print(f"{args.preset}: {n_params:,} params, {tokens:,} train tokens, {args.minutes} min")
    with open(workdir / "worker.log", "ab") as log:
        worker = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    stopping = {"signal": None}

    def on_signal(signum, frame):
        stopping["signal"] = signum
        with contextlib.suppress(OSError):
            worker.send_signal(signal.SIGTERM)  # train() saves its state and returns

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    last_export = time.time()
    while worker.poll() is None:
        time.sleep(args.poll_seconds)
        exported = False
        if time.time() - last_export >= args.export_minutes * 60:
            exported = exporter.maybe_export()
            last_export = time.time()
        plan = _read_json(workdir / "kit_plan.json", {}) or {}
        status(plan.get("phase", "starting"), copy=exported)
    rc = worker.returncode
    status("exporting")
    exporter.maybe_export()
    plan = _read_json(workdir / "kit_plan.json", {}) or {}
    if rc == 0 and plan.get("phase") == "done":
        state = "done"
    elif rc == 0 or stopping["signal"]:
        state = "stopped"
    else:
        state = "failed"
    status(state, copy=True, worker_rc=rc)
    print(f"{state}: worker exit {rc}; model files: {(exporter.info or {}).get('files')}")
    return 0 if state in ("done", "stopped") else 1


def cmd_worker(args) -> int:
    """Runs model.train.train in two phases: stable until the cooldown time, then the cooldown."""
    import jax

    from perceiver_midi.model.train import train
    from perceiver_midi.tokenizer._jit import HAVE_NUMBA

    workdir = pathlib.Path(args.workdir)
    data = workdir / "data"
    tc = _train_config_from_json(json.loads((workdir / "kit_train_config.json").read_text()))
    t_cool = args.t0 + (1.0 - args.cooldown_fraction) * (args.deadline - args.t0)
    versions = {}
    for mod in ("jax", "flax", "optax", "orbax.checkpoint", "numpy"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod, fromlist=["_"]).__version__
    blocked_loaded = [m for m in BLOCKED if sys.modules.get(m) is not None]
    (workdir / "kit_worker.json").write_text(
        json.dumps(
            {
                "devices": [str(d) for d in jax.devices()],
                "backend": jax.default_backend(),
                "versions": versions,
                "numba": HAVE_NUMBA,
                "blocked": BLOCKED,
                "blocked_loaded": blocked_loaded,
                "pid": os.getpid(),
            },
            indent=1,
        )
    )
    plan_file = workdir / "kit_plan.json"
    plan = _read_json(plan_file, {}) or {}
    if plan.get("phase") not in ("cooldown", "done"):
        plan = {"phase": "stable"}
        _write_atomic(plan_file, json.dumps(plan))
        logged = _log_rows(workdir / "log.csv")
        step_before = int(logged[-1]["step"]) if logged else 0
        t_call = time.time()
        res = train(tc, data, workdir, max_hours=max(t_cool - t_call, 1.0) / 3600, progress=False)
        print(json.dumps({"phase": "stable"} | res), flush=True)
        if res["stopped"] == "signal":
            _write_atomic(plan_file, json.dumps(plan | {"phase": "stopped"}))
            return 0
        wall = time.time() - t_call
        steps = max(res["step"] - step_before, 1)
        rate = measured_rate(workdir / "log.csv") or steps / max(wall, 1e-3)
        overhead = min(max(wall - steps / rate, 2.0), 180.0)  # start-up + compile of a call
        left = args.deadline - time.time() - overhead
        plan = {
            "phase": "cooldown",
            "decay_start": res["step"],
            # at least a short real cooldown, even when start-up overheads ate its time
            "decay_steps": max(2, steps // 20, int(0.95 * rate * left)),
            "steps_per_s": rate,
            "overhead_s": overhead,
        }
        _write_atomic(plan_file, json.dumps(plan))
    if plan["phase"] == "cooldown":
        tc2 = dataclasses.replace(
            tc, schedule="wsd", decay_start=plan["decay_start"], decay_steps=plan["decay_steps"]
        )
        grace = 60.0  # a cooldown that runs a little late is still worth finishing
        hours = max(args.deadline - time.time() + grace, 5.0) / 3600
        res = train(tc2, data, workdir, max_hours=hours, progress=False)
        print(json.dumps({"phase": "cooldown"} | res), flush=True)
        phase = "done" if res["step"] >= tc2.end_step else "stopped"
        _write_atomic(plan_file, json.dumps(plan | {"phase": phase, "final_step": res["step"]}))
    return 0


# -- status (on the device, between polls) ------------------------------------------------------


def _supervisor_alive(workdir: pathlib.Path) -> bool:
    try:
        with open(workdir / ".kit.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def copy_out(workdir: pathlib.Path, out: pathlib.Path) -> list[str]:
    """Copies the status, a log tail and the current model files into ``out`` (e.g. $OUT)."""
    export = workdir / "export"
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        doc = _read_json(export / STATUS_FILE) or {}
        names = list((doc.get("export") or {}).get("files") or [])
        try:
            for old in out.iterdir():  # earlier model files this tool put there
                if MODEL_RE.match(old.name) and old.name not in names:
                    old.unlink()
            for name in names:
                tmp = out / f".{name}.tmp"
                shutil.copyfile(export / name, tmp)
                os.replace(tmp, out / name)
            break
        except FileNotFoundError:  # a newer export replaced the set: read the status again
            time.sleep(0.5)
    if doc:
        _write_atomic(out / STATUS_FILE, json.dumps(doc, indent=1))
    with contextlib.suppress(OSError), open(workdir / "worker.log", "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 200_000))
        _write_atomic(out / LOG_TAIL, f.read())
    return names


def _status_line(doc: dict, alive: bool) -> str:
    if not doc:
        return "no status yet (starting)" if alive else "no run here"
    state = doc.get("state", "?")
    if state not in ("done", "stopped", "failed") and not alive:
        state = f"{state} (supervisor not running)"
    parts = [f"{state}", f"{doc.get('elapsed_s', 0) / 60:.1f}/{doc.get('minutes', 0)} min"]
    parts.append(f"step {doc.get('step', 0)}")
    if doc.get("train_nll") is not None:
        parts.append(f"train nll {doc['train_nll']:.3f}")
    if doc.get("last_val"):
        parts.append(f"val {doc['last_val']['val_nll']:.4f}@{doc['last_val']['step']}")
    if doc.get("best"):
        parts.append(f"best {doc['best']['val_nll']:.4f}@{doc['best']['step']}")
    if doc.get("tokens_per_s"):
        parts.append(f"{doc['tokens_per_s']:.0f} tok/s")
    if doc.get("lr") is not None:
        parts.append(f"lr {doc['lr']:.1e}")
    plan = doc.get("plan") or {}
    if plan.get("decay_start") is not None:
        parts.append(f"cooldown {plan['decay_start']}+{plan['decay_steps']}")
    exp = doc.get("export")
    if exp:
        parts.append(f"exported step {exp['step']} ({_mib(exp['bytes'])}, {len(exp['files'])} f)")
    return " | ".join(parts)


def cmd_status(args) -> int:
    workdir = pathlib.Path(args.workdir)
    start = time.time()
    end = start + max(args.wait, 0)
    printed_worker = False
    while True:
        alive = _supervisor_alive(workdir)
        doc = _read_json(workdir / "export" / STATUS_FILE, {}) or {}
        if doc.get("worker") and not printed_worker:
            w = doc["worker"]
            print(f"worker: {w.get('backend')} {w.get('devices')} {w.get('versions')}")
            printed_worker = True
        print(time.strftime("%H:%M:%S"), _status_line(doc, alive), flush=True)
        finished = doc.get("state") in ("done", "stopped", "failed") or (
            not alive and (bool(doc) or time.time() - start > 60)
        )
        if finished or time.time() + args.interval > end:
            break
        time.sleep(args.interval)
    for key in ("error", "export_error"):
        if doc.get(key):
            print(f"{key}: {doc[key]}")
    if doc.get("state") == "failed" or (doc and not alive and doc.get("state") != "done"):
        with contextlib.suppress(OSError):
            print((workdir / "worker.log").read_text(errors="replace")[-3000:])
    if args.out:
        names = copy_out(workdir, pathlib.Path(args.out))
        print(f"copied to {args.out}: {[STATUS_FILE, LOG_TAIL, *names]}")
    if not doc and not alive:
        raise UserError(f"{workdir}: no kit training run here")
    return 1 if doc.get("state") == "failed" else 0


# -- unpack (here) -------------------------------------------------------------------------------


def _model_set(path: pathlib.Path) -> list[pathlib.Path]:
    """The files of one model set: a .tar, any of its .tar.NN parts, or a folder holding them."""
    if path.is_dir():
        doc = _read_json(path / STATUS_FILE, {}) or {}
        names = (doc.get("export") or {}).get("files")
        if names and all((path / n).exists() for n in names):
            return [path / n for n in names]
        found = [p for p in path.iterdir() if MODEL_RE.match(p.name)]
        if not found:
            raise UserError(f"{path}: no model-s*.tar files here")
        step = max(int(MODEL_RE.match(p.name).group(1)) for p in found)
        return sorted(p for p in found if int(MODEL_RE.match(p.name).group(1)) == step)
    m = MODEL_RE.match(path.name)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not m:
        raise UserError(f"{path}: not a model file from gpu_kit (model-sSTEP.tar[.NN])")
    if not m.group(2):
        return [path]
    stem = path.name[: -len(m.group(2))]
    parts = sorted(p for p in path.parent.iterdir() if p.name.startswith(stem + "."))
    expected = [f"{stem}.{i:02d}" for i in range(len(parts))]
    if [p.name for p in parts] != expected:
        raise UserError(f"{path.parent}: parts of {stem} are missing ({[p.name for p in parts]})")
    return parts


def cmd_unpack(args) -> int:
    import numpy as np

    src, out = pathlib.Path(args.file), pathlib.Path(args.out)
    files = _model_set(src)
    if out.exists() and not (out / MARKER).exists():
        raise UserError(f"{out}: exists and was not written by gpu_kit unpack; choose another")
    blob = b"".join(p.read_bytes() for p in files)
    doc = _read_json(files[0].parent / STATUS_FILE, {}) or {}
    exp = doc.get("export") or {}
    if exp.get("files") == [p.name for p in files] and exp.get("sha256"):
        if hashlib.sha256(blob).hexdigest() != exp["sha256"]:
            raise UserError(f"{files[0]}: checksum differs from {STATUS_FILE} (damaged transfer)")
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            members = {
                m.name: tar.extractfile(m).read()
                for m in tar.getmembers()
                if m.isfile() and "/" not in m.name and not m.name.startswith(".")
            }
    except tarfile.TarError as exc:
        raise UserError(f"{files[0]}: not a readable tar ({exc})") from None
    manifest = json.loads(members.get("MANIFEST.json", b"{}"))
    if manifest.get("gpu_kit_model") != MODEL_FORMAT or "params.npz" not in members:
        raise UserError(f"{files[0]}: not a gpu_kit model tar")
    if hashlib.sha256(members["params.npz"]).hexdigest() != manifest["params_sha256"]:
        raise UserError(f"{files[0]}: params checksum mismatch (damaged file)")

    import jax
    from flax import nnx

    from perceiver_midi.model.checkpoint import save_model
    from perceiver_midi.model.config import Config
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    info = json.loads(members["config.json"])
    config = Config(**info["config"])
    stored = dict(np.load(io.BytesIO(members["params.npz"])))
    if manifest["param_dtype"] == "bfloat16":
        arrays = {k: (v.astype(np.uint32) << 16).view(np.float32) for k, v in stored.items()}
    else:
        arrays = {k: v.astype(np.float32) for k, v in stored.items()}
    model = PerceiverAR(config, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    names = {_leaf_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)}
    if names != set(arrays):
        diff = sorted(names ^ set(arrays))[:3]
        raise UserError(f"{files[0]}: parameters do not match the config (e.g. {diff})")

    def fill(path, leaf):
        arr = arrays[_leaf_name(path)]
        if arr.shape != leaf.shape:
            raise UserError(f"{files[0]}: {_leaf_name(path)} has shape {arr.shape}")
        return jax.numpy.asarray(arr)

    nnx.update(model, jax.tree_util.tree_map_with_path(fill, state))
    metadata = dict(info.get("metadata", {}))
    metadata["gpu_kit"] = {k: manifest.get(k) for k in ("param_dtype", "packed_at", "num_params")}
    staging = out.with_name(f".{out.name}.unpack")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(model, staging, metadata=metadata)
    for name in ("log.csv", "train_config.json", "curve.png", "kit_plan.json", "kit_worker.json"):
        if name in members:
            (staging / name).write_bytes(members[name])
    marker = {"source": [p.name for p in files], "sha256": hashlib.sha256(blob).hexdigest()}
    (staging / MARKER).write_text(json.dumps(marker | manifest, indent=1) + "\n")
    if out.exists():
        if (out / "MODEL_CARD.md").exists():  # documentation stays with the folder
            shutil.copy2(out / "MODEL_CARD.md", staging / "MODEL_CARD.md")
        shutil.rmtree(out)
    os.replace(staging, out)
    print(
        f"{out}: {manifest['num_params']:,} params (shipped {manifest['param_dtype']}), "
        f"step {manifest['step']}, validation-subset NLL {manifest['val_nll']}"
    )
    print(f"next: perceiver-midi eval --checkpoint {out} --split test --json")
    return 0


# -- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpu_kit.py", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("pack", help="compress train + validation tokens into a carried folder")
    p.add_argument("--data", default=str(ROOT / "work/data"), help="prepare-data output folder")
    p.add_argument("--out", default=str(ROOT / "gpu_kit"), help="kit folder (git-ignored)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("train", help="train on the device (start it with setsid -f)")
    p.add_argument("--kit", required=True, help="the folder `pack` wrote")
    p.add_argument("--workdir", required=True, help="data, checkpoints, logs, export/")
    p.add_argument("--out", help="also copy status + model files here at each export")
    p.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget (default 9)")
    p.add_argument("--preset", default="gpu", help="gpu, gpu-small, or a model/config.py preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model/training setting")
    p.add_argument("--cooldown-fraction", type=float, default=0.2, help="LR decay to 0 at the end")
    p.add_argument("--export-minutes", type=float, default=3.0, help="pack the best params every")
    p.add_argument("--param-dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--poll-seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("_worker", help=argparse.SUPPRESS)
    p.add_argument("workdir")
    p.add_argument("--t0", type=float, required=True)
    p.add_argument("--deadline", type=float, required=True)
    p.add_argument("--cooldown-fraction", type=float, required=True)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("status", help="progress; copy the latest model files into --out")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", help="where to copy the files that should come back ($OUT)")
    p.add_argument("--wait", type=float, default=0.0, help="poll up to this many seconds")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between lines")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("unpack", help="model files that came back -> a checkpoint folder")
    p.add_argument("--file", required=True, help="model-s*.tar, one of its parts, or their folder")
    p.add_argument("--out", required=True, help="e.g. checkpoints/maestro-gpu")
    p.set_defaults(func=cmd_unpack)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"gpu_kit {args.cmd}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
