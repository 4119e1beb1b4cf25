"""The Gradio web app: ``perceiver-midi app`` (or ``python -m perceiver_midi.app``).

    perceiver-midi app --checkpoint checkpoints/maestro-cpu-infill --port 7860   # its default
    perceiver-midi app --checkpoint checkpoints/maestro-cpu --infill-checkpoint none

The page, in the order a composer works:
  1. Prime: upload a MIDI file, choose a shipped example, or start from nothing; or play it
     (app/web/play.py: a MIDI keyboard through Web MIDI, or the on-screen keys; Record / Stop /
     Clear / Play back), with call and response (play a phrase, pause, hear the model answer;
     the exchange grows as one piece). Its piano roll (the prime window in colour), a player for
     the window and the piece as MIDI; two sliders choose the window (start and end, in
     seconds; default: the last 20 s); Undo goes back one prime.
     Regenerate a span (an accordion under it): two sliders choose a span of the piece (at most
     12 s, hatched on its roll), Regenerate span writes 1-4 new versions of it with the model
     hearing both sides (the infilling model: ``--infill-checkpoint``; without one the mode says
     so in one line and the rest works), each heard in place (3 s before, the new span, 3 s
     after), with its piano roll, the whole piece and the span alone as MIDI, and "Keep this"
     (the piece becomes that version; Undo steps back). It uses the controls of 2.
  2. Controls: continuation length, variations (1-4), temperature, top-p, top-k, seed with a
     "random" toggle; Advanced: latents (test-time compute) and prime tokens.
  3. Generate / Stop, with a status line (music seconds and tokens so far while sampling).
  4. Results, one per variation: audio (3 s of the prime, then the continuation), a piano roll
     (prime grey, continuation coloured, a dashed line at the seam), the MIDI files (the
     continuation alone, and the piece so far + the continuation), and "Continue from this".

The named API endpoints (see README): ``/continue`` takes a prime MIDI file and the settings and
returns the audio and MIDI files of each variation; ``/infill`` takes a MIDI file, a span (start,
end) and the settings and returns each variation's audio in place and its MIDI files (the whole
piece, the span alone). The handlers live in ``app/web/handlers.py`` (plain Python, tested without a
browser); this module only lays out the page and adapts values. One model per process (and the
infilling model, when it is another), loaded and compiled before the server starts; per-session
state in ``gr.State``; Gradio's queue bounds how many requests use the models at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import threading
import time
from typing import Any

from perceiver_midi.app.core.controls import ANY_KEY, KEY_CHOICES
from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.infill import CONTEXT_SECONDS, MAX_GAP_SECONDS
from perceiver_midi.app.core.pipeline import (
    CONTROL_FIELDS,
    DEFAULT_GUIDANCE,
    DEFAULT_GUIDANCE_TOKENS,
    DEFAULT_HUMANIZE,
    HUMANIZE_CHOICES,
    MAX_GUIDANCE,
)
from perceiver_midi.app.web.handlers import (
    CONTINUE_API,
    DEFAULT_MAX_NOTE_SECONDS,
    DEFAULT_MAX_POLYPHONY,
    DEFAULT_MIN_P,
    DEFAULT_SECONDS,
    DEFAULT_TOP_P,
    INFILL_API,
    MAX_SECONDS,
    MAX_VARIATIONS,
    NO_INFILL_MODEL,
    REQUIRED,
    Composer,
    Done,
    GenerateRequest,
    Progress,
    ResultReady,
    Started,
    api_signature,
)
from perceiver_midi.app.web.memory import bound_malloc
from perceiver_midi.app.web.play import play_panel
from perceiver_midi.app.web.session import MAX_UPLOAD_BYTES, Session, human_size, list_examples
from perceiver_midi.model.checkpoint import (
    DEFAULT_NAME,
    INFILL_NAME,
    CheckpointError,
    default_checkpoint,
    load_model,
)

# Logged once the background warm-up is done (benchmarks/web_server.py waits for it).
ALL_SHAPES_COMPILED = "every shape compiled"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_CONCURRENCY = 2
DEFAULT_MAX_QUEUE = 16  # requests waiting beyond these are refused ("queue is full")
MAX_QUEUE = 1000
MAX_CONCURRENCY = 64
# Gradio keeps per session (each browser tab, each API client) a copy of the page's config (about
# 0.3 MB here) and the session's gr.State, and drops only the least recently used beyond this
# many (Gradio's default, 10,000, lets a long-running server grow by gigabytes).
MAX_SESSIONS = 500
# Gradio's queue records every event for its /monitoring page and, after each one, summarises
# them all with pandas: at most this many events kept, summarised every this many events (its
# defaults, 10,000 and 1, make each request's work, and the heap, grow with the events served).
ANALYTICS_MAX_EVENTS = 1000
ANALYTICS_EVERY = 100
TITLE = "perceiver-midi: continue your piano sketch"
log = logging.getLogger("perceiver_midi.web")

CSS = """
#status { min-height: 2.2em; }
.result-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px; }
"""


# ----------------------------------------------------------------------------------------------
# Page
# ----------------------------------------------------------------------------------------------


def _user_errors(fn):
    """UserError -> gr.Error (a message in the page); other exceptions -> one line too."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as exc:  # a bug: keep serving, say what happened in one line
            log.exception("handler failed")
            raise gr.Error(f"internal error: {type(exc).__name__}: {exc}") from None

    return wrapper


