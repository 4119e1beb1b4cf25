"""Kernel choices behind the model's code comments, timed side by side on this CPU.

    python benchmarks/attention_kernels.py [--repeats 30] [--note "..."]

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
* The decoding step's cross-attention (``dot_product_attention``: batch 16, 2 heads, 1 query,
  4096 cached inputs, 64 channels) reading a float32 cache vs the same cache stored in bfloat16,
  in float16, and as bfloat16 bits in uint16 widened by a shift (float32 accumulation in every
  case): the "bf16 caches" lever for sampling speed (issue 12). The cache is 64 MiB in float32,
  32 MiB in the others.
* Where a decoding step's time goes (``--decode-breakdown``): the shipped checkpoint's
  ``decode_step`` (10 steps in a ``fori_loop``, as the sampler runs it) at batch 1 and 16, in
  full and with the cross-attention, the latent self-attention or both replaced by zeros (an
  ablation: the remainder is the matmuls and the glue), and one latent refill. The step without
  any attention bounds what faster caches alone could give.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.env import add_note_flag, call_times, environment, write_json  # noqa: E402

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


def decode_breakdown(repeats: int = 15) -> dict:
    """Milliseconds per decoding step of the shipped checkpoint, in full and with attention
    ablated (zeros of the right shape), and of one refill; medians of ``repeats`` calls."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from perceiver_midi.model import perceiver_ar
    from perceiver_midi.model.checkpoint import load_model
    from perceiver_midi.model.sampler import refill_headroom_for

    model = load_model()
    cfg = model.config
    graphdef, params = nnx.split(model)
    n, m = cfg.max_len, cfg.num_latents
    r = refill_headroom_for(m)
    f, w = m - r, n - r
    attention = perceiver_ar.dot_product_attention
    cross_len = n  # the cross-attention's keys are the N-slot input cache; latent caches hold M

    def timed(fn) -> float:
        fn()
        return statistics.median(call_times(fn, repeats)) * 1e3

    out = {"checkpoint": "shipped", "max_len": n, "num_latents": m, "fill": f, "period": r + 1}
    for batch in (1, 16):
        tokens = jnp.asarray(np.random.default_rng(0).integers(3, 391, (batch, w)), jnp.int32)

        @jax.jit
        def start(params, tokens):
            mm = nnx.merge(graphdef, params)
            cache = mm.init_cache(tokens.shape[0], num_latents=m, cross_capacity=n)
            cache = mm.encode_prompt(cache, tokens[:, : w - 1])
            return mm.refill(cache, tokens, fill=f)[1]

        cache = start(params, tokens)
        tok = jnp.full((batch,), 5, jnp.int32)
        row = {}
        for name, skip in (
            ("full", ()),
            ("no_cross_attention", ("cross",)),
            ("no_latent_attention", ("latent",)),
            ("no_attention", ("cross", "latent")),
        ):

            def ablated(q, k, v, mask, skip=skip):
                kind = "cross" if k.shape[-2] == cross_len else "latent"
                if kind in skip:
                    return jnp.zeros(q.shape[:-1] + v.shape[-1:], v.dtype) + 0 * q[..., :1]
                return attention(q, k, v, mask)

            perceiver_ar.dot_product_attention = ablated
            try:

                @jax.jit
                def ten_steps(params, cache, tok):
                    mm = nnx.merge(graphdef, params)
                    body = lambda i, c: mm.decode_step(c, tok)[1]  # noqa: E731
                    return jax.lax.fori_loop(0, 10, body, cache)

                ms = (
                    timed(
                        lambda f=ten_steps, c=cache, t=tok: jax.block_until_ready(f(params, c, t))
                    )
                    / 10
                )
            finally:
                perceiver_ar.dot_product_attention = attention
            row[f"{name}_ms_per_step"] = ms

        @jax.jit
        def refill(params, cache, tokens):
            return nnx.merge(graphdef, params).refill(cache, tokens, fill=f)[0]

        row["refill_ms"] = timed(
            lambda c=cache, t=tokens: jax.block_until_ready(refill(params, c, t))
        )
        row["refill_ms_per_token"] = row["refill_ms"] / (r + 1)
        no_attn = row["no_attention_ms_per_step"]
        row["tokens_per_s_bound_without_attention_or_refill"] = batch / no_attn * 1e3
        row["tokens_per_s_estimate_full"] = (
            batch / (row["full_ms_per_step"] + row["refill_ms_per_token"]) * 1e3
        )
        out[f"batch{batch}"] = row
        print(f"batch {batch}:", {k: round(v, 2) for k, v in row.items()}, flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls of each (median)")
    add_note_flag(parser)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument(
        "--decode-breakdown", action="store_true", help="only the decoding-step ablation (~2 min)"
    )
    args = parser.parse_args(argv)
    if args.decode_breakdown:
        out = ROOT / "benchmarks" / "results" / "decode_breakdown.json"
        results = {
            "command": "python benchmarks/attention_kernels.py --decode-breakdown",
            "note": args.note,
            "environment": environment(),
            "load_at_start": os.getloadavg(),
            **decode_breakdown(),
            "load_at_end": os.getloadavg(),
        }
        write_json(out, results)
        print(f"wrote {out}")
        return 0

    import jax
    import jax.numpy as jnp

    from perceiver_midi.model.perceiver_ar import (
        dot_product_attention,
        keep_mask,
        per_sequence_attention,
    )

    results = {
        "command": "python benchmarks/attention_kernels.py" + f" --repeats {args.repeats}",
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

    # The decoding step's cross-attention over a float32 cache vs reduced-precision caches.
    b, h, t, k = 16, 2, 4096, 64
    q1 = jax.random.normal(ks[0], (b * h, 1, k), jnp.float32)
    k32 = jax.random.normal(ks[1], (b * h, t, k), jnp.float32)
    v32 = jax.random.normal(ks[2], (b * h, t, k), jnp.float32)
    mask1 = jnp.ones((b * h, 1, t), bool)

    def widen(bits):  # bfloat16 bits (uint16) -> float32: a shift, no float conversion
        return jax.lax.bitcast_convert_type(bits.astype(jnp.uint32) << 16, jnp.float32)

    def bits16(x):
        return jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16)

    variants = {
        "bfloat16": (jnp.bfloat16, lambda x: x),
        "float16": (jnp.float16, lambda x: x),
        "bf16_bits_shift": (None, widen),
    }
    att = jax.jit(dot_product_attention)
    ref = att(q1, k32, v32, mask1)
    results["decode_cross_attention_cache_dtype"] = {
        "shape": {"batch": b, "heads": h, "queries": 1, "keys": t, "channels": k}
    }
    for name, (dtype, read) in variants.items():
        if dtype is None:
            kc, vc = bits16(k32), bits16(v32)
            fn = jax.jit(
                lambda q, kc, vc, m, read=read: dot_product_attention(q, read(kc), read(vc), m)
            )
        else:
            kc, vc = k32.astype(dtype), v32.astype(dtype)
            fn = jax.jit(
                lambda q, kc, vc, m, dtype=dtype: dot_product_attention(q.astype(dtype), kc, vc, m)
            )
        err = float(jnp.max(jnp.abs(fn(q1, kc, vc, mask1).astype(jnp.float32) - ref)))
        row = side_by_side(
            "float32",
            lambda: att(q1, k32, v32, mask1).block_until_ready(),
            name,
            lambda fn=fn, kc=kc, vc=vc: fn(q1, kc, vc, mask1).block_until_ready(),
            args.repeats,
        )
        results["decode_cross_attention_cache_dtype"][name] = dict(row, max_abs_error=err)
        print(f"decode cross-attention, {name} cache:", row, f"max |error| {err:.1e}", flush=True)

    results["load_at_end"] = os.getloadavg()
    write_json(args.output, results)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
