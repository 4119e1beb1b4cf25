"""Peers side by side: our sampler vs a Hugging Face Llama, our tokenizer vs MidiTok, one run.

    python -m benchmarks.peers --quick    # ~5-9 min: 1 repeat, 10 MAESTRO files; "quick": true
    python -m benchmarks.peers            # ~11 min: medians of 3, 50 MAESTRO files
    (or python benchmarks/peers.py [--quick], from any folder)

Needs the peer libraries (not project dependencies): ``pip install -e '.[peers]'`` (torch CPU,
transformers, miditok + symusic). Results go to ``benchmarks/results/peers.json`` (written
atomically; ``--out`` elsewhere), the ratios under ``ratios`` (ours / each HF Llama variant at
each batch, and the tokenizer's) and as the last printed lines; a sampling ratio that could not
be measured is printed with its error and the run exits 1.

What is measured
  * Sampling, tokens/s = batch x new tokens / wall seconds of the whole call (prefill of the
    prompt included for both), median over repeats, every run recorded, at batch 1 and 16.
    The prompt is the same for both: ``examples/bach_prelude_c.mid`` through ``tokenizer.encode``,
    tiled and trimmed to 3,000 ids, SOS in front (3,001 tokens); at batch 16 it is 16 copies with
    different seeds. Every sequence produces all its new tokens (EOS off / ``min_new_tokens``).
      - ours: ``model.sampler.sample`` with the shipped checkpoint (``load_model(None)``),
        temperature 1, ``stop_at_eos=False``, ``max_polyphony=None``, ``max_note_seconds=None``,
        ``length_bucket=NEW``; one warm-up call with the same shapes first, so XLA compile time
        is excluded (it is recorded as ``warmup_s``).
      - peer: ``transformers.LlamaForCausalLM``, random weights, the same width (256), depth (4
        layers), heads (4), MLP width (1024), vocabulary (391), float32 on CPU;
        ``generate(do_sample=True, use_cache=True, min_new_tokens=NEW, temperature 1, top_k 0,
        top_p 1)`` after a short warm-up generate with the same batch and prompt (torch has no
        compile step here: transformers compiles ``generate`` only on accelerators). Its
        parameter count is close to ours already (4.40 M vs 3.97 M: SwiGLU MLP, no cross-
        attention). Two cache settings: transformers' default (``DynamicCache``, grown by
        concatenation every token) and ``cache_implementation="static"`` (preallocated).
    Decode-only tokens/s is also given, *derived*: batch x (NEW - 1) / (median time of the
    NEW-token call - median time of a 1-token call), i.e. prefill subtracted.
  * Threads: JAX/XLA as the project runs it (nothing set: XLA's own pool over all cores).
    torch gets ``torch.set_num_threads(T)`` with T in {cores, 1}: by default (``--torch-threads
    auto``) both are tried on a short generate at each batch and the faster is used, because on
    a machine shared with another job torch's OpenMP pool can run many times slower with 2
    threads than with 1 (the trial times are recorded). ``--torch-threads 2`` pins it.
  * Tokenizer: ours (``tokenizer.encode``: MIDI file -> ids) vs MidiTok's ``MIDILike`` (the
    performance-style NoteOn / NoteOff / TimeShift / Velocity tokenizer, on symusic) configured
    as close to ours as it goes, ``tokenizer.encode(path)`` -> ids, on the same MAESTRO files
    (50; ``--quick`` 10) spread over the test split, read from ``../shared/data/maestro-v3.0.0``
    next to the repository (``examples/*.mid`` if that is absent; the JSON says which). Both
    warmed up first (numba compile / cache load for ours). Each pass times every file with both,
    alternating; files/s and tokens/s over the median pass; what the two produce differs and the
    JSON says how (``tokenizer.differences``).
  * perceiver-io (krasserm's PyTorch Perceiver AR) would be a third column; it does not install
    beside torch 2.13 (see ``perceiver_io`` in the JSON).

Each measurement runs in its own subprocess (its own thread pools and peak RSS).
``--quick`` runs one repeat: it never claims a target (``"quick": true``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import importlib
import importlib.util
import json
import os
import pathlib
import resource
import statistics
import sys
import time
from importlib import metadata

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.env import environment, training_beside, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "peers.json"
MAESTRO = ROOT.parent / "shared" / "data" / "maestro-v3.0.0"
PROMPT_MIDI = ROOT / "examples" / "bach_prelude_c.mid"
PROMPT_LEN = 3000
NEW_TOKENS = 256
BATCHES = (1, 16)
PEER_LIBS = ("torch", "transformers", "miditok", "symusic")
PEER_VERSIONS = ("torch", "transformers", "miditok", "symusic", "jax", "jaxlib", "flax", "numpy")
INSTALL_HINT = "pip install -e '.[peers]'"
LLAMA_VARIANTS = {"hf_llama": None, "hf_llama_static_cache": "static"}
LLAMA_LABELS = {
    "hf_llama": "HF Llama (default DynamicCache)",
    "hf_llama_static_cache": "HF Llama (static cache)",
}
PERCEIVER_IO = {
    "column": "not measured",
    "why": (
        "`pip install perceiver-io` (2026-11-24): ERROR: ResolutionImpossible. The versions pip "
        "sees (0.1.1 ... 0.6.0, newest 0.6.0) all pin an old torch: 0.6.0 depends on "
        "torch>=1.12.0,<1.13.0 (also pytorch-lightning<1.8, fsspec==2022.5.0, einops<0.5), "
        "which conflicts with torch==2.13.0 and has no Python 3.11 CPU wheel; not forced in "
        "with --no-deps."
    ),
}


def _found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_peer_libraries() -> list[str]:
    """The peer libraries that cannot be imported here (all looked up before any is imported:
    transformers imported without torch prints a warning of its own)."""
    missing = [name for name in PEER_LIBS if not _found(name)]
    if missing:
        return missing
    for name in PEER_LIBS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - ImportError, or a broken install
            missing.append(name)
    return missing


def require_peer_libraries() -> None:
    missing = missing_peer_libraries()
    if missing:
        raise SystemExit(
            f"benchmarks/peers.py needs the peer libraries (missing: {', '.join(missing)}); "
            f"install them with: {INSTALL_HINT}"
        )


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def versions() -> dict:
    out = {}
    for pkg in PEER_VERSIONS:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def bach_prompt(length: int = PROMPT_LEN) -> np.ndarray:
    """``examples/bach_prelude_c.mid`` as ids, tiled (the piece repeated) and trimmed to
    ``length``."""
    from perceiver_midi.tokenizer import encode

    return np.resize(encode(str(PROMPT_MIDI)), length).astype(np.int32)


def _summary(runs: list[float], one_token: list[float], batch: int, new: int) -> dict:
    med = statistics.median(runs)
    out = {
        "run_s_all": runs,
        "run_s_median": med,
        "tokens_per_s": batch * new / med,
        "tokens_per_s_best": batch * new / min(runs),
    }
    if one_token:
        med1 = statistics.median(one_token)
        out["one_token_run_s_all"] = one_token
        out["one_token_run_s_median"] = med1
        decode = med - med1
        out["decode_only_tokens_per_s_derived"] = (
            batch * (new - 1) / decode if decode > 0 and new > 1 else None
        )
    return out


# ---------------------------------------------------------------------------------------------
# Sampling measurements (called by the workers; tests call them with tiny settings)
# ---------------------------------------------------------------------------------------------


def measure_ours(
    model, prompt: np.ndarray, batch: int, new: int, repeats: int, *, seed: int = 0,
    decode_only: bool = True,
) -> dict:  # fmt: skip
    """``model.sampler.sample`` on ``batch`` copies of ``prompt`` (seeds differ per copy)."""
    from perceiver_midi.model.perceiver_ar import count_params
    from perceiver_midi.model.sampler import sample

    prompts = [np.asarray(prompt, np.int32)] * batch
    kwargs = {
        "temperature": 1.0,
        "stop_at_eos": False,
        "max_polyphony": None,
        "max_note_seconds": None,
        "length_bucket": new,  # the 1-token calls run the program compiled for NEW
    }

    def run(n: int, s: int) -> float:
        t0 = time.perf_counter()
        out = sample(model, prompts, max_new_tokens=n, seed=s, **kwargs)
        dt = time.perf_counter() - t0
        if [len(o) for o in out] != [n] * batch:
            raise RuntimeError(f"ours: expected {n} new tokens per sequence")
        return dt

    warmup = run(new, seed)  # compiles (prefill + decode loop) for these shapes
    runs = [run(new, seed + (r + 1) * batch) for r in range(repeats)]
    one = [run(1, seed + (r + 1 + repeats) * batch) for r in range(repeats)] if decode_only else []
    return {
        "batch": batch,
        "prompt_tokens": int(len(prompt)) + 1,  # SOS in front
        "new_tokens_per_sequence": new,
        "params": int(count_params(model)),
        "warmup_s": warmup,
        "warmup_includes": "XLA compile of prefill and decode loop + one run",
        **_summary(runs, one, batch, new),
        "peak_rss_mib": _peak_rss_mib(),
    }


def llama_config(
    vocab_size: int = 391, hidden_size: int = 256, num_layers: int = 4, num_heads: int = 4,
    intermediate_size: int = 1024, max_positions: int = 4096,
):  # fmt: skip
    """A ``LlamaConfig`` of our checkpoint's width, depth, heads, MLP width and vocabulary."""
    from transformers import LlamaConfig

    from perceiver_midi.tokenizer.constants import EOS_ID, PAD_ID, SOS_ID

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=SOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )


def build_llama(config, seed: int = 0):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.float32).eval()


def _llama_inputs(prompt: np.ndarray, batch: int):
    import torch

    from perceiver_midi.tokenizer.constants import SOS_ID

    ids = np.concatenate([[SOS_ID], np.asarray(prompt)]).astype(np.int64)  # as ours: SOS first
    input_ids = torch.from_numpy(ids)[None].repeat(batch, 1)
    return input_ids, torch.ones_like(input_ids)


def llama_generate(model, input_ids, attention_mask, new: int, seed: int, cache=None) -> float:
    """Wall seconds of one ``model.generate`` call producing exactly ``new`` tokens per row."""
    import torch

    extra = {} if cache is None else {"cache_implementation": cache}
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            use_cache=True,
            pad_token_id=0,
            **extra,
        )
    dt = time.perf_counter() - t0
    if tuple(out.shape) != (input_ids.shape[0], input_ids.shape[1] + new):
        raise RuntimeError(f"HF Llama: expected {new} new tokens per sequence, got {out.shape}")
    return dt


def measure_llama(
    model, prompt: np.ndarray, batch: int, new: int, repeats: int, *, seed: int = 0,
    cache: str | None = None, decode_only: bool = True, warmup_tokens: int = 8,
) -> dict:  # fmt: skip
    """``model.generate`` (sampling, KV cache) on ``batch`` copies of ``prompt``."""
    import torch

    input_ids, mask = _llama_inputs(prompt, batch)
    warm_n = min(new, warmup_tokens)
    warmup = llama_generate(model, input_ids, mask, warm_n, seed, cache)
    runs = [
        llama_generate(model, input_ids, mask, new, seed + r + 1, cache) for r in range(repeats)
    ]
    one = []
    if decode_only:
        one = [
            llama_generate(model, input_ids, mask, 1, seed + r + 1 + repeats, cache)
            for r in range(repeats)
        ]
    return {
        "batch": batch,
        "prompt_tokens": int(input_ids.shape[1]),
        "new_tokens_per_sequence": new,
        "cache_implementation": cache or "default (DynamicCache)",
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "torch_threads": torch.get_num_threads(),
        "params": int(sum(p.numel() for p in model.parameters())),
        "warmup_s": warmup,
        "warmup_includes": f"one generate of {warm_n} tokens, same batch and prompt",
        **_summary(runs, one, batch, new),
        "peak_rss_mib": _peak_rss_mib(),
    }