# The page's sampling settings and controls (GenerateRequest fields), one widget each: the seed,
# "random seed", and every control of Settings.
SAMPLING_WIDGETS = ("seed", "random_seed", *CONTROL_FIELDS)


def _page_request(**values) -> GenerateRequest:
    """A request from the page's widget values (an empty seed box: seed 0)."""
    if values.get("seed") is None:
        values["seed"] = 0
    values["random_seed"] = bool(values.get("random_seed"))
    return GenerateRequest(**values)


def _api_handler(method, params):
    """A handler of one API endpoint: Gradio names the endpoint's parameters after the handler's
    signature, built here from the endpoint's table (``CONTINUE_API``, ``INFILL_API``)."""

    def handler(*args):
        return method(*args)

    handler.__signature__ = api_signature(params)
    handler.__name__ = method.__name__
    return handler


def _api_component(p):
    """The hidden input component of an API parameter (label = the parameter's name)."""
    import gradio as gr

    value = None if p.default is REQUIRED else p.default
    if p.kind == "file":
        return gr.File(label=p.name, type="filepath")
    if p.kind is bool:
        return gr.Checkbox(value=value, label=p.name)
    if p.kind is str:
        return gr.Textbox(value=value, label=p.name)
    return gr.Number(value=value, precision=0 if p.kind is int else None, label=p.name)


def _with_event_data(fn):
    """A Gradio handler calling ``fn(*inputs, data)``, ``data`` being what the page's
    ``trigger(event, data)`` sent ({} if nothing). Gradio passes gr.EventData to a positional
    parameter annotated with the class itself (this module's annotations are strings)."""
    import gradio as gr

    @functools.wraps(fn)
    def handler(evt, *inputs):
        data = getattr(evt, "_data", None)
        return fn(*inputs, data if isinstance(data, dict) else {})

    handler.__annotations__ = {"evt": gr.EventData}
    del handler.__wrapped__  # Gradio must see handler's own signature, not fn's
    return handler


def _continue_from(composer: Composer, k: int, s: Session):
    return composer.continue_from(s, k)


def _keep_span(composer: Composer, k: int, s: Session):
    return composer.keep_span(s, k)


def _result_cards(prefix: str, audio_label: str, roll_label: str, files_label: str, button):
    """MAX_VARIATIONS hidden result cards, two per row: (card, header, audio, roll, files,
    button) each, with elem_ids ``<prefix>-<k>-header`` ... ``<prefix>-<k>-<button id>``."""
    import gradio as gr

    text, button_id = button
    cards = []
    for row in range(0, MAX_VARIATIONS, 2):
        with gr.Row():
            for k in range(row, min(row + 2, MAX_VARIATIONS)):
                name = f"{prefix}-{k + 1}"
                with gr.Column(visible=False, elem_classes="result-card") as card:
                    header = gr.Markdown(elem_id=f"{name}-header")
                    audio = gr.Audio(label=audio_label, type="filepath", interactive=False,
                                     elem_id=f"{name}-audio")  # fmt: skip
                    roll = gr.Image(label=roll_label, type="filepath", interactive=False,
                                    height=220, elem_id=f"{name}-roll")  # fmt: skip
                    files = gr.File(label=files_label, file_count="multiple", interactive=False,
                                    elem_id=f"{name}-files")  # fmt: skip
                    btn = gr.Button(text, size="sm", elem_id=f"{name}-{button_id}")
                cards.append((card, header, audio, roll, files, btn))
    return cards


# ----------------------------------------------------------------------------------------------
# The page in named stages: the panels, laid out in page order inside gr.Blocks (each returns
# its components), then the wiring of each panel's events (class _Wiring)
# ----------------------------------------------------------------------------------------------

# The options of the page's own events (not API endpoints): prime handlers render audio and
# rolls, so they share the model's CPU budget (its concurrency group) with generation, and a
# burst of uploads cannot starve sampling.
UI_EVENT = {"api_visibility": "private", "show_progress": "minimal", "concurrency_id": "model"}


@dataclasses.dataclass
class _Prime:
    """1. Prime: where a prime comes from (upload, example, nothing, undo, the Play panel), its
    view (description, roll, audio, MIDI) and its window sliders."""

    upload: Any
    example: Any
    nothing: Any
    undo: Any
    keyboard: Any
    answer_status: Any
    answer_audio: Any
    info: Any
    roll: Any
    audio: Any
    midi: Any
    win_start: Any
    win_end: Any


@dataclasses.dataclass
class _Span:
    """The "Regenerate a span of the piece" panel: its sliders, button, status and result cards."""

    panel: Any
    start: Any
    end: Any
    variations: Any
    info: Any
    button: Any
    status: Any
    slots: list


@dataclasses.dataclass
class _Controls:
    """2. Continue: the length and variations, the sampling widgets (``sampling``, one per name
    of SAMPLING_WIDGETS), Generate / Stop and the status line."""

    seconds: Any
    variations: Any
    prime_tokens: Any
    stop_at_eos: Any
    sampling: dict
    generate: Any
    stop: Any
    status: Any

    @property
    def sampling_inputs(self) -> list:
        """The sampling widgets in SAMPLING_WIDGETS order: Generate, the keyboard's answer and
        "Regenerate a span" send the same ones."""
        return [self.sampling[name] for name in SAMPLING_WIDGETS]

    def inputs(self, prime: _Prime) -> list:
        """What a continuation request reads (``_request``'s order)."""
        return [self.seconds, self.variations, self.prime_tokens, self.stop_at_eos,
                prime.win_start, prime.win_end, *self.sampling_inputs]  # fmt: skip


