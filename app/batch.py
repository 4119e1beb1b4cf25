"""Batch (dataset) generation: many primes x variations -> files + ``manifest.jsonl``, resumable.

    summary = run_batch("primes/", "out/", checkpoint="checkpoints/maestro-cpu",
                        defaults=Settings(seconds=20), variations=4, base_seed=0)

Items and seeds. PRIMES is a folder of MIDI files (searched recursively; the identity of a prime
is its path relative to the folder) or a CSV/JSONL listing (column/key ``prime``: a path,
relative to the listing's folder; optional ``id`` as identity, else the path as written; optional
per-prime settings, see ``ROW_KEYS``). An item is (prime identity, variation). Its seed is
``prime_seed(base_seed, identity) + variation - 1``, so it depends on the item's identity only,
never on its position in a run, and ``perceiver-midi continue PRIME --seed <prime seed>
--variations N`` reproduces the same notes (both go through :mod:`app.pipeline`).

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
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from app.errors import UserError
from app.pipeline import (
    AUDIO_CHOICES,
    MIDI_SUFFIXES,
    OutputOptions,
    Settings,
    Window,
    output_bytes,
    output_stem,
    sample_continuations,
)

MANIFEST = "manifest.jsonl"
FAILED = "failed.jsonl"
LOCK = ".batch.lock"
# Per-prime settings a CSV/JSONL row may give (empty cells mean "the command-line value").
ROW_KEYS = (
    "prime",
    "id",
    "seed",
    "variations",
    "seconds",
    "tokens",
    "temperature",
    "top_k",
    "top_p",
    "latents",
    "max_note_seconds",
    "pitch_range",
    "key",
    "velocity_range",
    "max_polyphony",
    "prime_seconds",
    "prime_tokens",
    "prime_range",
)


# Listing columns that are Settings fields of the same name.
SETTING_COLUMNS = (
    "temperature",
    "top_k",
    "top_p",
    "latents",
    "variations",
    "max_note_seconds",
    "pitch_range",
    "key",
    "velocity_range",
    "max_polyphony",
)

# ----------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prime:
    identity: str  # stable name: path relative to the folder, or the listing's id/path
    path: str  # the file to read
    stem: str  # output stem relative to DIR
    settings: Settings  # per-prime settings; settings.seed is the prime's seed


@dataclasses.dataclass(frozen=True)
class Item:
    prime: Prime
    variation: int  # 1-based

    @property
    def id(self) -> str:
        return f"{self.prime.identity}#v{self.variation}"

    @property
    def seed(self) -> int:
        return self.prime.settings.seed + self.variation - 1


def prime_seed(base_seed: int, identity: str) -> int:
    """A seed in [0, 2**31) from the base seed and the prime's identity (sha256, stable)."""
    digest = hashlib.sha256(f"perceiver-midi/{int(base_seed)}/{identity}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def _row_settings(row: dict[str, Any], defaults: Settings, where: str) -> Settings:
    """Defaults overridden by a listing row's settings."""
    unknown = sorted(set(row) - set(ROW_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown column {unknown[0]!r} (known: {', '.join(ROW_KEYS)})")

    def value(key):  # Settings and Window check and convert (bounds live there)
        v = row.get(key)
        return None if v is None or (isinstance(v, str) and not v.strip()) else v

    changes: dict[str, Any] = {}
    seconds, tokens = value("seconds"), value("tokens")
    if seconds is not None or tokens is not None:
        changes.update(seconds=seconds, tokens=tokens)
    for key in SETTING_COLUMNS:
        if (v := value(key)) is not None:
            changes[key] = v
    try:
        windows = []  # prime_tokens alone: the last tokens; with another: at most that many
        tokens = value("prime_tokens")
        if (v := value("prime_seconds")) is not None:
            windows.append(Window.last_seconds(v).at_most(tokens))
        if (v := value("prime_range")) is not None:
            windows.append(Window.parse_range(str(v)).at_most(tokens))
        if len(windows) > 1:
            raise UserError("give prime_seconds or prime_range, not both")
        if not windows and tokens is not None:
            windows.append(Window.last_tokens(tokens))
        if windows:
            changes["window"] = windows[0]
        return defaults.replace(**changes)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _listing_rows(path: pathlib.Path) -> Iterator[tuple[str, dict | UserError]]:
    """(where, row) per row of a listing; a row that cannot be read comes as its UserError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise UserError(f"{path}: cannot read ({reason})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "prime" not in [f.strip() for f in reader.fieldnames]:
            raise UserError(f"{path}: a CSV listing needs a 'prime' column")
        unknown = sorted({f.strip() for f in reader.fieldnames} - set(ROW_KEYS))
        if unknown:  # a header typo concerns every row: refuse the listing
            raise UserError(f"{path}: unknown column {unknown[0]!r} (known: {', '.join(ROW_KEYS)})")
        for n, row in enumerate(reader, start=2):
            where = f"{path} line {n}"
            if None in row:
                yield where, UserError(f"{where}: more cells than columns")
                continue
            yield where, {k.strip(): v for k, v in row.items()}
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield where, UserError(f"{where}: not JSON")
                continue
            if isinstance(row, str):
                row = {"prime": row}
            if not isinstance(row, dict):
                yield where, UserError(f"{where}: expected an object with a 'prime' key")
                continue
            yield where, row


def _listing_prime(source: pathlib.Path, where: str, row: dict, defaults: Settings,
                   base_seed: int) -> Prime:  # fmt: skip
    """The Prime of one listing row, or a UserError naming the row and its first problem."""
    row = {k: v for k, v in row.items() if k is not None}
    prime = str(row.get("prime") or "").strip()
    if not prime:
        raise UserError(f"{where}: missing 'prime' path")
    identity = str(row.get("id") or "").strip() or prime
    settings = _row_settings(row, defaults, where)
    seed = row.get("seed")
    if seed in (None, ""):
        seed = prime_seed(base_seed, identity)
    try:
        settings = settings.replace(seed=seed)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    path = pathlib.Path(prime)
    if not path.is_absolute():
        path = source.parent / path
    return Prime(identity, str(path), output_stem(identity), settings)


def load_primes(
    source: str | os.PathLike,
    defaults: Settings,
    base_seed: int,
    rejected: list[dict] | None = None,
) -> list[Prime]:
    """The primes of a folder or a CSV/JSONL listing (see the module doc).

    A listing row that cannot be used (bad setting, unknown column, not JSON...) raises its
    one-line UserError, or, with a ``rejected`` list, is appended to it as ``{"id", "prime",
    "reason"}`` (a failed.jsonl record) while the other rows are kept.
    """
    source = pathlib.Path(source)
    primes: list[Prime] = []
    if source.is_dir():
        files = sorted(
            (p for p in source.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file()),
            key=lambda p: p.relative_to(source).as_posix(),
        )
        for p in files:
            identity = p.relative_to(source).as_posix()
            settings = defaults.replace(seed=prime_seed(base_seed, identity))
            primes.append(Prime(identity, str(p), output_stem(identity), settings))
        if not primes:
            raise UserError(f"{source}: no .mid/.midi files found")
    elif source.suffix.lower() in (".csv", ".jsonl", ".json"):
        if not source.is_file():
            raise UserError(f"{source}: no such file")
        rows = 0
        for where, row in _listing_rows(source):
            rows += 1
            try:
                if isinstance(row, UserError):
                    raise row
                primes.append(_listing_prime(source, where, row, defaults, base_seed))
            except UserError as exc:
                if rejected is None:
                    raise
                name = row.get("prime") if isinstance(row, dict) else None
                ident = (row.get("id") if isinstance(row, dict) else None) or name or where
                rejected.append({"id": str(ident), "prime": name, "reason": str(exc)})
        if not rows:
            raise UserError(f"{source}: the listing is empty")
    elif source.exists():
        raise UserError(f"{source}: PRIMES must be a folder of MIDI files or a .csv/.jsonl listing")
    else:
        raise UserError(f"{source}: no such folder or listing")
    seen: dict[str, str] = {}
    stems: dict[str, str] = {}
    for p in primes:
        if p.identity in seen:
            raise UserError(f"{source}: prime {p.identity!r} is listed twice (give each an id)")
        seen[p.identity] = p.path
        if p.stem.lower() in stems:
            raise UserError(
                f"{source}: {stems[p.stem.lower()]!r} and {p.identity!r} would write the same "
                f"output files ({p.stem}_v1...); give them distinct ids"
            )
        stems[p.stem.lower()] = p.identity
    return primes


def plan(primes: Iterable[Prime]) -> list[Item]:
    return [Item(p, v) for p in primes for v in range(1, int(p.settings.variations) + 1)]


def group_items(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Consecutive runs of items with equal sampler settings, ``batch_size`` at most each."""
    by_key: dict[tuple, list[Item]] = collections.defaultdict(list)
    for it in items:  # dict keeps first-seen key order: groups follow the plan order
        by_key[it.prime.settings.sampler_key()].append(it)
    groups = []
    for same in by_key.values():
        groups.extend(same[i : i + batch_size] for i in range(0, len(same), batch_size))
    return groups


# ----------------------------------------------------------------------------------------------
# The per-group work (the same function locally and on Ray)
# ----------------------------------------------------------------------------------------------


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
    from app.pipeline import cut_prime

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
            windows[p.identity] = cut_prime(data, p.settings.window, name=p.identity)
        except UserError as exc:
            windows[p.identity] = str(exc)
    results: dict[str, dict] = {}
    ok = [it for it in group if not isinstance(windows[it.prime.identity], str)]
    for it in group:
        if isinstance(windows[it.prime.identity], str):
            results[it.id] = {"id": it.id, "error": windows[it.prime.identity]}
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


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------


def checkpoint_fingerprint(directory: str | os.PathLike) -> str:
    """sha256 (16 hex digits) over the checkpoint folder's files (names and contents)."""
    root = pathlib.Path(directory)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def read_manifest(path: pathlib.Path) -> list[dict]:
    """The complete lines of a manifest; a torn last line (a crash mid-append) is cut away."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # torn tail
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
        data = data[:end]
    records = []
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {n}: not JSON; fix or remove that line") from None
        if not isinstance(rec, dict) or "id" not in rec or "outputs" not in rec:
            raise UserError(f"{path} line {n}: not a manifest record")
        records.append(rec)
    return records


def _append_line(fd: int, record: dict) -> None:
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]
    os.fsync(fd)


# Names of the temporary files this package's writers make: ``atomic_write_bytes`` writes
# ``.NAME.XXXXXXXX.tmp`` next to NAME (``tempfile.mkstemp``: 8 characters of [a-z0-9_]) and
# ``ensure_out_dir`` probes with ``.write-test-XXXXXXXX``.
_TEMP_RANDOM = re.compile(r"[a-z0-9_]{8}")
_WRITE_TEST = re.compile(r"\.write-test-[a-z0-9_]{8}")


def _batch_file_names(items: Iterable[Item], listed: Iterable[dict]) -> set[str]:
    """Every path (relative to DIR) a batch run writes or wrote: the manifest, failures and the
    planned items' files (in any audio format), and the files of listed manifest records."""
    names = {MANIFEST, FAILED}
    for it in items:
        for audio in AUDIO_CHOICES:
            options = OutputOptions(audio=audio)
            names.update(options.file_names(it.prime.stem, it.variation).values())
    for rec in listed:
        outputs = rec["outputs"] if isinstance(rec["outputs"], dict) else {}
        names.update(str(rel) for rel in outputs.values())
    # Only paths inside DIR (a hand-edited manifest must not point the cleanup elsewhere).
    inside = (n for n in names if not os.path.isabs(n) and ".." not in re.split(r"[\\/]", n))
    return set(inside)


def _remove_temp_files(out_dir: pathlib.Path, names: Iterable[str]) -> int:
    """Deletes leftovers of interrupted atomic writes of batch's own files only: for each path
    NAME in ``names`` (relative to ``out_dir``), ``.NAME.XXXXXXXX.tmp`` next to it, and
    ``.write-test-XXXXXXXX`` in ``out_dir``. Never walks the folder; never follows a link."""
    by_folder: dict[pathlib.Path, set[str]] = collections.defaultdict(set)
    for rel in names:
        path = out_dir / rel
        by_folder[path.parent].add(path.name)
    n = 0
    for folder, own in by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # not there (yet): nothing of ours to clean
        for entry in entries:
            name = entry.name
            if name.startswith(".") and name.endswith(".tmp"):
                target, _, random = name[1 : -len(".tmp")].rpartition(".")
                ours = target in own and _TEMP_RANDOM.fullmatch(random) is not None
            else:
                ours = folder == out_dir and _WRITE_TEST.fullmatch(name) is not None
            if ours and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    n += 1
    return n


@contextlib.contextmanager
def _locked(out_dir: pathlib.Path):
    import fcntl

    fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out_dir}: another batch run is writing here") from None
        yield
    finally:
        os.close(fd)


def _mismatch(old: dict, new: dict) -> str | None:
    """The first field (seed, window, settings, checkpoint) in which two records differ. A
    setting missing from an older record counts as None (its default then and now)."""
    pairs = {
        "seed": (old.get("seed"), new["seed"]),
        "window": (old.get("window"), new["window"]),
        "settings": (old.get("settings"), new["settings"]),
        "checkpoint": (
            (old.get("checkpoint") or {}).get("fingerprint"),
            new["checkpoint"]["fingerprint"],
        ),
    }
    for field, (a, b) in pairs.items():
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            key = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None)
            if key is None:
                continue
            field, a, b = f"{field}.{key}", a.get(key), b.get(key)
        return f"{field} ({json.dumps(a)} then, {json.dumps(b)} now)"
    return None


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


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
    from app.pipeline import check_latents, ensure_out_dir, write_files
    from model.checkpoint import CheckpointError, default_checkpoint, load_model

    options = options or OutputOptions()
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    t0 = time.perf_counter()
    rejected: list[dict] = []  # listing rows that cannot be used: failed.jsonl, the rest go on
    primes = load_primes(source, defaults, base_seed, rejected)
    out = ensure_out_dir(out_dir)
    ckpt_dir = checkpoint if checkpoint is not None else default_checkpoint()
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
        from app.render import soundfont_bytes

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
                "full": options.full,
                "audio": options.audio,
                "sample_rate": options.sample_rate if options.audio != "none" else None,
                "soundfont": None if options.soundfont is None else str(options.soundfont),
                "synth": options.synth,
            },
            "checkpoint": ckpt,
            "outputs": options.file_names(it.prime.stem, it.variation),
            **{k: info[k] for k in ("prime_tokens", "prime_seconds", "prime_cut")},
            **{k: info[k] for k in ("music_seconds", "tokens", "stop")},
        }

    with _locked(out):
        manifest = out / MANIFEST
        listed = read_manifest(manifest)
        _remove_temp_files(out, _batch_file_names(items, listed))
        planned = {it.id: it for it in items}
        keep, finished = [], set()
        for rec in listed:
            rid = rec["id"]
            if rid in finished:
                continue  # a duplicate line: keep the first
            complete = all((out / rel).is_file() for rel in rec["outputs"].values())
            if not complete:
                continue  # its files were removed: make it again, drop the stale line
            if rid in planned:
                probe = record(planned[rid], {k: None for k in _INFO_KEYS})
                field = _mismatch(rec, probe)
                if field:
                    raise UserError(
                        f"{manifest}: {rid} was made with a different {field}; use a new "
                        "--out folder or the options of the first run"
                    )
            keep.append(rec)
            finished.add(rid)
        if len(keep) != len(listed):  # rewrite without stale or duplicate lines (atomically)
            from tokenizer import atomic_write_bytes

            text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in keep)
            atomic_write_bytes(manifest, text.encode())
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
                    write_files(out, options.file_names(it.prime.stem, it.variation), res["files"])
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


