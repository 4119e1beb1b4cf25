"""A batch run's folder: ``manifest.jsonl`` and ``failed.jsonl`` (reading, appending, rewriting),
repairs on resume (a torn last line, leftover temporary files, stale or duplicate lines), the
check that resumed items were made with the same settings, seed and checkpoint, the checkpoint
fingerprint, and the lock that keeps two runs out of one folder. See :mod:`app.batch.run`.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Callable, Iterable

from perceiver_midi.app.batch.plan import Item
from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.pipeline import AUDIO_CHOICES, OutputOptions
from perceiver_midi.tokenizer import atomic_write_bytes

MANIFEST = "manifest.jsonl"
FAILED = "failed.jsonl"
LOCK = ".batch.lock"
# The numbers a manifest record takes from the sampling (see app.batch.group.run_group).
_INFO_KEYS = (
    "prime_tokens", "prime_seconds", "prime_cut", "music_seconds", "tokens", "stop", "infill",
)  # fmt: skip


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
            names.update(it.file_names(OutputOptions(audio=audio)).values())
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


def resume(out: pathlib.Path, items: list[Item], record: Callable[[Item, dict], dict]) -> set[str]:
    """Readies ``out`` (held under :func:`_locked`) for a run of ``items``: cuts a torn manifest
    line, deletes leftover temporary files of batch's own writes, drops manifest lines whose
    files are gone (and duplicates), refuses an item listed with other settings, seed or
    checkpoint than ``record`` gives it now, and returns the ids of the items already done."""
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
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in keep)
        atomic_write_bytes(manifest, text.encode())
    return finished


def _write_failed(out: pathlib.Path, lines: list[dict]) -> None:
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines)
    atomic_write_bytes(out / FAILED, text.encode())
