// The conversation page (/c/{conversation_id}#token=...): joins the conversation over WebRTC. The offer
// carries the microphone (sendrecv audio: the replica's voice comes back on it), the camera (sendrecv video,
// or recvonly without one: the replica's face comes back on it) and the `events` data channel; ICE is not
// trickled, so the offer goes out once gathering is complete. window.duet exposes the call's state and,
// with ?measure=1, audio levels and mouth motion for the browser tests and benchmarks.

import { request, ApiError } from "./api.js";
import { Captions } from "./captions.js";
import { DebugPanel } from "./debug.js";
import { Levels, MouthMotion } from "./measure.js";

const ICE_WAIT_MS = 3000; // gathering cap: host candidates on loopback/LAN come in milliseconds
const END_WAIT_MS = 3000; // how long End call waits for session_ended before closing
const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ui = {
  state: $("state"),
  tokenForm: $("token-form"),
  tokenInput: $("token-input"),
  join: $("join"),
  mute: $("mute"),
  camera: $("camera"),
  end: $("end"),
  debugToggle: $("debug-toggle"),
  playAudio: $("play-audio"),
  video: $("replica-video"),
  placeholder: $("replica-placeholder"),
  self: $("self-view"),
  audio: $("replica-audio"),
  debug: $("debug"),
};

const conversationId = (() => {
  const m = location.pathname.match(/\/c\/([^/]+)\/?$/);
  return m ? decodeURIComponent(m[1]) : params.get("conversation");
})();

const duet = {
  state: "idle", // idle | connecting | live | ended
  endReason: null, // "hangup", "<code>: <message>" of a fatal error or a refused join, a shutdown reason, ...
  events: [], // every event received, in order, each with _at = performance.now() at arrival
  levels: { mic: [], replica: [] }, // [ms, rms] every 10 ms (?measure=1)
  frames: [], // [presentation ms, mouth-box luminance change] per replica frame (?measure=1)
  latencies: [], // {reply_id, t, response_ms, from_speculation, latency} per replica turn
  measure: params.get("measure") === "1",
  mouthBox: [0.35, 0.55, 0.3, 0.2], // x, y, w, h as fractions of the frame
  conversationId,
  pc: null,
  send,
  hangup,
  join,
};
window.duet = duet;

const captions = new Captions($("captions"));
const debug = new DebugPanel(ui.debug);

let token = tokenFromHash();
let call = null; // the current attempt: {pc, dc, local, mic, cam, levels, motion, ...}

function tokenFromHash() {
  const t = new URLSearchParams(location.hash.slice(1)).get("token");
  return t ? t.trim() : "";
}

// ---- state line and controls ----------------------------------------------------------------------------

const REASONS = {
  hangup: "you hung up",
  connection_lost: "the connection was lost",
  connection_closed: "the server closed the connection",
  participant_left: "you left",
  max_duration: "the call reached its time limit",
  ended_by_api: "ended by the host",
};

function render() {
  const s = duet.state;
  let text;
  if (s === "idle") text = !conversationId ? "No conversation in this link" : token ? "Ready to join" : "A join token is needed";
  else if (s === "connecting") text = "Connecting…";
  else if (s === "live") text = call && call.ending ? "Live — ending…" : call && call.unstable ? "Live — reconnecting…" : "Live";
  else text = `Call ended${duet.endReason ? `: ${REASONS[duet.endReason] || duet.endReason}` : ""}`;
  ui.state.textContent = text;
  ui.state.dataset.state = s;
  const inCall = s === "connecting" || s === "live";
  ui.join.disabled = inCall || !conversationId || (s === "ended" && !(call && call.retry));
  ui.end.disabled = !inCall;
  ui.mute.disabled = !(s === "live" && call && call.mic);
  ui.camera.disabled = !(s === "live" && call && call.cam);
}

function setState(s) {
  duet.state = s;
  render();
}

function showTokenForm() {
  ui.tokenForm.hidden = false;
  ui.tokenInput.focus();
}

ui.tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const t = ui.tokenInput.value.trim();
  if (!t) return;
  token = t;
  // keep it in the fragment (never sent to the server) so a reload still works
  history.replaceState(null, "", `${location.pathname}${location.search}#token=${encodeURIComponent(t)}`);
  ui.tokenForm.hidden = true;
  if (duet.state === "ended") setState("idle");
  else render();
  ui.join.focus();
});

window.addEventListener("hashchange", () => {
  const t = tokenFromHash();
  if (t) {
    token = t;
    ui.tokenForm.hidden = true;
    render();
  }
});

function setDebug(on) {
  ui.debug.hidden = !on;
  ui.debugToggle.setAttribute("aria-expanded", String(on));
}