@dataclasses.dataclass
class _Api:
    """The hidden components of the /continue and /infill endpoints."""

    inputs: dict  # one component per parameter of CONTINUE_API and INFILL_API (shared by name)
    audio: Any
    midi: Any
    info: Any
    continue_button: Any
    infill_button: Any


def _header() -> None:
    import gradio as gr

    gr.Markdown(
        f"# {TITLE}\nUpload a MIDI sketch, pick an example or play one (or play with the "
        "model: call and response), choose the part that primes the model, generate a few "
        "continuations, listen, download the one you like, continue from it, undo."
    )


def _prime_panel(composer: Composer) -> _Prime:
    import gradio as gr

    gr.Markdown("## 1. Prime")
    with gr.Row(equal_height=True):
        upload = gr.File(
            label=f"Upload a MIDI file (up to {human_size(composer.max_upload_bytes)})",
            file_types=[".mid", ".midi"],
            type="filepath",
            elem_id="upload",
            height=150,
            scale=2,
        )
        with gr.Column(scale=1):
            example = gr.Dropdown(
                choices=list_examples(composer.examples_dir),
                value=None,
                label="or a shipped example",
                elem_id="example",
            )
            with gr.Row():
                nothing = gr.Button("Start from nothing", size="sm", elem_id="nothing")
                undo = gr.Button("Undo", size="sm", interactive=False, elem_id="undo")
    with gr.Accordion("or play it: a MIDI keyboard or the keys below; call and response",
                      open=True, elem_id="play-panel"):  # fmt: skip
        keyboard, answer_status, answer_audio = play_panel()
    info = gr.Markdown(Session().prime.describe(), elem_id="prime-info")
    with gr.Row():
        roll = gr.Image(
            label="Prime (the window in colour)",
            type="filepath",
            interactive=False,
            height=260,
            elem_id="prime-roll",
            scale=3,
        )
        audio = gr.Audio(
            label="Hear the prime window",
            type="filepath",
            interactive=False,
            elem_id="prime-audio",
            scale=2,
        )
    midi = gr.File(label="The piece (MIDI)", interactive=False, elem_id="prime-midi", height=80)
    with gr.Row():
        win_start = gr.Slider(
            0, 1, value=0, step=0.01, label="Prime window start (s)", interactive=False
        )
        win_end = gr.Slider(
            0, 1, value=1, step=0.01, label="Prime window end (s)", interactive=False
        )
    return _Prime(upload, example, nothing, undo, keyboard, answer_status, answer_audio, info,
                  roll, audio, midi, win_start, win_end)  # fmt: skip


def _span_panel(can_infill: bool) -> _Span:
    import gradio as gr

    with gr.Accordion("Regenerate a span of the piece", open=False,
                      elem_id="span-panel") as panel:  # fmt: skip
        gr.Markdown(
            f"Choose up to {MAX_GAP_SECONDS:g} s of the piece with the two sliders (hatched "
            "on its roll), then Regenerate span: the model writes it anew, hearing what comes "
            f"before and after it. Each variation plays {CONTEXT_SECONDS:g} s before the "
            f"span, the new span and {CONTEXT_SECONDS:g} s after; **Keep this** puts it in "
            "the piece (Undo steps back). Temperature, top-p, top-k, seed, Advanced and "
            "Controls are those of 2. Continue."
            if can_infill
            else f"**Not available:** {NO_INFILL_MODEL}. Everything else works.",
            elem_id="span-note",
        )
        with gr.Row():
            start = gr.Slider(0, 1, value=0, step=0.01, label="Span start (s)",
                              interactive=False, elem_id="span-start")  # fmt: skip
            end = gr.Slider(0, 1, value=1, step=0.01, label="Span end (s)",
                            interactive=False, elem_id="span-end")  # fmt: skip
            variations = gr.Slider(1, MAX_VARIATIONS, value=2, step=1, label="Variations",
                                   elem_id="span-variations")  # fmt: skip
        info = gr.Markdown("", elem_id="span-info")
        button = gr.Button("Regenerate span", variant="primary", interactive=can_infill,
                           elem_id="regenerate")  # fmt: skip
        status = gr.Markdown("", elem_id="span-status")
        slots = _result_cards(
            "span",
            f"In place: {CONTEXT_SECONDS:g} s before, the new span, {CONTEXT_SECONDS:g} s after",
            "Piano roll (the new span coloured)",
            "MIDI: the whole piece with this span, and the span alone (_middle)",
            ("Keep this", "keep"),
        )
    return _Span(panel, start, end, variations, info, button, status, slots)


