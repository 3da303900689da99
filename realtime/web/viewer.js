// mm2face-live browser viewer: the stand-in head (glTF, /head.glb) driven by live frames over the
// WebSocket of protocol v1 (docs/protocol.md), rendered with three.js served by mm2face-live itself.
//
// URL parameters: ?session=NAME (default "default"), &token=T (servers started with --token),
// &ws=ws://host:port (another server), &buffer_ms=100 (play-out delay), &audio_margin_ms=300 (a played
// file starts this long after its first frame came back), &format=binary (v1 frames).
//
// Frames: the page subscribes in the "arkit-binary" format (protocol v2, 268 bytes: 52 ARKit weights in
// the order the "subscribed" reply names, then head yaw, pitch, roll) and sets the head's morph targets
// of the same names and the "head" node's rotation, as any engine would. A server without the ARKit
// formats gets the v1 "binary" format (56 floats), mapped to the 52 weights in the page with the
// server's own linear map (/arkit_retarget.json, mm2face.engine.arkit.LinearRetarget). ?format=binary
// forces that route.
// Frames come in pairs (one motion token = 2 frames, 80 ms); a small play-out buffer shows them evenly
// at 25 fps, interpolated between frames.
// Sound: when watching a session that is not the page's own, the page subscribes with "audio": true and
// plays the session's audio (MMAU messages, protocol v2) on the frames' play-out clock: the sample at
// t_audio_s is heard when the frame of t_audio_s is shown. Browsers start sound only after a click on the page.
//
// window.mm2face holds the page's state (connected, frames, rendered, jawOpen, latency ...) for
// tools and the headless browser test (tests/test_browser_viewer.py).
import * as THREE from 'three';
import { GLTFLoader } from 'three/addons/loaders/GLTFLoader.js';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';

const MAGIC = 0x4d4d4631;           // "MMF1", big-endian read of the binary frame's first 4 bytes
const FRAME_BYTES = 272;
const ARKIT_MAGIC = 0x4d4d4131;     // "MMA1": the arkit-binary frame
const ARKIT_FRAME_BYTES = 268;
const PARAMS_OFFSET = 48;           // after the 48-byte header: 56 float32 (MMF1) or 52 + 3 float32 (MMA1)
const N_ARKIT = 52;
const HELLO_VERSION = 2;            // v2 = v1 + the ARKit frame formats
const FRAME_DIM = 56;
const HEAD_POSE = 50;               // frame[50:53]: head pose, axis-angle (rad)
const MIC_RATE = 16000;             // the model's rate; Chromium resamples the microphone to it
const MIC_CHUNK_S = 0.02;           // 20 ms audio messages
const KEEP_S = 2.0;                 // frames older than this (s of session time) behind the play-out are dropped
const MAX_LEAD_S = 0.6;             // newest frame further ahead of the play-out than this: re-anchor the clock
const LATENCY_WINDOW = 50;          // frames in the latency median
const AUDIO_OUT_MAGIC = 0x4d4d4155; // "MMAU": the watched session's audio
const AUDIO_OUT_HEADER = 32;        // bytes before the PCM16 samples; sample_rate at 8, t_audio_s at 16
const AUDIO_JOIN_S = 0.005;         // a chunk due this close to the previous one's end is joined to it (no click)
const AUDIO_AHEAD_S = 0.3;          // chunks are handed to WebAudio only this far ahead, so a drifting audio clock
                                    // or a re-anchored frame clock is followed within this horizon
const AUDIO_PENDING_MAX = 250;      // chunks kept while no frame has anchored the clock yet (5 s of 20 ms)
const SYNC_LOG = 100;               // entries in the sound/face sync log (window.mm2face.sessionAudioSync)
const MOUTH_BOX = { centre: [0, -0.05, 0.095], half: [0.034, 0.028] };   // metres, the head's rest pose

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const bufferS = Number(params.get('buffer_ms') ?? 100) / 1000;
$('buffer').textContent = Math.round(bufferS * 1000);

const state = window.mm2face = {
  connected: false, headLoaded: false, retargetLoaded: false,
  session: null, style: '', frames: 0, rendered: 0, lastSeq: -1, shownT: null, jawOpen: 0,
  latencyMs: null, fps: 0, mic: 'off', micSamples: 0, errors: [], paused: false,
  mouthRect: () => mouthRect(),
  toArkit: (frame56) => Array.from(arkitWeights(frame56)),     // the v1 route's map, for tools and tests
};