ui.debugToggle.addEventListener("click", () => setDebug(ui.debug.hidden));
ui.join.addEventListener("click", () => join());
ui.end.addEventListener("click", () => hangup());
ui.mute.addEventListener("click", () => {
  if (!call || !call.mic) return;
  call.mic.enabled = !call.mic.enabled;
  ui.mute.setAttribute("aria-pressed", String(!call.mic.enabled));
});
ui.camera.addEventListener("click", () => {
  if (!call || !call.cam) return;
  call.cam.enabled = !call.cam.enabled;
  ui.camera.setAttribute("aria-pressed", String(!call.cam.enabled));
  ui.self.classList.toggle("off", !call.cam.enabled);
});
ui.playAudio.addEventListener("click", () => {
  playAudio();
  if (call && call.levels) call.levels.ctx.resume().catch(() => {});
});
ui.video.addEventListener("loadeddata", () => {
  ui.placeholder.hidden = true;
});

function playAudio() {
  ui.audio
    .play()
    .then(() => {
      ui.playAudio.hidden = true;
    })
    .catch(() => {
      ui.playAudio.hidden = false; // the autoplay policy wants a click
    });
}

// ---- joining ----------------------------------------------------------------------------------------------

async function join() {
  if (duet.state === "connecting" || duet.state === "live") return;
  if (!conversationId) return;
  if (!token) {
    showTokenForm();
    return;
  }
  const c = { pc: null, dc: null, local: null, mic: null, cam: null, levels: null, motion: null };
  call = c;
  duet.endReason = null;
  setState("connecting");
  // inside the click: the audio context may start (autoplay policy)
  if (duet.measure) {
    try {
      c.levels = new Levels(duet);
    } catch (err) {
      console.warn("duet: audio levels unavailable:", err);
    }
  }
  try {
    const iceServers = await iceConfig(); // first: a wrong token fails before the camera is asked for
    if (call !== c || duet.state !== "connecting") return;
    c.local = await openMedia();
    if (call !== c || duet.state !== "connecting") return void stopMedia(c); // hung up meanwhile
    c.mic = c.local.getAudioTracks()[0];
    c.cam = c.local.getVideoTracks()[0] || null;
    showSelf(c);
    if (c.levels) c.levels.attach(new MediaStream([c.mic]), "mic").catch((err) => console.warn("duet: mic meter:", err));

    const pc = new RTCPeerConnection({ iceServers });
    c.pc = pc;
    duet.pc = pc;
    pc.addTransceiver(c.mic, { direction: "sendrecv", streams: [c.local] });
    if (c.cam) pc.addTransceiver(c.cam, { direction: "sendrecv", streams: [c.local] });
    else pc.addTransceiver("video", { direction: "recvonly" });
    c.dc = pc.createDataChannel("events", { ordered: true }); // before createOffer: it must be in the offer
    wire(c);

    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc, ICE_WAIT_MS);
    if (call !== c || duet.state !== "connecting") return;
    const answer = await request("POST", `/v1/conversations/${encodeURIComponent(conversationId)}/webrtc`, {
      token,
      json: { sdp: pc.localDescription.sdp, type: "offer" },
    });
    if (call !== c || duet.state !== "connecting") return;
    await pc.setRemoteDescription(answer);
  } catch (err) {
    if (call !== c) return;
    if (err instanceof ApiError) {
      // 401 (wrong or expired token) and 503 (server full) may work with another token or later
      c.retry = err.status === 401 || err.status === 503 || err.status === 0;
      if (err.status === 401) showTokenForm();
      finish(`${err.code}: ${err.message}`);
    } else {
      c.retry = true;
      finish(`${err.name === "NotAllowedError" ? "microphone refused" : "could not join"}: ${err.message}`);
    }
  }
}

// The ICE servers the server hands out (TURN for deployments); none: host candidates (loopback, LAN).
async function iceConfig() {
  try {
    const answer = await request("GET", `/v1/conversations/${encodeURIComponent(conversationId)}/webrtc`, { token });
    return Array.isArray(answer && answer.ice_servers) ? answer.ice_servers : [];
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return [];
    throw err;
  }
}

async function openMedia() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("this page cannot use the microphone here (it needs https, or localhost)");
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: AUDIO, video: true });
  } catch (err) {
    // no camera, or the camera refused: join with the microphone only
    console.warn(`duet: no camera (${err.name}); joining with audio only`);
    return await navigator.mediaDevices.getUserMedia({ audio: AUDIO });
  }
}

function showSelf(c) {
  if (c.cam) {
    ui.self.srcObject = new MediaStream([c.cam]);
    ui.self.hidden = false;
    ui.self.play().catch(() => {});
  } else {
    ui.self.hidden = true;
  }
  ui.mute.setAttribute("aria-pressed", "false");
  ui.camera.setAttribute("aria-pressed", "false");
  ui.self.classList.remove("off");
}