def _controls_panel(composer: Composer) -> _Controls:
    import gradio as gr

    n_lat = composer.num_latents
    gr.Markdown("## 2. Continue")
    with gr.Row():
        seconds = gr.Slider(
            1, 60, value=DEFAULT_SECONDS, step=1, label="Length (s)", elem_id="length"
        )
        variations = gr.Slider(
            1, MAX_VARIATIONS, value=2, step=1, label="Variations", elem_id="variations"
        )
        temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="Temperature (0 = greedy)")
    with gr.Row():
        top_p = gr.Slider(0.05, 1, value=DEFAULT_TOP_P, step=0.01, label="Top-p (1 = off)")
        top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)")
        min_p = gr.Slider(0, 0.5, value=DEFAULT_MIN_P, step=0.005, label="Min-p (0 = off)")
        seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
        random_seed = gr.Checkbox(value=True, label="Random seed")
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            latents = gr.Dropdown(
                list(composer.latent_choices),
                value=n_lat,
                label=f"Latents (test-time compute; the model's: {n_lat})",
                info="Fewer latents: less compute per token, less recent music seen in detail.",
            )
            prime_tokens = gr.Slider(
                0,
                composer.context_tokens,
                value=0,
                step=1,
                label="Prime tokens (0 = all of the window the model can see)",
            )
            stop_at_eos = gr.Checkbox(
                value=True,
                label="Stop at the end of a piece (EOS)",
                info="Off: always fill the length.",
            )
            max_note = gr.Number(
                value=DEFAULT_MAX_NOTE_SECONDS,
                minimum=0,
                label="Longest note, seconds (0 = no limit)",
                info="A note held this long is ended before the music moves on.",
            )
        with gr.Row():
            guidance = gr.Slider(
                0,
                MAX_GUIDANCE,
                value=DEFAULT_GUIDANCE,
                step=0.1,
                label="Context guidance (0 = off)",
                info="Weighs what the prime changes in the model's prediction more, "
                "so the continuation keeps more of it; twice the work.",
                elem_id="guidance",
            )
            guidance_tokens = gr.Number(
                value=DEFAULT_GUIDANCE_TOKENS,
                precision=0,
                minimum=0,
                label="Guidance compares with the prime's last tokens",
                elem_id="guidance-tokens",
            )
    with gr.Accordion("Controls (held on every generated note)", open=False):
        with gr.Row():
            pitch_range = gr.Textbox(
                value="",
                label="Pitch range",
                placeholder="e.g. 48:72 or C3:C5 (empty = all)",
                elem_id="pitch-range",
            )
            key = gr.Dropdown(
                list(KEY_CHOICES),
                value=ANY_KEY,
                allow_custom_value=True,
                label="Key (natural minor; or pitch classes like C,D,E)",
                elem_id="key",
            )
            velocity_range = gr.Textbox(
                value="",
                label="Velocity range (dynamics, 1-127)",
                placeholder="e.g. 40:90 (empty = all)",
                elem_id="velocity-range",
            )
            max_polyphony = gr.Number(
                value=DEFAULT_MAX_POLYPHONY,
                precision=0,
                minimum=0,
                label="Most notes at once (0 = no limit)",
                elem_id="max-polyphony",
            )
            humanize = gr.Dropdown(
                list(HUMANIZE_CHOICES),
                value=DEFAULT_HUMANIZE,
                label="Play quantized music to the model with human timing",
                info="auto: when the prime or piece looks quantized (a grid, one or two "
                "loudness levels); your files keep it as it is.",
                elem_id="humanize",
            )
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id="generate")
        stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
    status = gr.Markdown("", elem_id="status")
    sampling = dict(
        temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, guidance=guidance,
        guidance_tokens=guidance_tokens, seed=seed,
        random_seed=random_seed, latents=latents, max_note_seconds=max_note,
        pitch_range=pitch_range, key=key, velocity_range=velocity_range,
        max_polyphony=max_polyphony, humanize=humanize,
    )  # fmt: skip
    return _Controls(seconds, variations, prime_tokens, stop_at_eos, sampling, generate, stop,
                     status)  # fmt: skip


def _results_panel() -> list:
    import gradio as gr

    gr.Markdown("## 3. Results")
    return _result_cards(
        "result",
        "Audio (3 s of the prime, then the continuation)",
        "Piano roll",
        "MIDI: the continuation, and the piece so far (_full)",
        ("Continue from this", "continue"),
    )


def _api_panel() -> _Api:
    import gradio as gr

    with gr.Column(visible=False):
        return _Api(
            inputs={p.name: _api_component(p) for p in (*CONTINUE_API, *INFILL_API)},
            audio=gr.File(label="audio", file_count="multiple"),
            midi=gr.File(label="midi", file_count="multiple"),
            info=gr.JSON(label="info"),
            continue_button=gr.Button("continue"),
            infill_button=gr.Button("infill"),
        )


def _tell(exc: Exception) -> str:
    """A failed page handler's one-line message, shown in a toast (a bug is logged too)."""
    import gradio as gr

    if isinstance(exc, UserError):
        msg = str(exc)
    else:  # a bug: keep serving, say what happened in one line
        log.exception("handler failed")
        msg = f"internal error: {type(exc).__name__}: {exc}"
    gr.Warning(msg, title="Error")
    return msg


def _request(s: Session, seconds_v, variations_v, prime_tokens_v, stop_at_eos_v, start_v, end_v,
             *sampling_v) -> GenerateRequest:  # fmt: skip
    """The values of ``_Controls.inputs`` as one request (the window only for a non-empty
    prime)."""
    return _page_request(
        seconds=seconds_v,
        variations=variations_v,
        prime_tokens=prime_tokens_v,
        stop_at_eos=bool(stop_at_eos_v),
        window_start=None if s.prime.empty else start_v,
        window_end=None if s.prime.empty else end_v,
        **dict(zip(SAMPLING_WIDGETS, sampling_v, strict=True)),
    )


