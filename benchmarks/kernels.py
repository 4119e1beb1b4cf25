"""Kernel choices behind the model's code comments, timed side by side on this CPU.

    python benchmarks/kernels.py [--repeats 30] [--note "..."]

Each pair runs interleaved (A, B, A, B, ...) in one process after a compiling call, so load
from other jobs hits both alike; the medians and their ratio go to
``benchmarks/results/kernels.json``. The functions timed are the model's own
(``model.perceiver_ar``), not copies:

* ``keep_mask`` (one random byte per element) vs ``jax.random.bernoulli`` for a dropout mask
  over one MLP activation of a training step (batch 2, 512 latents, hidden 1024).
* ``per_sequence_attention`` (a ``lax.map`` over the batch) vs ``dot_product_attention`` on
  the whole batch, at the latent refill's cross-attention shape (batch 16, 2 heads, 128 new
  latents, 4096 cached inputs, 64 channels per head).
* ``jnp.dot`` in bfloat16 vs float32, at a latent MLP matmul's shape (1024 x 256 x 1024) and at
  2048 x 2048 x 2048.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.env import environment, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "kernels.json"


def side_by_side(name_a: str, fn_a, name_b: str, fn_b, repeats: int) -> dict:
    """Median milliseconds of two blocking callables run alternately; ratio = B / A."""
    fn_a(), fn_b()  # compile
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    med_a, med_b = statistics.median(times_a) * 1e3, statistics.median(times_b) * 1e3
    return {f"{name_a}_ms": med_a, f"{name_b}_ms": med_b, f"{name_b}_over_{name_a}": med_b / med_a}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls of each (median)")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. machine load)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from model.perceiver_ar import dot_product_attention, keep_mask, per_sequence_attention

    results = {
        "command": "python benchmarks/kernels.py" + f" --repeats {args.repeats}",
        "note": args.note,
        "environment": environment(),
        "load_at_start": os.getloadavg(),
        "repeats": args.repeats,
    }
    key = jax.random.key(0)

    # Dropout mask over one MLP activation of a training step.
    shape = (2, 512, 1024)
    ours = jax.jit(lambda k: keep_mask(k, 0.1, shape))
    bern = jax.jit(lambda k: jax.random.bernoulli(k, 0.9, shape))
    results["dropout_mask"] = {
        "shape": shape,
        **side_by_side(
            "keep_mask",
            lambda: ours(key).block_until_ready(),
            "bernoulli",
            lambda: bern(key).block_until_ready(),
            args.repeats,
        ),
    }
    print("dropout mask:", results["dropout_mask"], flush=True)

    # The latent refill's cross-attention: one sequence at a time vs one batched score tensor.
    b, h, f, t, k = 16, 2, 128, 4096, 64
    ks = jax.random.split(key, 3)
    q = jax.random.normal(ks[0], (b, h, f, k), jnp.float32)
    kk = jax.random.normal(ks[1], (b, h, t, k), jnp.float32)
    v = jax.random.normal(ks[2], (b, h, t, k), jnp.float32)
    col = (t - f) + jnp.arange(f)
    mask = jnp.broadcast_to((jnp.arange(t)[None, :] <= col[:, None])[None, None], (b, 1, f, t))
    mapped = jax.jit(per_sequence_attention)
    batched = jax.jit(dot_product_attention)
    results["refill_cross_attention"] = {
        "shape": {"batch": b, "heads": h, "queries": f, "keys": t, "channels": k},
        **side_by_side(
            "lax_map",
            lambda: mapped(q, kk, v, mask).block_until_ready(),
            "batched",
            lambda: batched(q, kk, v, mask).block_until_ready(),
            args.repeats,
        ),
    }
    print("refill cross-attention:", results["refill_cross_attention"], flush=True)

    # bf16 vs fp32 matmuls on XLA:CPU.
    dot = jax.jit(jnp.dot)
    results["matmul_dtype"] = {}
    for m, kd, n in ((1024, 256, 1024), (2048, 2048, 2048)):
        a32 = jax.random.normal(ks[0], (m, kd), jnp.float32)
        b32 = jax.random.normal(ks[1], (kd, n), jnp.float32)
        a16, b16 = a32.astype(jnp.bfloat16), b32.astype(jnp.bfloat16)
        row = side_by_side(
            "float32",
            lambda a32=a32, b32=b32: dot(a32, b32).block_until_ready(),
            "bfloat16",
            lambda a16=a16, b16=b16: dot(a16, b16).block_until_ready(),
            args.repeats,
        )
        results["matmul_dtype"][f"{m}x{kd}x{n}"] = row
        print(f"matmul {m}x{kd}x{n}:", row, flush=True)

    results["load_at_end"] = os.getloadavg()
    write_json(args.output, results)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