function fail(msg) {
  state.errors.push(String(msg));
  $('error').textContent = state.errors.slice(-4).join('\n');
}

// ------------------------------------------------------------------ three.js scene

const canvas = $('view');
const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(1);
renderer.setSize(canvas.width, canvas.height, false);
const scene = new THREE.Scene();
scene.background = new THREE.Color(0xdcd8d2);
const camera = new THREE.PerspectiveCamera(22, canvas.width / canvas.height, 0.05, 5);
const target = new THREE.Vector3(0, -0.012, 0.05);    // the face's middle (m); the head is 0.3 m tall
camera.position.set(0, 0.0, 0.75);
const controls = new OrbitControls(camera, canvas);
controls.target.copy(target);
controls.update();
scene.add(new THREE.HemisphereLight(0xfff6ee, 0x6b5e55, 1.4));
const key = new THREE.DirectionalLight(0xffffff, 2.2);
key.position.set(0.4, 0.5, 1.0);
scene.add(key);
const fill = new THREE.DirectionalLight(0xdde6ff, 0.7);
fill.position.set(-0.8, 0.1, 0.6);
scene.add(fill);

let face = null;          // the SkinnedMesh with the 52 morph targets
let headBone = null;      // node "head": the frame's head pose turns it
let retarget = null;      // {pos, neg, bias, names}: the server's ARKit map, for v1 frames
let wireNames = null;     // ARKit names in the order frames carry them (the subscription's)
let morphIndex = null;    // wire index -> morphTargetInfluences index
let jawK = -1;            // wire index of jawOpen