class _Wiring:
    """The page's events, one method per panel. UI handlers never raise for a user mistake: the
    message goes to a toast and to the panel's status line, the page keeps what it showed, and
    the upload box is emptied for the next file (raising would also flag every output component
    with "Error"). Every prime change redraws the same components (``prime_outputs``)."""

    def __init__(self, composer: Composer, session, prime: _Prime, span: _Span, can_infill: bool):
        self.composer = composer
        self.session = session
        self.can_infill = can_infill
        self.prime_outputs = [prime.info, prime.roll, prime.audio, prime.win_start, prime.win_end,
                              prime.undo, prime.midi, span.start, span.end]  # fmt: skip
        self.with_state = [session, *self.prime_outputs, prime.upload]

    def prime_updates(self, view) -> tuple:
        """A prime's view -> the values of ``prime_outputs``."""
        import gradio as gr

        if view.empty:
            start = gr.update(minimum=0, maximum=1, value=0, interactive=False)
            end = gr.update(minimum=0, maximum=1, value=1, interactive=False)
            spans = (start, end)
        else:
            top = round(view.total, 2)
            start = gr.update(minimum=0, maximum=top, value=view.window[0], interactive=True)
            end = gr.update(minimum=0, maximum=top, value=view.window[1], interactive=True)
            spans = tuple(
                gr.update(minimum=0, maximum=top, value=min(v, top), interactive=self.can_infill)
                for v in view.span
            )
        return (
            view.info,
            str(view.roll),
            str(view.audio) if view.audio else None,
            start,
            end,
            gr.update(interactive=view.can_undo),
            str(view.midi) if view.midi else None,
            *spans,
        )

    def prime_handler(self, action):
        """A handler (session, *args) -> the new prime's view (``with_state``), or the message
        and no change; ``action(session, *args)`` returns a view, or None for no change."""
        import gradio as gr

        n = len(self.prime_outputs)

        def handler(s: Session, *args):
            try:
                view = action(s, *args)
            except Exception as exc:
                info = f"**Error:** {_tell(exc)}\n\n{s.prime.describe()} (unchanged)"
                return (s, info, *[gr.skip()] * (n - 1), None)
            if view is None:
                return (s, *[gr.skip()] * n, None)
            return (s, *self.prime_updates(view), None)

        return handler

    def prime(self, prime: _Prime, demo) -> None:
        """Upload, example, nothing, undo, the window sliders, and the page's first load."""
        import gradio as gr

        composer, session, with_state = self.composer, self.session, self.with_state

        def on_window(s: Session, start, end):
            try:
                view = composer.set_window(s, start, end)
            except Exception as exc:
                return f"**Error:** {_tell(exc)}\n\n{s.prime.describe()}", gr.skip(), gr.skip()
            return view.info, str(view.roll), str(view.audio) if view.audio else None

        def on_example(s: Session, name):
            return composer.load_example(s, name) if name else None

        prime.upload.upload(self.prime_handler(composer.load_upload), [session, prime.upload],
                            with_state, api_name="set_prime", api_visibility="undocumented",
                            show_progress="minimal", concurrency_id="model")  # fmt: skip
        prime.example.input(self.prime_handler(on_example), [session, prime.example], with_state,
                            **UI_EVENT)  # fmt: skip
        prime.nothing.click(self.prime_handler(composer.start_empty), [session], with_state,
                            **UI_EVENT)  # fmt: skip
        prime.undo.click(self.prime_handler(composer.undo), [session], with_state, **UI_EVENT)
        for slider in (prime.win_start, prime.win_end):
            slider.release(on_window, [session, prime.win_start, prime.win_end],
                           [prime.info, prime.roll, prime.audio], **UI_EVENT)  # fmt: skip
        demo.load(self.prime_handler(composer.prime_view), [session], with_state,
                  api_visibility="private", show_progress="minimal")  # fmt: skip

    def span(self, span: _Span, prime: _Prime, controls: _Controls) -> None:
        """The span mode: the span sliders and the mode opening or closing redraw the
        roll; Regenerate span; Keep this."""
        import gradio as gr

        composer, session = self.composer, self.session

        def on_span(s: Session, win_start_v, win_end_v, *span_v):
            """The span sliders moved (or the mode opened: ``span_v``; closed: no ``span_v``)."""
            try:
                roll, line = composer.show_span(s, span_v or None, (win_start_v, win_end_v))
            except Exception as exc:
                return gr.skip(), f"**Error:** {_tell(exc)}"
            return (str(roll) if roll else gr.skip()), line

        span_outputs = [c for slot in span.slots for c in slot[:5]]

        def on_regenerate(s: Session, start_v, end_v, variations_v, *sampling_v):
            v = dict(zip(SAMPLING_WIDGETS, sampling_v, strict=True))
            # The page's choices are the main model's: its own M means the infilling one's.
            if v["latents"] == composer.num_latents:
                v["latents"] = None
            req = _page_request(variations=variations_v, **v)
            skip = [gr.skip()] * len(span_outputs)
            yield "Regenerating the span...", gr.skip(), gr.update(interactive=False), *skip
            try:
                done = composer.regenerate_span(s, req, start_v, end_v)
            except Exception as exc:
                yield f"**Error:** {_tell(exc)}", gr.skip(), gr.update(interactive=True), *skip
                return
            n = len(done.results)
            # The cards are shown (empty) first, then filled: a card made visible in the same
            # update as its audio and image sometimes drops them in the browser (Gradio 6.31).
            shown = []
            for k in range(MAX_VARIATIONS):
                shown += [gr.update(visible=k < n), gr.skip(), None, None, None]
            yield gr.skip(), done.seed, gr.skip(), *shown
            filled = []
            for k in range(MAX_VARIATIONS):
                if k < n:
                    r = done.results[k]
                    filled += [gr.skip(), r.header(), str(r.audio), str(r.roll),
                               [str(r.midi), str(r.middle_midi)]]  # fmt: skip
                else:
                    filled += [gr.skip()] * 5
            yield done.status, gr.skip(), gr.update(interactive=True), *filled

        view = [session, prime.win_start, prime.win_end, span.start, span.end]
        for slider in (span.start, span.end):  # the last move wins, even during a redraw
            slider.release(on_span, view, [prime.roll, span.info], trigger_mode="always_last",
                           **UI_EVENT)  # fmt: skip
        span.panel.expand(on_span, view, [prime.roll, span.info], **UI_EVENT)
        span.panel.collapse(on_span, view[:3], [prime.roll, span.info], **UI_EVENT)
        for k, slot in enumerate(span.slots):
            on_keep = self.prime_handler(functools.partial(_keep_span, composer, k))
            slot[5].click(on_keep, [session], self.with_state, **UI_EVENT)
        inputs = [span.start, span.end, span.variations, *controls.sampling_inputs]
        span.button.click(on_regenerate, [session, *inputs],
                          [span.status, controls.sampling["seed"], span.button, *span_outputs],
                          api_visibility="private", concurrency_id="model",
                          show_progress="hidden")  # fmt: skip

    def generate(self, controls: _Controls, prime: _Prime, slots: list) -> None:
        """Generate (its cards fill while tokens arrive), Stop, Continue from this."""
        import gradio as gr

        composer, session = self.composer, self.session
        slot_outputs = [c for slot in slots for c in slot[:5]]
        outputs = [controls.status, controls.sampling["seed"], controls.generate, controls.stop,
                   *slot_outputs]  # fmt: skip

        def frame(status_text=None, seed_value=None, busy=None, slot_values=None):
            skip = gr.skip
            out = [
                status_text if status_text is not None else skip(),
                seed_value if seed_value is not None else skip(),
                gr.update(interactive=not busy) if busy is not None else skip(),
                gr.update(interactive=bool(busy)) if busy is not None else skip(),
            ]
            values = slot_values or {}
            for k in range(MAX_VARIATIONS):
                out.extend(values.get(k, [skip()] * 5))
            return tuple(out)

        def on_generate(s: Session, *control_values):
            req = _request(s, *control_values)
            try:
                for ev in composer.generate(s, req):
                    if isinstance(ev, Started):
                        # The cards of this request are shown (empty) now, before their values
                        # arrive: a card made visible in the same update as its audio and image
                        # sometimes drops them in the browser (Gradio 6.31).
                        cards = {
                            k: [gr.update(visible=k < ev.variations),
                                f"**Variation {k + 1}**: sampling...", None, None, None]
                            for k in range(MAX_VARIATIONS)
                        }  # fmt: skip
                        yield frame(ev.status, ev.seed, True, cards)
                    elif isinstance(ev, Progress):  # the rolls grow while tokens arrive
                        rolls = {
                            k: [gr.skip()] * 3 + [str(path), gr.skip()]
                            for k, path in enumerate(ev.rolls)
                            if path is not None
                        }
                        yield frame(ev.status, slot_values=rolls)
                    elif isinstance(ev, ResultReady):
                        r = ev.result
                        files = [str(r.midi), str(r.full_midi)]
                        values = [gr.skip(), r.header(), str(r.audio), str(r.roll), files]
                        yield frame(ev.status, slot_values={ev.index: values})
                    elif isinstance(ev, Done):
                        yield frame(ev.status, busy=False)
            except Exception as exc:
                yield frame(f"**Error:** {_tell(exc)}", busy=False)

        def on_stop(s: Session):
            composer.stop(s)

        controls.generate.click(
            on_generate,
            [session, *controls.inputs(prime)],
            outputs,
            api_name="generate",
            concurrency_id="model",
            show_progress="hidden",
            api_visibility="undocumented",
        )
        controls.stop.click(on_stop, [session], None, concurrency_limit=None, queue=False,
                            api_visibility="private")  # fmt: skip
        for k, slot in enumerate(slots):
            on_continue = self.prime_handler(functools.partial(_continue_from, composer, k))
            slot[5].click(on_continue, [session], self.with_state, **UI_EVENT)

    def play(self, prime: _Prime, controls: _Controls) -> None:
        """The Play panel: a recorded take becomes the prime; call and response answers a
        phrase with Generate's settings."""
        import gradio as gr

        composer, session, with_state = self.composer, self.session, self.with_state
        on_take = self.prime_handler(composer.load_played)

        @_with_event_data
        def on_played(s: Session, data: dict):
            """Record, then Stop in the Play panel: the take becomes the prime."""
            return on_take(s, data.get("messages"))

        @_with_event_data
        def on_phrase(s: Session, *controls_and_data):
            """Call and response: a phrase, then the pause -> (answer audio, status line)."""
            *control_values, data = controls_and_data
            if "messages" not in data:  # not the panel's event: nothing to answer
                return None, gr.skip()
            try:
                answer = composer.respond(s, data.get("messages"), _request(s, *control_values),
                                          data.get("gap_seconds") or 0.0)  # fmt: skip
            except Exception as exc:
                return None, f"**Error:** {_tell(exc)}"
            return (str(answer.audio) if answer.audio else None), answer.status

        prime.keyboard.submit(on_played, [session], with_state, **UI_EVENT)
        # The answer is played by the page as soon as it arrives; the prime panel (roll, audio,
        # the piece's MIDI) is redrawn after, while it plays.
        prime.keyboard.change(on_phrase, [session, *controls.inputs(prime)],
                              [prime.answer_audio, prime.answer_status],
                              api_visibility="private", concurrency_id="model",
                              show_progress="hidden").then(
            None, [prime.answer_audio], None, js="(a) => window.perceiverMidiPlayAnswer(a)"
        ).then(self.prime_handler(composer.prime_view), [session], with_state,
               **UI_EVENT)  # fmt: skip

    def api(self, api: _Api) -> None:
        """The named endpoints /continue and /infill (their parameters: the tables)."""
        composer = self.composer
        outputs = [api.audio, api.midi, api.info]
        api.continue_button.click(
            _user_errors(_api_handler(composer.api_continue, CONTINUE_API)),
            [api.inputs[p.name] for p in CONTINUE_API],
            outputs,
            api_name="continue",
            api_description=CONTINUE_DESCRIPTION,
            concurrency_id="model",
        )
        api.infill_button.click(
            _user_errors(_api_handler(composer.api_infill, INFILL_API)),
            [api.inputs[p.name] for p in INFILL_API],
            outputs,
            api_name="infill",
            api_description=INFILL_DESCRIPTION,
            concurrency_id="model",
        )


