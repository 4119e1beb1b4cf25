"""The Play panel in a real browser (headless Chromium, as tests/test_web_browser.py): a prime
played on the on-screen keys, one played on a MIDI keyboard (a fake ``navigator.requestMIDIAccess``
injected before the page loads), and call and response. The server side is checked exactly:
what was played is read back from the session's prime and compared with the ids
``tokenizer.encode`` gives for the MIDI file the same performance makes.

The page is saved as ``tests/artifacts/play.png`` (the README's screenshot).
"""

import re

import numpy as np
import pytest

from tests.fake_midi import FAKE_MIDI_JS
from tests.test_web_browser import ARTIFACTS, CHROMIUM_ARGS, TIMEOUT_MS, _chromium, _wait_text

pytestmark = pytest.mark.filterwarnings(  # from gradio's queue, not ours
    "ignore:.*no_silent_downcasting:Warning", "ignore:The copy keyword is deprecated:Warning"
)

# What the fake keyboard plays: [status, data1, data2, ms]. Note 64 is released while the
# pedal is down, so the prime must hold it to the pedal's release (1.50 s).
PHRASE = [
    ([0x90, 60, 100], 0),
    ([0x80, 60, 0], 500),
    ([0xB0, 64, 127], 600),
    ([0x90, 64, 72], 700),
    ([0x80, 64, 64], 900),
    ([0x90, 67, 40], 1000),
    ([0x90, 67, 0], 1200),  # note-on with velocity 0 is a note-off
    ([0xB0, 64, 0], 1500),
]


def _expected_ids(phrase, offset_s=0.0):
    """The ids of ``phrase`` written as a MIDI file by hand (pretty_midi) and encoded."""
    import pretty_midi

    from perceiver_midi.tokenizer import encode, midi_bytes

    pm = pretty_midi.PrettyMIDI(resolution=500, initial_tempo=120.0)
    piano = pretty_midi.Instrument(program=0)
    open_ = {}
    for (status, a, b), ms in phrase:
        t = offset_s + ms / 1000
        if status & 0xF0 == 0x90 and b > 0:
            open_[a] = (t, b)
        elif status & 0xF0 in (0x80, 0x90):
            start, vel = open_.pop(a)
            piano.notes.append(pretty_midi.Note(vel, a, start, t))
        else:
            piano.control_changes.append(pretty_midi.ControlChange(a, b, t))
    pm.instruments.append(piano)
    return encode(midi_bytes(pm))


@pytest.fixture()
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the Playwright Python package is not installed"
    )
    chromium = _chromium()
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _page(browser, app_url, *, midi: bool):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    if midi:
        page.add_init_script(FAKE_MIDI_JS)
    page.goto(app_url, wait_until="load")
    page.wait_for_selector("#play-keys .pm-key")
    return page


def _piece_ids(page) -> np.ndarray:
    """The prime as the page offers it for download (#prime-midi), encoded."""
    from perceiver_midi.tokenizer import encode

    links = page.eval_on_selector_all("#prime-midi a[download]", "els => els.map(a => a.href)")
    assert len(links) == 1, links
    data = page.request.get(links[0]).body()
    assert data[:4] == b"MThd"
    return encode(data)


def test_the_page_says_when_there_is_no_midi_and_the_keys_still_play(browser, app_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.add_init_script("delete Navigator.prototype.requestMIDIAccess;")
    page.goto(app_url, wait_until="load")
    _wait_text(page, "#play-midi-status", "no Web MIDI")
    page.click("#play-record")
    key = page.locator("#play-keys [data-pitch='60']")
    key.click()
    _wait_text(page, "#play-take", "Recording: 1 note")
    page.close()


def test_a_phrase_played_on_the_screen_keys_becomes_the_prime(browser, app_url):
    from perceiver_midi.tokenizer import decode_notes

    page = _page(browser, app_url, midi=False)
    page.click("#play-record")
    for pitch in (60, 62, 64, 65, 67):  # C D E F G, each held ~150 ms, 100 ms apart
        key = page.locator(f"#play-keys [data-pitch='{pitch}']")
        box = key.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.9)
        page.mouse.down()
        page.wait_for_timeout(150)
        page.mouse.up()
        page.wait_for_timeout(100)
    _wait_text(page, "#play-take", "Recording: 5 notes")
    page.click("#play-stop")
    _wait_text(page, "#prime-info", "recording (played)")
    notes = decode_notes(_piece_ids(page))
    assert [n.pitch for n in notes] == [60, 62, 64, 65, 67]
    starts = np.array([n.start for n in notes])
    durations = np.array([n.end - n.start for n in notes])
    assert starts[0] == 0.0 and np.all(np.diff(starts) > 0.15), starts  # in order, ~250 ms apart
    assert np.all((durations > 0.05) & (durations < 1.0)), durations
    assert all(n.velocity > 90 for n in notes)  # struck low on the key: loud
    page.wait_for_selector("#prime-roll img")

    # Generate from the played prime gives a result, as from an upload.
    page.locator("#length input[type=number]").first.fill("2")
    page.locator("#length input[type=number]").first.press("Enter")
    page.click("#generate")
    _wait_text(page, "#status", "Done")
    assert "Variation 1" in page.inner_text("#result-1-header")
    page.close()


