"""Sans-I/O streaming session: audio samples and style text in, 25 fps frames out.

No threads, sockets or asyncio here; the caller pushes audio and polls frames::

    s = StreamSession(model, StreamConfig(), style="a calm speaker")
    s.push_audio(chunk_16k)          # any chunk size, float32 in [-1, 1] at 16 kHz
    for f in s.poll(): send(f)       # Frame(seq, t_audio_s, params (56,), style)
    s.set_style("smiles broadly")    # from the next token, cross-faded over blend_s
    s.end()                          # input over: last frames, then the mouth closes
    s.flush()                        # barge-in: queued audio dropped, idle within one hop

Timeline. The session clock counts every sample it has taken in, including silence it inserts
itself (end/flush padding). Frame ``seq`` shows the audio instant ``t_audio_s = seq / 25``.
A hop is one motion token (``down`` frames, 80 ms by default): token ``k`` is computed as soon as the
audio up to the end of its own frames plus the model's lookahead has arrived. Each hop runs the audio
encoder on a sliding window, one G step with a bounded (sliding) KV cache, and D on the last
``receptive_tokens`` tokens; the work per hop is constant on an endless stream.

:func:`step_sessions` runs one hop for several sessions as one batched call (cross-session batching);
:meth:`StreamSession.poll` uses it with a single session, so both paths are the same code. The model
state that a hop carries to the next (KV cache, the audio encoder's feature window, the refiner's past)
is a row of a :class:`~mm2face.engine.batch_state.BatchState`: a session starts with a one-row state of
its own and moves into a scheduler's shared one when it joins it. The model parts run through the
model's runner (:mod:`mm2face.engine.runners`, chosen by :func:`~mm2face.engine.backends.apply_backend`).
"""
from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from mm2face.engine.audio_encoder import FEAT_HOP, FEAT_PAD
from mm2face.engine.closure import apply_contact, standin_head
from mm2face.engine.frame import FPS, JAW, SAMPLES_PER_FRAME
from mm2face.engine.batch_state import BatchState
from mm2face.engine.style import GestureTrack, resolve_style
from mm2face.engine.runners import runner_for
from mm2face.engine.units import UNIT_INDEX
from mm2face.engine.vad import VadConfig, VadStream

# stand-in expression units that open or shape the mouth; they go to rest with the jaw when the input ends
_MOUTH_UNITS = ("upper_lip_raiser", "lower_lip_depressor", "lip_pucker", "lip_stretcher", "lip_funneler",
                "lips_part", "lip_tightener", "lip_pressor")


def mouth_dims(head_name: str) -> list[int]:
    """Frame dims that go to rest when the mouth closes (end/flush, the voice-activity gate): the jaw pose
    and, on the stand-in head, the mouth units (and the articulation units ``mouth_close`` and
    ``lower_lip_roll`` where the unit table has them)."""
    dims = list(range(JAW.start, JAW.stop))
    if head_name == "standin":
        dims += [UNIT_INDEX[u] for u in _MOUTH_UNITS + ("mouth_close", "lower_lip_roll") if u in UNIT_INDEX]
    return dims


_BLINK_PROFILE = np.array([0.45, 0.95, 1.0, 0.7, 0.3, 0.1], np.float32)   # lid closure over 6 frames (240 ms)
_BLINK_BLOCK = 100                                                       # one blink per 4 s block (15 / min)


