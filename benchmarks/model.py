"""Model benchmarks: training throughput / memory, sampling speed, FLOP utilisation.

    python benchmarks/model.py --quick        # a few minutes; targets are not checked
    python benchmarks/model.py                # full run (adds the M = N transformer at N = 16384
                                              # and the Perceiver AR at N = 65536)
    python benchmarks/model.py --sizes 4096   # only these training contexts (and sampling)

Every configuration runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own.
Results go to ``benchmarks/results/model.json`` (written atomically); a summary is printed.

What is measured
  * train: the step ``perceiver-midi train`` runs (``model.train_step.train_step`` with the
    optimizer of ``model.train.make_optimizer``: AdamW with clipping and the warmup-stable-decay
    rate; dropout and cross-attend dropout on; batch placed with the trainer's mesh) at the
    ``cpu`` preset's width/depth at context N, for the Perceiver AR (M = 512) and the M = N
    decoder-only Transformer (same code, same width and depth), same batch; median step time
    and peak RSS. The Perceiver AR's loss covers M targets per sequence, the Transformer's N, so
    the comparison is target tokens per second (the number of targets in the loss, from the
    step's own ``num_tokens``, over the median step time); the per-step speedup is reported
    beside it, labelled as such. The Transformer at N >= 8192 uses query-chunked,
    rematerialised attention (otherwise its N x N score matrices do not fit in memory); the
    Perceiver AR never needs it.
  * sample: ``model.sampler.sample`` with the ``cpu`` preset (N = 4096, random weights, EOS off)
    at batch 1 and 16, cached, and at batch 1 uncached (a full forward per token).
  * FLOP utilisation: analytic matmul FLOPs of a training step (forward x 3) / step time,
    divided by the fp32 matmul peak (jnp.dot of 2048^2 matrices) measured in the same run.

``--quick`` estimates some figures (the Transformer at N = 16384 from its N = 4096 time, fewer
repeats): it never marks a target as met or missed; they read "not checked (quick)".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.env import (  # noqa: E402
    add_note_flag,
    call_times,
    peak_rss_mib,
    system_load,
    training_beside,
    write_json,
)

RESULTS = ROOT / "benchmarks" / "results" / "model.json"
PAR_LATENTS = 512


# ---------------------------------------------------------------------------------------------
# Helpers shared by workers and the driver
# ---------------------------------------------------------------------------------------------


def train_settings(n: int, m: int, batch: int):
    """The ``TrainConfig`` that ``perceiver-midi train --preset cpu --set ...`` would build."""
    from perceiver_midi.model.train import TrainConfig

    overrides = {"max_len": n, "num_latents": m, "max_wavelength": max(10_000.0, float(n))}
    if m == n and n >= 8192:
        overrides["attn_query_chunk"] = 1024
    return TrainConfig(
        preset="cpu", model_overrides=tuple(sorted(overrides.items())), batch_size=batch
    )


def train_config(n: int, m: int):
    return train_settings(n, m, 1).model_config()


def forward_matmul_flops(cfg, batch: int) -> float:
    """Matmul FLOPs of one forward pass (attention scores counted in full, as computed)."""
    n, m, d, e = cfg.max_len, cfg.num_latents, cfg.d_model, cfg.embed_dim
    v, r, layers = cfg.vocab_size, cfg.mlp_ratio, cfg.num_layers
    cross = 2 * n * e * 2 * e  # keys/values of every input
    cross += 2 * m * d * e * 2 + (2 * m * e * d if e != d else 0)  # queries, output (+ init)
    cross += 2 * 2 * m * n * e  # scores + weighted values
    cross += 2 * 2 * m * d * r * d  # MLP
    per_layer = 2 * m * d * 3 * d + 2 * m * d * d + 2 * 2 * m * d * r * d + 2 * 2 * m * m * d
    logits = 2 * m * d * v
    return float(batch * (cross + layers * per_layer + logits))


# ---------------------------------------------------------------------------------------------
# Workers (run in subprocesses; print one JSON line)
# ---------------------------------------------------------------------------------------------


def worker_matmul(args) -> dict:
    import jax
    import jax.numpy as jnp

    size = args.size
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    dot = jax.jit(lambda a, b: a @ b)
    dot(a, b).block_until_ready()
    times = call_times(lambda: dot(a, b).block_until_ready(), args.repeats)
    best = min(times)
    med = statistics.median(times)
    return {
        "size": size,
        "median_s": med,
        "gflops_median": 2 * size**3 / med / 1e9,
        "gflops_best": 2 * size**3 / best / 1e9,
    }


def _matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul throughput (GFLOP/s, best of ``repeats``) measured in the calling process."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    dot = jax.jit(lambda a, b: a @ b)
    dot(a, b).block_until_ready()
    best = min(call_times(lambda: dot(a, b).block_until_ready(), repeats))
    return 2 * size**3 / best / 1e9


def worker_train(args) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from perceiver_midi.model.perceiver_ar import PerceiverAR, count_params
    from perceiver_midi.model.train import (
        data_mesh,
        make_optimizer,
        replicate,
        shard_batch,
        step_rng,
    )
    from perceiver_midi.model.train_step import train_step

    # What model.train.train() does before its loop: model, optimizer, mesh, sharded batch.
    tc = train_settings(args.n, args.m, args.batch)
    cfg = tc.model_config()
    model = PerceiverAR(cfg, rngs=nnx.Rngs(tc.seed))
    optimizer = make_optimizer(model, tc)
    mesh = data_mesh()
    replicate(model, optimizer, mesh)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, size=(args.batch, cfg.max_len + 1), dtype=np.int32)
    batch = {"tokens": shard_batch(tokens, mesh)}

    t0 = time.perf_counter()
    metrics = train_step(model, optimizer, batch, step_rng(tc.seed, 0))
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0  # compile + one step

    def one(i=[0]):  # noqa: B006 - a step counter
        nonlocal metrics
        i[0] += 1
        metrics = train_step(model, optimizer, batch, step_rng(tc.seed, i[0]))
        jax.block_until_ready(metrics)

    peak_before = _matmul_gflops()
    times = call_times(one, args.repeats)
    peak_after = _matmul_gflops()
    flops = 3 * forward_matmul_flops(cfg, args.batch)
    med = statistics.median(times)
    targets = float(metrics["num_tokens"])  # targets in the loss: batch x M (no PAD here)
    return {
        "n": cfg.max_len,
        "m": cfg.num_latents,
        "batch": args.batch,
        "step": "model.train_step.train_step + model.train.make_optimizer (perceiver-midi train)",
        "params": count_params(model),
        "compile_and_first_step_s": first,
        "step_s_median": med,
        "step_s_all": times,
        "target_tokens_per_step": targets,
        "target_tokens_per_s": targets / med,
        "input_tokens_per_s": args.batch * cfg.max_len / med,
        "train_flops_per_step": flops,
        "model_gflops_per_s": flops / med / 1e9,
        "matmul_peak_gflops_per_s_same_process": max(peak_before, peak_after),
        "flop_utilisation_same_process": flops / med / 1e9 / max(peak_before, peak_after),
        "loss": float(metrics["loss"]),
        "peak_rss_mib": peak_rss_mib(),
    }


def worker_sample(args) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from perceiver_midi.model.config import get_config
    from perceiver_midi.model.perceiver_ar import PerceiverAR
    from perceiver_midi.model.sampler import sample

    cfg = get_config("cpu")
    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    kernel = model.logits.kernel
    kernel[...] = 0.05 * jax.random.normal(jax.random.key(1), kernel.shape)  # non-uniform logits
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, cfg.vocab_size, size=args.prompt_len) for _ in range(args.batch)]
    kwargs = {
        "max_new_tokens": args.tokens,
        "stop_at_eos": False,
        "use_cache": not args.uncached,
        "temperature": 1.0,
    }
    t0 = time.perf_counter()
    out = sample(model, prompts, seed=0, **kwargs)
    first = time.perf_counter() - t0
    assert all(len(o) == args.tokens for o in out)
    times = call_times(lambda: sample(model, prompts, seed=1, **kwargs), args.repeats)
    med = statistics.median(times)
    return {
        "n": cfg.max_len,
        "num_latents": cfg.num_latents,
        "batch": args.batch,
        "cached": not args.uncached,
        "new_tokens_per_sequence": args.tokens,
        "compile_and_first_run_s": first,
        "run_s_median": med,
        "run_s_all": times,
        "tokens_per_s": args.batch * args.tokens / med,
        "tokens_per_s_best": args.batch * args.tokens / min(times),
        "peak_rss_mib": peak_rss_mib(),
    }


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _run_worker(kind: str, timeout: float, **kw) -> dict:
    from benchmarks.env import run_worker

    return run_worker(__file__, kind, timeout, **kw)


def environment() -> dict:
    try:
        from benchmarks.env import environment as shared_environment

        env = shared_environment()
    except Exception:  # noqa: BLE001 - the shared helper is optional
        env = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
        }
    try:
        import jax

        env["jax_backend"] = jax.default_backend()
        env["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception:  # noqa: BLE001
        pass
    try:
        env["affinity_cores"] = len(os.sched_getaffinity(0))
        mem_kib = int(pathlib.Path("/proc/meminfo").read_text().split()[1])
        env["memory_gib"] = round(mem_kib / 2**20, 1)
    except (OSError, AttributeError, ValueError):
        pass
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes; targets not checked")
    parser.add_argument(
        "--sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        help="training contexts N to run, e.g. 4096 (default: 1024,4096,16384 + 65536 if full)",
    )
    add_note_flag(parser)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--worker", choices=["matmul", "train", "sample"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=4096, help=argparse.SUPPRESS)
    parser.add_argument("--m", type=int, default=PAR_LATENTS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=2048, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--prompt-len", type=int, default=3000, help=argparse.SUPPRESS)
    parser.add_argument("--uncached", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        fn = {"matmul": worker_matmul, "train": worker_train, "sample": worker_sample}
        print(json.dumps(fn[args.worker](args)), flush=True)
        return 0

    quick = args.quick
    sizes = args.sizes or ([1024, 4096, 16384] if quick else [1024, 4096, 16384, 65536])
    started = time.perf_counter()
    mode = "quick" if quick else "full"
    print(f"perceiver-midi model benchmark ({mode}; training N = {sizes})", flush=True)
    command = "python benchmarks/model.py" + (" --quick" if quick else "")
    if args.sizes:
        command += " --sizes " + ",".join(map(str, args.sizes))
    results: dict = {
        "mode": mode,
        "command": command,
        "note": args.note,
        "training_job_beside": training_beside(),
        "environment": environment(),
        "load_at_start": system_load(),
    }

    print("matmul peak (fp32)", flush=True)
    matmul = _run_worker("matmul", 300, size=2048, repeats=10 if quick else 20)
    results["matmul_peak"] = matmul
    peak = matmul.get("gflops_median")

    print("training steps", flush=True)
    # Same batch for both models at each N: ~8k input tokens per step (at least one sequence).
    train: dict = {}
    for n in sizes:
        batch = max(1, 8192 // n)
        repeats = 3 if n <= 4096 else 2
        par = _run_worker("train", 1800, n=n, m=PAR_LATENTS, batch=batch, repeats=repeats)
        if n >= 65536:
            tfm = {"skipped": "does not fit: N x N attention"}
        elif n == 16384 and quick:
            tfm = {"skipped": "quick mode; see the full run"}
        else:
            tfm = _run_worker("train", 1800, n=n, m=n, batch=batch, repeats=1 if n > 4096 else 3)
        train[str(n)] = {"perceiver_ar": par, "transformer": tfm}
    results["train"] = train

    # Per target token: the Perceiver AR's loss covers batch x M targets, the Transformer's
    # batch x N. The per-step ratio is kept beside it, labelled.
    tokens_ratio, step_speedup, estimated, memory_ratio = {}, {}, {}, {}
    for n_str, pair in train.items():
        par, tfm = pair["perceiver_ar"], pair["transformer"]
        if "step_s_median" in par and "step_s_median" in tfm:
            tokens_ratio[n_str] = par["target_tokens_per_s"] / tfm["target_tokens_per_s"]
            step_speedup[n_str] = tfm["step_s_median"] / par["step_s_median"]
            memory_ratio[n_str] = tfm["peak_rss_mib"] / par["peak_rss_mib"]
    t4, p16 = train.get("4096", {}).get("transformer", {}), train.get("16384", {})
    if quick and "step_s_median" in t4 and "step_s_median" in p16.get("perceiver_ar", {}):
        # Quick mode: the Transformer at N = 16384 scaled from N = 4096 by its FLOP ratio.
        flop_ratio = forward_matmul_flops(train_config(16384, 16384), 1) / forward_matmul_flops(
            train_config(4096, 4096), t4["batch"]
        )
        est_step = t4["step_s_median"] * flop_ratio
        par16 = p16["perceiver_ar"]
        estimated["16384"] = {
            "how": "quick mode: Transformer step at N=4096 scaled by the FLOP ratio; not measured",
            "transformer_step_s": est_step,
            "target_tokens_per_s_ratio": par16["target_tokens_per_s"] / (16384 / est_step),
            "train_step_speedup_per_step": est_step / par16["step_s_median"],
        }
    results["train_target_tokens_per_s_ratio"] = tokens_ratio
    results["train_step_speedup_per_step"] = step_speedup
    results["train_peak_rss_ratio"] = memory_ratio
    if estimated:
        results["train_estimated"] = estimated

    par4096 = train.get("4096", {}).get("perceiver_ar", {})
    if peak and "model_gflops_per_s" in par4096:
        # Both numbers move with contention from other jobs: report median/median (the headline)
        # and best/best.
        best_peak = max(
            matmul.get("gflops_best", 0.0), par4096["matmul_peak_gflops_per_s_same_process"]
        )
        best_used = par4096["train_flops_per_step"] / min(par4096["step_s_all"]) / 1e9
        results["flop_utilisation"] = {
            "config": "Perceiver AR, cpu preset width/depth, N=4096, M=512, batch 2",
            "flops_counted": "matmul FLOPs of the forward pass (attention scores in full) x 3",
            "model_gflops_per_s": par4096["model_gflops_per_s"],
            "matmul_peak_gflops_per_s": peak,
            "utilisation": par4096["model_gflops_per_s"] / peak,
            "best_model_gflops_per_s": best_used,
            "best_matmul_peak_gflops_per_s": best_peak,
            "utilisation_best_vs_best": best_used / best_peak,
        }

    print("sampling (cpu preset, N=4096)", flush=True)
    tokens = 512 if quick else 1024
    sample_results = {
        "batch1": _run_worker("sample", 600, batch=1, tokens=tokens, repeats=3),
        "batch16": _run_worker("sample", 900, batch=16, tokens=tokens, repeats=3),
        "uncached_batch1": _run_worker(
            "sample", 900, batch=1, tokens=32 if quick else 64, repeats=2, uncached=True
        ),
    }
    results["sample"] = sample_results
    results["sample_tokens_per_s"] = {
        k: v["tokens_per_s"] for k, v in sample_results.items() if "tokens_per_s" in v
    }
    tps = results["sample_tokens_per_s"]
    if "batch1" in tps and "uncached_batch1" in tps:
        results["sample_cached_over_uncached"] = tps["batch1"] / tps["uncached_batch1"]

    results["targets"] = _targets(results, quick)
    results["load_at_end"] = system_load()
    results["wall_s"] = time.perf_counter() - started
    write_json(args.output, results)
    _print_summary(results)
    print(f"wrote {args.output} in {results['wall_s']:.0f} s", flush=True)
    return 0


# (name, where the value is in the results, threshold, "min" = value >= threshold passes)
TARGETS = [
    ("Perceiver AR target tokens/s > Transformer's at N=4096", "ratio", "4096", 1.0),
    ("Perceiver AR target tokens/s > Transformer's at N=16384", "ratio", "16384", 1.0),
    ("train step speedup (per step, not per target) >= 8x at N=4096", "step", "4096", 8.0),
    ("train step speedup (per step, not per target) >= 30x at N=16384", "step", "16384", 30.0),
    ("sampling batch 1 >= 1500 tok/s", "sample", "batch1", 1500.0),  # issue 12's bars
    ("sampling batch 16 >= 4000 tok/s", "sample", "batch16", 4000.0),
    ("cached sampling >= 20x uncached", "cached", None, 20.0),
    ("FLOP utilisation >= 45%", "flops", None, 0.45),
]


def _target_value(r: dict, where: str, key):
    if where == "ratio":
        return r.get("train_target_tokens_per_s_ratio", {}).get(key)
    if where == "step":
        return r.get("train_step_speedup_per_step", {}).get(key)
    if where == "sample":
        return r.get("sample_tokens_per_s", {}).get(key)
    if where == "cached":
        return r.get("sample_cached_over_uncached")
    return r.get("flop_utilisation", {}).get("utilisation")


def _targets(r: dict, quick: bool) -> dict:
    """Each target: its value, threshold and "met" / "missed" / "not run", or, for a quick run
    (whose figures are partly estimated, with fewer repeats), "not checked (quick)"."""
    out = {}
    for name, where, key, threshold in TARGETS:
        value = _target_value(r, where, key)
        if quick:
            verdict = "not checked (quick)"
        elif value is None:
            verdict = "not run"
        else:
            verdict = "met" if value >= threshold else "missed"
        out[name] = {"value": value, "threshold": threshold, "result": verdict}
    big = r.get("train", {}).get("65536", {}).get("perceiver_ar", {})
    if big:
        rss = big.get("peak_rss_mib")
        verdict = "not run" if rss is None else "met" if rss < 24576 else "missed"
        out["N=65536 trains within 24 GiB"] = {
            "value": rss,
            "threshold": 24576,
            "result": "not checked (quick)" if quick else verdict,
        }
    return out


def _print_summary(r: dict) -> None:
    print("\n== training (median step; target tokens/s = targets in the loss / step time) ==")
    for n, pair in r["train"].items():

        def fmt(x):
            if "step_s_median" not in x:
                return x.get("skipped") or x.get("error", "?")
            return (
                f"{x['target_tokens_per_s']:7.0f} target tok/s ({x['target_tokens_per_step']:.0f}"
                f" targets in {x['step_s_median']:.3f} s, batch {x['batch']}, "
                f"{x['peak_rss_mib']:.0f} MiB)"
            )

        print(f"N={n:>6}: Perceiver AR {fmt(pair['perceiver_ar'])}")
        print(f"{'':9}Transformer  {fmt(pair['transformer'])}")
    for n, x in r["train_target_tokens_per_s_ratio"].items():
        step = r["train_step_speedup_per_step"][n]
        print(f"N={n}: Perceiver AR / Transformer target tokens/s {x:.2f}x (per step: {step:.1f}x)")
    for n, e in r.get("train_estimated", {}).items():
        print(
            f"N={n} (estimated, quick): target tokens/s {e['target_tokens_per_s_ratio']:.2f}x "
            f"(per step: {e['train_step_speedup_per_step']:.1f}x)"
        )
    if "flop_utilisation" in r:
        fu = r["flop_utilisation"]
        used, peak = fu["model_gflops_per_s"], fu["matmul_peak_gflops_per_s"]
        print(f"FLOP utilisation: {used:.1f} / {peak:.1f} GFLOP/s = {100 * fu['utilisation']:.0f}%")
        print(f"  (best step / best matmul: {100 * fu['utilisation_best_vs_best']:.0f}%)")
    print("== sampling tokens/s ==")
    for k, v in r["sample_tokens_per_s"].items():
        print(f"{k}: {v:.0f}")
    if "sample_cached_over_uncached" in r:
        print(f"cached / uncached (batch 1): {r['sample_cached_over_uncached']:.0f}x")
    print("== targets ==")
    for k, t in r["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        print(f"{t['result'].upper() if t['result'] in ('met', 'missed') else t['result']}: "
              f"{k} (value {value})")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
