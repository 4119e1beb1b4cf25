"""A fake Web MIDI keyboard for the browser tests and ``benchmarks/app.py``: a script added to a
page before it loads (Playwright's ``add_init_script``) that replaces
``navigator.requestMIDIAccess`` with one input, "Fake Keys". ``window.fakeMidi.send(bytes, ms)``
emits a message whose ``timeStamp`` (the ``performance.now()`` clock, as a real input's) is the
time of the first message since ``restart()`` plus ``ms``: a phrase sent at once arrives with
the timing it was written with.
"""

FAKE_MIDI_JS = """
(() => {
  const input = { id: 'fake-1', name: 'Fake Keys', type: 'input', state: 'connected',
                  onmidimessage: null };
  const inputs = new Map([['fake-1', input]]);
  let t0 = null;
  window.fakeMidi = {
    send(bytes, ms) {
      if (t0 === null) t0 = performance.now();
      const ev = { data: new Uint8Array(bytes), timeStamp: t0 + ms };
      if (input.onmidimessage) input.onmidimessage(ev);
    },
    play(messages) {  // [[ms, status, data1, data2], ...]
      messages.forEach(([ms, s, a, b]) => window.fakeMidi.send([s, a, b], ms));
    },
    restart() { t0 = null; },
  };
  navigator.requestMIDIAccess = () => Promise.resolve(
    { inputs, outputs: new Map(), onstatechange: null, sysexEnabled: false });
})();
"""


def messages_from_notes(notes) -> list[list[int]]:
    """``tokenizer.Note``s -> ``[[ms, status, pitch, velocity], ...]`` (note-on, note-off)."""
    out = []
    for n in notes:
        out.append([round(n.start * 1000), 0x90, n.pitch, n.velocity])
        out.append([round(n.end * 1000), 0x80, n.pitch, 0])
    return sorted(out, key=lambda m: m[0])
