"""Token arrays per split, ready to memory-map for training (``perceiver-midi prepare-data``).

Layout of an output folder (never commit it: MAESTRO is CC BY-NC-SA):

    OUT/<split>/tokens.u16     all pieces' ids concatenated, little-endian uint16 (no SOS/EOS)
    OUT/<split>/offsets.i64    piece boundaries: piece k is tokens[offsets[k]:offsets[k+1]]
    OUT/<split>/pieces.jsonl   one line per piece: {"name", "tokens", "seconds", ...CSV fields}
    OUT/<split>/DONE.json      written last: source list, tokenizer settings, counts, failures

A split whose DONE.json matches the current sources and settings is skipped on re-runs; a split
is written into a temporary folder and renamed into place, so a killed run leaves no half split.
Only a folder holding nothing but these files (all or some of them) is ever replaced: any other
``OUT/<split>`` is refused with :class:`ForeignFolderError` and left as it is.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np

from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer.encode import encode
from perceiver_midi.tokenizer.midi import MidiError
from perceiver_midi.tokenizer.windows import music_seconds

SPLITS = ("train", "validation", "test")
FORMAT_VERSION = 1
SETTINGS = {
    "format": FORMAT_VERSION,
    "steps_per_second": C.STEPS_PER_SECOND,
    "max_shift_steps": C.MAX_SHIFT_STEPS,
    "velocity_bins": C.NUM_VELOCITY_BINS,
    "reserved": C.NUM_RESERVED,
    "vocab_size": C.VOCAB_SIZE,
}


SPLIT_FILES = frozenset({"tokens.u16", "offsets.i64", "pieces.jsonl", "DONE.json"})
_TEMP_SPLIT = re.compile(r"\.(?:train|validation|test)\.[a-z0-9_]{8}\.tmp")  # tempfile.mkdtemp


class ForeignFolderError(ValueError):
    """``OUT/<split>`` exists and is not a split folder prepare-data wrote; one-line message."""


def is_split_dir(folder: str | os.PathLike) -> bool:
    """True if ``folder`` is a real folder (not a link) holding only split files
    (``SPLIT_FILES``: all of them, some of them from a killed run, or none), as plain files."""
    folder = pathlib.Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return all(e.name in SPLIT_FILES and e.is_file(follow_symlinks=False) for e in entries)


def check_replaceable(folder: str | os.PathLike) -> None:
    """Raises :class:`ForeignFolderError` unless ``folder`` is absent or :func:`is_split_dir`."""
    folder = pathlib.Path(folder)
    if not (folder.exists() or folder.is_symlink()) or is_split_dir(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        why = "is a link" if folder.is_symlink() else "is not a folder"
    else:
        with os.scandir(folder) as entries:
            other = sorted(
                e.name
                for e in entries
                if e.name not in SPLIT_FILES or not e.is_file(follow_symlinks=False)
            )
        why = f"holds {other[0]!r}"
    raise ForeignFolderError(
        f"{folder}: not a split folder prepare-data wrote ({why}); left untouched: "
        "move it away or choose another --out"
    )


def _remove_stale_temps(out: pathlib.Path, split: str) -> None:
    """Deletes ``OUT/.<split>.XXXXXXXX.tmp`` folders of killed runs (only split files inside)."""
    for p in out.glob(f".{split}.*.tmp"):
        if _TEMP_SPLIT.fullmatch(p.name) and is_split_dir(p):
            shutil.rmtree(p, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Source:
    path: str  # absolute path of the MIDI file
    name: str  # stable name (path relative to the dataset root)
    meta: dict


@dataclasses.dataclass
class TokenSplit:
    """A prepared split: ``tokens`` is a read-only memory map."""

    tokens: np.ndarray
    offsets: np.ndarray
    pieces: list[dict]

    def __len__(self) -> int:
        return len(self.pieces)

    def piece(self, k: int) -> np.ndarray:
        return self.tokens[self.offsets[k] : self.offsets[k + 1]]


def maestro_sources(root: str | os.PathLike) -> dict[str, list[Source]]:
    """The official MAESTRO split from its CSV."""
    root = pathlib.Path(root)
    csvs = sorted(root.glob("maestro-v*.csv"))
    if not csvs:
        raise FileNotFoundError(f"{root}: no maestro-v*.csv found (is this a MAESTRO folder?)")
    out: dict[str, list[Source]] = {s: [] for s in SPLITS}
    with open(csvs[0], newline="") as f:
        for row in csv.DictReader(f):
            meta = {
                k: row[k]
                for k in ("canonical_composer", "canonical_title", "year", "duration")
                if k in row
            }
            out[row["split"]].append(
                Source(str(root / row["midi_filename"]), row["midi_filename"], meta)
            )
    return out


def folder_sources(root: str | os.PathLike, holdout: float = 0.05) -> dict[str, list[Source]]:
    """Your own MIDI files: a stable split by a hash of each file's relative path."""
    root = pathlib.Path(root)
    out: dict[str, list[Source]] = {s: [] for s in SPLITS}
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    for p in files:
        name = str(p.relative_to(root))
        u = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 2**32
        split = "test" if u < holdout else "validation" if u < 2 * holdout else "train"
        out[split].append(Source(str(p), name, {}))
    return out