async function fetchWhenReady(url) {
  // The server builds head.glb on the first page request (a few seconds): 503 + Retry-After until then.
  for (let i = 0; i < 120; i++) {
    const r = await fetch(url, { cache: 'no-cache' });
    if (r.status === 503) {
      await new Promise((ok) => setTimeout(ok, 1000 * Number(r.headers.get('Retry-After') || 1)));
      continue;
    }
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${await r.text()}`);
    return r;
  }
  throw new Error(`${url}: still not ready after 2 minutes`);
}

async function loadHead() {
  const [glb, rt] = await Promise.all([
    fetchWhenReady('/head.glb').then((r) => r.arrayBuffer()),
    fetchWhenReady('/arkit_retarget.json').then((r) => r.json()),
  ]);
  retarget = rt;
  state.retargetLoaded = true;
  const gltf = await new GLTFLoader().parseAsync(glb, '');
  gltf.scene.traverse((o) => {
    if (o.isMesh && o.morphTargetDictionary) face = o;
  });
  headBone = gltf.scene.getObjectByName('head');
  if (!face || !headBone) throw new Error('head.glb has no morph-target mesh or no "head" node');
  useNames(rt.names);
  face.frustumCulled = false;
  scene.add(gltf.scene);
  state.headLoaded = true;
}

// ------------------------------------------------------------------ frames -> ARKit weights, head rotation

function useNames(names) {
  morphIndex = names.map((n) => {
    const i = face.morphTargetDictionary[n];
    if (i === undefined) throw new Error(`head.glb has no morph target ${n}`);
    return i;
  });
  wireNames = names;
  jawK = names.indexOf('jawOpen');
}

function arkitWeights(p) {
  const { pos, neg, bias } = retarget;
  const w = new Float32Array(bias.length);
  for (let k = 0; k < w.length; k++) {
    let s = bias[k];
    const pk = pos[k], nk = neg[k];
    for (let d = 0; d < FRAME_DIM; d++) {
      const x = p[d];
      if (x > 0) s += pk[d] * x; else if (x < 0) s -= nk[d] * x;
    }
    w[k] = Math.min(1, Math.max(0, s));
  }
  const close = retarget.names.indexOf('mouthClose');
  w[close] = Math.min(w[close], w[retarget.names.indexOf('jawOpen')]);
  return w;
}

// ARKit head yaw, pitch, roll (rad) in the head's own axes: R = Ry(yaw) Rx(pitch) Rz(roll)
function headQuaternionYpr(yaw, pitch, roll) {
  return new THREE.Quaternion().setFromEuler(new THREE.Euler(pitch, yaw, roll, 'YXZ'));
}

function headQuaternion(p) {
  const v = new THREE.Vector3(p[HEAD_POSE], p[HEAD_POSE + 1], p[HEAD_POSE + 2]);
  const angle = v.length();
  return angle < 1e-9 ? new THREE.Quaternion() : new THREE.Quaternion().setFromAxisAngle(v.divideScalar(angle), angle);
}

// ------------------------------------------------------------------ play-out buffer

const frames = [];        // {seq, t, w, q}, ascending t
let clockOffset = null;   // play-out time (session seconds) = performance.now()/1000 - clockOffset
const latencies = [];
const arrivals = [];      // performance.now() of recent frames, for the fps figure

function nowS() { return performance.now() / 1000; }

function onFrame(seq, t, arrival, w, q) {
  if (frames.length && seq <= frames[frames.length - 1].seq) frames.length = 0;   // a new session started
  frames.push({ seq, t, w, q });
  if (player && own && watching === own) onFileFrame(t);
  state.frames++;
  state.lastSeq = seq;
  const play = nowS() - (clockOffset ?? 0);
  if (clockOffset === null || t - play > MAX_LEAD_S || t - play < -bufferS) {
    if (clockOffset !== null) rescheduleSessionAudio();    // the face jumps: sound not yet started follows
    clockOffset = nowS() - (t - bufferS);
  }
  scheduleSessionAudio();
  while (frames.length > 2 && frames[1].t < play - KEEP_S) frames.shift();
  if (Number.isFinite(arrival)) {
    latencies.push(1000 * (Date.now() / 1000 - arrival));
    if (latencies.length > LATENCY_WINDOW) latencies.shift();
  }
  const pn = performance.now();
  arrivals.push(pn);
  while (arrivals.length && arrivals[0] < pn - 2000) arrivals.shift();
}

function median(a) {
  const s = [...a].sort((x, y) => x - y);
  return s.length ? s[Math.floor(s.length / 2)] : null;
}

let shownSeq = -1;
function applyPlayout() {
  if (!face || !frames.length || clockOffset === null || state.paused) return;   // paused: hold the face
  const heard = audioClock();          // a file playing: its audio clock drives the face
  const play = heard ?? nowS() - clockOffset;
  let i = 0;
  while (i + 1 < frames.length && frames[i + 1].t <= play) i++;
  const a = frames[i], b = frames[Math.min(i + 1, frames.length - 1)];
  const u = b.t > a.t ? Math.min(1, Math.max(0, (play - a.t) / (b.t - a.t))) : 0;
  const inf = face.morphTargetInfluences;
  for (let k = 0; k < a.w.length; k++) inf[morphIndex[k]] = a.w[k] + (b.w[k] - a.w[k]) * u;
  headBone.quaternion.slerpQuaternions(a.q, b.q, u);
  state.jawOpen = inf[morphIndex[jawK]];
  state.shownT = a.t + (b.t - a.t) * u;
  if (a.seq !== shownSeq) { shownSeq = a.seq; state.rendered++; }
  logSync();
}

// The mouth's box on the page (CSS pixels), following the head: for screenshots of the mouth.
function mouthRect() {
  if (!face) return null;
  const bone = face.skeleton.bones.indexOf(headBone);
  const m = new THREE.Matrix4().multiplyMatrices(headBone.matrixWorld, face.skeleton.boneInverses[bone]);
  const r = canvas.getBoundingClientRect();
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  const [cx, cy, cz] = MOUTH_BOX.centre, [hx, hy] = MOUTH_BOX.half;
  for (const [sx, sy] of [[-1, -1], [-1, 1], [1, -1], [1, 1]]) {
    const v = new THREE.Vector3(cx + sx * hx, cy + sy * hy, cz).applyMatrix4(m).project(camera);
    const x = r.left + (v.x + 1) / 2 * r.width, y = r.top + (1 - v.y) / 2 * r.height;
    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
  }
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

let lastPanel = 0;
function animate() {
  requestAnimationFrame(animate);
  scheduleSessionAudio();
  applyPlayout();
  controls.update();
  renderer.render(scene, camera);
  const pn = performance.now();
  if (pn - lastPanel > 250) {
    lastPanel = pn;
    state.fps = arrivals.length > 1 ? 1000 * (arrivals.length - 1) / (arrivals[arrivals.length - 1] - arrivals[0]) : 0;
    state.latencyMs = median(latencies);
    $('frames').textContent = state.frames;
    $('fps').textContent = state.fps ? `${state.fps.toFixed(1)} fps, ${state.format}` : '';
    $('latency').textContent = state.latencyMs === null ? '- (no audio frames yet)'
      : `${state.latencyMs.toFixed(0)} ms audio → browser, + ${Math.round(bufferS * 1000)} ms buffer`;
  }
}

// ------------------------------------------------------------------ WebSocket, protocol v1 / v2

let ws = null;
let watching = null;      // the session whose frames are shown
let own = null;           // our own session (microphone or file), once opened
let onOpened = null;      // what to do when our 'open' is answered
let watchNum = null;      // session_num of the watched session (binary frames carry it); null until subscribed
state.format = params.get('format') === 'binary' ? 'binary' : 'arkit-binary';

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

function setStyleText(text) {
  state.style = text;
  $('stylenow').textContent = text === '' ? '(neutral)' : text;
}

function watch(name) {
  if (watching && watching !== name) send({ type: 'unsubscribe', session: watching });
  watching = name;
  watchNum = null;
  state.session = name;
  frames.length = 0;
  clockOffset = null;
  latencies.length = 0;
  const audio = name !== own;        // our own session's sound is the file we play, or our microphone
  resetSessionAudio(audio);
  send({ type: 'subscribe', session: name, format: state.format, ...(audio ? { audio: true } : {}) });
}

function hello(version) {
  const token = params.get('token');
  send({ type: 'hello', version, client: 'mm2face-web', ...(token ? { token } : {}) });
}

function toV1() {            // a server without the ARKit formats: v1 frames, mapped in the page
  if (state.format === 'binary') return false;
  state.format = 'binary';
  useNames(retarget.names);
  return true;
}

function onBinary(buf) {
  const dv = new DataView(buf);
  const magic = buf.byteLength >= 4 ? dv.getUint32(0, false) : 0;
  if (buf.byteLength < PARAMS_OFFSET || dv.getUint32(12, true) !== watchNum) return;   // another session's
  if (magic === AUDIO_OUT_MAGIC) { onSessionAudio(buf, dv); return; }
  const seq = () => dv.getUint32(8, true), t = () => dv.getFloat64(16, true), arr = () => dv.getFloat64(32, true);
  if (magic === ARKIT_MAGIC && buf.byteLength === ARKIT_FRAME_BYTES) {
    const w = new Float32Array(buf, PARAMS_OFFSET, N_ARKIT);
    const r = new Float32Array(buf, PARAMS_OFFSET + 4 * N_ARKIT, 3);
    onFrame(seq(), t(), arr(), w, headQuaternionYpr(r[0], r[1], r[2]));
  } else if (magic === MAGIC && buf.byteLength === FRAME_BYTES && state.format === 'binary') {
    const p = new Float32Array(buf, PARAMS_OFFSET, FRAME_DIM);
    onFrame(seq(), t(), arr(), arkitWeights(p), headQuaternion(p));
  }
}

function connect() {
  if (ws) ws.close();
  stopOwn(false);
  const url = $('url').value;
  ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  $('state').textContent = 'connecting';
  ws.onopen = () => {
    state.connected = true;
    $('state').textContent = 'connected';
    hello(state.format === 'binary' ? 1 : HELLO_VERSION);
    watching = null;
    watch($('session').value || 'default');
  };
  ws.onclose = (ev) => {
    state.connected = false;
    $('state').textContent = `closed (${ev.code})`;
    stopOwn(false);
  };
  ws.onerror = () => fail(`WebSocket error on ${url}`);
  ws.onmessage = (ev) => {
    if (typeof ev.data !== 'string') {
      onBinary(ev.data);
      return;
    }
    const msg = JSON.parse(ev.data);
    switch (msg.type) {
      case 'subscribed':
        if (msg.session !== watching) break;
        watchNum = msg.session_num;
        setStyleText(msg.style ?? '');
        if (msg.format === 'arkit-binary' && msg.arkit_names) useNames(msg.arkit_names);
        break;
      case 'style':
        if (msg.session === watching) setStyleText(msg.text);
        break;
      case 'opened':
        own = msg.session;
        watch(own);        // the opener is subscribed already; this makes the page's bookkeeping follow
        if (onOpened) onOpened();
        onOpened = null;
        break;
      case 'ended':        // the server sent the last frames of our file
        if (player && msg.session === own) {
          player.ended = true;
          finishFile(player);
        }
        break;
      case 'idle':         // audio resumed after idle time: our audio at audio_s shows at t_audio_s
        if (player && msg.session === own && msg.state === 'active') player.t0 = msg.t_audio_s - msg.audio_s;
        break;
      case 'session_closed':
        if (msg.session === watching && msg.session !== own) $('state').textContent = `session ${msg.session} closed`;
        break;
      case 'error':
        if (msg.code === 'unsupported_version' && msg.ref === 'hello' && toV1()) {
          hello(1);
          watch(watching);
          break;
        }
        if (msg.ref === 'subscribe' && msg.code === 'bad_message' && /format/.test(msg.message)) {
          if (toV1()) watch(watching);
          break;
        }
        fail(`server: ${msg.code}: ${msg.message}`);
        if (msg.ref === 'open') stopOwn(false);   // refused (capacity, limits, token): no session of ours
        break;
      default:
        break;
    }
  };
}

// ------------------------------------------------------------------ the watched session's audio, on the frame clock

// Each chunk is scheduled on the AudioContext so that its sample at t_audio_s is heard at the frame
// clock's display time of t_audio_s (performance.now()/1000 = t + clockOffset). getOutputTimestamp pairs
// a context time being heard with its performance time (output latency included). Chunks that arrive
// before the first frame wait for it; audio whose time has passed is skipped (counted). A chunk is handed
// to WebAudio only AUDIO_AHEAD_S before it is due (checked on every message and animation frame), each time
// against a fresh output clock: an audio clock that runs slow (a busy machine) cannot carry it away.
let listen = null;        // {ctx, want, pending: [chunk], sources: Map(src -> {ch, when}), nextCtx, log: [{t, when, dur}]}
Object.assign(state, { sessionAudio: 'off', sessionAudioChunks: 0, sessionAudioScheduledS: 0,
                       sessionAudioSkippedS: 0, sessionAudioSync: [] });

function resetSessionAudio(want) {
  if (listen) {
    listen.sources.forEach((_, src) => { try { src.stop(); } catch { /* already ended */ } });
    Object.assign(listen, { want, pending: [], sources: new Map(), nextCtx: -Infinity, log: [] });
  } else if (want) {
    listen = { ctx: new AudioContext(), want, pending: [], sources: new Map(), nextCtx: -Infinity, log: [] };
    const resume = () => listen.ctx.resume();      // autoplay policy: sound starts with a click
    document.addEventListener('pointerdown', resume);
    document.addEventListener('keydown', resume);
    listen.ctx.onstatechange = () => { state.sessionAudio = listen.ctx.state; };
    listen.ctx.resume().catch(() => {});
  }
  state.sessionAudioSync = [];
}

function outputClock(ctx) {          // {c: context time heard now, p: its performance.now() in s}
  const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
  if (ts && ts.performanceTime > 0) return { c: ts.contextTime, p: ts.performanceTime / 1000 };
  return { c: ctx.currentTime, p: nowS() };
}

function onSessionAudio(buf, dv) {
  const L = listen;
  if (!L || !L.want) return;
  const rate = dv.getUint32(8, true), t = dv.getFloat64(16, true);
  const pcm = new Int16Array(buf, AUDIO_OUT_HEADER, (buf.byteLength - AUDIO_OUT_HEADER) >> 1);
  const f = new Float32Array(pcm.length);
  for (let i = 0; i < f.length; i++) f[i] = pcm[i] / 32768;
  L.pending.push({ t, rate, f });
  if (L.pending.length > AUDIO_PENDING_MAX) L.pending.shift();
  state.sessionAudioChunks++;
  scheduleSessionAudio();
}

function scheduleSessionAudio() {
  const L = listen;
  if (!L || clockOffset === null || !L.pending.length) return;   // the first frame anchors the clock
  if (L.ctx.state !== 'running') {     // no sound yet (no click): nothing to keep in step
    for (const ch of L.pending) state.sessionAudioSkippedS += ch.f.length / ch.rate;
    L.pending.length = 0;
    return;
  }
  const ref = outputClock(L.ctx);
  const horizon = L.ctx.currentTime + AUDIO_AHEAD_S;
  let k = 0;
  for (; k < L.pending.length; k++) {
    const ch = L.pending[k];
    const dur = ch.f.length / ch.rate;
    let when = ref.c + (ch.t + clockOffset - ref.p);
    if (Math.abs(when - L.nextCtx) < AUDIO_JOIN_S) when = L.nextCtx;
    if (when > horizon) break;                 // not due yet: stays pending
    const skip = Math.max(0, L.ctx.currentTime - when);
    if (skip >= dur) { state.sessionAudioSkippedS += dur; continue; }
    const buffer = L.ctx.createBuffer(1, ch.f.length, ch.rate);
    buffer.copyToChannel(ch.f, 0);
    const src = L.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(L.ctx.destination);
    src.onended = () => L.sources.delete(src);
    src.start(when + skip, skip);
    L.sources.set(src, { ch, when: when + skip });
    L.nextCtx = when + dur;
    L.log.push({ t: ch.t + skip, when: when + skip, dur: dur - skip });   // what will be heard
    if (L.log.length > SYNC_LOG) L.log.shift();
    state.sessionAudioScheduledS += dur - skip;
    state.sessionAudioSkippedS += skip;
  }
  L.pending.splice(0, k);
}

// The frame clock re-anchored: chunks handed to WebAudio that have not started yet are taken back and
// scheduled again on the new clock (a chunk already playing plays on).
function rescheduleSessionAudio() {
  const L = listen;
  if (!L) return;
  const back = [];
  L.sources.forEach((v, src) => {
    if (v.when <= L.ctx.currentTime) return;
    src.onended = null;
    try { src.stop(); } catch { /* already ended */ }
    L.sources.delete(src);
    back.push(v.ch);
    state.sessionAudioScheduledS -= v.ch.f.length / v.ch.rate;
  });
  L.log = L.log.filter((e) => e.when <= L.ctx.currentTime);
  L.pending = back.sort((a, b) => a.t - b.t).concat(L.pending);
  L.nextCtx = -Infinity;
}

// On every animation frame: the session time of the sound coming out now (the output clock) and the
// frame clock's time at the same instant (what the face shows), logged as {heard, shown} for tools and
// tests. Equal when the sound is in step with the face, whatever the page's render rate.
function logSync() {
  const L = listen;
  if (!L || !L.want || L.ctx.state !== 'running' || clockOffset === null || state.paused) return;
  const ref = outputClock(L.ctx);
  const e = L.log.find((x) => x.when <= ref.c && ref.c < x.when + x.dur);
  if (!e) return;                      // no sound at this instant
  state.sessionAudioSync.push({ heard: e.t + (ref.c - e.when), shown: ref.p - clockOffset });
  if (state.sessionAudioSync.length > SYNC_LOG) state.sessionAudioSync.shift();
}

// ------------------------------------------------------------------ talk through my microphone

let mic = null;           // {ctx, stream, node}

function toPcm16(f32) {
  const out = new Int16Array(f32.length);
  for (let i = 0; i < f32.length; i++) out[i] = Math.max(-1, Math.min(1, f32[i])) * 32767;
  return out.buffer;
}

async function startMic() {
  if (!ws || ws.readyState !== WebSocket.OPEN) { fail('connect to the server first'); return; }
  state.mic = 'starting';
  $('micstate').textContent = 'asking for the microphone...';
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
    let ctx;
    try { ctx = new AudioContext({ sampleRate: MIC_RATE }); } catch { ctx = new AudioContext(); }
    await ctx.resume();
    await ctx.audioWorklet.addModule('/mic-worklet.js');
    const node = new AudioWorkletNode(ctx, 'mm2face-mic',
      { processorOptions: { chunk: Math.round(ctx.sampleRate * MIC_CHUNK_S) } });
    const mute = ctx.createGain();
    mute.gain.value = 0;                    // keeps the graph pulling samples; we do not play the mic back
    ctx.createMediaStreamSource(stream).connect(node).connect(mute).connect(ctx.destination);
    mic = { ctx, stream, node };
    node.port.onmessage = (e) => {
      if (own && ws && ws.readyState === WebSocket.OPEN) {
        ws.send(toPcm16(e.data));
        state.micSamples += e.data.length;
      }
    };
    // The server resamples any rate from 8 to 192 kHz; we tell it the one the browser gave us.
    openOwn(ctx.sampleRate, () => {
      state.mic = 'on';
      $('micstate').textContent = `streaming into session ${own}`;
    });
    $('mic').textContent = 'stop the microphone';
  } catch (e) {
    state.mic = 'off';
    fail(`microphone: ${e.name || ''} ${e.message || e}`);
    $('micstate').textContent = '';
  }
}

function openOwn(sampleRate, then) {
  onOpened = then;
  send({ type: 'open', sample_rate: sampleRate, sample_format: 'pcm16', style: state.style,
         format: state.format, token: params.get('token') || undefined });
}

// Stop the microphone or the file, and (closeSession) close our session and go back to the one we watched.
function stopOwn(closeSession = true) {
  if (mic) {
    mic.stream.getTracks().forEach((t) => t.stop());
    mic.ctx.close();
    mic = null;
  }
  if (player) {
    clearInterval(player.timer);
    player.ctx.close();
    player = null;
  }
  onOpened = null;
  const had = own;
  own = null;
  if (had && closeSession) {
    send({ type: 'close', session: had, token: params.get('token') || undefined });
    if (watching === had) watching = null;     // closing it ends our subscription: nothing to unsubscribe
    watch($('session').value || 'default');
  }
  if (state.audio !== 'done') $('filestate').textContent = '';
  state.mic = 'off';
  state.audio = 'off';
  $('mic').textContent = 'talk through my microphone';
  $('micstate').textContent = '';
}

// ------------------------------------------------------------------ speak a file, heard in sync

// The page streams a local audio file into its own session at real-time pace and plays the same
// audio. The audio starts AUDIO_MARGIN_S after the first frame comes back, and from then on the
// audio's clock drives the face: the frame shown is the one whose t_audio_s is the sample being
// heard. When the frames fall behind the audio (a slow or busy server), the audio pauses until they
// are AUDIO_MARGIN_S ahead again, as a video player rebuffers: the sound never runs ahead of the face.
// Counted: state.audioStalls / audioStallS (pauses), and frames that arrived after their audio had
// been heard (audioLateFrames of audioFrames).
const SEND_AHEAD_S = 0.25;    // audio is sent this far ahead of real time (the model's lookahead is 40 ms)
const AUDIO_MARGIN_S = Number(params.get('audio_margin_ms') ?? 300) / 1000;   // slack: frames vs the audio clock
const SEND_TICK_MS = 20;
const FRAME_S = 1 / 25;
let player = null;            // the file being spoken; see playFile
Object.assign(state, { audio: 'off', audioPlayedS: 0, audioLateFrames: 0, audioFrames: 0, audioStalls: 0, audioStallS: 0 });

async function playFile(file) {
  if (!ws || ws.readyState !== WebSocket.OPEN) { fail('connect to the server first'); return; }
  if (mic || own) stopOwn(true);
  state.audio = 'loading';
  $('filestate').textContent = `decoding ${file.name}...`;
  try {
    const ctx = new AudioContext({ sampleRate: MIC_RATE });   // decodeAudioData resamples to 16 kHz
    await ctx.resume();
    const buffer = await ctx.decodeAudioData(await file.arrayBuffer());
    const pcm = new Float32Array(buffer.length);
    for (let c = 0; c < buffer.numberOfChannels; c++) {
      const ch = buffer.getChannelData(c);
      for (let i = 0; i < pcm.length; i++) pcm[i] += ch[i] / buffer.numberOfChannels;
    }
    player = { ctx, pcm, buffer, sent: 0, sendStart: null, audioStart: null, t0: 0, timer: null, src: null,
               newestT: -Infinity, stalled: false, stallStart: 0, played: false, ended: false };
    Object.assign(state, { audioPlayedS: 0, audioLateFrames: 0, audioFrames: 0, audioStalls: 0, audioStallS: 0 });
    openOwn(MIC_RATE, () => {
      state.audio = 'streaming';
      $('filestate').textContent = `streaming ${file.name} into session ${own}`;
      player.sendStart = nowS();
      player.timer = setInterval(sendFileAudio, SEND_TICK_MS);
      sendFileAudio();
    });
  } catch (e) {
    state.audio = 'off';
    fail(`file: ${e.name || ''} ${e.message || e}`);
    $('filestate').textContent = '';
  }
}

function sendFileAudio() {            // paced by the wall clock: the audio clock may be paused
  const p = player;
  if (!p || !own) return;
  checkStall(p);
  if (p.sent >= p.pcm.length) return;
  const due = Math.min(p.pcm.length, Math.round((nowS() - p.sendStart + SEND_AHEAD_S) * MIC_RATE));
  if (due > p.sent) {
    ws.send(toPcm16(p.pcm.subarray(p.sent, due)));
    p.sent = due;
  }
  if (p.sent >= p.pcm.length) send({ type: 'end', session: own, token: params.get('token') || undefined });
}

function onFileFrame(t) {             // a frame of our file's session arrived
  const p = player;
  if (p.audioStart === null && state.audio === 'streaming') startFileAudio();
  p.newestT = Math.max(p.newestT, t);
  if (t >= p.t0 && t < p.t0 + p.buffer.duration) {
    state.audioFrames++;
    if (t < audioClock()) state.audioLateFrames++;       // its audio was heard before it came
  }
  checkStall(p);
}

function checkStall(p) {              // pause the audio while the frames are behind it
  if (p.audioStart === null || p.played) return;
  const heard = audioClock(), last = p.t0 + p.buffer.duration - FRAME_S;
  if (!p.stalled && heard > p.newestT + FRAME_S && p.newestT < last && !p.ended) {
    p.stalled = true;
    p.stallStart = nowS();
    state.audioStalls++;
    p.ctx.suspend();
  } else if (p.stalled && (p.newestT >= Math.min(heard + AUDIO_MARGIN_S, last) || p.ended)) {
    p.stalled = false;
    state.audioStallS += nowS() - p.stallStart;
    p.ctx.resume();
  }
}

function startFileAudio() {
  const p = player;
  p.audioStart = p.ctx.currentTime + AUDIO_MARGIN_S;
  p.src = p.ctx.createBufferSource();
  p.src.buffer = p.buffer;
  p.src.connect(p.ctx.destination);
  p.src.onended = () => {
    if (player !== p) return;
    p.played = true;
    state.audioPlayedS = p.buffer.duration;
    finishFile(p);
  };
  p.src.start(p.audioStart);
  state.audio = 'playing';
}

// Played, and the server has sent the file's last frames ('ended'): close the session and go back
// to the one watched before.
function finishFile(p) {
  if (!p.played || !p.ended) return;
  state.audio = 'done';
  $('filestate').textContent = `played; paused ${state.audioStalls}x (${state.audioStallS.toFixed(1)} s) for frames`;
  stopOwn(true);
}

// The session time of the audio being heard, or null when no file is playing.
function audioClock() {
  const p = player;
  if (!p || p.audioStart === null) return null;
  const heard = p.ctx.currentTime - p.audioStart;
  if (heard > 0) state.audioPlayedS = Math.min(heard, p.buffer.duration);
  return p.t0 + heard;
}

// ------------------------------------------------------------------ controls

$('url').value = params.get('ws') || ((location.protocol === 'https:' ? 'wss://' : 'ws://') + (location.host || '127.0.0.1:8765'));
$('session').value = params.get('session') || 'default';
$('connect').onclick = connect;
$('session').onchange = () => {
  if (own) return;
  watch($('session').value || 'default');
};
$('send').onclick = () => send({ type: 'style', text: $('style').value, blend_s: 0.5, session: watching,
                                 token: params.get('token') || undefined });
$('mic').onclick = () => (mic || own ? stopOwn(true) : startMic());
$('file').onchange = () => { if ($('file').files.length) playFile($('file').files[0]); };
$('pause').onclick = () => {
  state.paused = !state.paused;
  $('pause').textContent = state.paused ? 'resume' : 'pause';
};

loadHead().then(() => connect()).catch((e) => fail(e.message || e));
animate();
