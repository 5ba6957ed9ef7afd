// Live tagging from the microphone: raw PCM over the /v1/tag/stream WebSocket (server/blat_gateway/api/live.py, the
// same windows and scores as gRPC's StreamTag), the tags of each window shown as they arrive. When stopped, the
// recording becomes "your clip": tagged, captioned and searched like a dropped file. Uses app.js's helpers.
"use strict";

const LIVE = { window_s: 2, hop_s: 1, top_k: 5 };  // StreamTag's defaults
const SEND_EVERY_S = 0.25;  // audio per WebSocket message
let live = null;  // the running session, if any

// A browser's WebSocket cannot send headers: the key travels as the subprotocol bearer.<base64url(key)>.
function keyProtocol(key) {
  const bytes = new TextEncoder().encode(key);
  return "bearer." + btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function liveStatus(text) { $("live-status").textContent = text; }

function liveButton(running) {
  const b = $("mic-button");
  b.setAttribute("aria-pressed", String(running));
  b.textContent = running ? "■ Stop live tagging" : "● Tag live from the microphone";
}

async function startLive() {
  clearError("live-error");
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  // At the microphone's own rate where it says one: the browser does not resample (the gateway does, once).
  const micRate = media.getAudioTracks()[0].getSettings().sampleRate;
  const ctx = micRate ? new AudioContext({ sampleRate: micRate }) : new AudioContext();
  const s = { media, ctx, rate: ctx.sampleRate, kept: [], keptN: 0, pending: [], pendingN: 0, windows: 0 };
  s.keepMax = Math.round((serverLimits.max_audio_seconds || 30) * s.rate);  // the clip analysed when stopped
  live = s;
  try {
    await ctx.audioWorklet.addModule("/web/mic-worklet.js");
    s.node = new AudioWorkletNode(ctx, "blat-capture");
    s.ws = await openSocket(s);
  } catch (err) {
    closeAudio(s);
    live = null;
    throw err;
  }
  s.ws.send(JSON.stringify({ encoding: "f32le", sample_rate: s.rate, ...LIVE }));
  s.node.port.onmessage = (e) => onSamples(s, e.data);
  // The worklet is pulled only on a path to the speakers: through a silent gain, so nothing is played back.
  const mute = ctx.createGain();
  mute.gain.value = 0;
  ctx.createMediaStreamSource(media).connect(s.node).connect(mute).connect(ctx.destination);
  $("live-output").replaceChildren();
  $("live-block").hidden = false;
  liveButton(true);
  liveStatus(`listening (${(s.rate / 1000).toFixed(1)} kHz); tags every ${LIVE.hop_s} s`);
}

function openSocket(s) {
  const protocols = ["blat.tag.v1", ...(apiKey() ? [keyProtocol(apiKey())] : [])];
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/tag/stream",
                           protocols);
  ws.binaryType = "arraybuffer";
  return new Promise((resolve, reject) => {
    ws.onopen = () => {
      ws.onmessage = (e) => onLiveMessage(s, JSON.parse(e.data));
      ws.onclose = (e) => onLiveClosed(s, e);
      resolve(ws);
    };
    // A refused handshake tells the page no status: say what it can be.
    ws.onerror = () => reject(new Error("live tagging was refused: a missing or wrong API key, or every stream " +
                                        "place (limits.max_streams) is taken; try again shortly"));
  });
}

function onSamples(s, block) {
  if (block === null) {  // the worklet's last samples came: send them, then the end
    sendPending(s);
    if (s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify({ end: true }));
    return;
  }
  if (s.keptN < s.keepMax) {
    const part = block.subarray(0, s.keepMax - s.keptN);
    s.kept.push(part);
    s.keptN += part.length;
  }
  s.pending.push(block);
  s.pendingN += block.length;
  if (s.pendingN >= SEND_EVERY_S * s.rate) sendPending(s);
}

function sendPending(s) {
  if (!s.pendingN || s.ws.readyState !== WebSocket.OPEN) return;
  s.ws.send(concat(s.pending, s.pendingN).buffer);
  s.pending = [];
  s.pendingN = 0;
}

function concat(blocks, n) {
  const out = new Float32Array(n);
  let at = 0;
  for (const b of blocks) { out.set(b, at); at += b.length; }
  return out;
}

function onLiveMessage(s, m) {
  if (m.error) { showError(new Error(`${m.error.code}: ${m.error.message}`), "live-error"); return; }
  if (m.end) return;  // the close follows
  s.windows++;
  const tags = el("td", {});
  for (const t of m.tags) {
    tags.append(el("span", { class: "tag", "data-label": t.label, "data-score": String(t.score) },
                   `${t.label} ${t.score.toFixed(2)}`));
  }
  const row = el("tr", { "data-testid": "live-window", "data-start": String(m.start_s), "data-end": String(m.end_s) },
                 el("td", { class: "num" }, `${m.start_s.toFixed(1)}–${m.end_s.toFixed(1)} s`), tags);
  $("live-output").prepend(row);  // the newest on top
}

function closeAudio(s) {
  for (const track of s.media.getTracks()) track.stop();
  s.ctx.close();
}

function onLiveClosed(s, e) {
  closeAudio(s);
  if (live === s) live = null;
  liveButton(false);
  if (e.code !== 1000 && $("live-error").hidden) {
    showError(new Error(`the live tagging stream closed (${e.code} ${e.reason})`), "live-error");
  }
  liveStatus(`${s.windows} window(s) tagged`);
  if (s.keptN) {  // the recording, as a clip: tagged over time, captioned, searched
    const wav = floatWav(concat(s.kept, s.keptN), s.rate);
    const file = new File([wav], "recording.wav", { type: "audio/wav" });
    file.recorded = true;
    run(() => analyse(file), "clip-error", $("clip-panel"));
  }
}

function stopLive() {
  if (!live) return;
  liveStatus("finishing…");
  live.node.port.postMessage("flush");  // answered with the last samples, then null (onSamples)
}

// A mono 32-bit float WAV of these samples.
function floatWav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 4));
  const text = (at, s) => { for (let i = 0; i < s.length; i++) view.setUint8(at + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 4, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 3, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 4, true); view.setUint16(32, 4, true);
  view.setUint16(34, 32, true); text(36, "data"); view.setUint32(40, samples.length * 4, true);
  for (let i = 0; i < samples.length; i++) view.setFloat32(44 + i * 4, samples[i], true);
  return view.buffer;
}

function setupLive() {
  const button = $("mic-button");
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {  // only on https:// or localhost
    button.disabled = true;
    liveStatus("the microphone needs this page over HTTPS (or on localhost)");
    return;
  }
  button.addEventListener("click", () => {
    if (live) stopLive();
    else run(startLive, "live-error", $("clip-panel"));
  });
}

document.addEventListener("DOMContentLoaded", setupLive);
