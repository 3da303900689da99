"""Stage 4: train the lip-contact classifier (``engine/closure.py``) on a corpus's phone timings.

    mm2face-train closure --data data/synth5 --init engine/assets/default.pt --out runs/closure

The targets are the synthetic truth's own contact weights (:func:`training.synth_face.contact_weights`: 1 on
the frames a p/b/m or f/v owns, 0.5 on frames it only partly overlaps), so the classifier learns exactly
when the truth closes the lips. Each example is a random crop of a talking clip with its full left context
(the crop's first frame sees the audio before it, as in a stream), put through a random microphone condition
(``training/augment.py``: reverberation, band-limiting, clipping, input gain -30..0 dBFS, noise beds -60..-35
dBFS, DC) with probability ``augment_share``. Only the lip-contact stage is trained; the rest of the model is
copied unchanged. Clips without phone timings (MMHead, t2m) are skipped: real MMHead has no phones, so
this stage is trained on the synthetic corpus.

The run writes ``OUT/model.pt`` (the ``--init`` model with the trained stage attached, the checkpoint
carrying :class:`ClosureConfig`) and ``OUT/log.jsonl``; ``--time-budget-min`` stops early and keeps the
best validation step.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mm2face.engine.closure import CONTACTS, ClosureConfig
from mm2face.engine.frame import SAMPLES_PER_FRAME

from .augment import AugmentConfig, augment
from .trainer import LOG_FILE, TimeBudget, log_line, progress_bar, seed_all


@dataclass
class ClosureTrainConfig:
    steps: int = 2500
    batch: int = 24                  # crops per step
    crop_frames: int = 64            # frames per crop (2.56 s)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment_share: float = 0.7       # share of crops put through a random microphone condition
    pos_weight: float = 2.0          # contact frames weigh this much more in the loss (they are ~10 % of frames)
    eval_every: int = 250
    seed: int = 0
    time_budget_min: float = 0.0     # stop after this many minutes (0 = no limit); the best validation step is kept


@dataclass
class _Clip:
    id: str
    audio: np.ndarray                # (samples,) float32
    target: np.ndarray               # (T, 2) float32 contact weights (bilabial, labiodental)
    phones: list


def load_contact_clips(roots, split: str) -> list[_Clip]:
    """Talking clips of ``split`` with phone timings from MMHead-layout corpora ``roots``."""
    from .mmhead import MMHeadCorpus
    from .synth_face import contact_weights
    out = []
    for root in roots:
        for c in MMHeadCorpus(root, subsets=("talking",), splits=(split,)).clips(split=split):
            phones = (c.meta or {}).get("phones")
            if c.audio_16k is None or not phones:
                continue
            w = contact_weights(phones, len(c.motion))
            out.append(_Clip(c.id, c.audio_16k, np.stack([w[k] for k in CONTACTS], 1).astype(np.float32), phones))
    return out


def _crop(clip: _Clip, f0: int, n: int, left: int, window: int) -> np.ndarray:
    """The samples frames ``f0 .. f0 + n - 1`` read (zeros outside the clip), as LipContact.stream_weights."""
    a = SAMPLES_PER_FRAME * f0 - left
    b = a + SAMPLES_PER_FRAME * (n - 1) + window
    x = np.zeros(b - a, np.float32)
    lo, hi = max(a, 0), min(b, len(clip.audio))
    if hi > lo:
        x[lo - a:hi - a] = clip.audio[lo:hi]
    return x


def contact_scores(net, clips: list[_Clip], threshold_p: float = 0.55) -> dict:
    """Per-phone scores on ``clips`` (clean audio): share of p/b/m (f/v) with a frame over ``threshold_p``
    among the frames they overlap, and share of vowel-owned frames over it (false contacts)."""
    from .articulation import BILABIALS, LABIODENTALS, VOWELS, classed_phones, core_frames, phone_frames
    hit = {"bilabial": [0, 0], "labiodental": [0, 0]}
    fp = [0, 0]
    with torch.no_grad():
        for c in clips:
            T = len(c.target)
            p = torch.sigmoid(net.clip_logits(torch.from_numpy(c.audio)[None], T)[0]).numpy()
            for cls, t0, t1 in classed_phones(c.phones):
                fr = phone_frames(t0, t1, T)
                if not len(fr):
                    continue
                if cls in BILABIALS:
                    hit["bilabial"][0] += 1
                    hit["bilabial"][1] += bool(p[fr, 0].max() >= threshold_p)
                elif cls in LABIODENTALS:
                    hit["labiodental"][0] += 1
                    hit["labiodental"][1] += bool(p[fr, 1].max() >= threshold_p)
                elif cls in VOWELS:
                    core = core_frames(t0, t1, T)
                    fp[0] += len(core)
                    fp[1] += int((p[core].max(1) >= threshold_p).sum())
    return {"bilabial_recall": hit["bilabial"][1] / max(hit["bilabial"][0], 1),
            "labiodental_recall": hit["labiodental"][1] / max(hit["labiodental"][0], 1),
            "vowel_false_contact": fp[1] / max(fp[0], 1), "bilabials": hit["bilabial"][0]}


def _loss(net, x: torch.Tensor, y: torch.Tensor, pos_weight: float) -> torch.Tensor:
    logits = net.logits_from_mel(net.front.log_mel(x), y.shape[1])
    w = 1.0 + (pos_weight - 1.0) * (y > 0).float()
    return F.binary_cross_entropy_with_logits(logits, y, weight=w)


def train_closure(model, roots, out, cfg: ClosureTrainConfig | None = None, net_cfg: ClosureConfig | None = None,
                  log=print, progress: bool = True) -> dict:
    """Attach a new lip-contact stage to ``model`` (an MM2Face on the stand-in head), train it on the talking
    clips of ``roots`` and save ``out/model.pt``. Returns the best validation scores."""
    cfg = cfg or ClosureTrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = seed_all(cfg.seed)
    train, val = load_contact_clips(roots, "train"), load_contact_clips(roots, "val")
    if not train:
        raise SystemExit(f"mm2face-train closure: no talking clips with phone timings in the train split of "
                         f"{', '.join(map(str, roots))}; make a synthetic corpus with `mm2face-data synth`")
    log(f"closure: {len(train)} train / {len(val)} val clips with phone timings")
    net = model.attach_closure(net_cfg or ClosureConfig())
    front = net.front
    with torch.no_grad():                                 # log-mel normalisation from clean training audio
        mel = torch.cat([front.log_mel(torch.from_numpy(c.audio)[None])[0] for c in train[:200]])
        front.mel_mean.copy_(mel.mean(0))
        front.mel_std.copy_(mel.std(0).clamp(min=1e-3))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    aug = AugmentConfig()
    best, best_state, budget = None, None, TimeBudget(cfg.time_budget_min)
    (out / LOG_FILE).unlink(missing_ok=True)
    bar = progress_bar(cfg.steps, "closure", progress)
    lens = np.array([len(c.target) for c in train])
    for step in range(1, cfg.steps + 1):
        net.train()
        xs, ys = [], []
        for i in rng.integers(len(train), size=cfg.batch):
            c = train[i]
            n = min(cfg.crop_frames, lens[i])
            f0 = int(rng.integers(0, lens[i] - n + 1))
            x = _crop(c, f0, n, net.left_samples, net.window_samples)
            if rng.random() < cfg.augment_share:
                x = augment(x, rng, aug)
            xs.append(x)
            ys.append(c.target[f0:f0 + n])
        n = min(len(y) for y in ys)                      # short clips make the whole batch that short
        L = SAMPLES_PER_FRAME * (n - 1) + net.window_samples
        x = torch.from_numpy(np.stack([a[:L] for a in xs]))
        y = torch.from_numpy(np.stack([b[:n] for b in ys]))
        loss = _loss(net, x, y, cfg.pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        over = budget.over()
        if step % cfg.eval_every == 0 or step == cfg.steps or over:
            net.eval()
            sc = contact_scores(net, val)
            score = sc["bilabial_recall"] + 0.5 * sc["labiodental_recall"] - sc["vowel_false_contact"]
            rec = {"step": step, "loss": loss.item(), "minutes": round(budget.elapsed_s() / 60, 2), **sc}
            log_line(out, rec)
            (bar.write if progress else log)(f"closure step {step}: loss {loss.item():.4f}  val p/b/m recall {sc['bilabial_recall']:.3f}  f/v "
                f"{sc['labiodental_recall']:.3f}  vowel false contact {sc['vowel_false_contact']:.3f}")
            if best is None or score > best[0]:
                best, best_state = (score, rec), copy.deepcopy(net.state_dict())
        if over:
            log(f"closure: time budget of {cfg.time_budget_min} min reached at step {step}")
            break
    bar.close()
    net.load_state_dict(best_state)
    net.eval()
    model.save(out / "model.pt", closure_train=asdict(cfg), closure_best=best[1])
    log(f"closure: kept step {best[1]['step']}; wrote {out / 'model.pt'}")
    return best[1]
