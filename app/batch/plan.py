"""Batch planning: the primes of a folder or CSV/JSONL listing, their items and seeds, and the
sampling groups.

A prime's identity is its path relative to the folder, or a listing row's ``id`` (else the path as
written); a row may give per-prime settings (``ROW_KEYS``). An item is (prime, variation); its
seed is ``prime_seed(base_seed, identity) + variation - 1``. Items with equal sampler settings are
grouped, ``batch_size`` at most per group, in plan order (an infill row's items: per prime). See
:mod:`app.batch.run` for the whole run.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.infill import Gap, infill_file_names
from perceiver_midi.app.core.pipeline import (
    CONTROL_FIELDS,
    MIDI_SUFFIXES,
    OutputOptions,
    Settings,
    Window,
    output_stem,
)

# Listing columns that are Settings fields of the same name.
SETTING_COLUMNS = ("variations", *CONTROL_FIELDS)
# Per-prime settings a CSV/JSONL row may give (empty cells mean "the command-line value").
ROW_KEYS = (
    "prime",
    "id",
    "seed",
    "seconds",
    "tokens",
    *SETTING_COLUMNS,
    "prime_seconds",
    "prime_tokens",
    "prime_range",
    "infill_range",
)


@dataclasses.dataclass(frozen=True)
class Prime:
    identity: str  # stable name: path relative to the folder, or the listing's id/path
    path: str  # the file to read
    stem: str  # output stem relative to DIR
    settings: Settings  # per-prime settings; settings.seed is the prime's seed
    gap: Gap | None = None  # an infill_range row: regenerate this span instead of continuing


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

    def file_names(self, options: OutputOptions) -> dict[str, str]:
        """The files this item writes (relative to DIR): a continuation's, or an infill's."""
        if self.prime.gap is not None:
            return infill_file_names(self.prime.stem, self.variation, options)
        return options.file_names(self.prime.stem, self.variation)


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
        names = ("prime_seconds", "prime_tokens", "prime_range")
        if any(value(k) is not None for k in names):  # else the command line's window
            changes["window"] = Window.from_options(*(value(k) for k in names))
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
    gap = row.get("infill_range")
    if gap is not None and str(gap).strip():
        try:
            gap = Gap.parse(str(gap))
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
    else:
        gap = None
    path = pathlib.Path(prime)
    if not path.is_absolute():
        path = source.parent / path
    return Prime(identity, str(path), output_stem(identity), settings, gap)


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
        own = it.prime.identity if it.prime.gap is not None else None  # an infill: its prime's
        by_key[(it.prime.settings.sampler_key(), own)].append(it)
    groups = []
    for same in by_key.values():
        groups.extend(same[i : i + batch_size] for i in range(0, len(same), batch_size))
    return groups