function iceGathered(pc, capMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const onCandidate = (e) => {
      if (!e.candidate) done();
    };
    const timer = setTimeout(done, capMs);
    pc.addEventListener("icegatheringstatechange", check);
    pc.addEventListener("icecandidate", onCandidate);
  });
}

function wire(c) {
  const { pc, dc } = c;
  let ended = null;
  c.sessionEnded = new Promise((resolve) => {
    ended = resolve;
  });
  c.lastSpeechEnd = null;

  pc.addEventListener("track", (e) => {
    if (call !== c) return;
    const track = e.track;
    if (track.kind === "audio") {
      ui.audio.srcObject = new MediaStream([track]);
      playAudio();
      if (c.levels) c.levels.attach(new MediaStream([track]), "replica").catch((err) => console.warn("duet: replica meter:", err));
    } else if (track.kind === "video") {
      ui.video.srcObject = new MediaStream([track]);
      ui.video.play().catch(() => {});
      if (duet.measure) {
        c.motion = new MouthMotion(ui.video, duet);
        c.motion.start();
      }
    }
  });

  pc.addEventListener("connectionstatechange", () => {
    if (call !== c) return;
    const s = pc.connectionState;
    c.unstable = s === "disconnected"; // a network drop of a few seconds: the call goes on
    if (s === "failed") finish("connection_lost");
    else render();
  });

  dc.addEventListener("open", () => {
    if (call === c && duet.state === "connecting") setState("live");
  });
  dc.addEventListener("close", () => {
    if (call !== c || duet.state === "ended") return;
    // the server closes after session_ended; without one the connection was lost
    setTimeout(() => call === c && finish(c.ending ? "hangup" : "connection_closed"), 300);
  });
  dc.addEventListener("message", (e) => {
    const at = performance.now();
    let ev;
    try {
      ev = JSON.parse(e.data);
    } catch {
      console.warn("duet: a data channel message that is not JSON");
      return;
    }
    if (!ev || typeof ev !== "object" || Array.isArray(ev)) return;
    ev._at = at;
    duet.events.push(ev);
    if (call !== c) return;
    onEvent(c, ev, ended);
  });
}

function onEvent(c, ev, ended) {
  captions.onEvent(ev);
  debug.onEvent(ev);
  switch (ev.type) {
    case "session_started":
      if (duet.state === "connecting") setState("live");
      break;
    case "speech_end":
      c.lastSpeechEnd = ev.t;
      break;
    case "replica_speaking_start": {
      const row = {
        reply_id: ev.reply_id,
        t: ev.t,
        response_ms: c.lastSpeechEnd != null ? Math.round((ev.t - c.lastSpeechEnd) * 1000) : null,
        from_speculation: !!ev.from_speculation,
        latency: ev.latency || {},
      };
      c.lastSpeechEnd = null; // a reply with no speech before it (greeting, echo) has no response latency
      duet.latencies.push(row);
      debug.addLatency(row);
      break;
    }
    case "error":
      if (ev.fatal) {
        duet.endReason ??= `${ev.code}: ${ev.message}`;
        render();
        // the session ends and says so; if it does not, end here
        setTimeout(() => call === c && finish(`${ev.code}: ${ev.message}`), END_WAIT_MS);
      }
      break;
    case "session_ended":
      ended();
      finish(c.ending ? "hangup" : ev.shutdown_reason || ev.reason || "session_ended");
      break;
    default:
  }
}

// ---- leaving ----------------------------------------------------------------------------------------------

function send(obj) {
  const dc = call && call.dc;
  if (!dc || dc.readyState !== "open") return false;
  dc.send(JSON.stringify(obj));
  return true;
}

async function hangup() {
  const c = call;
  if (!c || (duet.state !== "connecting" && duet.state !== "live")) return;
  if (duet.state === "connecting") return finish("hangup");
  c.ending = true;
  render();
  if (send({ type: "end" })) {
    await Promise.race([c.sessionEnded, new Promise((r) => setTimeout(r, END_WAIT_MS))]);
  }
  finish("hangup");
}

function stopMedia(c) {
  if (c.local) for (const t of c.local.getTracks()) t.stop();
}

function finish(reason) {
  if (duet.state === "ended") return;
  const c = call;
  duet.endReason ??= reason;
  if (c) {
    if (c.pc) c.pc.close();
    stopMedia(c);
    if (c.levels) c.levels.stop();
    if (c.motion) c.motion.stop();
  }
  ui.self.hidden = true;
  ui.playAudio.hidden = true;
  setState("ended");
}

// ---- start ------------------------------------------------------------------------------------------------

setDebug(params.get("debug") === "1");
if (conversationId && !token) ui.tokenForm.hidden = false;
render();
