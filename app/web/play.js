// The "Play" panel of the web app: record a prime from a MIDI keyboard (Web MIDI) or the
// on-screen keys, and call and response. Plain JavaScript, run by gr.HTML's js_on_load
// (`element`: the panel's root, `trigger(event, data)`: sends an event to the server).
// No build step, no network: what is played goes to the app's own server only, as MIDI
// messages [t_ms, status, data1, data2] (t_ms from the first message); app/web/played.py reads them.
//
// trigger('submit', {messages})                 a take, to become the prime (Stop)
// trigger('change', {messages, gap_seconds})    call and response: a phrase, after the pause
// window.perceiverMidiPlay                      the panel's state (tests and benchmarks read it)
// window.perceiverMidiPlayAnswer(file)          called by the app with the answer's audio

const root = element.querySelector('.pm-play');
const q = (sel) => root.querySelector(sel);
const LOW = 48; // C3: the on-screen keys span C3..C6
const HIGH = 84;
const BLACK = new Set([1, 3, 6, 8, 10]);
// Computer keys -> semitones above C of the current octave (C4 by default), as most DAWs do.
const KEYMAP = { a: 0, w: 1, s: 2, e: 3, d: 4, f: 5, t: 6, g: 7, y: 8, h: 9, u: 10, j: 11,
  k: 12, o: 13, l: 14, p: 15, ';': 16 };
const KEY_VELOCITY = 80; // computer keys have no touch
const MAX_MESSAGES = 20000; // as app/web/played.py's MAX_PLAYED_MESSAGES

const st = {
  recording: false, take: [], takeT0: null, lastTake: [],
  cr: false, phase: 'off', phrase: [], phraseT0: null, phraseStartT: null, lastMsgT: 0,
  answerEndT: null, pauseEndT: null, timer: null,
  down: new Set(), pedal: false, octave: 0, answers: 0, latencies: [], sent: [], gaps: [],
};
window.perceiverMidiPlay = st;

// -- sound: a small WebAudio synth, so the player hears the keys at once ---------------------
let ctx = null;
const voices = new Map(); // pitch -> {osc, gain}
const sustained = new Set(); // released while the pedal is down

function audio() {
  if (ctx === null) {
    const AC = window.AudioContext || window.webkitAudioContext;
    if (!AC) return null;
    ctx = new AC();
  }
  if (ctx.state === 'suspended') ctx.resume();
  return ctx;
}

function voiceOff(pitch) {
  const v = voices.get(pitch);
  if (!v) return;
  voices.delete(pitch);
  const t = ctx.currentTime;
  v.gain.gain.cancelScheduledValues(t);
  v.gain.gain.setTargetAtTime(0, t, 0.06);
  v.osc.stop(t + 0.5);
}

function voiceOn(pitch, velocity) {
  const c = audio();
  if (c === null) return;
  voiceOff(pitch);
  sustained.delete(pitch);
  const osc = c.createOscillator();
  const gain = c.createGain();
  osc.type = 'triangle';
  osc.frequency.value = 440 * Math.pow(2, (pitch - 69) / 12);
  const t = c.currentTime;
  const peak = 0.3 * (velocity / 127);
  gain.gain.setValueAtTime(0, t);
  gain.gain.linearRampToValueAtTime(peak, t + 0.005);
  gain.gain.setTargetAtTime(peak * 0.15, t + 0.005, 0.8); // a piano-like decay
  osc.connect(gain).connect(c.destination);
  osc.start(t);
  voices.set(pitch, { osc, gain });
}

// -- the keys on screen --------------------------------------------------------------------------
const keysEl = q('.pm-keys');
const keyEls = new Map();
const whites = [];
for (let p = LOW; p <= HIGH; p++) if (!BLACK.has(p % 12)) whites.push(p);
const whiteW = 100 / whites.length;
for (let p = LOW; p <= HIGH; p++) {
  const el = document.createElement('div');
  const black = BLACK.has(p % 12);
  el.className = black ? 'pm-key pm-black' : 'pm-key pm-white';
  el.dataset.pitch = String(p);
  if (black) {
    const left = whites.indexOf(p - 1) + 1;
    el.style.left = `calc(${left * whiteW}% - ${whiteW * 0.3}%)`;
    el.style.width = `${whiteW * 0.6}%`;
  } else {
    el.style.left = `${whites.indexOf(p) * whiteW}%`;
    el.style.width = `${whiteW}%`;
    if (p % 12 === 0) el.textContent = `C${p / 12 - 1}`;
  }
  keysEl.appendChild(el);
  keyEls.set(p, el);
}

function mark(pitch, on) {
  const el = keyEls.get(pitch);
  if (el) el.classList.toggle('pm-down', on);
}

// -- every message, whatever played it ------------------------------------------------------------
const isNoteOn = (m) => (m[1] & 0xf0) === 0x90 && m[3] > 0; // m: [t, status, d1, d2]
const hasNote = (messages) => messages.some(isNoteOn);

