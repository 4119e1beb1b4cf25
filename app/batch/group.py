"""One group's work in a batch run: read its primes, sample its items together and encode their
files. The same functions run in this process and on a Ray worker (:mod:`app.batch.ray_run`); the
driver (:mod:`app.batch.run`) writes the files and the manifest.
"""

from __future__ import annotations

import pathlib

from perceiver_midi.app.batch.plan import Item
from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.infill import infill_bytes, infill_items
from perceiver_midi.app.core.pipeline import (
    OutputOptions,
    Window,
    cut_prime,
    output_bytes,
    sample_continuations,
)


def read_primes(group: list[Item]) -> dict[str, bytes | str]:
    """identity -> file bytes, or the one-line reason it cannot be read."""
    out: dict[str, bytes | str] = {}
    for it in group:
        p = it.prime
        if p.identity in out:
            continue
        try:
            out[p.identity] = pathlib.Path(p.path).read_bytes()
        except FileNotFoundError:
            out[p.identity] = f"{p.identity}: no such file ({p.path})"
        except IsADirectoryError:
            out[p.identity] = f"{p.identity}: is a directory, not a MIDI file"
        except OSError as exc:
            out[p.identity] = f"{p.identity}: cannot read ({exc.strerror})"
    return out


def run_group(
    model, group: list[Item], prime_data: dict[str, bytes | str], options: OutputOptions
) -> list[dict]:
    """Samples one group and encodes its files. Returns per item (group order) a dict with
    ``id``, and either ``error`` or ``files`` ({kind: bytes}) and ``info`` (numbers for the
    manifest)."""
    windows: dict[str, object] = {}  # identity -> PrimeCut, or the reason it failed
    for it in group:
        p = it.prime
        if p.identity in windows:
            continue
        data = prime_data[p.identity]
        if isinstance(data, str):
            windows[p.identity] = data
            continue
        try:
            window = Window.whole() if p.gap is not None else p.settings.window  # infill: all
            windows[p.identity] = cut_prime(data, window, name=p.identity)
        except UserError as exc:
            windows[p.identity] = str(exc)
    results: dict[str, dict] = {}
    ok = [it for it in group if not isinstance(windows[it.prime.identity], str)]
    for it in group:
        if isinstance(windows[it.prime.identity], str):
            results[it.id] = {"id": it.id, "error": windows[it.prime.identity]}
    fills = [it for it in ok if it.prime.gap is not None]
    ok = [it for it in ok if it.prime.gap is None]
    for it, res in zip(fills, _infill_group(model, fills, windows, options), strict=True):
        results[it.id] = res
    conts = []
    if ok:
        try:
            conts = sample_continuations(
                model,
                [windows[it.prime.identity].window for it in ok],
                [it.seed for it in ok],
                ok[0].prime.settings,
                variations=[it.variation for it in ok],
                heads=[windows[it.prime.identity].head for it in ok],
            )
        except UserError as exc:  # the group's settings do not fit the model: its items fail
            for it in ok:
                results[it.id] = {"id": it.id, "error": f"{it.prime.identity}: {exc}"}
            ok = []
        for it, c in zip(ok, conts, strict=True):
            try:
                files = output_bytes(c, options)
            except UserError as exc:
                results[it.id] = {"id": it.id, "error": str(exc)}
                continue
            info = {
                "prime_tokens": int(c.prime.size),
                "prime_seconds": round(c.prime_seconds, 2),
                "prime_cut": c.prime_cut,
                "music_seconds": round(c.seconds, 2),
                "tokens": c.tokens,
                "stop": c.stop,
            }
            results[it.id] = {
                "id": it.id,
                "files": files,
                "info": info,
                "elapsed": c.sample_seconds,
            }
    return [results[it.id] for it in group]


def _infill_group(model, items: list[Item], pieces: dict, options: OutputOptions) -> list[dict]:
    """Infill items (``infill_range`` rows), one sampler call per prime: per item the same
    dict as ``run_group``'s."""
    out: dict[str, dict] = {}
    by_prime: dict[str, list[Item]] = {}
    for it in items:
        by_prime.setdefault(it.prime.identity, []).append(it)
    for identity, same in by_prime.items():
        p = same[0].prime
        try:
            filled = infill_items(
                model, pieces[identity].head, p.gap, p.settings, [it.seed for it in same],
                [it.variation for it in same], label=identity,
            )  # fmt: skip
        except UserError as exc:
            for it in same:
                out[it.id] = {"id": it.id, "error": f"{identity}: {exc}"}
            continue
        for it, f in zip(same, filled, strict=True):
            info = {
                "prime_tokens": int(f.piece.size),
                "prime_seconds": round(float(f.piece_seconds), 2),
                "prime_cut": False,
                "music_seconds": round(f.end - f.start, 2),
                "tokens": f.tokens,
                "stop": f.stop,
                "infill": {"start": f.start, "end": f.end},
            }
            files = infill_bytes(f, options)
            out[it.id] = {"id": it.id, "files": files, "info": info, "elapsed": f.sample_seconds}
    return [out[it.id] for it in items]
