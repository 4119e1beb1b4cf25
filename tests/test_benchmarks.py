"""Benchmark plumbing: results files are written atomically with ordinary permissions; every
benchmark runs as a script and as a module, and none shadows a package that is imported."""

import json
import os
import pathlib
import stat
import subprocess
import sys
from importlib import metadata

import pytest

from benchmarks.env import add_rolls_flag, rolls_path, write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_write_json_mode_follows_umask(tmp_path, umask, mode):
    out = tmp_path / "results" / "x.json"
    old = os.umask(umask)
    try:
        write_json(out, {"a": 1})
        write_json(out, {"a": 2})  # replacing keeps the ordinary mode too
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert json.loads(out.read_text()) == {"a": 2}
    assert [p.name for p in out.parent.iterdir()] == ["x.json"]  # no temp file left


@pytest.mark.parametrize(
    "argv, default, png",
    [
        ([], "r/rolls.png", "r/rolls.png"),
        (["--rolls", "none"], "r/rolls.png", None),
        (["--rolls", "None"], "r/rolls.png", None),
        (["--rolls", ""], "r/rolls.png", None),
        (["--rolls", "x.png"], None, "x.png"),
        ([], None, None),
    ],
)
def test_rolls_flag_reads_none_as_skip_on_every_benchmark(argv, default, png):
    """Once a benchmark wrote a PNG named 'none' at the top level: 'none' means no PNG."""
    import argparse

    parser = argparse.ArgumentParser()
    add_rolls_flag(parser, default, "rolls")
    got = rolls_path(parser.parse_args(argv).rolls)
    assert got == (None if png is None else pathlib.Path(png))


def test_model_quick_run_never_marks_a_target():
    from benchmarks.model import _targets

    results = {
        "train_target_tokens_per_s_ratio": {"4096": 2.9},
        "train_step_speedup_per_step": {"4096": 23.0},
        "sample_tokens_per_s": {"batch1": 900.0, "batch16": 1000.0},
        "sample_cached_over_uncached": 30.0,
        "flop_utilisation": {"utilisation": 0.5},
        "train": {"65536": {"perceiver_ar": {"peak_rss_mib": 2000.0}}},
    }
    quick = _targets(results, quick=True)
    assert {t["result"] for t in quick.values()} == {"not checked (quick)"}
    full = _targets(results, quick=False)
    verdict = {name: t["result"] for name, t in full.items()}
    assert verdict["Perceiver AR target tokens/s > Transformer's at N=4096"] == "met"
    assert verdict["Perceiver AR target tokens/s > Transformer's at N=16384"] == "not run"
    assert verdict["sampling batch 16 >= 4000 tok/s"] == "missed"
    assert verdict["N=65536 trains within 24 GiB"] == "met"


ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")
# Imported by the peers extra (benchmarks/peers.py), not installed in CI: transformers looks up
# Hugging Face's `kernels` package (which the attention kernels benchmark hid under its old name).
PEER_IMPORTS = {"torch", "transformers", "tokenizers", "kernels", "miditok", "symusic"}


def test_no_benchmark_shadows_an_importable_package():
    """A script run (python benchmarks/x.py) puts benchmarks/ on sys.path, so a benchmark's file
    name would hide a real package of that name from every library. app, model and tokenizer
    resolve to the repo root's folders first (the script puts the root before benchmarks/)."""
    taken = set(metadata.packages_distributions()) | PEER_IMPORTS
    assert not (set(BENCHMARKS) - {"app", "model", "tokenizer"}) & taken


LIBRARIES = {"env", "music_metrics", "web_server"}  # imported by the benchmarks, not run


@pytest.mark.parametrize("name", [b for b in BENCHMARKS if b not in LIBRARIES])
def test_benchmark_runs_as_script_and_as_module(name, tmp_path):
    """``python benchmarks/NAME.py`` from anywhere and ``python -m benchmarks.NAME`` from the repo
    root both start (their --help: the imports at the top and the argument parser)."""
    runs = [
        ([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--help"], tmp_path),
        ([sys.executable, "-m", f"benchmarks.{name}", "--help"], ROOT),
    ]
    for cmd, cwd in runs:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr


def test_infill_attention_reads_the_cross_attention_weights_of_the_forward():
    """The weights kept from the model's own forward: each latent's row sums to 1 over the keys
    it may see (none after its own position, none of the PAD on the left), and they give the
    cross-attention's output (the weights times the values)."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from benchmarks.infill_attention import cross_weights
    from perceiver_midi.model import perceiver_ar
    from perceiver_midi.model.config import get_config

    cfg = get_config("tiny", infill=True, gap_segments=True)
    model = perceiver_ar.PerceiverAR(cfg, rngs=nnx.Rngs(0))
    n, m = cfg.max_len, cfg.num_latents
    row = np.zeros((1, n), np.int32)
    row[0, 5:] = np.random.default_rng(0).integers(3, 359, size=n - 5)
    w_HxMxN = cross_weights(model, row)
    assert w_HxMxN.shape == (cfg.num_cross_heads, m, n)
    np.testing.assert_allclose(w_HxMxN.sum(-1), 1.0, rtol=1e-5)
    assert np.all(w_HxMxN[..., :5] == 0)  # PAD
    later = np.arange(n)[None] > np.arange(n - m, n)[:, None]
    assert np.all(w_HxMxN[:, later] == 0)  # causal
    kept = []
    real = perceiver_ar.causal_attention

    def keep(q, k, v, q_index, key_ok, chunk=0):
        out = real(q, k, v, q_index, key_ok, chunk)
        kept.append((v, out))
        return out

    perceiver_ar.causal_attention = keep
    try:
        model(jnp.asarray(row))
    finally:
        perceiver_ar.causal_attention = real
    v, out = kept[0]
    want = jnp.einsum("hmt,htk->hmk", jnp.asarray(w_HxMxN), v[0])
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(want), atol=1e-5)