CONTINUE_DESCRIPTION = (
    "Continue a prime MIDI file (or nothing: None). Returns the audio (WAV, 3 s of "
    "the prime then the continuation) of each variation, its MIDI files "
    "(<stem>_vN.mid: the continuation; <stem>_vN_full.mid: the prime up to the "
    "window's end, then the continuation) and a JSON summary. Window, as the CLI's "
    "options (0 or '' = not given): prime_range 'START:END' or the last "
    "prime_seconds, then at most the last prime_tokens of it; prime_tokens alone: "
    "the last tokens; nothing: the last 20 s. min_p: 0 = off. guidance: context "
    f"guidance (default {DEFAULT_GUIDANCE:g}; 0 = off), against the prime's last "
    "guidance_tokens. latents 0 = the "
    "model's. Variation v uses seed + v - 1. "
    "ignore_eos: never end early (as the CLI's --ignore-eos). max_note_seconds: "
    f"a note held this long is ended before the music moves on (default "
    f"{DEFAULT_MAX_NOTE_SECONDS:g}; 0 = no limit; as the CLI's --max-note-seconds). "
    "Musical controls, held on every generated note, as the CLI's options ('' or 0 "
    "= off): pitch_range 'LOW:HIGH' (MIDI numbers or names, C4 = 60), key ('Am', "
    "'F# major', or pitch classes 'C,D,E'), velocity_range 'LOW:HIGH' (1-127), "
    f"max_polyphony (no new note while that many sound; default "
    f"{DEFAULT_MAX_POLYPHONY}, 0 = no limit). humanize: music that looks quantized "
    f"reaches the model played with human timing and loudness (default "
    f"{DEFAULT_HUMANIZE}; 'on': every prime; 'off': never; as the CLI's --humanize)."
)
INFILL_DESCRIPTION = (
    "Regenerate the span start..end (seconds; at most "
    f"{MAX_GAP_SECONDS:g} s) of a MIDI file with the infilling model, which hears "
    "what comes before and after it (as `perceiver-midi infill --range START:END`). "
    "Returns per variation the audio of the new span in place (WAV: "
    f"{CONTEXT_SECONDS:g} s before it, the span, {CONTEXT_SECONDS:g} s after), the "
    "MIDI files <stem>_infill_vN.mid (the whole piece with the new span) and "
    "<stem>_infill_vN_middle.mid (the span alone), and a JSON summary (the edges "
    "used: the piece's first events at or after start and end). Variation v uses "
    "seed + v - 1; the sampling settings and musical controls are /continue's."
)


