"""The web app's handlers as plain Python: a :class:`Composer` (the model, loaded once per process)
working on a per-browser-session :class:`app.web.session.Session` (kept in ``gr.State``; no shared
mutable globals): loading primes, planning a request, sampling in a thread while progress is
reported, rendering the results, regenerating a span of the piece (infilling, with a second model
when the first cannot infill), the ``/continue`` and ``/infill`` APIs and the start-up warm-up.

Every handler takes and returns plain values (dataclasses, paths, numbers) and raises
:class:`app.core.errors.UserError` with a one-line message for anything the user can fix;
``app/web/page.py`` turns values into Gradio updates and errors into a message in the page (a toast
and a status line; ``gr.Error`` for the ``/continue`` API). Generation goes through the one
pipeline,
:func:`app.core.pipeline.continue_prime`, so the same seed and settings give the same notes as
``perceiver-midi continue``.

The prime is a whole *piece* (token ids, no SOS): an uploaded file, a shipped example, nothing
(SOS only), or a previous piece with one of its continuations appended ("Continue from this").
The prime *window* (seconds ``start..end`` of the piece) is the part the model is given; the
continuation starts at the window's end. Each session keeps a history of pieces for "Undo".

What each result holds:
  * audio: the last ``LEAD_IN_SECONDS`` (3 s) of the prime window, then the continuation, so the
    composer hears the seam (WAV, 48 kHz, the bundled SoundFont via app/core/render.py);
  * a piano roll: the prime window grey, the continuation coloured, a dashed line at the seam;
  * ``<stem>_vN.mid``: the continuation alone (byte for byte what ``perceiver-midi continue``
    writes) and ``<stem>_vN_full.mid``: the piece up to the window's end followed by the
    continuation, which is exactly what "Continue from this" makes the new prime.

"Regenerate a span" (:meth:`Composer.regenerate_span`) gives per variation the stretch around the
new span (``app.core.infill.CONTEXT_SECONDS`` before it, the span, as long after) as audio and a
piano roll, and the files of ``perceiver-midi infill`` (byte for byte): ``<stem>_infill_vN.mid``
(the
whole piece with the new span: what "Keep this" makes the piece) and ``..._middle.mid``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pathlib
import queue
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np

from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.infill import (
    CONTEXT_SECONDS,
    MAX_GAP_SECONDS,
    Gap,
    infill_piece,
    write_infill,
)
from perceiver_midi.app.core.pipeline import (
    CONTROL_FIELDS,
    DEFAULT_GUIDANCE,
    DEFAULT_GUIDANCE_TOKENS,
    DEFAULT_HUMANIZE,
    DEFAULT_MAX_NOTE_SECONDS,
    DEFAULT_MAX_POLYPHONY,
    DEFAULT_MIN_P,
    DEFAULT_SECONDS,
    DEFAULT_TOP_P,
    MAX_NOTE_SECONDS,
    NO_PRIME,
    WEB_LENGTH_BUCKET,
    OutputOptions,
    Settings,
    Window,
    check_latents,
    context_tokens,
    continue_prime,
    cut_prime,
    output_bytes,
)
from perceiver_midi.app.core.pipeline import WEB_MAX_SECONDS as MAX_SECONDS
from perceiver_midi.app.core.pipeline import WEB_MAX_VARIATIONS as MAX_VARIATIONS
from perceiver_midi.app.core.pipeline import as_float as _as_float
from perceiver_midi.app.core.pipeline import as_int as _as_int
from perceiver_midi.app.web import media
from perceiver_midi.app.web.played import append_part, from_first_note, played_ids
from perceiver_midi.app.web.session import (
    EXAMPLES_DIR,
    MAX_UPLOAD_BYTES,
    Prime,
    PrimeView,
    Result,
    Session,
    SpanResult,
    list_examples,
    read_upload,
)
from perceiver_midi.tokenizer import (
    MidiError,
    atomic_write_bytes,
    cut_last_seconds,
    encode,
    midi_bytes,
    music_seconds,
    write_midi,
)

PROGRESS_EVERY_S = 0.25  # at most this often a progress update is sent to the page
LIVE_ROLL_EVERY_S = 2.0  # ... and a piano roll of the music so far (drawing costs ~0.1 s of CPU)
API_FILES_TTL_S = 3600.0  # /continue and /infill output folders older than this are removed
# Compiled at start: the unguided sampler and the guided one (any guidance > 0 runs the latter).
WARM_GUIDANCE = sorted({0.0, DEFAULT_GUIDANCE or 1.0})
NO_INFILL_MODEL = (
    "no infilling model is loaded: start the app with --infill-checkpoint DIR (a checkpoint "
    "trained with --set infill=True)"
)


# ----------------------------------------------------------------------------------------------
# Plain values in and out
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """The controls of the page, as the user set them."""

    seconds: float = DEFAULT_SECONDS
    variations: int = 2
    temperature: float = 1.0
    top_p: float = DEFAULT_TOP_P
    top_k: int = 0
    min_p: float = DEFAULT_MIN_P
    guidance: float = DEFAULT_GUIDANCE
    guidance_tokens: int = DEFAULT_GUIDANCE_TOKENS
    seed: int = 0
    random_seed: bool = False
    latents: int | None = None  # None or >= the model's: the model's own
    prime_tokens: int | None = None  # None or 0: as many as the model can see
    stop_at_eos: bool = True  # False: never end early, always fill the length
    window_start: float | None = None  # None: the default window (last 20 s)
    window_end: float | None = None
    max_note_seconds: float | None = DEFAULT_MAX_NOTE_SECONDS  # None or 0: no limit
    # The musical controls, as typed (Settings parses and checks them; '' or None: off).
    pitch_range: str | None = None
    key: str | None = None
    velocity_range: str | None = None
    max_polyphony: int | None = DEFAULT_MAX_POLYPHONY  # None or 0: no limit
    humanize: str = DEFAULT_HUMANIZE  # a sketch-like prime heard played (Settings.humanize)


REQUIRED = inspect.Parameter.empty


@dataclasses.dataclass(frozen=True)
class ApiParam:
    """One parameter of the HTTP API: its name, default (``REQUIRED``: none) and type ("file",
    float, int, str or bool: the hidden component ``web.py`` builds for it)."""

    name: str
    default: object
    kind: object


# The sampling settings and musical controls of /continue and /infill, in one list ('' or 0:
# off, or the model's own), so the two endpoints and their components cannot drift apart. Each
# is a GenerateRequest field of the same name (the page's request), checked by Settings.
API_SAMPLING = (
    ApiParam("variations", 1, int),
    ApiParam("temperature", 1.0, float),
    ApiParam("top_p", DEFAULT_TOP_P, float),
    ApiParam("top_k", 0, int),
    ApiParam("min_p", DEFAULT_MIN_P, float),
    ApiParam("guidance", DEFAULT_GUIDANCE, float),
    ApiParam("guidance_tokens", DEFAULT_GUIDANCE_TOKENS, int),
    ApiParam("seed", 0, int),
    ApiParam("latents", 0, int),
    ApiParam("max_note_seconds", DEFAULT_MAX_NOTE_SECONDS, float),
    ApiParam("pitch_range", "", str),
    ApiParam("key", "", str),
    ApiParam("velocity_range", "", str),
    ApiParam("max_polyphony", DEFAULT_MAX_POLYPHONY, int),
    ApiParam("humanize", DEFAULT_HUMANIZE, str),
)
CONTINUE_API = (
    ApiParam("prime", REQUIRED, "file"),  # None: start from nothing
    ApiParam("seconds", DEFAULT_SECONDS, float),
    *API_SAMPLING,
    ApiParam("prime_seconds", 0.0, float),  # 0: not given (Window.from_options)
    ApiParam("prime_tokens", 0, int),
    ApiParam("prime_range", "", str),
    ApiParam("ignore_eos", False, bool),
)
INFILL_API = (
    ApiParam("piece", REQUIRED, "file"),
    ApiParam("start", REQUIRED, float),
    ApiParam("end", REQUIRED, float),
    *API_SAMPLING,
)


def api_signature(params) -> inspect.Signature:
    """The Python signature of an endpoint's handler (Gradio names the API's parameters by it)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(p.name, kind, default=p.default) for p in params])