def test_the_computer_keyboard_plays_keys_octaves_and_the_pedal(browser, app_url):
    from perceiver_midi.tokenizer import decode_notes

    page = _page(browser, app_url, midi=False)
    page.click("#play-record")  # focuses the keyboard panel
    kb = page.keyboard
    for key in ("a", "z", "g"):  # C4; octave down; G3
        if key == "z":
            kb.press(key)
            continue
        kb.down(key)
        page.wait_for_timeout(120)
        kb.up(key)
        page.wait_for_timeout(80)
    kb.down(" ")  # the pedal holds E3 until it is released
    kb.down("d")
    page.wait_for_timeout(100)
    kb.up("d")
    page.wait_for_timeout(400)
    kb.up(" ")
    _wait_text(page, "#play-take", "Recording: 3 notes")
    page.click("#play-stop")
    _wait_text(page, "#prime-info", "recording (played)")
    notes = decode_notes(_piece_ids(page))
    assert [n.pitch for n in notes] == [60, 55, 52]
    assert all(n.velocity == 77 for n in notes)  # velocity 80, the lowest of its bin
    held = notes[-1].end - notes[-1].start
    assert held >= 0.45, held  # to the pedal's release, not the key's (0.1 s)
    page.close()


def test_a_key_held_when_focus_leaves_the_panel_is_released_and_clear_drops_a_take(
    browser, app_url
):
    from perceiver_midi.tokenizer import decode_notes

    page = _page(browser, app_url, midi=False)
    page.click("#play-record")
    page.keyboard.press("s")  # D4: a take that Clear throws away
    _wait_text(page, "#play-take", "Recording: 1 note")
    page.click("#play-clear")
    _wait_text(page, "#play-take", "Cleared")
    page.click("#play-record")
    page.keyboard.down("a")  # C4, still held when the focus leaves the panel
    page.wait_for_timeout(300)
    page.click("#prime-info")
    assert page.evaluate("window.perceiverMidiPlay.down.size") == 0  # released, not stuck
    page.keyboard.up("a")  # arrives elsewhere: no second note-off, no error
    page.click("#play-stop")
    _wait_text(page, "#prime-info", "recording (played)")
    notes = decode_notes(_piece_ids(page))
    assert [n.pitch for n in notes] == [60]  # the cleared D4 is not in the prime
    assert 0.2 <= notes[0].end - notes[0].start < 2.0
    page.close()


def test_a_midi_keyboard_take_is_the_prime_exactly(browser, app_url):
    page = _page(browser, app_url, midi=True)
    _wait_text(page, "#play-midi-status", "MIDI keyboard: Fake Keys")
    page.click("#play-record")
    for data, ms in PHRASE:
        page.evaluate("([d, ms]) => window.fakeMidi.send(d, ms)", [data, ms])
    page.evaluate("() => window.fakeMidi.send([0xB0, 1, 64], 1600)")  # modulation: ignored
    _wait_text(page, "#play-take", "Recording: 3 notes")
    page.click("#play-stop")
    _wait_text(page, "#prime-info", "recording (played)")
    ids = _piece_ids(page)
    np.testing.assert_array_equal(ids, _expected_ids(PHRASE))
    page.close()


