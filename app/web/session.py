"""The web app's per-browser-session state and what feeds it: the :class:`Prime` (a whole piece
used as prime), a rendered :class:`Result` and :class:`SpanResult` (a regenerated span), the
:class:`Session` (kept in ``gr.State``: the prime history for "Undo", the last results, the span
being chosen, the stop flag, the session's lock and folder), the :class:`PrimeView` the Prime
panel shows, reading an upload and listing the shipped examples.
The handlers that use them are the :class:`app.web.handlers.Composer`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import tempfile
import threading

import numpy as np

from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.pipeline import DEFAULT_PRIME_SECONDS
from perceiver_midi.app.web import media
from perceiver_midi.tokenizer import MidiError, encode, music_seconds

MAX_UPLOAD_BYTES = 4 * 1024 * 1024  # the largest MAESTRO file is under 1 MiB
SESSION_WAIT_S = 600.0  # a request waits this long for its session's previous one, then refuses
EXAMPLES_DIR = pathlib.Path(__file__).resolve().parents[2] / "examples"
DEFAULT_SPAN_SECONDS = 4.0  # "Regenerate a span" starts with this much of the piece's middle


@dataclasses.dataclass(frozen=True, eq=False)
class Prime:
    """A piece used as prime: its ids (no SOS; empty = start from nothing) and a name."""

    ids: np.ndarray
    name: str
    origin: str  # "nothing", "upload", "example" or "continued"
    continued: int = 0  # how many continuations were appended to the original
    answers: tuple[tuple[float, float], ...] = ()  # call and response: the model's spans (s)

    @classmethod
    def nothing(cls) -> Prime:
        return cls(np.zeros((0,), np.int32), "nothing", "nothing")

    @property
    def empty(self) -> bool:
        return self.ids.size == 0

    @property
    def seconds(self) -> float:
        return music_seconds(self.ids)

    def default_window(self) -> tuple[float, float]:
        total = self.seconds
        return max(0.0, round(total - DEFAULT_PRIME_SECONDS, 2)), total

    def default_span(self) -> tuple[float, float]:
        """The span "Regenerate a span" offers first: ``DEFAULT_SPAN_SECONDS`` in the middle of
        the piece (all of a shorter piece)."""
        total = self.seconds
        start = max(0.0, round((total - DEFAULT_SPAN_SECONDS) / 2, 2))
        return start, min(round(total, 2), round(start + DEFAULT_SPAN_SECONDS, 2))

    def describe(self) -> str:
        if self.empty:
            return "**Nothing**: the model starts from silence (SOS alone)."
        how = f"continued {self.continued}x" if self.continued else self.origin
        return f"**{self.name}** ({how}): {self.seconds:.2f} s, {self.ids.size:,} tokens."


@dataclasses.dataclass(frozen=True, eq=False)
class Result:
    """One rendered continuation of a session's last generation."""

    continuation: object  # app.core.pipeline.Continuation
    base: Prime  # the piece it continues
    head: np.ndarray  # the piece up to the window's end (where the continuation starts)
    audio: pathlib.Path
    audio_seconds: float
    lead_in: float  # seconds of prime before the continuation in the audio
    roll: pathlib.Path
    midi: pathlib.Path  # the continuation alone
    full_midi: pathlib.Path  # head + continuation

    @property
    def piece_ids(self) -> np.ndarray:
        return np.concatenate([self.head, self.continuation.ids]).astype(np.int32)

    def header(self) -> str:
        c = self.continuation
        why = {
            "seconds": "",
            "tokens": ", token budget reached",
            "eos": ", ended at EOS",
            "stopped": ", stopped",
        }.get(c.stop, "")
        return (
            f"**Variation {c.variation}**: seed {c.seed}, {c.seconds:.1f} s, {c.tokens} tokens{why}"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class SpanResult:
    """One regenerated span of a session's piece ("Regenerate a span")."""

    infilled: object  # app.core.infill.Infilled
    base: Prime  # the piece whose span was regenerated
    audio: pathlib.Path  # the variation in place: 3 s before the span, the new span, 3 s after
    roll: pathlib.Path  # the piano roll of that stretch, the new span coloured
    midi: pathlib.Path  # the whole piece with the new span (what "Keep this" makes the piece)
    middle_midi: pathlib.Path  # the new span alone

    def header(self) -> str:
        f = self.infilled
        why = ""
        if f.stop == "tokens":
            why = ", token budget reached (the rest of the span is silent)"
        return (
            f"**Variation {f.variation}**: seed {f.seed}, {f.start:.2f}..{f.end:.2f} s "
            f"regenerated, {f.tokens} tokens{why}"
        )


class Session:
    """Per-browser-session state (one per ``gr.State``): the prime history for "Undo", the
    results of the last generation and of the last regenerated span, the span shown on the
    piece's roll (None: none), a stop flag and a folder for this session's files."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = pathlib.Path(root) if root is not None else None
        self.history: list[Prime] = [Prime.nothing()]
        self.results: list[Result] = []
        self.spans: list[SpanResult] = []
        self.span: tuple[float, float] | None = None  # shown while "Regenerate a span" is open
        self.stop = threading.Event()
        self._lock = threading.Lock()  # one request of this session at a time (see busy)
        self.generation = 0
        self.counter = 0
        self._folder: pathlib.Path | None = None

    # gr.State deep-copies its initial value per session: give each copy its own flag and folder.
    def __deepcopy__(self, memo) -> Session:
        new = Session(self.root)
        new.history = list(self.history)
        new.results = list(self.results)
        new.spans = list(self.spans)
        new.span = self.span
        return new

    @property
    def prime(self) -> Prime:
        return self.history[-1]

    @contextlib.contextmanager
    def busy(self, timeout: float = SESSION_WAIT_S):
        """Held by every request that reads or changes this session, so two requests of one
        session (two tabs sharing it, a double click, API calls) never interleave; the second
        waits for the first. Stop does not take it: it only sets the flag the sampler checks."""
        if not self._lock.acquire(timeout=timeout):
            raise UserError("this session is still busy with an earlier request; try again")
        try:
            yield self
        finally:
            self._lock.release()

    @property
    def can_undo(self) -> bool:
        return len(self.history) > 1

    def folder(self) -> pathlib.Path:
        if self._folder is None:
            base = self.root or pathlib.Path(tempfile.gettempdir())
            base.mkdir(parents=True, exist_ok=True)
            self._folder = pathlib.Path(tempfile.mkdtemp(prefix="session-", dir=base))
        return self._folder

    def next_name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter:04d}"

    def close(self) -> None:
        """Removes this session's files (gr.State's delete_callback)."""
        self.stop.set()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


@dataclasses.dataclass(frozen=True)
class PrimeView:
    """What the Prime panel shows."""

    info: str
    roll: pathlib.Path
    audio: pathlib.Path | None
    total: float  # piece length in seconds (the window sliders' maximum)
    window: tuple[float, float]  # the window shown (by default the last 20 s)
    empty: bool
    can_undo: bool
    midi: pathlib.Path | None = None  # the whole piece, to download (None: nothing)
    span: tuple[float, float] | None = None  # the span sliders (shaded while the mode is open)


def human_size(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB".replace(".0 ", " ")
    return f"{n / 2**10:.1f} KiB".replace(".0 ", " ")


def list_examples(folder: str | os.PathLike = EXAMPLES_DIR) -> list[str]:
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".mid", ".midi"))


def read_upload(path: str | os.PathLike | None, *, max_bytes: int = MAX_UPLOAD_BYTES) -> Prime:
    """An uploaded file -> a Prime; one-line UserError for a missing, oversized, non-MIDI, empty
    or note-less file."""
    if path is None or str(path) == "":
        raise UserError("no file was uploaded")
    path = pathlib.Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError:
        raise UserError(f"{name}: the upload could not be read") from None
    if size == 0:
        raise UserError(f"{name}: the file is empty")
    if size > max_bytes:
        raise UserError(
            f"{name}: {human_size(size)} is over the {human_size(max_bytes)} upload limit"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{name}: cannot read ({exc.strerror})") from None
    try:
        ids = encode(data, name=name)
    except MidiError as exc:
        raise UserError(str(exc)) from None
    return Prime(np.asarray(ids, np.int32), media.safe_stem(name), "upload")