def blink_overlay(seq0: int, n: int, seed: int) -> np.ndarray:
    """Procedural blinks for frames ``seq0 .. seq0 + n - 1``: ``(n,)`` lid closure in [0, 1].

    One blink at a random position in every 4 s block, a pure function of ``(seed, frame number)``,
    so streaming and offline generation add exactly the same blinks. The model learns blinks too,
    but sampling at low temperature rarely emits such short events, and a face that never blinks
    in silence looks frozen."""
    out = np.zeros(n, np.float32)
    L = len(_BLINK_PROFILE)
    for b in range(max(0, (seq0 - L) // _BLINK_BLOCK), (seq0 + n) // _BLINK_BLOCK + 1):
        start = b * _BLINK_BLOCK + int(np.random.default_rng([int(seed), b, 7]).integers(5, _BLINK_BLOCK - L))
        for j in range(L):
            k = start + j - seq0
            if 0 <= k < n:
                out[k] = max(out[k], _BLINK_PROFILE[j])
    return out


def add_blinks(params: np.ndarray, seq0: int, seed: int, head: str) -> np.ndarray:
    """``params (n, 56)`` with procedural blinks merged (max) into the stand-in head's blink units."""
    if head != "standin":
        return params
    ov = blink_overlay(seq0, len(params), seed)
    for u in ("blink_left", "blink_right"):
        i = UNIT_INDEX[u]
        params[:, i] = np.maximum(params[:, i], ov)
    return params


class AudioError(ValueError):
    """Audio that cannot be used: wrong shape, non-finite samples."""


@dataclass
class StreamConfig:
    guidance: float = 3.5         # classifier-free guidance on the style text (1 = none, >1 stronger style)
    temperature: float = 0.6      # token sampling temperature (0 = greedy)
    top_k: int = 8                # sample among the k most likely tokens (0 = all)
    seed: int = 0                 # sampling seed (same seed + same input -> same frames)
    blend_s: float = 0.5          # default style cross-fade time, seconds
    tail_s: float = 0.32          # end(): silent tail after the input, seconds, during which the mouth closes
    flush_idle_s: float = 0.08    # flush(): silence inserted (one hop) while the face returns to idle
    blinks: bool = True           # add procedural blinks (stand-in head; same in generate(blinks=True))
    parse_styles: bool = True     # read free-text styles with engine/style.py (template caption + head gestures);
                                  # False: the raw text goes to the model, no gesture layer (research)
    vad: bool = True              # voice-activity gate (engine/vad.py): mouth and jaw rest while no speech is heard
    contact: bool = True          # lip-contact stage (engine/closure.py, models that have one): lips meet on p/b/m,
                                  # the lower lip reaches the upper teeth on f/v; same in generate(contact=True)


@dataclass
class Frame:
    seq: int                      # frame number since the session start (25 per second of input)
    t_audio_s: float              # the audio instant this frame shows = seq / 25
    params: np.ndarray            # (56,) float32: 50 expression, 3 head pose, 3 jaw pose (rad)
    style: str                    # the style text in effect (the target while blending)
    # Timing, recorded by the session from the arrival times its input was pushed with (the caller's
    # clock, ``time.time()`` seconds unless it passed others):
    audio_arrival_time: float = math.nan   # when the audio at this frame's own instant arrived (nan: no
                                           # caller audio there: no-audio time, end/flush padding)
    input_ready_time: float = math.nan     # when the last sample this frame depends on arrived (its token's
                                           # end + the lookahead): the earliest it could have been computed
    final: bool = False                    # the last frame of end() (the input is over)


class _Arrivals:
    """When each stretch of the session timeline arrived: ``(end_sample, time, real)`` in timeline order
    (``real``: pushed caller audio; False: no-audio time or padding the session inserted)."""

    def __init__(self):
        self.items: collections.deque[tuple[int, float, bool]] = collections.deque()

    def add(self, end_sample: int, t: float, real: bool) -> None:
        self.items.append((int(end_sample), float(t), bool(real)))

    def at(self, sample: int) -> tuple[float, bool]:
        """``(time, real)`` of the stretch that holds timeline sample ``sample`` (nan when none does)."""
        for end, t, real in self.items:
            if end > sample:
                return t, real
        return math.nan, False

    def forget_before(self, sample: int) -> None:
        """Drop stretches that end at or before ``sample`` (no frame will ask for them again)."""
        while self.items and self.items[0][0] <= sample:
            self.items.popleft()

    def truncate(self, n: int) -> None:
        """The timeline was cut back to ``n`` samples (flush dropped unused audio)."""
        kept: collections.deque = collections.deque()
        for end, t, real in self.items:
            kept.append((min(end, n), t, real))
            if end >= n:
                break
        self.items = kept


class StreamSession:
    def __init__(self, model, config: StreamConfig | None = None, style: str = "", device="cpu"):
        self.model = model.eval()
        self.cfg = config or StreamConfig()
        self.device = torch.device(device)
        m = model
        self.spt = m.samples_per_token                     # audio samples per token (1280)
        self.look = m.lookahead_samples                    # audio lookahead, samples (640)
        self.down = m.down
        self.W = m.audio.cfg.window_feats
        self.fpt = m.audio.cfg.feats_per_token
        self.la = m.audio.cfg.lookahead_feats
        self.gen = torch.Generator().manual_seed(int(self.cfg.seed))
        self.batch_state: BatchState | None = None         # the state holding this session's row (set by join)
        self.row: int | None = None
        BatchState(m, 1, self.device).join(self)          # a one-row state of its own until a scheduler's takes it
        self.prev = m.gpt.bos
        self.hist: list[int] = []                          # last receptive_tokens tokens
        self.k = 0                                         # next token to compute
        # audio ring: samples [buf0, n_in) are held; flags mark "no audio" samples
        self.buf = np.zeros(0, np.float32)
        self.noaudio = np.zeros(0, bool)
        self.buf0 = 0
        self.n_in = 0
        self.n_real = 0                                    # samples pushed by the caller (not inserted)
        self.arrivals = _Arrivals()                        # when each stretch of the timeline arrived
        self.feat_next = 0                                 # next CNN feature index to compute
        # style
        self.style = style
        self.resolved = resolve_style(style, m.text_encoder, self.cfg.parse_styles)   # caption, gestures, gain
        e = m.text_embed(self.resolved.caption).to(self.device)
        self.emb_from, self.emb_to = e, e
        r = m.refiner_style(self.resolved.caption)        # the refiner's own style code (None without one)
        self.gestures = GestureTrack(self.resolved.gestures, 0, gain=self.resolved.expression_gain)  # the layer
        self.rcode_from = self.rcode_to = None if r is None else r.to(self.device)
        self.blend_k0, self.blend_n = 0, 1
        self.guidance = float(self.cfg.guidance)
        # mouth-to-rest blend (after end/flush)
        self.mouth_w = 0.0
        self.mouth_target = 0.0
        self.mouth_step = 1.0
        self.mouth_dims = torch.tensor(mouth_dims(m.head_name))
        # the voice-activity gate's state for this stream; it reads no further than the model's lookahead
        self.vad = VadStream(VadConfig(lookahead_samples=self.look)) if self.cfg.vad else None
        self.pending: list[Frame] = []
        front = m.refiner.front if m.refiner is not None else None
        self.front_samples = front.window_samples if front is not None else 0   # audio the refiner's front reads
        # audio kept before the next token's start: the CNN's past features need 2 tokens, the front its window
        # the lip-contact stage (None: off or the model has none) and the stand-in head it solves on
        self.contact = m.closure if (self.cfg.contact and m.closure is not None) else None
        self.contact_head = standin_head() if self.contact is not None else None
        contact_left = self.contact.left_samples if self.contact is not None else 0
        self.keep_back = max(2 * self.spt, self.front_samples - self.spt - self.look, contact_left)
        self.ref_head = None                          # its head offset of the last token (down * 3,)
        self.ref_head_from = None                     # the offset a new style fades from (None = rest)
        self.style_k0 = 0                             # token at which the current style text was set
        self.stats = {"hops": 0, "frames": 0, "audio_enc_ms": 0.0, "g_step_ms": 0.0, "decode_ms": 0.0,
                      "audio_enc_ms_total": 0.0, "g_step_ms_total": 0.0, "decode_ms_total": 0.0,
                      "vad_ms": 0.0, "vad_ms_total": 0.0, "contact_ms": 0.0, "contact_ms_total": 0.0}

    # ---- input -------------------------------------------------------------------------------
    def push_audio(self, audio_16k: np.ndarray, arrival_time: float | None = None) -> None:
        """Append ``(samples,)`` float32 16 kHz audio that arrived at ``arrival_time`` (the caller's clock,
        seconds; None = ``time.time()`` now): its frames carry that time. NaN/Inf raise :class:`AudioError`;
        values are clipped to [-1, 1]."""
        a = np.asarray(audio_16k)
        if a.ndim == 2 and 1 in a.shape:
            a = a.reshape(-1)
        if a.ndim != 1:
            raise AudioError(f"audio must be mono (samples,), got shape {a.shape}; mix channels down first")
        if a.dtype.kind in "iu":
            raise AudioError(f"audio must be float in [-1, 1], got {a.dtype}; divide PCM16 by 32768")
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise AudioError(f"audio chunk has {int((~np.isfinite(a)).sum())} NaN/Inf samples; chunk rejected")
        if len(a) == 0:
            return
        self.mouth_target = 0.0
        self.mouth_step = 1.0 / self.down
        self._append(np.clip(a, -1.0, 1.0), False)
        self.n_real += len(a)
        self.arrivals.add(self.n_in, time.time() if arrival_time is None else arrival_time, True)

    def push_no_audio(self, n_samples: int, arrival_time: float | None = None) -> None:
        """Let ``n_samples`` (16 kHz) pass with no audio input: text-only motion from the style. Its frames
        have no ``audio_arrival_time``; their ``input_ready_time`` is ``arrival_time`` (None = now)."""
        if n_samples > 0:
            self._append(np.zeros(int(n_samples), np.float32), True)
            self.arrivals.add(self.n_in, time.time() if arrival_time is None else arrival_time, False)

    def _append(self, a: np.ndarray, noaudio: bool):
        self.buf = np.concatenate([self.buf, a])
        self.noaudio = np.concatenate([self.noaudio, np.full(len(a), noaudio)])
        self.n_in += len(a)

    def set_style(self, text: str, blend_s: float | None = None) -> None:
        """New style text, effective from the next token, cross-faded over ``blend_s`` seconds."""
        text = "" if text is None else str(text)
        resolved = resolve_style(text, self.model.text_encoder, self.cfg.parse_styles)
        new = self.model.text_embed(resolved.caption).to(self.device)
        r = self.model.refiner_style(resolved.caption)
        cur, cur_r = self._style_emb(self.k), self._refiner_code(self.k)
        blend_s = self.cfg.blend_s if blend_s is None else max(0.0, float(blend_s))
        self.emb_from, self.emb_to = cur, new
        self.rcode_from, self.rcode_to = cur_r, None if r is None else r.to(self.device)
        self.blend_k0 = self.k
        self.blend_n = max(1, int(round(blend_s * FPS / self.down)))
        if text != self.style:                       # the refiner's "time since the style was set" restarts,
            self.style_k0 = self.k                   # and its head offset fades from where it is now
            self.ref_head_from = self.ref_head
            self.gestures = self.gestures.then(resolved.gestures, self.k * self.down, self.blend_n * self.down,
                                               resolved.expression_gain)
        self.style = text
        self.resolved = resolved

    def set_guidance(self, scale: float) -> None:
        scale = float(scale)
        if not np.isfinite(scale):
            raise ValueError(f"guidance must be finite, got {scale}")
        self.guidance = scale

    def _blend(self, k: int) -> float:
        return min(1.0, (k - self.blend_k0 + 1) / self.blend_n)

    def _style_emb(self, k: int) -> torch.Tensor:
        return self.emb_from + (self.emb_to - self.emb_from) * self._blend(k)

    def _refiner_code(self, k: int) -> torch.Tensor | None:
        """The refiner's style code at token ``k``, cross-faded like the GPT's style vector."""
        if self.rcode_to is None:
            return None
        return self.rcode_from + (self.rcode_to - self.rcode_from) * self._blend(k)

    # ---- output ------------------------------------------------------------------------------
    @property
    def heard_end(self) -> int:
        """Timeline sample up to which the next token reads audio: its own end + the lookahead."""
        return self.spt * (self.k + 1) + self.look

    def hop_ready(self) -> bool:
        return self.n_in >= self.heard_end

    def poll(self) -> list[Frame]:
        """Frames that became ready since the last call (in order)."""
        while self.hop_ready():
            step_sessions([self])
        out, self.pending = self.pending, []
        return out

    def end(self, arrival_time: float | None = None) -> list[Frame]:
        """The input is over: the remaining frames, then ``tail_s`` of silence while the mouth closes.
        The padding counts as input that arrived at ``arrival_time`` (None = now); the last frame returned
        has ``final`` set."""
        t = time.time() if arrival_time is None else arrival_time
        if self.n_in > self.spt * self.k:                  # a partial token: pad it (and its lookahead)
            n_tok = -(-self.n_in // self.spt)
            self._pad(self.spt * n_tok + self.look - self.n_in, t)
        self.poll_into_pending()
        n_tail = max(1, int(round(self.cfg.tail_s * FPS / self.down)))
        self.mouth_target = 1.0
        self.mouth_step = 1.0 / (n_tail * self.down)
        self._pad(self.spt * (self.k + n_tail) + self.look - self.n_in, t)
        frames = self.poll()
        if frames:
            frames[-1].final = True
        return frames

    def flush(self, arrival_time: float | None = None) -> list[Frame]:
        """Barge-in: drop audio not yet used, then one hop of silence in which the face returns to idle
        (the silence counts as input that arrived at ``arrival_time``, None = now)."""
        committed = self.spt * self.k + self.look          # samples the computed tokens have read
        if self.n_in > committed:
            drop = self.n_in - committed
            self.buf, self.noaudio = self.buf[:-drop], self.noaudio[:-drop]
            self.n_in = committed
            self.arrivals.truncate(committed)
        n_idle = max(1, int(round(self.cfg.flush_idle_s * FPS / self.down)))
        self.mouth_target = 1.0
        self.mouth_step = 1.0 / self.down
        self._pad(self.spt * (self.k + n_idle) + self.look - self.n_in, time.time() if arrival_time is None
                  else arrival_time)
        return self.poll()

    def _pad(self, n: int, t: float) -> None:
        """Append ``n`` samples of silence the session inserts itself (end/flush), arrived at ``t``."""
        if n > 0:
            self._append(np.zeros(n, np.float32), False)
            self.arrivals.add(self.n_in, t, False)

    def poll_into_pending(self):
        while self.hop_ready():
            step_sessions([self])

    @property
    def t_in_s(self) -> float:
        """Audio time taken in so far (including inserted silence), seconds."""
        return self.n_in / 16000.0

    # ---- hop internals (used by step_sessions) ------------------------------------------------
    def _samples(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``[a, b)`` of the session timeline (zeros before 0) and their no-audio flags."""
        out = np.zeros(b - a, np.float32)
        flg = np.zeros(b - a, bool)
        lo = max(a, self.buf0)
        if b > lo:
            out[lo - a:] = self.buf[lo - self.buf0:b - self.buf0]
            flg[lo - a:] = self.noaudio[lo - self.buf0:b - self.buf0]
        return out, flg

    def _vad_gate(self) -> np.ndarray | None:
        """Voice-activity gate weights ``(down,)`` for this hop's frames (None: gate off or a no-audio token,
        whose text-driven mouth is left as it is). Reads only audio up to :attr:`heard_end`."""
        if self.vad is None:
            return None
        t0 = time.perf_counter()
        w = self.vad.frame_weights(lambda a, b: self._samples(a, b)[0], self.k * self.down, self.down)
        if self._samples(self.spt * self.k, self.spt * (self.k + 1))[1].all():
            w = None
        ms = (time.perf_counter() - t0) * 1e3
        self.stats["vad_ms"] = ms
        self.stats["vad_ms_total"] += ms
        return w

    def _contact(self, params: torch.Tensor, gate: np.ndarray | None) -> torch.Tensor:
        """This hop's frames ``params (down, 56)`` with the lip-contact stage applied (engine/closure.py), its
        weights scaled by the voice-activity ``gate (down,)`` (contacts are speech: where no speech is heard
        the gate has already put the mouth at rest); frames whose own samples are all no-audio get no
        contact. Reads only audio up to :attr:`heard_end`."""
        if self.contact is None:
            return params
        t0 = time.perf_counter()
        f0 = self.k * self.down
        w = self.contact.stream_weights(lambda a, b: self._samples(a, b)[0], f0, self.down)     # (down, 2)
        no_audio = self._samples(SAMPLES_PER_FRAME * f0, SAMPLES_PER_FRAME * (f0 + self.down))[1]
        w[no_audio.reshape(self.down, SAMPLES_PER_FRAME).all(axis=1)] = 0.0
        if gate is not None:
            w *= np.asarray(gate, np.float32)[:, None]
        out = torch.from_numpy(apply_contact(params.float().cpu().numpy(), w, self.contact_head,
                                             self.contact.cfg)).to(params)
        ms = (time.perf_counter() - t0) * 1e3
        self.stats["contact_ms"] = ms
        self.stats["contact_ms_total"] += ms
        return out

    def _after_hop(self, tok: int, frames_norm: torch.Tensor) -> None:
        m = self.model
        self.prev = tok
        self.hist.append(tok)
        self.hist = self.hist[-m.vq.receptive_tokens:]
        params = m.to_params(frames_norm)                                    # (down, 56)
        self.gestures.apply(params, self.k * self.down, m.head_name)      # gestures + intensity (engine/style.py)
        if self.cfg.blinks and m.head_name == "standin":
            ov = torch.from_numpy(blink_overlay(self.k * self.down, self.down, self.cfg.seed)).to(params)
            for u in ("blink_left", "blink_right"):
                params[:, UNIT_INDEX[u]] = torch.maximum(params[:, UNIT_INDEX[u]], ov)
        gate = self._vad_gate()
        ready_time = self.arrivals.at(self.heard_end - 1)[0]                # the last sample this token read
        for i in range(self.down):
            if gate is not None and gate[i] < 1.0:
                params[i, self.mouth_dims] *= float(gate[i])
        params = self._contact(params, gate)
        for i in range(self.down):
            if self.mouth_w != self.mouth_target:
                d = self.mouth_target - self.mouth_w
                self.mouth_w += max(-self.mouth_step, min(self.mouth_step, d))
            if self.mouth_w > 0:
                params[i, self.mouth_dims] *= (1.0 - self.mouth_w)
            seq = self.k * self.down + i
            arrived, real = self.arrivals.at(seq * SAMPLES_PER_FRAME)
            self.pending.append(Frame(seq=seq, t_audio_s=seq / FPS,
                                      params=params[i].float().cpu().numpy().astype(np.float32),
                                      style=self.style, audio_arrival_time=arrived if real else math.nan,
                                      input_ready_time=ready_time))
        self.k += 1
        self.arrivals.forget_before(self.spt * self.k)
        keep_from = self.spt * self.k - self.keep_back                       # trim the audio ring
        if keep_from > self.buf0:
            cut = keep_from - self.buf0
            self.buf, self.noaudio = self.buf[cut:], self.noaudio[cut:]
            self.buf0 = keep_from
        self.stats["hops"] += 1
        self.stats["frames"] += self.down


@torch.no_grad()
def step_sessions(sessions: list[StreamSession], state: BatchState | None = None) -> list[list[Frame]]:
    """Run one hop for every session in ``sessions`` (each must have ``hop_ready()``) as batched calls
    over the rows of ``state`` (default: the first session's state; sessions held elsewhere join it);
    the new frames are appended to each session's pending list (returned by its next ``poll()``) and
    also returned here, in the order of ``sessions``. ``poll()`` calls it with one session, so single
    and batched paths are one code.

    * the CNN feature step of all sessions whose new audio has the same length: one call, its
      features written into the state's feature windows;
    * one audio-encoder call over all windows, one G step over the sessions' KV-ring rows, stepped
      in place (:meth:`Runner.g_logits`), D grouped by history length, one refiner step over the
      rows' refiner pasts;
    * sampling: one batched top-k/softmax and one device-to-host copy; each session still draws
      from its own generator, so a session's frames do not depend on who shares its batch
      (``tests/test_batching_sessions.py``).
    The frames themselves are made by each session's own ``_after_hop`` (mouth closing, blinks).
    """
    if not sessions:
        return []
    if state is None:
        sessions[0].batch_state.apply_released()       # a session released from a scheduler's state moves out
        state = sessions[0].batch_state
    with state.lock:
        state.join_all(sessions)
        order = sorted(range(len(sessions)), key=lambda i: sessions[i].row)   # rows in order: views, not copies
        out = _hop(state, [sessions[i] for i in order])
    result: list = [None] * len(sessions)
    for i, frames in zip(order, out):
        result[i] = frames
    return result


def _hop(state: BatchState, sessions: list[StreamSession]) -> list[list[Frame]]:
    """:func:`step_sessions` for ``sessions`` that hold rows of ``state``, sorted by row."""
    model = state.model
    runner = runner_for(model)
    for s in sessions:
        if s.model is not model:
            raise ValueError("step_sessions: all sessions must share one model")
        if not s.hop_ready():
            raise ValueError("step_sessions: a session has no ready hop (check hop_ready() first)")
    dev = sessions[0].device
    N = len(sessions)
    rows = [s.row for s in sessions]
    t0 = time.perf_counter()
    # -- CNN features, grouped by the length of the new audio segment
    segs, nulls, ends = [], [], []
    for s in sessions:
        f_end = s.fpt * (s.k + 1) + s.la
        a0, a1 = FEAT_HOP * s.feat_next - FEAT_PAD, FEAT_HOP * f_end
        x, _ = s._samples(a0, a1)
        _, own = s._samples(s.spt * s.k, s.spt * (s.k + 1))
        segs.append(x)
        nulls.append(bool(own.all()))
        ends.append(f_end)
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(segs):
        by_len.setdefault(len(x), []).append(i)
    for _, idx in by_len.items():
        x = torch.from_numpy(np.stack([segs[i] for i in idx])).to(dev)
        new = model.audio.cnn(x)                                              # (n, F_new, C)
        at = state.rows_index([rows[i] for i in idx])
        state.feats[at] = torch.cat([state.feats[at], new], 1)[:, -state.W:]   # the windows slide in place
        for i in idx:
            sessions[i].feat_next = ends[i]
    wins = state.feats[state.rows_index(rows)]                                # (N, W, C)
    av = runner.encode_audio(wins)                                            # (N, d_model)
    null = torch.tensor(nulls, device=dev)
    av = torch.where(null[:, None], model.gpt.null_audio.detach()[None].expand_as(av), av)
    t1 = time.perf_counter()
    # -- one G step
    prev = torch.tensor([s.prev for s in sessions], device=dev)
    text = torch.stack([s._style_emb(s.k) for s in sessions])
    guid = torch.tensor([s.guidance for s in sessions], device=dev)
    logits = runner.g_logits(prev, av, text, state.kv, [2 * r for r in rows], guid)   # rows stepped in place
    toks = _sample_batch(model, logits, sessions)
    t2 = time.perf_counter()
    # -- D on each session's last receptive_tokens tokens, grouped by history length
    R = model.vq.receptive_tokens
    hists = [s.hist[-(R - 1):] + [t] if R > 1 else [t] for s, t in zip(sessions, toks)]
    frames_norm: list = [None] * N
    groups: dict[int, list[int]] = {}
    for i, h in enumerate(hists):
        groups.setdefault(len(h), []).append(i)
    for _, idx in groups.items():
        out = runner.decode(torch.tensor([hists[i] for i in idx], device=dev))   # (n, down, 56)
        for j, i in enumerate(idx):
            frames_norm[i] = out[j]
    if model.refiner is not None:
        frames_norm = _refine(model, state, sessions, av, frames_norm, null)
    t3 = time.perf_counter()
    result = []
    for i, s in enumerate(sessions):
        n0 = len(s.pending)
        s._after_hop(toks[i], frames_norm[i])          # the session's own frame logic (mouth, blinks, ...)
        result.append(s.pending[n0:])
        st = s.stats
        st["audio_enc_ms"], st["g_step_ms"], st["decode_ms"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3
        st["audio_enc_ms_total"] += st["audio_enc_ms"]
        st["g_step_ms_total"] += st["g_step_ms"]
        st["decode_ms_total"] += st["decode_ms"]
    return result


def _refine(model, state: BatchState, sessions, av, frames_norm, null) -> list:
    """Stage 3 (the refiner) for one token of every session: one batched :meth:`Refiner.step` over the
    sessions' rows of ``state.ref`` (each block's last inputs; same shapes for all, so no grouping) and, with
    an audio front, the audio windows that end at each token's own end + lookahead; ``null (N,)`` True
    where the token has no audio."""
    r = model.refiner
    dev = av.device
    window = None
    if r.front is not None:
        window = torch.from_numpy(np.stack([s._samples(s.heard_end - s.front_samples, s.heard_end)[0]
                                            for s in sessions]))
    at = state.rows_index([s.row for s in sessions])
    codes = [s._refiner_code(s.k) for s in sessions]
    past = [x[at] for x in state.ref]
    head_from = None
    if r.head_out is not None:
        head_from = torch.stack([s.ref_head_from if s.ref_head_from is not None
                                 else torch.zeros(3 * model.down, device=dev) for s in sessions])
    out, past, head = r.step(past, av, torch.stack(list(frames_norm)),
                              None if codes[0] is None else torch.stack(codes),
                              torch.tensor([s.k - s.style_k0 for s in sessions], device=dev), head_from,
                              None if window is None else window.to(dev), null)
    for x, p in zip(state.ref, past):
        x[at] = p
    for i, s in enumerate(sessions):
        s.ref_head = None if head is None else head[i]
    return list(out)


def _sample_batch(model, logits, sessions) -> list[int]:
    """``model.sample`` for every row at once; the random draw stays per session (its generator)."""
    N = len(sessions)
    toks = [0] * N
    cfgs: dict[tuple, list[int]] = {}
    for i, s in enumerate(sessions):
        cfgs.setdefault((float(s.cfg.temperature), int(s.cfg.top_k)), []).append(i)
    for (temp, top_k), idx in cfgs.items():
        lg = logits[idx]
        if temp <= 0:
            am = lg.argmax(-1).cpu().tolist()
            for j, i in enumerate(idx):
                toks[i] = int(am[j])
            continue
        p = model.token_probs(lg, temp, top_k).cpu()
        for j, i in enumerate(idx):
            toks[i] = int(torch.multinomial(p[j], 1, generator=sessions[i].gen)[0])
    return toks
