"""Torch datasets over an MMHead-layout corpus (real or synthetic) for the two training stages.

Both take a list of clips (objects with ``motion (T, 56)``, ``audio_16k`` or None, ``captions``
dict, ``subset``), e.g. from :class:`mm2face.training.mmhead.MMHeadCorpus`, so tests can feed
in-memory clips. Random crops are drawn from a generator seeded by ``(seed, epoch, index)``:
the same seed gives the same batches.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mm2face.engine.frame import SAMPLES_PER_FRAME


@dataclass
class SimpleClip:
    """Minimal clip record (what the datasets read); MMHeadCorpus' Clip has the same fields."""
    id: str
    motion: np.ndarray                      # (T, 56) float32 at 25 fps
    audio_16k: np.ndarray | None = None     # (samples,) float32 16 kHz, or None (text-to-motion)
    captions: dict | None = None            # kind -> caption
    subset: str = "talking"
    split: str = "train"


def load_clips(root, split: str, subsets=("talking", "t2m"), limit: int = 0) -> list:
    """Clips of one split from a corpus folder via the data engineer's loader."""
    try:
        from mm2face.training.mmhead import MMHeadCorpus
    except ImportError as e:
        raise RuntimeError("mm2face.training.mmhead (the corpus loader) is not available yet") from e
    corpus = MMHeadCorpus(root, subsets=tuple(subsets))
    ids = []
    for sub in subsets:
        ids += list(corpus.ids(split=split, subset=sub))
    if not ids:
        raise ValueError(f"{root}: no {split} clips in subsets {subsets} "
                         f"(loader errors: {corpus.errors[:3]})")
    if limit:
        ids = ids[:limit]
    return [corpus.get(i) for i in ids]