def pick_torch_threads(model, prompt, batch: int, tokens: int = 16) -> dict:
    """Times a short static-cache generate with cores and with 1 torch thread; keeps the faster."""
    import torch

    input_ids, mask = _llama_inputs(prompt, batch)
    candidates = sorted({_cores(), 1}, reverse=True)
    torch.set_num_threads(1)
    llama_generate(model, input_ids, mask, 2, 0, "static")  # first-call overheads
    tried = {}
    for t in candidates:
        torch.set_num_threads(t)
        tried[str(t)] = llama_generate(model, input_ids, mask, tokens, 0, "static")
    best = int(min(tried, key=tried.get))
    torch.set_num_threads(best)
    return {"tried_s": tried, "trial": f"static-cache generate of {tokens} tokens", "chosen": best}


# ---------------------------------------------------------------------------------------------
# Tokenizer measurement
# ---------------------------------------------------------------------------------------------


def midi_files(count: int) -> tuple[list[str], str]:
    """``count`` MAESTRO files spread over the test split, or ``examples/*.mid`` if absent."""
    csv_path = MAESTRO / "maestro-v3.0.0.csv"
    if csv_path.exists():
        with open(csv_path, newline="") as f:
            test = [r for r in csv.DictReader(f) if r["split"] == "test"]
        chosen = test[:: max(1, len(test) // count)][:count]
        files = [str(MAESTRO / r["midi_filename"]) for r in chosen]
        if files and all(os.path.exists(p) for p in files):
            return files, f"{len(files)} MAESTRO v3 test-split files from {MAESTRO}"
    files = sorted(str(p) for p in (ROOT / "examples").glob("*.mid"))
    return files, f"MAESTRO not found at {MAESTRO}: the {len(files)} file(s) in examples/ instead"


def miditok_tokenizer():
    """MidiTok's MIDILike, configured as close to ours as it goes."""
    from miditok import MIDILike, TokenizerConfig

    config = TokenizerConfig(
        pitch_range=(21, 108),  # the piano's 88 keys (inclusive); ours covers all 128 pitches
        num_velocities=32,  # ours: 32 velocity bins
        beat_res={(0, 2): 48},  # time shifts of 1/48 beat up to 2 beats: 10.4 ms .. 1 s at 120 bpm
        use_time_signatures=False,
        use_pitchdrum_tokens=False,
        use_sustain_pedals=False,
        special_tokens=["PAD", "BOS", "EOS"],
    )
    return MIDILike(config)


def _miditok_ids(tok, path: str) -> int:
    seqs = tok.encode(pathlib.Path(path))
    seqs = seqs if isinstance(seqs, list) else [seqs]
    return sum(len(s.ids) for s in seqs)


def measure_tokenizers(files: list[str], repeats: int) -> dict:
    import symusic

    from perceiver_midi.tokenizer import encode
    from perceiver_midi.tokenizer.constants import VOCAB_SIZE

    tok = miditok_tokenizer()
    encode(files[0])  # numba compile / cache load
    _miditok_ids(tok, files[0])
    ours_tokens = [int(encode(p).size) for p in files]
    mt_tokens = [_miditok_ids(tok, p) for p in files]
    tempos = [sorted({round(t.qpm, 3) for t in symusic.Score(p).tempos}) for p in files]
    passes = []
    for _ in range(repeats):
        ours_s = mt_s = load_s = 0.0
        for p in files:  # alternate, so both see the same load
            t0 = time.perf_counter()
            encode(p)
            t1 = time.perf_counter()
            _miditok_ids(tok, p)
            t2 = time.perf_counter()
            symusic.Score(p)
            t3 = time.perf_counter()
            ours_s, mt_s, load_s = ours_s + t1 - t0, mt_s + t2 - t1, load_s + t3 - t2
        passes.append({"ours_s": ours_s, "miditok_s": mt_s, "symusic_load_s": load_s})
    n = len(files)
    med = {k: statistics.median(p[k] for p in passes) for k in passes[0]}
    ours = {
        "what": "tokenizer.encode(path) -> int32 ids",
        "seconds_median_pass": med["ours_s"],
        "files_per_s": n / med["ours_s"],
        "tokens_per_s": sum(ours_tokens) / med["ours_s"],
        "tokens_total": sum(ours_tokens),
        "tokens_per_file_mean": sum(ours_tokens) / n,
        "vocab_size": VOCAB_SIZE,
    }
    mt = {
        "what": "miditok.MIDILike(config).encode(Path) -> TokSequence ids (symusic load included)",
        "config": "pitch_range (21, 108), 32 velocities, beat_res {(0, 2): 48}, no time "
        "signatures, no drum tokens, no sustain-pedal tokens, PAD/BOS/EOS",
        "seconds_median_pass": med["miditok_s"],
        "of_which_symusic_load_s_median_pass": med["symusic_load_s"],
        "files_per_s": n / med["miditok_s"],
        "tokens_per_s": sum(mt_tokens) / med["miditok_s"],
        "tokens_total": sum(mt_tokens),
        "tokens_per_file_mean": sum(mt_tokens) / n,
        "vocab_size": len(tok),
    }
    not_120 = sum(1 for t in tempos if t != [120.0])
    kinds = collections.Counter(name.split("_")[0] for name in tok.vocab)
    mt_vocab = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    differences = (
        f"Vocabulary: ours {VOCAB_SIZE} (3 special, 128 NOTE_ON, 128 NOTE_OFF, 100 TIME_SHIFT, "
        f"32 VELOCITY), MidiTok MIDILike {len(tok)} ({mt_vocab}; pitches 21-108). "
        "Time: ours 10 ms steps in seconds (shifts up to 1 s, longer gaps chained); MidiTok "
        "counts beats: 1/48 beat up to 2 beats, which "
        f"is 10.4 ms .. 1 s only at 120 bpm ({n - not_120} of these {n} files have a single "
        "120 bpm tempo). Velocity: both 32 bins; ours emits VELOCITY only when the bin changes "
        "(note-seq's performance encoding), MidiTok a Velocity after every NoteOn. Sustain: "
        "ours extends notes held by the sustain pedal (note-seq's apply_sustain_control_changes); "
        "MidiTok ignores the pedal here (notes end at key release; use_sustain_pedals=True would "
        "add Pedal tokens instead of extending notes). Tokens per file (mean): ours "
        f"{ours['tokens_per_file_mean']:,.0f}, MidiTok {mt['tokens_per_file_mean']:,.0f}."
    )
    return {
        "files": n,
        "passes": repeats,
        "pass_seconds_all": passes,
        "ours": ours,
        "miditok": mt,
        "files_per_s_ratio": ours["files_per_s"] / mt["files_per_s"],
        "tokens_per_s_ratio": ours["tokens_per_s"] / mt["tokens_per_s"],
        "files_with_a_single_120_bpm_tempo": n - not_120,
        "differences": differences,
    }


# ---------------------------------------------------------------------------------------------
# Workers (run in subprocesses; print one JSON line)
# ---------------------------------------------------------------------------------------------


def worker_ours(args) -> dict:
    import jax

    from perceiver_midi.model.checkpoint import default_checkpoint, load_model, read_info

    ckpt = default_checkpoint()
    model = load_model(None)
    result = measure_ours(model, bach_prompt(args.prompt_len), args.batch, args.new, args.repeats)
    info = read_info(ckpt)
    result["checkpoint"] = {
        "name": pathlib.Path(ckpt).name,
        "config": info["config"],
        "metadata": info.get("metadata", {}),
    }
    result["jax_backend"] = jax.default_backend()
    return result


def worker_llama(args) -> dict:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(_cores())
    model = build_llama(llama_config(max_positions=max(4096, args.prompt_len + 1 + args.new)))
    prompt = bach_prompt(args.prompt_len)
    if args.torch_threads == "auto":
        threads = pick_torch_threads(model, prompt, args.batch)
    else:
        torch.set_num_threads(int(args.torch_threads))
        threads = {"chosen": int(args.torch_threads), "trial": "none (--torch-threads)"}
    out = {"torch_threads": threads}
    for name, cache in LLAMA_VARIANTS.items():
        print(f"    {name} ...", file=sys.stderr, flush=True)
        out[name] = measure_llama(model, prompt, args.batch, args.new, args.repeats, cache=cache)
    return out


def worker_tokenizer(args) -> dict:
    files, source = midi_files(args.files)
    result = measure_tokenizers(files, args.repeats)
    result["source"] = source
    return result


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _run_worker(kind: str, timeout: float, **kw) -> dict:
    from benchmarks.env import run_worker

    return run_worker(__file__, kind, timeout, **kw)


def _load() -> dict:
    info = {"loadavg": os.getloadavg()}
    with contextlib.suppress(OSError):
        info["cpu_pressure"] = pathlib.Path("/proc/pressure/cpu").read_text().splitlines()[0]
    return info


def _tps(x: dict, key: str = "tokens_per_s") -> float | None:
    return x.get(key) if isinstance(x, dict) else None


def _why_missing(x) -> str:
    if isinstance(x, dict) and "error" in x:
        return str(x["error"])
    return "not measured" if not x else "no tokens/s in the result"


def sampling_ratios(results: dict) -> dict:
    """Ours / each HF Llama variant, per batch: ``{"batch1": {"hf_llama": {...}, ...}}``, each
    with both tokens/s, the ratio (``None`` with ``missing`` saying why when either failed) and
    the derived decode-only ratio."""
    out = {}
    for b, pair in results.get("sampling", {}).items():
        ours_x = pair.get("ours", {})
        peer_all = pair.get("peer", {})
        ours = _tps(ours_x)
        row = {}
        for name in LLAMA_VARIANTS:
            peer_x = peer_all.get(name) or {k: v for k, v in peer_all.items() if k == "error"}
            peer = _tps(peer_x)
            entry = {
                "ours_tokens_per_s": ours,
                "peer_tokens_per_s": peer,
                "ratio": ours / peer if ours and peer else None,
            }
            d_ours = _tps(ours_x, "decode_only_tokens_per_s_derived")
            d_peer = _tps(peer_x, "decode_only_tokens_per_s_derived")
            entry["decode_only_ratio_derived"] = d_ours / d_peer if d_ours and d_peer else None
            if entry["ratio"] is None:
                who, x = ("ours", ours_x) if not ours else (name, peer_x)
                entry["missing"] = f"{who}: {_why_missing(x)}"
            row[name] = entry
        out[b] = row
    return out


def missing_ratios(results: dict) -> list[str]:
    """``batchB name`` of every sampling ratio that could not be computed."""
    ratios = results.get("ratios", {}).get("sampling") or sampling_ratios(results)
    return [f"{b} {n}" for b, row in ratios.items() for n, e in row.items() if e["ratio"] is None]


def ratio_lines(results: dict) -> list[str]:
    """The closing lines: ours vs each peer (or why a ratio is missing), and the tokenizer."""
    lines = []
    ratios = results.get("ratios", {}).get("sampling") or sampling_ratios(results)
    for b, row in ratios.items():
        for name, e in row.items():
            head = f"sampling batch {b.removeprefix('batch')}: "
            label = LLAMA_LABELS.get(name, name)
            if e["ratio"] is None:
                lines.append(f"{head}ours / {label}: no ratio ({e['missing']})")
                continue
            lines.append(
                f"{head}ours {e['ours_tokens_per_s']:,.0f} tok/s, "
                f"{label} {e['peer_tokens_per_s']:,.0f} tok/s: {e['ratio']:.1f}x"
            )
    tok = results.get("tokenizer", {})
    if "ours" in tok:
        o, m = tok["ours"], tok["miditok"]
        lines.append(
            f"tokenizer ({tok['files']} files): ours {o['files_per_s']:,.1f} files/s "
            f"{o['tokens_per_s']:,.0f} tok/s, MidiTok MIDILike {m['files_per_s']:,.1f} files/s "
            f"{m['tokens_per_s']:,.0f} tok/s: {tok['files_per_s_ratio']:.1f}x files/s, "
            f"{tok['tokens_per_s_ratio']:.1f}x tok/s"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 10 files; claims nothing")
    parser.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. machine load)")
    parser.add_argument("--new", type=int, default=NEW_TOKENS, help="new tokens per sequence")
    parser.add_argument(
        "--torch-threads", default="auto", help="torch threads: auto (try cores and 1), or N"
    )
    parser.add_argument("--worker", choices=["ours", "llama", "tokenizer"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--prompt-len", type=int, default=PROMPT_LEN, help=argparse.SUPPRESS)
    parser.add_argument("--files", type=int, default=50, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # the driver has checked the peer libraries
        fn = {"ours": worker_ours, "llama": worker_llama, "tokenizer": worker_tokenizer}
        print(json.dumps(fn[args.worker](args)), flush=True)
        return 0

    require_peer_libraries()
    quick = args.quick
    repeats, files = (1, 10) if quick else (3, 50)
    command = "python -m benchmarks.peers" if __package__ else "python benchmarks/peers.py"
    command += " --quick" if quick else ""
    if args.new != NEW_TOKENS:
        command += f" --new {args.new}"
    if args.torch_threads != "auto":
        command += f" --torch-threads {args.torch_threads}"
    started = time.perf_counter()
    print(f"peers benchmark ({'quick' if quick else 'full'}: {repeats} repeat(s), {files} files)")
    env = environment()
    env["versions"] = {**env.get("versions", {}), **versions()}
    env["affinity_cores"] = _cores()
    results: dict = {
        "quick": quick,
        "command": command,
        "note": args.note,
        "training_job_beside": training_beside(),
        "environment": env,
        "load_at_start": _load(),
        "settings": {
            "prompt": f"{PROMPT_MIDI.relative_to(ROOT)} via tokenizer.encode, tiled/trimmed to "
            f"{PROMPT_LEN} ids, SOS in front ({PROMPT_LEN + 1} tokens)",
            "new_tokens_per_sequence": args.new,
            "repeats": repeats,
            "tokens_per_s": "batch x new tokens / wall seconds of the whole sample/generate call "
            "(prefill included), median over repeats",
            "decode_only_tokens_per_s_derived": "batch x (new - 1) / (median NEW-token call - "
            "median 1-token call): derived, prefill subtracted",
            "threads": {
                "jax": "nothing set (XLA CPU's own thread pool over all cores); XLA_FLAGS="
                + repr(os.environ.get("XLA_FLAGS")),
                "torch": "torch.set_num_threads(T), T per batch in sampling.<batch>.peer."
                "torch_threads (" + args.torch_threads + ")",
            },
        },
        "perceiver_io": PERCEIVER_IO,
        "sampling": {},
    }

    timeout = 900 if quick else 1800
    for batch in BATCHES:
        print(f"sampling, batch {batch}", flush=True)
        kw = {"batch": batch, "new": args.new, "repeats": repeats}
        ours = _run_worker("ours", timeout, **kw)
        peer = _run_worker("llama", timeout, torch_threads=args.torch_threads, **kw)
        results["sampling"][f"batch{batch}"] = {"ours": ours, "peer": peer}
        if "checkpoint" in ours:
            results["checkpoint"] = ours.pop("checkpoint")
    print("tokenizer", flush=True)
    results["tokenizer"] = _run_worker("tokenizer", timeout, files=files, repeats=repeats)
    results["load_at_end"] = _load()
    results["seconds"] = time.perf_counter() - started
    tok = results["tokenizer"]
    results["ratios"] = {
        "what": "ours / peer, tokens/s of the whole call (prefill included), per batch and "
        "HF Llama cache; decode_only_ratio_derived from the derived decode-only tokens/s"
        + ("; quick run (1 repeat): indicative only, claims nothing" if quick else ""),
        "sampling": sampling_ratios(results),
        "tokenizer": {
            "files_per_s": tok.get("files_per_s_ratio"),
            "tokens_per_s": tok.get("tokens_per_s_ratio"),
        },
    }
    write_json(args.out, results)

    print(f"\n== {args.out} ({results['seconds']:.0f} s{'; quick' if quick else ''}) ==")
    for b, pair in results["sampling"].items():
        for name, x in [("ours", pair["ours"]), *pair["peer"].items()]:
            if isinstance(x, dict) and "tokens_per_s" in x:
                dec = x.get("decode_only_tokens_per_s_derived")
                dec = f", decode-only (derived) {dec:,.0f}" if dec else ""
                print(f"{b} {name}: {x['tokens_per_s']:,.0f} tok/s (median {x['run_s_median']:.2f}"
                      f" s{dec})")  # fmt: skip
            elif name in ("ours", "error"):
                print(f"{b} {name}: {x}")
    tok = results["tokenizer"]
    if "differences" in tok:
        print(f"tokenizer: {tok['source']}")
    for line in ratio_lines(results):
        print(line)
    missing = missing_ratios(results)
    if missing:  # the JSON is written all the same, with each failure's error
        print(f"missing sampling ratio(s): {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
