"""The web app's "Play" panel: a prime recorded from a MIDI keyboard or the on-screen keys, and
call and response. The browser part is ``app/web/play.js`` and ``app/web/play.css`` (plain files,
no build step, nothing fetched from elsewhere), run by a ``gr.HTML`` component; what is played
reaches the server as MIDI messages (``app/web/played.py``) through the component's events:

* ``submit`` {messages}: a take (Record, then Stop) -> :meth:`Composer.load_played`;
* ``change`` {messages, gap_seconds}: a phrase, after the chosen pause -> :meth:`Composer.respond`,
  whose answer audio the page plays (``window.perceiverMidiPlayAnswer``).

``app/web/page.py`` wires them to the session, the prime panel and the Generate controls.
"""

from __future__ import annotations

import pathlib

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_PAUSE_SECONDS = 1.5  # call and response: the silence after which the model answers

HTML = f"""
<div class="pm-play" tabindex="0" aria-label="Piano keyboard">
  <div class="pm-row">
    <button class="pm-btn pm-rec" data-act="record" id="play-record">&#9679; Record</button>
    <button class="pm-btn" data-act="stop" id="play-stop">&#9632; Stop: use as prime</button>
    <button class="pm-btn" data-act="clear" id="play-clear">Clear</button>
    <button class="pm-btn" data-act="playback" id="play-back">&#9654; Play back</button>
    <span class="pm-take" id="play-take">Record, play, Stop: the take becomes the prime.</span>
  </div>
  <div class="pm-midi" id="play-midi-status">Looking for a MIDI keyboard...</div>
  <div class="pm-keys" id="play-keys"></div>
  <div class="pm-help">Computer keys (click the keyboard first): A W S E D F T G Y H U J K O L P ;
    from <b class="pm-octave">C4</b>; Z / X: octave down / up; hold Space: sustain pedal.</div>
  <div class="pm-row">
    <label><input type="checkbox" class="pm-cr" id="play-cr"> Call and response</label>
    <label>answer after a pause of
      <input type="number" class="pm-pause" id="play-pause" value="{DEFAULT_PAUSE_SECONDS}"
             min="0.3" max="10" step="0.1"> s</label>
    <span class="pm-cr-status" id="play-cr-status"></span>
  </div>
</div>
"""


def play_panel():
    """The keyboard (a gr.HTML whose events carry what was played) and the answer's status line
    and audio player (hidden; the page plays the answer itself)."""
    import gradio as gr

    keyboard = gr.HTML(
        "",
        html_template=HTML,
        css_template=(HERE / "play.css").read_text(encoding="utf-8"),
        js_on_load=(HERE / "play.js").read_text(encoding="utf-8"),
        elem_id="play",
    )
    answer_status = gr.Markdown("", elem_id="answer-status")
    answer_audio = gr.Audio(
        label="The answer", type="filepath", interactive=False, visible="hidden",
        elem_id="answer-audio",
    )  # fmt: skip
    return keyboard, answer_status, answer_audio