def api_arguments(params, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by name, defaults filled in (TypeError for an unknown name)."""
    bound = api_signature(params).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _sampling_request(values: dict, **more) -> GenerateRequest:
    return GenerateRequest(**{p.name: values[p.name] for p in API_SAMPLING}, **more)


@dataclasses.dataclass(frozen=True)
class Started:
    seed: int
    variations: int
    status: str


@dataclasses.dataclass(frozen=True)
class Progress:
    status: str
    seconds: tuple[float, ...]
    tokens: tuple[int, ...]
    rolls: tuple[pathlib.Path | None, ...] = ()  # per variation: its piano roll so far, if new


@dataclasses.dataclass(frozen=True)
class ResultReady:
    index: int  # 0-based result slot
    result: Result
    status: str


@dataclasses.dataclass(frozen=True)
class Done:
    status: str
    first_audio_s: float | None  # from the start of the request to the first rendered result


@dataclasses.dataclass(frozen=True)
class Answer:
    """Call and response: the model's answer to a played phrase."""

    audio: pathlib.Path | None  # the answer alone, from its first note (None: it was silent)
    seconds: float  # music seconds of the answer
    tokens: int
    seed: int
    status: str


@dataclasses.dataclass(frozen=True)
class Regenerated:
    """The variations of one "Regenerate span" request."""

    results: tuple[SpanResult, ...]
    seed: int
    status: str


@dataclasses.dataclass(frozen=True)
class _Plan:
    prime: object  # app.core.pipeline.PrimeCut: the window the model is given and the piece's head
    settings: object  # app.core.pipeline.Settings
    base: Prime


# ----------------------------------------------------------------------------------------------
# The composer: one per process
# ----------------------------------------------------------------------------------------------


def _latent_choices(model) -> tuple[int, ...]:
    """Test-time compute choices: the model's latents M, M/2 and M/4."""
    m = int(model.config.num_latents)
    return tuple(sorted({m, max(1, m // 2), max(1, m // 4)}, reverse=True))


class Composer:
    """The models and the handlers. Holds no per-user state: that is in :class:`Session`.

    ``infill_model`` regenerates spans (a model with ``config.infill``); by default ``model``
    itself when it can infill, else none: "Regenerate a span" and ``/infill`` then say so."""

    def __init__(
        self,
        model,
        *,
        infill_model=None,
        root: str | os.PathLike | None = None,
        examples_dir: str | os.PathLike = EXAMPLES_DIR,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
    ):
        self.model = model
        if infill_model is None and getattr(model.config, "infill", False):
            infill_model = model
        if infill_model is not None and not getattr(infill_model.config, "infill", False):
            raise UserError("the infilling model was not trained to infill (config.infill)")
        self.infill_model = infill_model
        if root is None:
            root = tempfile.mkdtemp(prefix="perceiver-midi-web-")
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.examples_dir = pathlib.Path(examples_dir)
        self.max_upload_bytes = int(max_upload_bytes)
        # Test-time compute choices: each is compiled at start (warm_up), any other is refused.
        self.latent_choices = _latent_choices(model)
        self.infill_latent_choices = _latent_choices(infill_model) if infill_model else ()
        # Every infill budget fits this sampler length (app.core.infill.plan_gap: at most half the
        # sampler's view), so one length per shape is compiled at start.
        self.infill_length_bucket = int(infill_model.config.max_len) // 2 if infill_model else 0

    # -- sessions ------------------------------------------------------------------------------

    def new_session(self) -> Session:
        return Session(self.root / "sessions")

    @property
    def num_latents(self) -> int:
        return int(self.model.config.num_latents)

    @property
    def context_tokens(self) -> int:
        return context_tokens(self.model)

    # -- the prime -----------------------------------------------------------------------------

    def prime_view(self, session: Session, window: tuple[float, float] | None = None) -> PrimeView:
        prime = session.prime
        folder = session.folder()
        name = session.next_name("prime")
        if prime.empty:
            roll = media.prime_roll_png(prime.ids, folder / f"{name}.png")
            return PrimeView(prime.describe(), roll, None, 0.0, (0.0, 0.0), True, session.can_undo)
        if window is None:
            window = prime.default_window()
        w = self.window(prime, *window)
        span = self._span(session)
        roll = media.prime_roll_png(
            prime.ids, folder / f"{name}.png", window=window, answers=prime.answers, span=span
        )
        audio = self._window_audio(prime, w, folder / f"{name}.wav")
        (folder / name).mkdir()
        midi = write_midi(prime.ids, folder / name / f"{media.safe_stem(prime.name)}.mid")
        info = f"{prime.describe()} Window: {window[0]:.2f}..{window[1]:.2f} s."
        return PrimeView(info, roll, audio, prime.seconds, window, False, session.can_undo, midi,
                         span or prime.default_span())  # fmt: skip

    def _span(self, session: Session) -> tuple[float, float] | None:
        """The session's span (None: not shown), moved to the piece's middle when the piece
        does not hold it (a new, shorter piece; an inverted span is the sliders' and stays)."""
        prime, span = session.prime, session.span
        if span is not None and span[0] < span[1] and span[1] > prime.seconds + 0.005:
            session.span = span = prime.default_span()
        return span

    def show_span(self, session: Session, span, window=None) -> tuple[pathlib.Path | None, str]:
        """For "Regenerate a span": the piece's roll (prime ``window`` as the page shows it) with
        ``span`` ((start, end) seconds; None: the mode is closed) shaded, and one line saying
        what the span is, or what is wrong with it (said, not raised: the two sliders pass
        through bad spans while they move)."""
        with session.busy():
            prime = session.prime
            if span is None:
                session.span = None
            else:
                session.span = (_as_float(span[0], "span start"), _as_float(span[1], "span end"))
            if prime.empty:
                return None, "Load a piece first (upload, pick or play one)." if span else ""
            try:
                self.window(prime, *window)
            except (TypeError, UserError):
                window = prime.default_window()
            line = self._span_line(prime, session.span)  # before _span moves a bad span
            path = session.folder() / f"{session.next_name('prime')}.png"
            span = self._span(session)
            roll = media.prime_roll_png(
                prime.ids, path, window=tuple(window), answers=prime.answers, span=span
            )
            return roll, line

    def _span_line(self, prime: Prime, span) -> str:
        if span is None:
            return ""
        try:
            gap = Gap(*span)
        except UserError as exc:
            return f"**Span:** {exc}."
        return (
            f"Span {gap.start:.2f}..{gap.end:.2f} s: {gap.end - gap.start:.2f} s (at most "
            f"{MAX_GAP_SECONDS:g} s) of the {prime.seconds:.2f} s piece."
        )

    def _window_audio(self, prime: Prime, window, path: pathlib.Path) -> pathlib.Path:
        ids = window.cut(prime.ids)
        if music_seconds(ids) > media.PRIME_AUDIO_MAX_SECONDS:
            ids = cut_last_seconds(ids, media.PRIME_AUDIO_MAX_SECONDS)
        return media.write_audio_file(ids, path)[0]

    def window(self, prime: Prime, start, end):
        """Window.range(start, end) of ``prime``, checked against the piece; ``end`` at the
        piece's end means "to the end" (the CLI's default window is then reproduced exactly)."""
        total = prime.seconds
        start = 0.0 if start is None else _as_float(start, "window start")
        end = total if end is None else _as_float(end, "window end")
        if start < 0 or start >= total:
            raise UserError(
                f"the prime window starts at {start:g} s, outside the piece (0..{total:.2f} s)"
            )
        if end <= start:
            raise UserError(f"the prime window must end after it starts ({start:g}..{end:g} s)")
        if end > total + 0.005:
            raise UserError(
                f"the prime window ends at {end:g} s, after the end of the piece ({total:.2f} s)"
            )
        return Window.range(start, None if end >= total - 0.005 else end)

    def _push(self, session: Session, prime: Prime) -> PrimeView:
        with session.busy():
            session.history.append(prime)
            try:
                return self.prime_view(session)
            except Exception:
                session.history.pop()
                raise

    def load_upload(self, session: Session, path) -> PrimeView:
        return self._push(session, read_upload(path, max_bytes=self.max_upload_bytes))

    def load_example(self, session: Session, name: str) -> PrimeView:
        if name not in list_examples(self.examples_dir):
            raise UserError(f"no shipped example named {name!r}")
        try:
            ids = encode(self.examples_dir / name)
        except MidiError as exc:
            raise UserError(str(exc)) from None
        return self._push(
            session, Prime(np.asarray(ids, np.int32), media.safe_stem(name), "example")
        )

    def load_played(self, session: Session, messages) -> PrimeView:
        """A take recorded in the page (MIDI messages, see ``app/web/played.py``) becomes the prime,
        through a MIDI file and the tokenizer, as an upload does."""
        return self._push(session, Prime(played_ids(messages), "recording", "played"))

    def respond(
        self, session: Session, messages, req: GenerateRequest, gap_seconds: float = 0.0
    ) -> Answer:
        """Call and response: the phrase (MIDI messages) is appended to the piece ``gap_seconds``
        after its end (at most ``app.web.played.MAX_GAP_SECONDS``), the model continues the piece's
        last 20 s with the page's controls (one variation), the answer is appended too. Two
        primes are pushed (the piece with the phrase, then with the answer): Undo steps back
        through them. The answer's audio starts at its first note, so it sounds at once."""
        t0 = time.perf_counter()
        phrase = played_ids(messages)
        if req.random_seed:
            req = dataclasses.replace(req, seed=secrets.randbelow(2**31))
        req = dataclasses.replace(req, variations=1, window_start=None, window_end=None)
        with session.busy():
            base = session.prime
            name = base.name if not base.empty else "duet"
            called = Prime(append_part(base.ids, phrase, gap_seconds), name, "call and response",
                           base.continued, base.answers)  # fmt: skip
            plan = self.plan(called, req)
            session.history.append(called)
            session.stop.clear()
            t1 = time.perf_counter()
            (c,) = continue_prime(self.model, plan.prime, plan.settings, name=name,
                                  callback=lambda info: session.stop.is_set(),
                                  length_bucket=WEB_LENGTH_BUCKET)  # fmt: skip
            sampled = time.perf_counter() - t1
            piece = append_part(called.ids, c.ids)
            span = (called.seconds, music_seconds(piece))
            session.history.append(Prime(piece, name, "call and response", base.continued + 1,
                                         (*base.answers, span)))  # fmt: skip
            sounding = from_first_note(c.ids)
            audio = None
            if sounding.size:
                folder = session.folder() / "answers"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{session.next_name('answer')}.wav"
                audio = media.write_audio_file(sounding, path)[0]
        n = base.continued + 1
        status = (
            f"Answer {n}: {c.seconds:.1f} s, {c.tokens} tokens, seed {c.seed} (sampled in "
            f"{sampled:.2f} s; ready {time.perf_counter() - t0:.2f} s after the phrase arrived)."
            if audio is not None
            else f"Answer {n}: the model answered with silence (seed {c.seed}); play again."
        )
        return Answer(audio, float(c.seconds), int(c.tokens), int(c.seed), status)

    def start_empty(self, session: Session) -> PrimeView:
        return self._push(session, Prime.nothing())

    def set_window(self, session: Session, start, end) -> PrimeView:
        with session.busy():
            if session.prime.empty:
                return self.prime_view(session)
            start = _as_float(start, "window start")
            return self.prime_view(session, (start, _as_float(end, "window end")))

    def continue_from(self, session: Session, index: int) -> PrimeView:
        """Result ``index`` (0-based) of the last generation becomes the new prime."""
        with session.busy():
            if not 0 <= int(index) < len(session.results):
                raise UserError(f"there is no result {int(index) + 1} to continue from")
            r = session.results[int(index)]
        head = music_seconds(r.head)  # call-and-response answers inside the head stay marked
        answers = tuple((a, min(b, head)) for a, b in r.base.answers if a < head)
        prime = Prime(r.piece_ids, r.base.name if not r.base.empty else "generated",
                      "continued", r.base.continued + 1, answers)  # fmt: skip
        return self._push(session, prime)

    def undo(self, session: Session) -> PrimeView:
        with session.busy():
            if not session.can_undo:
                raise UserError("nothing to undo")
            session.history.pop()
            return self.prime_view(session)

    def stop(self, session: Session) -> None:
        session.stop.set()

    # -- generation ----------------------------------------------------------------------------

    def _settings(self, req: GenerateRequest, model=None) -> dict:
        """The pipeline Settings' fields from the request (checked; window apart), for ``model``
        (default: the main model)."""
        model = model or self.model
        latent_choices = _latent_choices(model)
        seconds = _as_float(req.seconds, "continuation length (seconds)", 0, MAX_SECONDS,
                            lo_open=True)  # fmt: skip
        variations = _as_int(req.variations, "variations", 1, MAX_VARIATIONS)
        latents = None if req.latents in (None, "", 0) else _as_int(req.latents, "latents")
        if latents is not None and latents not in latent_choices:
            choices = ", ".join(map(str, latent_choices))
            raise UserError(f"latents must be one of {choices} (0: the model's), got {latents}")
        if latents == int(model.config.num_latents):
            latents = None  # the model's own
        check_latents(model, latents)
        max_note = None
        if req.max_note_seconds not in (None, ""):
            max_note = _as_float(req.max_note_seconds, "longest note (seconds; 0 = no limit)", 0,
                                 MAX_NOTE_SECONDS) or None  # fmt: skip
        return {
            **{f: getattr(req, f) for f in CONTROL_FIELDS},  # Settings checks them
            "seconds": seconds,
            "variations": variations,
            "seed": _as_int(req.seed, "seed"),
            "latents": latents,
            "stop_at_eos": bool(req.stop_at_eos),
            "max_note_seconds": max_note,
        }

    def plan(self, prime: Prime, req: GenerateRequest) -> _Plan:
        """Checks the request against the prime and the model: what the pipeline is given."""
        fields = self._settings(req)
        tokens = 0 if req.prime_tokens in (None, "") else _as_int(req.prime_tokens, "prime tokens")
        if tokens < 0:
            raise UserError(f"prime tokens must be >= 0 (0 = all the model sees), got {tokens}")
        if prime.empty:
            return _Plan(NO_PRIME, Settings(**fields), prime)
        if req.window_start is None and req.window_end is None:
            start, end = prime.default_window()
        else:
            start, end = req.window_start, req.window_end
        window = self.window(prime, start, end).at_most(tokens)  # then at most ``tokens``
        cut = cut_prime(prime.ids, window, name=prime.name)  # refuses a window without notes
        return _Plan(cut, Settings(**fields, window=window), prime)

    def api_plan(
        self, prime: Prime, req: GenerateRequest, prime_seconds, prime_tokens, prime_range
    ) -> _Plan:
        """The CLI's windows (``Window.from_options``, the one rule of every surface; 0 or ""
        means not given)."""
        fields = self._settings(req)
        if prime.empty:
            return _Plan(NO_PRIME, Settings(**fields), prime)
        tokens = _as_int(prime_tokens or 0, "prime tokens")
        seconds = _as_float(prime_seconds or 0, "prime seconds")
        window = Window.from_options(seconds, tokens, prime_range)
        cut = cut_prime(prime.ids, window, name=prime.name)  # refuses a window without notes
        return _Plan(cut, Settings(**fields, window=window), prime)

    def generate(self, session: Session, req: GenerateRequest) -> Iterator[object]:
        """Yields Started, then Progress while sampling, then one ResultReady per variation (as
        soon as it is rendered), then Done. ``session.stop`` (the Stop button) ends sampling
        early; what was generated is kept and rendered."""
        with session.busy():
            yield from self._generate(session, req)

    def _generate(self, session: Session, req: GenerateRequest) -> Iterator[object]:
        t0 = time.perf_counter()
        if req.random_seed:
            req = dataclasses.replace(req, seed=secrets.randbelow(2**31))
        plan = self.plan(session.prime, req)
        settings = plan.settings
        n = int(settings.variations)
        session.stop.clear()
        session.generation += 1
        session.results = []
        what = "from nothing" if plan.base.empty else f"window {settings.window.describe()}"
        yield Started(
            int(settings.seed), n, f"Sampling {n} variation{'s' if n > 1 else ''} ({what})..."
        )

        events: queue.Queue = queue.Queue()
        cancelled = threading.Event()

        def callback(info) -> bool:
            events.put(info)
            return session.stop.is_set() or cancelled.is_set()

        def work() -> None:
            try:
                conts = continue_prime(
                    self.model,
                    plan.prime,
                    settings,
                    callback=callback,
                    name=plan.base.name,
                    length_bucket=WEB_LENGTH_BUCKET,
                )
                events.put(("done", conts))
            except BaseException as exc:  # handed to the request's thread
                events.put(("error", exc))

        threading.Thread(target=work, name="sampler", daemon=True).start()
        folder = session.folder() / f"gen{session.generation:04d}"
        last = last_roll = 0.0
        try:
            while True:
                item = events.get()
                if isinstance(item, tuple):
                    kind, value = item
                    if kind == "error":
                        raise value
                    conts = value
                    break
                now = time.perf_counter()
                if now - last >= PROGRESS_EVERY_S:
                    last = now
                    rolls = ()
                    if now - last_roll >= LIVE_ROLL_EVERY_S:
                        rolls = self._live_rolls(item, plan.prime.window, folder)
                        last_roll = time.perf_counter()
                    yield dataclasses.replace(self._progress(item, settings, now - t0), rolls=rolls)
        finally:
            cancelled.set()  # the page went away or something failed: stop the sampler

        first_audio = None
        for k, c in enumerate(conts):
            result = self._render(c, plan, folder)
            session.results.append(result)
            if first_audio is None:
                first_audio = time.perf_counter() - t0
            yield ResultReady(k, result, f"Rendered {k + 1} of {len(conts)}...")
        c0 = conts[0]
        stopped = any(c.stop == "stopped" for c in conts)
        verb = "Stopped: kept what was generated" if stopped else "Done"
        each = "; ".join(f"{c.seconds:.1f} s, {c.tokens} tokens" for c in conts)
        yield Done(
            f"{verb}: {len(conts)} variation{'s' if len(conts) > 1 else ''} ({each}), seeds "
            f"{c0.seed}..{conts[-1].seed}; sampled in {c0.sample_seconds:.1f} s, first audio "
            f"after {first_audio:.1f} s.",
            first_audio,
        )

    def _progress(self, info, settings, elapsed: float) -> Progress:
        target = settings.seconds
        secs = tuple(min(float(s), target) for s in info.seconds)
        toks = tuple(int(t) for t in info.num_tokens)
        each = ", ".join(f"{s:.1f}" for s in secs)
        return Progress(
            f"Sampling: {each} / {target:g} s of music, {sum(toks):,} tokens so far "
            f"({elapsed:.1f} s). Stop keeps what is there.",
            secs,
            toks,
        )

    def _live_rolls(self, info, prime: np.ndarray, folder: pathlib.Path) -> tuple:
        """The piano roll of each variation so far (a new file each time, so the page reloads
        it), for the variations that have new notes since the last roll."""
        rolls = []
        live = folder / "live"
        for k, ids in enumerate(info.tokens):
            n = int(info.num_tokens[k])
            path = live / f"v{k + 1}_{n:06d}.png"
            if n == 0 or path.exists():
                rolls.append(None)
                continue
            rolls.append(media.result_roll_png(prime, ids, path))
        return tuple(rolls)

    def _render(self, c, plan: _Plan, folder: pathlib.Path) -> Result:
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{media.safe_stem(plan.base.name, 'generated')}_v{c.variation}"
        if c.prime.size:
            lead = cut_last_seconds(c.prime, media.LEAD_IN_SECONDS)
        else:
            lead = np.zeros((0,), np.int32)
        audio, audio_seconds = media.write_audio_file(
            np.concatenate([lead, c.ids]).astype(np.int32), folder / f"{stem}.wav"
        )
        roll = media.result_roll_png(c.prime, c.ids, folder / f"{stem}.png")
        midi, full = folder / f"{stem}.mid", folder / f"{stem}_full.mid"
        for path, whole in ((midi, False), (full, True)):  # the CLI's writer, --full included
            atomic_write_bytes(
                path, output_bytes(c, OutputOptions(audio="none", full=whole))["midi"]
            )
        head = np.asarray(plan.prime.head, np.int32)
        return Result(c, plan.base, head, audio, audio_seconds, music_seconds(lead), roll,
                      midi, full)  # fmt: skip

    # -- regenerating a span (infilling) --------------------------------------------------------

    def _infill_model_or_say(self):
        if self.infill_model is None:
            raise UserError(NO_INFILL_MODEL)
        return self.infill_model

    def _infill(self, piece: np.ndarray, gap, settings, *, label: str, callback=None) -> list:
        """``app.core.infill.infill_piece`` of ``piece`` (ids): the same middles, sampled at the one
        length compiled at start (``infill_length_bucket``; the notes do not depend on it)."""
        return infill_piece(
            self._infill_model_or_say(), piece, gap, settings, name=label, callback=callback,
            length_bucket=self.infill_length_bucket,
        )  # fmt: skip

    def _render_span(self, f, base: Prime, folder: pathlib.Path) -> SpanResult:
        stem = media.safe_stem(base.name)
        files = write_infill(f, folder, stem, OutputOptions(audio="none"))  # the CLI's files
        context = f.context_midi()  # from CONTEXT_SECONDS before the span (or the piece's start)
        lead = f.start - max(0.0, f.start - CONTEXT_SECONDS)
        heard = folder / f"{stem}_infill_v{f.variation}_in_place"
        audio, _ = media.write_midi_audio(midi_bytes(context), heard.with_suffix(".wav"))
        notes = [n for inst in context.instruments for n in inst.notes]
        roll = media.span_roll_png(notes, (lead, lead + f.end - f.start), heard.with_suffix(".png"))
        return SpanResult(f, base, audio, roll, files["midi"], files["middle_midi"])

    def regenerate_span(self, session: Session, req: GenerateRequest, start, end) -> Regenerated:
        """The "Regenerate span" button: ``req.variations`` new versions of ``start..end``
        (seconds) of the session's piece, with the request's sampling settings and controls (its
        length, window and prime tokens do not apply), kept in ``session.spans`` for "Keep
        this"."""
        t0 = time.perf_counter()
        model = self._infill_model_or_say()
        if req.random_seed:
            req = dataclasses.replace(req, seed=secrets.randbelow(2**31))
        with session.busy():
            base = session.prime
            if base.empty:
                raise UserError("there is no piece to regenerate a span of: upload, pick or "
                                "play one first")  # fmt: skip
            settings = Settings(**self._settings(req, model))
            gap = Gap(start, end)
            filled = self._infill(base.ids, gap, settings, label=base.name)
            session.span = (gap.start, gap.end)
            session.generation += 1
            folder = session.folder() / f"span{session.generation:04d}"
            results = tuple(self._render_span(f, base, folder) for f in filled)
            session.spans = list(results)
        f0, n = filled[0], len(filled)
        status = (
            f"Done: {f0.start:.2f}..{f0.end:.2f} s regenerated (asked {gap.describe()}), {n} "
            f"variation{'s' if n > 1 else ''}, seeds {f0.seed}..{filled[-1].seed}; sampled in "
            f"{f0.sample_seconds:.1f} s, ready after {time.perf_counter() - t0:.1f} s. "
            "Keep one to put it in the piece (Undo steps back)."
        )
        return Regenerated(results, int(settings.seed), status)

    def keep_span(self, session: Session, index: int) -> PrimeView:
        """Variation ``index`` (0-based) of the last regenerated span becomes the piece: the
        whole piece with that span, exactly as downloaded (``<stem>_infill_vN.mid``)."""
        with session.busy():
            if not 0 <= int(index) < len(session.spans):
                raise UserError(f"there is no regenerated variation {int(index) + 1} to keep")
            r = session.spans[int(index)]
        f = r.infilled
        prime = Prime(np.asarray(encode(r.midi), np.int32), r.base.name,
                      f"{f.start:.2f}..{f.end:.2f} s regenerated", r.base.continued,
                      r.base.answers)  # fmt: skip
        return self._push(session, prime)

    # -- the /continue API ---------------------------------------------------------------------

    def api_continue(self, *args, **kwargs) -> tuple[list[str], list[str], dict]:
        """One request, no session: returns (audio paths, MIDI paths, info). MIDI paths are
        ``<stem>_vN.mid`` (the continuation) and ``<stem>_vN_full.mid`` per variation. The
        window: ``prime_range`` ("START:END" seconds) or ``prime_seconds`` (the last seconds),
        then at most the last ``prime_tokens`` of it; ``prime_tokens`` alone: the last tokens;
        nothing (0, ""): the last 20 s; the CLI's options (``Window.from_options``);
        ``ignore_eos`` as the CLI's ``--ignore-eos``; ``max_note_seconds``, ``pitch_range``,
        ``key``, ``velocity_range`` and ``max_polyphony`` as the CLI's options of those names
        ('' or 0: off). Parameters: ``CONTINUE_API``."""
        v = api_arguments(CONTINUE_API, args, kwargs)
        prime = v["prime"]
        self._sweep_api_files()
        if prime in (None, ""):
            base = Prime.nothing()
        else:
            base = read_upload(prime, max_bytes=self.max_upload_bytes)
        req = _sampling_request(v, seconds=v["seconds"], stop_at_eos=not v["ignore_eos"])
        plan = self.api_plan(base, req, v["prime_seconds"], v["prime_tokens"], v["prime_range"])
        folder = Session(self.root / "api").folder()
        conts = continue_prime(self.model, plan.prime, plan.settings, name=base.name,
                               length_bucket=WEB_LENGTH_BUCKET)  # fmt: skip
        results = [self._render(c, plan, folder) for c in conts]
        info = {
            "prime": base.name if not base.empty else None,
            "window": plan.settings.window.to_dict() if not base.empty else None,
            "settings": plan.settings.to_dict(),  # what was applied, defaults included
            "variations": [
                {
                    "variation": r.continuation.variation,
                    "seed": r.continuation.seed,
                    "seconds": r.continuation.seconds,
                    "tokens": r.continuation.tokens,
                    "stop": r.continuation.stop,
                    "audio_lead_in_seconds": r.lead_in,
                }
                for r in results
            ],
        }
        audio = [str(r.audio) for r in results]
        midi = [str(p) for r in results for p in (r.midi, r.full_midi)]
        return audio, midi, info

    def api_infill(self, *args, **kwargs) -> tuple[list[str], list[str], dict]:
        """One "Regenerate a span" request, no session: returns (audio paths, MIDI paths, info).
        Per variation, the audio is the new span in place (``CONTEXT_SECONDS`` before it, the
        span, as long after), the MIDI files ``<stem>_infill_vN.mid`` (the whole piece with the
        new span) and ``<stem>_infill_vN_middle.mid`` (the span alone), those of
        ``perceiver-midi infill --range START:END`` with the same seed and settings. Parameters:
        ``INFILL_API``."""
        v = api_arguments(INFILL_API, args, kwargs)
        model = self._infill_model_or_say()
        self._sweep_api_files()
        base = read_upload(v["piece"], max_bytes=self.max_upload_bytes)
        gap = Gap(v["start"], v["end"])
        req = _sampling_request(v)
        settings = Settings(**self._settings(req, model))
        filled = self._infill(base.ids, gap, settings, label=base.name)
        folder = Session(self.root / "api").folder()
        results = [self._render_span(f, base, folder) for f in filled]
        applied = settings.to_dict()
        for unused in ("seconds", "tokens", "stop_at_eos"):  # the span decides these
            applied.pop(unused)
        info = {
            "piece": base.name,
            "range": gap.to_dict(),  # as asked; each variation says the edges used
            "settings": applied,
            "variations": [
                {
                    "variation": f.variation,
                    "seed": f.seed,
                    "start": f.start,
                    "end": f.end,
                    "tokens": f.tokens,
                    "stop": f.stop,
                    "audio_lead_in_seconds": f.start - max(0.0, f.start - CONTEXT_SECONDS),
                }
                for f in filled
            ],
        }
        audio = [str(r.audio) for r in results]
        midi = [str(p) for r in results for p in (r.midi, r.middle_midi)]
        return audio, midi, info

    def _sweep_api_files(self) -> None:
        api = self.root / "api"
        if not api.is_dir():
            return
        now = time.time()
        for p in api.iterdir():
            try:
                if now - p.stat().st_mtime > API_FILES_TTL_S:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass

    # -- start-up --------------------------------------------------------------------------------

    def warm_up(self, *, log=None, part: str = "all") -> float:
        """Compiles the sampler for every shape a request can ask for (each batch bucket of
        1..MAX_VARIATIONS variations x each latents choice x unguided and guided, at the one
        length every request uses: ``WEB_LENGTH_BUCKET``; one chunk each, then stops), the same
        for the infilling model (at ``infill_length_bucket``), and loads the renderers, so no
        request waits for a compilation. ``part``: "all"; "default", the shapes of requests at
        the default guidance and latents (any number of variations), which `perceiver-midi app`
        compiles before it serves; "rest", the others, which it compiles in the background
        (each takes ~20 s on 2 cores). Returns the seconds it took."""
        if part not in ("all", "default", "rest"):
            raise ValueError(f"part must be 'all', 'default' or 'rest', got {part!r}")
        t0 = time.perf_counter()
        batches = sorted({1 << (v - 1).bit_length() for v in range(1, MAX_VARIATIONS + 1)})

        def chosen(latents: int, own: int, g: float) -> bool:
            default = latents == own and g == DEFAULT_GUIDANCE
            return part == "all" or (part == "default") == default

        # Guided and unguided samplers are two programs (the guidance's value is traced).
        infill_own = self.infill_model.config.num_latents if self.infill_model else 0
        tasks = [("sampler", self.latent_choices, self.num_latents),
                 ("infilling", self.infill_latent_choices, infill_own)]  # fmt: skip
        piece = media.warm_up_ids()
        shapes = [(task, own, latents, b, g) for task, choices, own in tasks
                  for latents in choices for b in batches for g in WARM_GUIDANCE
                  if chosen(latents, own, g)]  # fmt: skip
        for task, own_latents, latents, b, g in shapes:
            t = time.perf_counter()
            own = latents == own_latents
            settings = Settings(variations=b, latents=None if own else latents, guidance=g)
            if task == "sampler":
                continue_prime(self.model, None, settings, callback=lambda info: True,
                               length_bucket=WEB_LENGTH_BUCKET)  # fmt: skip
            else:
                self._infill(piece, Gap(0.0, 0.1), settings, label="warm-up",
                             callback=lambda info: True)  # fmt: skip
            if log:
                log(
                    f"  {task} compiled for {b} variation{'s' if b > 1 else ''}, "
                    f"{latents} latents, guidance {g:g} ({time.perf_counter() - t:.1f} s)"
                )
        if part == "rest":
            return time.perf_counter() - t0
        folder = self.root / f"warm-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        media.warm_up(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return time.perf_counter() - t0

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