def test_call_and_response_answers_and_the_piece_grows(browser, app_url):
    from perceiver_midi.app.web.played import append_part
    from perceiver_midi.tokenizer import decode_notes

    page = _page(browser, app_url, midi=True)
    _wait_text(page, "#play-midi-status", "MIDI keyboard: Fake Keys")
    page.click("#nothing")
    _wait_text(page, "#prime-info", "Nothing")
    page.get_by_label("Random seed").uncheck()
    box = page.locator("#length input[type=number]").first
    box.fill("2")
    box.press("Enter")
    page.fill("#play-pause", "0.5")
    page.check("#play-cr")
    _wait_text(page, "#play-cr-status", "Listening")

    for data, ms in PHRASE:
        page.evaluate("([d, ms]) => window.fakeMidi.send(d, ms)", [data, ms])
    # The pause: the answer comes without anything else being done.
    page.wait_for_function("() => window.perceiverMidiPlay.answers >= 1")
    _wait_text(page, "#answer-status", "Answer 1")
    _wait_text(page, "#prime-info", "continued 1x")
    first = _piece_ids(page)
    played = _expected_ids(PHRASE)
    np.testing.assert_array_equal(first[: played.size], played)  # the phrase, then the answer
    assert first.size > played.size
    assert len(page.evaluate("window.perceiverMidiPlay.latencies")) == 1

    # A second phrase is appended after the answer (and the answer after it).
    page.evaluate("() => window.fakeMidi.restart()")
    second = [([0x90, 72, 90], 0), ([0x80, 72, 0], 300)]
    for data, ms in second:
        page.evaluate("([d, ms]) => window.fakeMidi.send(d, ms)", [data, ms])
    page.wait_for_function("() => window.perceiverMidiPlay.answers >= 2")
    _wait_text(page, "#prime-info", "continued 2x")
    piece = _piece_ids(page)
    notes = decode_notes(piece)
    first_notes = decode_notes(first)
    assert notes[: len(first_notes)] == first_notes  # what was there stays
    gap_s = page.evaluate("window.perceiverMidiPlay.gaps[1]")
    phrase2 = append_part(first, _expected_ids(second), gap_s)
    assert decode_notes(phrase2) == notes[: len(decode_notes(phrase2))]
    later = [n for n in notes[len(first_notes) :] if n.pitch == 72 and n.velocity >= 89]
    assert later and later[0].start >= max(n.end for n in first_notes) - 1e-6

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.querySelector('#play-panel').scrollIntoView({block: 'start'})")
    page.screenshot(path=str(ARTIFACTS / "play.png"), full_page=False)
    page.close()


def test_bad_takes_are_refused_in_one_line():
    from perceiver_midi.app.core.errors import UserError
    from perceiver_midi.app.web.played import MAX_PLAYED_MESSAGES, played_ids

    cases = [
        ("not a list", "not a list of MIDI messages"),
        ([[0, 0x90, 60]], "is not [time_ms, status, data1, data2]"),
        ([[0, 0x90, 60, 200]], "is not a MIDI message"),
        ([[-5, 0x90, 60, 100]], "outside the take"),
        ([[float("nan"), 0x90, 60, 100]], "outside the take"),
        ([[0, "x", 60, 100]], "not a number"),
        ([[0, 0xB0, 64, 127]], "has no notes"),
        ([[0, 0x90, 60, 100]] * (MAX_PLAYED_MESSAGES + 1), "over the 20,000 limit"),
    ]
    for messages, why in cases:
        with pytest.raises(UserError, match=re.escape(why)) as info:
            played_ids(messages)
        assert "\n" not in str(info.value)


# -- without a browser: the messages -> notes table, the piece, the composer -------------------


@pytest.mark.parametrize(
    "messages, notes, pedal",
    [
        # note-on / note-off, in time order whatever the order sent
        ([[500, 0x80, 60, 0], [0, 0x90, 60, 100]], [(60, 100, 0.0, 0.5)], []),
        # note-on with velocity 0 ends the note; any channel counts
        ([[0, 0x93, 62, 50], [250, 0x93, 62, 0]], [(62, 50, 0.0, 0.25)], []),
        # a key struck again while it sounds: the first note ends there
        (
            [[0, 0x90, 64, 90], [300, 0x90, 64, 70], [600, 0x80, 64, 0]],
            [(64, 90, 0.0, 0.3), (64, 70, 0.3, 0.6)],
            [],
        ),
        # a note still held ends at the take's last message; other controllers are ignored
        (
            [[0, 0x90, 67, 80], [100, 0xB0, 64, 127], [400, 0xB0, 1, 30], [900, 0xB0, 64, 0]],
            [(67, 80, 0.0, 0.9)],
            [(0.1, 127), (0.9, 0)],
        ),
        # a note-off with nothing sounding, pitch bend: ignored
        ([[0, 0x80, 70, 0], [10, 0xE0, 0, 64], [20, 0x90, 70, 1], [30, 0x80, 70, 0]],
         [(70, 1, 0.02, 0.03)], []),
    ],
)  # fmt: skip
def test_recorded_messages_become_notes_and_pedal(messages, notes, pedal):
    from perceiver_midi.app.web.played import parse_messages

    got_notes, got_pedal = parse_messages(messages)
    assert [(n.pitch, n.velocity, n.start, n.end) for n in got_notes] == notes
    assert got_pedal == pedal