function onMessage(status, d1, d2, t) {
  const kind = status & 0xf0;
  if (kind === 0x90 && d2 > 0) {
    st.down.add(d1);
    voiceOn(d1, d2);
    mark(d1, true);
  } else if (kind === 0x80 || kind === 0x90) {
    st.down.delete(d1);
    mark(d1, false);
    if (st.pedal) sustained.add(d1);
    else voiceOff(d1);
  } else if (kind === 0xb0 && d1 === 64) {
    st.pedal = d2 >= 64;
    if (!st.pedal) {
      sustained.forEach((p) => { if (!st.down.has(p)) voiceOff(p); });
      sustained.clear();
    }
  } else {
    return; // clock, other controllers, pitch bend...: not recorded
  }
  if (st.recording && st.take.length < MAX_MESSAGES) {
    if (st.takeT0 === null) st.takeT0 = t;
    st.take.push([Math.round(t - st.takeT0), status, d1, d2]);
    showTake();
  }
  if (st.cr && st.phrase.length < MAX_MESSAGES) {
    if (st.phraseT0 === null) {
      st.phraseT0 = t;
      st.phraseStartT = t;
    }
    st.phrase.push([Math.round(t - st.phraseT0), status, d1, d2]);
    st.lastMsgT = t;
    schedule();
  }
}

// On-screen keys: mouse or touch; the lower on the key, the louder (velocity 30..127).
const pointers = new Map(); // pointerId -> pitch
keysEl.addEventListener('pointerdown', (ev) => {
  const el = ev.target.closest('.pm-key');
  if (!el) return;
  ev.preventDefault();
  root.focus();
  const rect = el.getBoundingClientRect();
  const depth = Math.min(1, Math.max(0, (ev.clientY - rect.top) / rect.height));
  const pitch = Number(el.dataset.pitch);
  pointers.set(ev.pointerId, pitch);
  onMessage(0x90, pitch, Math.round(30 + 97 * depth), performance.now());
});
const pointerUp = (ev) => {
  const pitch = pointers.get(ev.pointerId);
  if (pitch === undefined) return;
  pointers.delete(ev.pointerId);
  onMessage(0x80, pitch, 0, performance.now());
};
['pointerup', 'pointercancel', 'pointerleave'].forEach((e) => keysEl.addEventListener(e, pointerUp));