def build_app(
    model,
    *,
    composer: Composer | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
):
    """The gr.Blocks of the app for ``model`` (queue and launch it yourself, or use ``main``):
    the panels in page order, then their events."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a server
    import gradio as gr

    composer = composer or Composer(model, max_upload_bytes=max_upload_bytes)
    can_infill = composer.infill_model is not None
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        demo.composer = composer  # for tests and benchmarks
        session = gr.State(
            Session(composer.root / "sessions"),  # deep-copied per browser session
            delete_callback=lambda s: s.close() if isinstance(s, Session) else None,
        )
        _header()
        prime = _prime_panel(composer)
        span = _span_panel(can_infill)
        controls = _controls_panel(composer)
        slots = _results_panel()
        api = _api_panel()

        wiring = _Wiring(composer, session, prime, span, can_infill)
        wiring.prime(prime, demo)
        wiring.span(span, prime, controls)
        wiring.generate(controls, prime, slots)
        wiring.play(prime, controls)
        wiring.api(api)
    return demo


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on ({DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    p.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    p.add_argument(
        "--checkpoint",
        metavar="DIR",
        help=f"model checkpoint (default: checkpoints/{DEFAULT_NAME})",
    )
    p.add_argument(
        "--infill-checkpoint",
        metavar="DIR",
        help="the model of 'Regenerate a span' and /infill, trained to infill (default: the "
        f"--checkpoint model if it can infill, else checkpoints/{INFILL_NAME} when present; "
        "'none': no infilling)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        metavar="N",
        help=f"requests using the model at once; the rest wait in the queue "
        f"(default {DEFAULT_MAX_CONCURRENCY}, at most {MAX_CONCURRENCY})",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        metavar="N",
        help=f"requests that may wait for the model; more are refused at once "
        f"(default {DEFAULT_MAX_QUEUE}, at most {MAX_QUEUE})",
    )


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _infill_model(choice: str | None, model):
    """The infilling model: ``--infill-checkpoint DIR`` (UserError if it cannot be loaded or
    cannot infill; 'none': None); by default ``model`` when it can infill, else the shipped
    infilling model when present and loadable (else None: the mode says it is off)."""
    if choice is not None and choice.strip().lower() == "none":
        return None
    if choice is None:
        if getattr(model.config, "infill", False):
            return model
        shipped = default_checkpoint("infill")
        if shipped is None:
            return None
        try:
            return load_model(shipped)
        except CheckpointError as exc:  # not asked for: the rest of the app still serves
            _say(f"warning: the infilling model is off ({exc})")
            return None
    try:
        infill = load_model(choice)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    if not getattr(infill.config, "infill", False):
        raise UserError(
            f"{choice}: this checkpoint was not trained to infill (--infill-checkpoint)"
        )
    return infill


def cmd_app(args: argparse.Namespace) -> int:
    """Loads the model(s) once, warms the samplers, then serves until interrupted."""
    if not 1 <= args.max_concurrency <= MAX_CONCURRENCY:
        raise UserError(
            f"--max-concurrency must be in 1..{MAX_CONCURRENCY}, got {args.max_concurrency}"
        )
    if not 1 <= args.max_queue <= MAX_QUEUE:
        raise UserError(f"--max-queue must be in 1..{MAX_QUEUE}, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    bound_malloc()  # before the model's and the server's threads make their heaps
    t0 = time.perf_counter()
    try:
        model = load_model(args.checkpoint)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    infill = _infill_model(args.infill_checkpoint, model)
    which = (
        "off (--infill-checkpoint DIR)"
        if infill is None
        else "the main model"
        if infill is model
        else "a second model"
    )
    _say(
        f"model loaded in {time.perf_counter() - t0:.1f} s; infilling ('Regenerate a span'): "
        f"{which}; compiling the sampler..."
    )
    composer = Composer(model, infill_model=infill)
    try:
        took = composer.warm_up(log=_say, part="default")
        _say(f"warm for the default settings in {took:.1f} s; the other shapes (guidance 0, "
             "fewer latents) compile in the background, and a request needing one before it "
             "is ready compiles it")  # fmt: skip

        def warm_rest():
            took = composer.warm_up(log=_say, part="rest")
            _say(f"{ALL_SHAPES_COMPILED} ({took:.1f} s more)")

        threading.Thread(target=warm_rest, name="warm-up", daemon=True).start()
        demo = build_app(model, composer=composer)
        try:
            serve(demo, host=args.host, port=args.port, max_concurrency=args.max_concurrency,
                  max_queue=args.max_queue, share=args.share)  # fmt: skip
        except OSError as exc:
            raise UserError(f"cannot serve on {args.host}:{args.port} ({exc})") from None
    finally:
        composer.close()
    return 0


def serve(
    demo,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_queue: int = DEFAULT_MAX_QUEUE,
    share: bool = False,
    block: bool = True,
) -> str:
    """Queues and launches ``demo`` (from :func:`build_app`); returns the local URL. With
    ``block=False`` the server runs in a thread (tests, benchmarks): ``demo.close()`` stops it."""
    # Read when the queue is made (they bound what Gradio keeps and redoes after every event).
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", str(ANALYTICS_MAX_EVENTS))
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(ANALYTICS_EVERY))
    demo.queue(default_concurrency_limit=int(max_concurrency), max_size=int(max_queue))
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=demo.composer.max_upload_bytes,
        state_session_capacity=MAX_SESSIONS,
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return url


def add_commands(sub) -> None:
    """Adds ``app`` to ``perceiver-midi``."""
    p = sub.add_parser(
        "app",
        help="the web app (Gradio): compose by continuing, in the browser",
        description="Serve the perceiver-midi web app.",
    )
    _add_options(p)
    p.set_defaults(func=cmd_app)

    def error(message: str):
        p.exit(2, f"error: {message} (see {p.prog} --help)\n")

    p.error = error  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    """``python -m perceiver_midi.app``: the same options as ``perceiver-midi app``."""
    from perceiver_midi.app.cli import main as cli_main  # here: app.cli imports this module

    return cli_main(["app", *(sys.argv[1:] if argv is None else argv)])


__all__ = ["MAX_SECONDS", "add_commands", "build_app", "cmd_app", "main"]