def test_a_take_is_encoded_as_the_same_performance_in_a_file():
    from perceiver_midi.app.web.played import played_ids

    messages = [[ms, *data] for data, ms in PHRASE]
    np.testing.assert_array_equal(played_ids(messages), _expected_ids(PHRASE))


def test_appending_ends_notes_left_sounding_and_bounds_the_gap():
    from perceiver_midi.app.web.played import MAX_GAP_SECONDS, append_part, from_first_note
    from perceiver_midi.tokenizer import constants as C
    from perceiver_midi.tokenizer import decode_notes

    on = lambda p: C.NOTE_ON_FIRST_ID + p  # noqa: E731
    off = lambda p: C.NOTE_OFF_FIRST_ID + p  # noqa: E731
    shift = lambda steps: C.TIME_SHIFT_FIRST_ID + steps - 1  # noqa: E731
    piece = np.array([on(60), shift(50), on(64)], np.int32)  # 64 still sounds at 0.5 s
    part = np.array([on(72), shift(20), off(72)], np.int32)
    both = decode_notes(append_part(piece, part, 0.25))
    assert [(n.pitch, n.start, n.end) for n in both] == [
        (60, 0.0, 0.5),  # ended where the piece ends
        (72, 0.75, 0.95),  # after the gap
    ]  # note 64 started at the piece's very end: zero length, dropped
    far = decode_notes(append_part(piece, part, 60.0))
    assert far[-1].start == pytest.approx(0.5 + MAX_GAP_SECONDS)
    np.testing.assert_array_equal(append_part(piece[:0], part, 1.0), part)  # nothing + part
    late = [shift(100), on(50), off(50), shift(30), C.VELOCITY_FIRST_ID + 9, on(60), shift(5)]
    assert [(n.pitch, n.start, n.end) for n in decode_notes(from_first_note(late))] == [
        (60, 0.0, 0.05)  # the zero-length note 50 never sounds: the answer starts at 60
    ]
    assert from_first_note([shift(3), on(60), off(60)]).size == 0


def test_respond_appends_phrase_and_answer_and_undo_steps_back(tiny_model, tmp_path):
    import soundfile

    from perceiver_midi.app.core.errors import UserError
    from perceiver_midi.app.web.handlers import Composer, GenerateRequest
    from perceiver_midi.tokenizer import decode_notes

    composer = Composer(tiny_model, root=tmp_path)
    s = composer.new_session()
    composer.load_played(s, [[ms, *data] for data, ms in PHRASE])
    base = s.prime
    assert (base.name, base.origin) == ("recording", "played")
    req = GenerateRequest(seconds=2.0, seed=3, stop_at_eos=False)
    answer = composer.respond(s, [[0, 0x90, 72, 90], [300, 0x80, 72, 0]], req, 0.5)
    assert len(s.history) == 4  # nothing, the take, + the phrase, + the answer
    called, answered = s.history[2], s.history[3]
    assert called.ids.size < answered.ids.size
    np.testing.assert_array_equal(answered.ids[: called.ids.size], called.ids)
    last = decode_notes(called.ids)[-1]
    assert (last.pitch, last.start) == (72, pytest.approx(1.5 + 0.5))  # after the take + gap
    assert answered.describe().startswith("**recording** (continued 1x)")
    assert answered.answers == ((called.seconds, answered.seconds),)  # drawn as the model's
    assert answer.seed == 3 and answer.status.startswith("Answer 1:")
    if answer.audio is not None:
        audio, rate = soundfile.read(answer.audio)
        assert rate == 48000 and np.abs(audio[: rate // 10]).max() > 0  # sound at once
    again = composer.respond(s, [[0, 0x90, 72, 90], [300, 0x80, 72, 0]], req, 0.5)
    assert again.seed == 3 and len(s.history) == 6

    with pytest.raises(UserError, match="no notes"):  # a bad phrase changes nothing
        composer.respond(s, [[0, 0xB0, 64, 127]], req)
    assert len(s.history) == 6
    composer.undo(s)
    composer.undo(s)
    assert s.prime is answered