_INFO_KEYS = ("prime_tokens", "prime_seconds", "prime_cut", "music_seconds", "tokens", "stop")


def _write_failed(out: pathlib.Path, lines: list[dict]) -> None:
    from tokenizer import atomic_write_bytes

    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines)
    atomic_write_bytes(out / FAILED, text.encode())


def _progress_bar(total: int, enabled: bool | None):
    from tqdm import tqdm

    disable = None if enabled is None else not enabled
    return tqdm(total=total, unit="item", desc="batch", disable=disable, file=sys.stderr)


def _run_local(model, groups, options) -> Iterator[tuple[list[Item], list[dict]]]:
    for group in groups:
        yield group, run_group(model, group, read_primes(group), options)


# ----------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------


def model_blob(model) -> tuple[dict, Any]:
    """(config dict, float32 numpy params): what a Ray worker needs to rebuild the model."""
    import jax
    from flax import nnx

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return dataclasses.asdict(model.config), jax.tree.map(np.asarray, params)


def model_from_blob(blob):
    from flax import nnx

    from model.config import Config
    from model.perceiver_ar import PerceiverAR

    config, params = blob
    model = PerceiverAR(Config(**config), rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


class _Worker:
    """A Ray actor: holds the model (and its compiled sampler) for all its groups."""

    def __init__(self, blob, options: OutputOptions):
        self.model = model_from_blob(blob)
        self.options = options

    def run(self, group: list[Item], prime_data: dict) -> list[dict]:
        return run_group(self.model, group, prime_data, self.options)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fails fast (one line) when a ``host:port`` / ``ray://host:port`` address does not answer;
    Ray itself would retry for minutes. Other forms (``auto``) are left to Ray."""
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address.strip())
    if not m:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot reach Ray at {address} ({reason})") from None


def _run_ray(model, groups, options: OutputOptions, address: str, workers: int | None):
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'perceiver-midi[ray]'") from None
    started = False
    if not ray.is_initialized():
        kwargs = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if address == "local":
            root = str(pathlib.Path(__file__).resolve().parent.parent)
            path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            # A local Ray stays on loopback: no traffic to the machine's other addresses.
            kwargs.update(num_cpus=os.cpu_count() or 1, _node_ip_address="127.0.0.1")
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        else:
            _check_reachable(address)
            kwargs["address"] = address
        try:
            with warnings.catch_warnings():  # JAX warns about Ray's fork+exec of its daemons
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
                ray.init(**kwargs)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError...
            raise UserError(f"cannot start or reach Ray at {address}: {exc}") from None
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = max(1, min(workers or cpus, len(groups)))
        if options.synth == "midirenderer" and options.audio != "none":
            from app.render import soundfont_bytes

            options = dataclasses.replace(options, soundfont=soundfont_bytes(options.soundfont))
        actor = ray.remote(num_cpus=1)(_Worker)
        blob = ray.put(model_blob(model))
        opts = ray.put(options)
        actors = [actor.remote(blob, opts) for _ in range(n)]
        inflight: collections.deque = collections.deque()
        todo = iter(enumerate(groups))

        def submit():
            nxt = next(todo, None)
            if nxt is not None:
                i, g = nxt
                inflight.append((g, actors[i % n].run.remote(g, read_primes(g))))

        for _ in range(2 * n):
            submit()
        while inflight:  # results in plan order: the manifest is identical to a local run
            g, ref = inflight.popleft()
            outs = ray.get(ref)
            submit()
            yield g, outs
        for a in actors:
            ray.kill(a)
    finally:
        if started:
            ray.shutdown()