def _encode_one(path: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return encode(path).astype(np.uint16), None
    except MidiError as exc:
        return None, str(exc)


def _fingerprint(sources: Sequence[Source]) -> str:
    h = hashlib.sha256(json.dumps(SETTINGS, sort_keys=True).encode())
    for s in sources:
        st = os.stat(s.path)
        h.update(f"{s.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _finished(final: pathlib.Path, fingerprint: str) -> dict | None:
    """The split's DONE.json content if it was made from these sources and settings."""
    try:
        done = json.loads((final / "DONE.json").read_text())
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) and done.get("fingerprint") == fingerprint else None


def prepare_split(
    split: str, sources: Sequence[Source], out: str | os.PathLike, workers: int = 0, progress=True
) -> dict:
    """Encode one split into ``out/<split>``; returns its DONE.json content."""
    out = pathlib.Path(out)
    final = out / split
    fingerprint = _fingerprint(sources)
    done = _finished(final, fingerprint)
    if done is not None:
        done["skipped"] = True
        return done
    check_replaceable(final)  # before minutes of encoding
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out, split)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{split}.", suffix=".tmp", dir=out))
    try:
        return _write_split(split, sources, final, tmp, fingerprint, workers, progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ours (mkdtemp); gone already after the rename


def _write_split(split, sources, final, tmp, fingerprint, workers, progress) -> dict:
    workers = workers or min(os.cpu_count() or 1, 8)
    results: list[tuple[np.ndarray | None, str | None]]
    paths = [s.path for s in sources]
    bar = _progress(len(paths), f"{split:>10}", progress)
    if workers > 1 and len(paths) > 8:
        # forkserver: safe even when the parent has threads (e.g. JAX imported in the same process)
        ctx = multiprocessing.get_context("forkserver")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = []
            for r in pool.map(_encode_one, paths, chunksize=4):
                results.append(r)
                bar.update(1)
    else:
        results = []
        for p in paths:
            results.append(_encode_one(p))
            bar.update(1)
    bar.close()
    offsets = [0]
    pieces, failures = [], []
    with open(tmp / "tokens.u16", "wb") as f:
        for src, (ids, err) in zip(sources, results, strict=True):
            if ids is None:
                failures.append({"name": src.name, "error": err})
                continue
            f.write(ids.astype("<u2").tobytes())
            offsets.append(offsets[-1] + ids.size)
            pieces.append(
                {"name": src.name, "tokens": int(ids.size), "seconds": music_seconds(ids)}
                | src.meta
            )
    np.asarray(offsets, "<i8").tofile(tmp / "offsets.i64")
    with open(tmp / "pieces.jsonl", "w") as f:
        for p in pieces:
            f.write(json.dumps(p) + "\n")
    done = {
        "split": split,
        "fingerprint": fingerprint,
        "settings": SETTINGS,
        "pieces": len(pieces),
        "tokens": offsets[-1],
        "failures": failures,
    }
    (tmp / "DONE.json").write_text(json.dumps(done, indent=1))
    check_replaceable(final)  # again: the user may have put something there meanwhile
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return done


def prepare(
    sources: dict[str, list[Source]],
    out: str | os.PathLike,
    splits: Iterable[str] = SPLITS,
    workers: int = 0,
    progress: bool = True,
) -> list[dict]:
    todo = [s for s in splits if sources.get(s)]
    for s in todo:  # refuse before writing anything
        if _finished(pathlib.Path(out) / s, _fingerprint(sources[s])) is None:
            check_replaceable(pathlib.Path(out) / s)
    pathlib.Path(out).mkdir(parents=True, exist_ok=True)
    return [prepare_split(s, sources[s], out, workers, progress) for s in todo]


def load_split(workdir: str | os.PathLike, split: str) -> TokenSplit:
    """Memory-map a prepared split (raises FileNotFoundError with a hint if it is missing)."""
    folder = pathlib.Path(workdir) / split
    if not (folder / "DONE.json").exists():
        raise FileNotFoundError(
            f"{folder}: no prepared split here; run `perceiver-midi prepare-data --out {workdir}`"
        )
    offsets = np.fromfile(folder / "offsets.i64", "<i8")
    tokens = np.memmap(folder / "tokens.u16", "<u2", mode="r") if offsets[-1] else np.zeros(0)
    with open(folder / "pieces.jsonl") as f:
        pieces = [json.loads(line) for line in f]
    return TokenSplit(tokens=tokens, offsets=offsets, pieces=pieces)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled)
