"""benchmarks/peers.py: its sampling measurements with tiny settings, and its one-line message
when the peer libraries (torch, transformers, miditok; ``pip install -e '.[peers]'``) are missing.
CI installs only ``.[test,ray]``: the Hugging Face test skips there."""

import pathlib
import subprocess
import sys

import pytest

from benchmarks import peers

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEERS_MISSING = "peer libraries not installed (pip install -e '.[peers]')"
SAMPLING_KEYS = {
    "batch",
    "prompt_tokens",
    "new_tokens_per_sequence",
    "warmup_s",
    "run_s_all",
    "run_s_median",
    "tokens_per_s",
    "tokens_per_s_best",
    "one_token_run_s_all",
    "one_token_run_s_median",
    "decode_only_tokens_per_s_derived",
    "peak_rss_mib",
}


def _check(result: dict, batch: int, new: int, repeats: int) -> None:
    assert SAMPLING_KEYS <= result.keys()
    assert result["batch"] == batch and result["new_tokens_per_sequence"] == new
    assert len(result["run_s_all"]) == repeats == len(result["one_token_run_s_all"])
    assert result["tokens_per_s"] > 0
    assert result["tokens_per_s"] == pytest.approx(batch * new / result["run_s_median"])


def test_measure_ours_tiny_model():
    from flax import nnx

    from perceiver_midi.model.config import get_config
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    model = PerceiverAR(get_config("tiny"), rngs=nnx.Rngs(0))
    prompt = peers.bach_prompt(64)
    assert prompt.shape == (64,) and prompt.min() >= 3  # real ids, no PAD / EOS / SOS
    result = peers.measure_ours(model, prompt, batch=2, new=8, repeats=2)
    _check(result, batch=2, new=8, repeats=2)


def test_measure_hf_llama_tiny_config():
    pytest.importorskip("torch", reason=PEERS_MISSING)
    pytest.importorskip("transformers", reason=PEERS_MISSING)

    config = peers.llama_config(
        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=128
    )
    model = peers.build_llama(config)
    prompt = peers.bach_prompt(64)
    for cache in peers.LLAMA_VARIANTS.values():
        result = peers.measure_llama(model, prompt, batch=2, new=8, repeats=1, cache=cache)
        _check(result, batch=2, new=8, repeats=1)
        assert result["prompt_tokens"] == 65  # SOS + the prompt, as ours gets it


def test_without_peer_libraries_one_line_and_nonzero_exit(tmp_path):
    # `sys.modules["torch"] = None` makes `import torch` raise ImportError, as when torch is not
    # installed (the case in CI); the script itself is run unchanged, as `python peers.py`.
    out = tmp_path / "peers.json"
    code = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"sys.argv = ['benchmarks/peers.py', '--quick', '--out', {str(out)!r}]; "
        "runpy.run_path('benchmarks/peers.py', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "pip install -e '.[peers]'" in lines[0] and "torch" in lines[0]
    assert proc.stdout == ""
    assert not out.exists()