// Computer keys, while the panel has the focus (so typing in a text box plays nothing).
const held = new Map(); // key -> pitch
let spacePedal = false; // the pedal is down because Space is
root.addEventListener('keydown', (ev) => {
  if (ev.target.closest('input, textarea, select') || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key.toLowerCase();
  if (key === ' ') {
    ev.preventDefault();
    if (!ev.repeat && !st.pedal) {
      spacePedal = true;
      onMessage(0xb0, 64, 127, performance.now());
    }
  } else if (key === 'z' || key === 'x') {
    st.octave = Math.max(-3, Math.min(3, st.octave + (key === 'z' ? -1 : 1)));
    q('.pm-octave').textContent = `C${4 + st.octave}`;
  } else if (key in KEYMAP) {
    ev.preventDefault();
    if (ev.repeat || held.has(key)) return;
    const pitch = 60 + 12 * st.octave + KEYMAP[key];
    held.set(key, pitch);
    onMessage(0x90, pitch, KEY_VELOCITY, performance.now());
  }
});
root.addEventListener('keyup', (ev) => {
  const key = ev.key.toLowerCase();
  if (key === ' ') {
    ev.preventDefault();
    if (spacePedal) onMessage(0xb0, 64, 0, performance.now());
    spacePedal = false;
  } else if (held.has(key)) {
    onMessage(0x80, held.get(key), 0, performance.now());
    held.delete(key);
  }
});

// Focus leaving the panel: keys held on the computer keyboard never get their keyup here.
root.addEventListener('focusout', (ev) => {
  if (root.contains(ev.relatedTarget)) return;
  const t = performance.now();
  held.forEach((pitch) => onMessage(0x80, pitch, 0, t));
  held.clear();
  if (spacePedal) onMessage(0xb0, 64, 0, t); // a MIDI keyboard's pedal is its own
  spacePedal = false;
});

// -- a MIDI keyboard: Web MIDI ---------------------------------------------------------------------
const midiStatus = q('.pm-midi');
function connectMidi() {
  if (!navigator.requestMIDIAccess) {
    midiStatus.textContent = 'This browser has no Web MIDI (Chrome, Edge and Opera have it): '
      + 'use the on-screen keys.';
    return;
  }
  navigator.requestMIDIAccess().then((access) => {
    const attach = () => {
      const names = [];
      access.inputs.forEach((input) => {
        input.onmidimessage = (ev) => {
          const d = ev.data;
          if (!d || d.length < 2 || d[0] >= 0xf0) return;
          onMessage(d[0], d[1], d.length > 2 ? d[2] : 0, ev.timeStamp || performance.now());
        };
        names.push(input.name || 'MIDI input');
      });
      midiStatus.textContent = names.length
        ? `MIDI keyboard: ${names.join(', ')}.`
        : 'No MIDI keyboard is connected: use the on-screen keys (one plugged in later is found).';
    };
    attach();
    access.onstatechange = attach;
  }, (err) => {
    midiStatus.textContent = `MIDI is not available here (${(err && err.name) || 'refused'}): `
      + 'use the on-screen keys.';
  });
}
connectMidi();

// -- record / stop / clear / play back -----------------------------------------------------------
const takeEl = q('.pm-take');
function showTake(text) {
  if (text !== undefined) { takeEl.textContent = text; return; }
  const notes = st.take.filter(isNoteOn).length;
  const secs = st.take.length ? st.take[st.take.length - 1][0] / 1000 : 0;
  takeEl.textContent = `Recording: ${notes} note${notes === 1 ? '' : 's'}, ${secs.toFixed(1)} s`;
}
function buttons() {
  q('[data-act=record]').disabled = st.recording;
  q('[data-act=stop]').disabled = !st.recording;
  q('[data-act=clear]').disabled = !st.recording && st.take.length === 0;
  q('[data-act=playback]').disabled = st.lastTake.length === 0;
}
function releaseHeld() { // keys still down when a take ends are released there
  const t = performance.now();
  Array.from(st.down).forEach((p) => onMessage(0x80, p, 0, t));
}
q('[data-act=record]').addEventListener('click', () => {
  audio();
  st.recording = true;
  st.take = [];
  st.takeT0 = null;
  showTake('Recording: play (nothing yet)');
  buttons();
  root.focus();
});
q('[data-act=stop]').addEventListener('click', () => {
  releaseHeld();
  st.recording = false;
  const take = st.take;
  st.take = [];
  if (hasNote(take)) {
    st.lastTake = take;
    showTake(`Sent ${take.filter(isNoteOn).length} notes: `
      + 'the prime shows them.');
    st.sent.push(take);
    trigger('submit', { messages: take });
  } else {
    showTake('Nothing was played: the prime is unchanged.');
  }
  buttons();
});
q('[data-act=clear]').addEventListener('click', () => {
  st.recording = false;
  st.take = [];
  showTake('Cleared: the take was thrown away (the prime is unchanged).');
  buttons();
});
q('[data-act=playback]').addEventListener('click', () => {
  audio();
  const start = performance.now();
  st.lastTake.forEach(([t, s, a, b]) => setTimeout(() => {
    const kind = s & 0xf0;
    if (kind === 0x90 && b > 0) { voiceOn(a, b); mark(a, true); }
    else if (kind === 0x80 || kind === 0x90) { voiceOff(a); mark(a, false); }
  }, Math.max(0, t - (performance.now() - start))));
});

// -- call and response ----------------------------------------------------------------------------
const crStatus = q('.pm-cr-status');
function pauseMs() {
  const v = Number(q('.pm-pause').value);
  return 1000 * (Number.isFinite(v) ? Math.min(10, Math.max(0.3, v)) : 1.5);
}
function schedule() {
  clearTimeout(st.timer);
  if (!st.cr || st.phase !== 'listening' || st.down.size || !hasNote(st.phrase)) return;
  st.timer = setTimeout(send, Math.max(0, pauseMs() - (performance.now() - st.lastMsgT)));
}
function send() {
  if (!st.cr || st.phase !== 'listening' || st.down.size || !hasNote(st.phrase)) return;
  const messages = st.phrase;
  const gap = st.answerEndT === null ? 0 : Math.max(0, (st.phraseStartT - st.answerEndT) / 1000);
  st.phrase = [];
  st.phraseT0 = null;
  st.phase = 'answering';
  st.pauseEndT = performance.now();
  st.sent.push(messages);
  st.gaps.push(gap);
  crStatus.textContent = 'Answering...';
  trigger('change', { messages, gap_seconds: gap });
}
function listen(text) {
  st.phase = st.cr ? 'listening' : 'off';
  crStatus.textContent = st.cr ? (text || 'Listening: play a phrase, then pause.') : '';
  schedule();
}
window.perceiverMidiPlayAnswer = (file) => {
  if (!st.cr) return;
  if (!file || !file.url) {
    st.pauseEndT = null;
    listen('No answer this time (see the message): play again.');
    return;
  }
  const player = new Audio(file.url);
  st.player = player;
  let finished = false;
  const done = () => {
    if (finished) return;
    finished = true;
    st.answerEndT = performance.now();
    st.answers += 1;
    listen();
  };
  player.addEventListener('playing', () => {
    if (st.pauseEndT !== null) st.latencies.push(performance.now() - st.pauseEndT);
    st.pauseEndT = null;
    st.phase = 'playing';
    crStatus.textContent = 'Playing the answer...';
  }, { once: true });
  player.addEventListener('ended', done);
  player.addEventListener('error', done);
  player.play().catch(done);
};
q('.pm-cr').addEventListener('change', (ev) => {
  st.cr = ev.target.checked;
  st.phrase = [];
  st.phraseT0 = null;
  st.answerEndT = null;
  clearTimeout(st.timer);
  if (st.player) st.player.pause();
  audio();
  listen();
  root.focus();
});
buttons();