def motion_stats(clips) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over all frames: ``(56,), (56,)`` float32."""
    allm = np.concatenate([np.asarray(c.motion, np.float32) for c in clips])
    return allm.mean(0).astype(np.float32), allm.std(0).astype(np.float32)


JOIN_ORDER = ("emotion", "detail_expression", "detail_head_pose", "action", "emotion_scenario")


def joined_caption(captions: dict) -> str:
    """All captions in one text, in a fixed order (what mm2face-eval conditions on)."""
    caps = captions or {}
    parts = [str(caps[k]) for k in JOIN_ORDER if caps.get(k)]
    parts += [str(v) for k, v in sorted(caps.items()) if k not in JOIN_ORDER and v]
    return " ".join(parts)


# Words that name an emotion (MMHead's seven categories and common synonyms); "calm", "neutral" and
# "relaxed" name none.
EMOTION_WORDS = re.compile(
    r"\b(happ\w*|joy\w*|smil\w*|cheer\w*|pleased|delight\w*|glad|laugh\w*|grin\w*|sad\w*|unhapp\w*|"
    r"sorrow\w*|downcast|grie\w*|depress\w*|frown\w*|upset|angr\w*|anger|annoy\w*|furious|irritat\w*|mad|"
    r"rage\w*|surpris\w*|astonish\w*|amaz\w*|startl\w*|shock\w*|disgust\w*|repuls\w*|revolt\w*|gross\w*|"
    r"fear\w*|scared|frighten\w*|afraid|anxious|nervous|worried|contempt\w*)\b", re.IGNORECASE)
# Caption kinds that describe movements, not feelings
MOVEMENT_KINDS = ("action", "detail_head_pose")


def names_emotion(text: str) -> bool:
    """Does ``text`` name an emotion (:data:`EMOTION_WORDS`)?"""
    return bool(EMOTION_WORDS.search(text or ""))


def clip_texts(clip, movements_alone: bool = True) -> list[str]:
    """The style captions a clip can be trained with (repeats = weight): each kind once,
    emotion + action joined once, and all captions joined (x3).

    ``movements_alone=False``: on a clip whose emotion caption names an emotion, a movement caption
    (:data:`MOVEMENT_KINDS`) that names none itself comes only after the emotion caption, never alone.
    MMHead's kinds are separate texts, so "The person turns the head to the left." alone is otherwise
    a training text of angry, sad and surprised clips, and a style that names no emotion would ask for
    the average of them rather than a calm face."""
    caps = {k: v.strip() for k, v in (clip.captions or {}).items() if v and v.strip()}
    emotional = not movements_alone and names_emotion(caps.get("emotion", ""))
    out = []
    for k, v in caps.items():
        if emotional and k in MOVEMENT_KINDS and not names_emotion(v):
            if k != "action":                         # emotion + action is joined below anyway
                out.append(f"{caps['emotion']} {v}")
        else:
            out.append(v)
    if "emotion" in caps and "action" in caps:
        out.append(f"{caps['emotion']} {caps['action']}")
    if len(caps) > 1:
        out += [joined_caption(clip.captions)] * 3
    return out


class MotionWindows(Dataset):
    """Stage 1: normalised motion windows ``(window, 56)``; ``window`` frames (a multiple of down)."""

    def __init__(self, clips, mean, std, window: int = 64, items_per_epoch: int = 0, seed: int = 0):
        self.m = [(np.asarray(c.motion, np.float32) - mean) / std for c in clips]
        self.m = [x for x in self.m if len(x) >= 8]
        if not self.m:
            raise ValueError("MotionWindows: no clip has at least 8 frames")
        self.window = window
        lens = np.array([len(x) for x in self.m], float)
        self.p = lens / lens.sum()
        self.n = items_per_epoch or max(1, int(lens.sum() // window))
        self.seed = seed
        self.epoch = 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        x = self.m[rng.choice(len(self.m), p=self.p)]
        W = self.window
        if len(x) >= W:
            s = rng.integers(0, len(x) - W + 1)
            w = x[s:s + W]
        else:                                  # short clip: repeat the last frame
            w = np.concatenate([x, np.repeat(x[-1:], W - len(x), 0)])
        return torch.from_numpy(np.ascontiguousarray(w))


class TokenCrops(Dataset):
    """Stage 2: crops of ``n_tokens`` motion tokens with their audio context and a caption.

    ``tokens[i]``: the VQ tokens of clip i (``(K,)`` int64). Each item is a dict:
    ``prev (L,)`` (BOS before the clip start), ``target (L,)`` (-100 past the clip end),
    ``audio (context_len,)`` float32 with ``has_audio`` (bool), ``text`` (index into ``texts``).
    With ``motions`` (each clip's normalised motion ``(T, 56)``) also ``motion (L * down, 56)``, the
    frames of the crop's tokens (zeros past the clip end), for the trainer's auxiliary regressions.
    """

    def __init__(self, clips, tokens, audio_encoder, down: int, bos: int, n_tokens: int = 64,
                 texts: list[str] | None = None, items_per_epoch: int = 0, seed: int = 0,
                 motions: list[np.ndarray] | None = None):
        self.clips, self.tokens, self.motions = clips, tokens, motions
        self.L, self.down, self.bos = n_tokens, down, bos
        self.spt = down * SAMPLES_PER_FRAME
        self.ctx = audio_encoder.context_samples
        self.alen = audio_encoder.context_len(n_tokens)
        self.texts = texts if texts is not None else sorted({t for c in clips for t in clip_texts(c)})
        self.text_idx = {t: i for i, t in enumerate(self.texts)}
        self.clip_texts = [[self.text_idx[t] for t in clip_texts(c) if t in self.text_idx] for c in clips]
        lens = np.array([max(1, len(t)) for t in tokens], float)
        self.p = lens / lens.sum()
        self.n = items_per_epoch or max(1, int(lens.sum() // n_tokens))
        self.seed = seed
        self.epoch = 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        ci = int(rng.choice(len(self.clips), p=self.p))
        toks, clip, L = self.tokens[ci], self.clips[ci], self.L
        K = len(toks)
        s = int(rng.integers(0, max(1, K - L + 1)))
        tgt = np.full(L, -100, np.int64)
        seg = toks[s:s + L]
        tgt[:len(seg)] = seg
        prev = np.full(L, self.bos, np.int64)
        prev[1:] = np.where(tgt[:-1] >= 0, tgt[:-1], self.bos)
        prev[0] = toks[s - 1] if s > 0 else self.bos
        audio = np.zeros(self.alen, np.float32)
        has_audio = clip.audio_16k is not None and len(clip.audio_16k) > 0
        if has_audio:
            a0 = s * self.spt - self.ctx                        # clip sample at audio[0]
            src = np.asarray(clip.audio_16k, np.float32)
            lo, hi = max(a0, 0), min(a0 + self.alen, len(src))
            if hi > lo:
                audio[lo - a0:hi - a0] = src[lo:hi]
        choices = self.clip_texts[ci]
        text = int(choices[rng.integers(len(choices))]) if choices else -1
        item = {"prev": torch.from_numpy(prev), "target": torch.from_numpy(tgt),
                "audio": torch.from_numpy(audio), "has_audio": torch.tensor(has_audio),
                "text": torch.tensor(text)}
        if self.motions is not None:
            mot = np.zeros((L * self.down, self.motions[ci].shape[1]), np.float32)
            seg_m = self.motions[ci][s * self.down:(s + L) * self.down]
            mot[:len(seg_m)] = seg_m
            item["motion"] = torch.from_numpy(mot)
        return item
