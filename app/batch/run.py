"""Batch (dataset) generation: many primes x variations -> files + ``manifest.jsonl``, resumable.

    summary = run_batch("primes/", "out/", checkpoint="checkpoints/maestro-cpu-infill",
                        defaults=Settings(seconds=20), variations=4, base_seed=0)

Items and seeds. PRIMES is a folder of MIDI files (searched recursively; the identity of a prime
is its path relative to the folder) or a CSV/JSONL listing (column/key ``prime``: a path,
relative to the listing's folder; optional ``id`` as identity, else the path as written; optional
per-prime settings, see ``ROW_KEYS``). An item is (prime identity, variation). Its seed is
``prime_seed(base_seed, identity) + variation - 1``, so it depends on the item's identity only,
never on its position in a run, and ``perceiver-midi continue PRIME --seed <prime seed>
--variations N`` reproduces the same notes (both go through :mod:`app.core.pipeline`).

Outputs. ``DIR/<identity without extension>_v<n>.mid`` (+ ``.wav``/``.flac``), and one line per
output in ``DIR/manifest.jsonl`` (prime, window, seed, settings, checkpoint, output paths, music
seconds, token count). Items whose primes fail (missing file, not MIDI, no notes, empty window)
are listed in ``DIR/failed.jsonl`` with the reason (rewritten each run) and the rest continue.

Crash safety. Every file is written to a temporary name and renamed; a manifest line is appended
(one ``write``, then ``fsync``) only after the item's files are complete. On start, a torn last
line is cut away, leftover temporary files of batch's own writes (``.NAME.XXXXXXXX.tmp``
next to a file batch writes; nothing else) are deleted, and items already listed whose files
exist are skipped; a kill -9 at any moment loses at most the items in flight. A lock file stops
two runs from writing into the same folder at once. Resuming with other settings, seed or
checkpoint than the listed items were made with is refused.

Throughput. Items with the same sampler settings are sampled together, ``batch_size`` per call.
With ``ray_address`` the same groups run on Ray actors (``"local"`` starts a local Ray; an address
joins a cluster: workers need this package installed; primes, model weights and the SoundFont are
shipped to them). The driver writes every file and the manifest in plan order, so the outputs and
manifest are identical to a local run.

The parts: :mod:`app.batch.plan` (primes, items, seeds, groups), :mod:`app.batch.group` (one
group's sampling and files), :mod:`app.batch.manifest` (the manifest, failures, resume repairs,
the lock) and :mod:`app.batch.ray_run` (the Ray path); this module runs a job.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator

from perceiver_midi.app.batch.group import read_primes, run_group
from perceiver_midi.app.batch.manifest import (
    FAILED,
    MANIFEST,
    _append_line,
    _locked,
    _write_failed,
    checkpoint_fingerprint,
    resume,
)
from perceiver_midi.app.batch.plan import Item, group_items, load_primes, plan
from perceiver_midi.app.batch.ray_run import _run_ray
from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.pipeline import (
    OutputOptions,
    Settings,
    check_latents,
    ensure_out_dir,
    write_files,
)
from perceiver_midi.app.core.render import soundfont_bytes
from perceiver_midi.model.checkpoint import CheckpointError, default_checkpoint, load_model


@dataclasses.dataclass
class Summary:
    planned: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[dict] = dataclasses.field(default_factory=list)  # {"id", "prime", "reason"}
    tokens: int = 0
    music_seconds: float = 0.0
    elapsed: float = 0.0
    out_dir: str = ""


def run_batch(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    defaults: Settings,
    base_seed: int = 0,
    options: OutputOptions | None = None,
    checkpoint: str | os.PathLike | None = None,
    batch_size: int = 8,
    ray_address: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> Summary:
    """Generates every pending item of ``source`` into ``out_dir``; see the module doc.

    ``defaults``: settings for primes without per-row settings (its ``seed`` is ignored: seeds
    come from ``base_seed`` and identities). ``ray_address``: None (in this process), ``"local"``
    (start a local Ray) or a cluster address. ``progress``: None shows a bar on a terminal.
    """
    options = options or OutputOptions()
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    t0 = time.perf_counter()
    rejected: list[dict] = []  # listing rows that cannot be used: failed.jsonl, the rest go on
    primes = load_primes(source, defaults, base_seed, rejected)
    out = ensure_out_dir(out_dir)
    task = "infill" if any(p.gap is not None for p in primes) else "continue"
    ckpt_dir = checkpoint if checkpoint is not None else default_checkpoint(task)
    try:
        model = load_model(ckpt_dir)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    usable = []
    for p in primes:
        try:
            check_latents(model, p.settings.latents)
            usable.append(p)
        except UserError as exc:
            rejected.append({"id": p.identity, "prime": p.identity, "reason": str(exc)})
    items = plan(usable)
    ckpt = {"path": str(ckpt_dir), "fingerprint": checkpoint_fingerprint(ckpt_dir)}
    if options.audio != "none" and options.synth == "midirenderer":
        soundfont_bytes(options.soundfont)  # a bad --soundfont fails now, not per item
    summary = Summary(planned=len(items) + len(rejected), out_dir=str(out))

    def record(it: Item, info: dict) -> dict:
        return {
            "id": it.id,
            "prime": it.prime.identity,
            "prime_path": it.prime.path,
            "variation": it.variation,
            "seed": it.seed,
            "window": it.prime.settings.window.to_dict(),
            "settings": {
                **it.prime.settings.to_dict(),
                **({} if it.prime.gap is None else {"infill_range": it.prime.gap.describe()}),
                "full": options.full,
                "audio": options.audio,
                "sample_rate": options.sample_rate if options.audio != "none" else None,
                "soundfont": None if options.soundfont is None else str(options.soundfont),
                "synth": options.synth,
            },
            "checkpoint": ckpt,
            "outputs": it.file_names(options),
            **{k: info[k] for k in ("prime_tokens", "prime_seconds", "prime_cut")},
            **{k: info[k] for k in ("music_seconds", "tokens", "stop")},
            **({} if it.prime.gap is None else {"infill": info["infill"]}),
        }

    with _locked(out):
        manifest = out / MANIFEST
        finished = resume(out, items, record)
        pending = [it for it in items if it.id not in finished]
        summary.skipped = len(items) - len(pending)
        groups = group_items(pending, batch_size)

        if ray_address is None or not groups:
            results = _run_local(model, groups, options)
        else:
            results = _run_ray(model, groups, options, ray_address, workers)
        fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        bar = _progress_bar(len(pending), progress)
        failed_lines: list[dict] = list(rejected)
        summary.failed.extend(rejected)
        if rejected:
            _write_failed(out, failed_lines)
        try:
            for group, outs in results:
                for it, res in zip(group, outs, strict=True):
                    if "error" in res:
                        fail = {"id": it.id, "prime": it.prime.identity, "reason": res["error"]}
                        summary.failed.append(fail)
                        failed_lines.append(fail)
                        _write_failed(out, failed_lines)
                        continue
                    # Files first (each renamed into place complete), then one manifest line.
                    write_files(out, it.file_names(options), res["files"])
                    _append_line(fd, record(it, res["info"]))
                    summary.done += 1
                    summary.tokens += res["info"]["tokens"]
                    summary.music_seconds += res["info"]["music_seconds"]
                bar.update(len(group))
        finally:
            results.close()  # stops Ray (if we started it) even on errors or Ctrl-C
            bar.close()
            os.close(fd)
        if not failed_lines and (out / FAILED).exists():
            (out / FAILED).unlink()
    summary.elapsed = time.perf_counter() - t0
    return summary


def _progress_bar(total: int, enabled: bool | None):
    from tqdm import tqdm

    disable = None if enabled is None else not enabled
    return tqdm(total=total, unit="item", desc="batch", disable=disable, file=sys.stderr)


def _run_local(model, groups, options) -> Iterator[tuple[list[Item], list[dict]]]:
    for group in groups:
        yield group, run_group(model, group, read_primes(group), options)
