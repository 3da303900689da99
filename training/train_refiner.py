"""Stage 3 trainer: the audio refiner (:mod:`mm2face.engine.refiner`) on the model's own samples.

1. For up to ``max_clips`` training clips, stage 2 samples a motion with the clip's audio and caption at
   the streaming defaults (guidance, temperature, top-k of :class:`~mm2face.engine.session.StreamConfig`)
   and D decodes it; the audio vectors, the decoded frames and the ground truth (all normalised) are
   cached in ``OUT/inputs.pt`` (reused when the model file, clips, seed and sampling match).
2. The refiner learns, on whole clips from their start (as a stream sees them, zero history first),
   to map (audio vectors, decoded frames, style code, time since the style was set) to the ground truth
   on its dimensions: weighted MSE (jaw, mouth and head weigh more, as in stage 1) + ``w_vel`` x the same
   on frame-to-frame velocity + ``w_clip_mean`` x the squared per-clip mean error (the level a caption
   implies: an emotion's units, a turned head). On clips without audio (``text_only_loss="sorted"``)
   the frame and velocity terms compare each dimension's *sorted* values over the clip instead of frame
   by frame: a caption fixes which movements appear and how strongly, but not when, and a sample's
   timing is independent of the ground truth's, so a frame-by-frame error is lowest for a motion that
   shows every possible timing a little (a tame average) rather than one timing fully. The text of
   a training clip is one of its captions
   alone or all of them joined (:func:`~mm2face.training.dataset.clip_texts`, as stage 2), or none for
   ``style_drop`` of the clips; the captions' token states are cached in ``OUT/text_states.pt``. Stages
   1 and 2 stay frozen. Adam (betas 0.5, 0.999), warmup + cosine schedule, validation (joined captions)
   every ``val_every`` steps; ``OUT/model.pt`` is the MM2Face file with the best-validation refiner (a
   warm start counts as step 0, so a run that never beats it returns it).
   Single process: it takes minutes on a CPU.
3. With the refiner's audio front (``RefinerConfig.mel_bins``), every clip's log-mel is computed once
   (:func:`clip_mels`) and the front's normalisation is set from the training clips. ``warm_start``
   continues from the init file's own refiner (new parts start fresh, a warm front keeps its
   normalisation); ``freeze`` keeps named parts as they start (e.g. the head-pose path).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mm2face.engine.frame import HEAD, JAW
from mm2face.engine.units import unit
from mm2face.training.dataset import clip_texts
from mm2face.training.eval_cli import clip_caption
from mm2face.training.trainer import (TimeBudget, dim_weights, log_line, lr_at, make_adam, optimizer_step,
                                      progress_bar, report, seed_all, set_lr, torch_device)


@dataclass
class RefinerTrainConfig:
    out: str = "runs/refiner"      # output folder (model.pt = MM2Face file with the refiner, inputs.pt = cache)
    init: str = ""                 # MM2Face file whose stages 1-2 are refined ("" = the default checkpoint)
    steps: int = 1500              # optimiser steps
    batch: int = 16                # whole clips per step
    lr: float = 1e-3
    max_clips: int = 600           # training clips to sample (each costs one generation pass)
    max_val_clips: int = 100
    w_jaw: float = 4.0             # loss weight of the jaw dims (relative, as in stage 1)
    w_mouth: float = 2.0           # loss weight of the mouth expression dims
    w_head: float = 3.0            # loss weight of the head pose dims (relative, as in stage 1)
    w_contact: float = 1.0         # loss weight of the stand-in's lip-contact units (mouth_close, lower_lip_roll):
                                   # their truth is one- or two-frame closures that a plain MSE averages away
    w_clip_mean: float = 1.0       # weight of the per-clip mean error (emotion level, head offset; normalised)
    w_vel: float = 0.5             # velocity loss weight
    text_only_loss: str = "frames"  # clips without audio: "frames" (frame by frame, as talking clips) or
                                    # "sorted" (each dimension's sorted values over the clip: timing-free)
    style_drop: float = 0.15       # share of clips trained with the null style (as stage 2), for style-free streams
    movements_alone: bool = True   # False: on emotional clips, movement captions that name no emotion
                                   # train only joined to the emotion caption (see clip_texts), so that
                                   # a style naming no emotion asks for a calm face
    val_every: int = 250
    warm_start: bool = False       # start from the init file's own refiner where shapes match (new parts fresh)
    freeze: list = field(default_factory=list)   # refiner parameter name prefixes kept as they start, e.g.
                                                 # ["head_out", "text_", "time"] keeps a warm start's head path
    seed: int = 0
    device: str = "cpu"
    refiner: dict = field(default_factory=dict)   # RefinerConfig overrides, e.g. {"width": 96}
    sample_batch: int = 32         # clips whose stage-2 tokens are sampled together (one batched G step per token)
    augment_share: float = 0.0     # share of the talking training clips whose audio is replaced, before sampling,
                                   # by a microphone condition of training.augment (gain, noise beds, reverb);
                                   # the ground truth stays, so the refiner learns to articulate through them
    time_budget_min: float = 0.0   # stop training (after a last validation) once this many minutes of steps
                                   # have run; 0 = run all ``steps``

    def __post_init__(self):
        if self.text_only_loss not in ("frames", "sorted"):
            raise ValueError(f"text_only_loss must be 'frames' or 'sorted', got {self.text_only_loss!r}")
        if not 0.0 <= self.augment_share <= 1.0:
            raise ValueError(f"augment_share must be in [0, 1], got {self.augment_share}")


@torch.no_grad()
def sample_inputs(model, clips, seed: int, progress: bool = True, desc: str = "sampling",
                  batch: int = 32) -> list[dict]:
    """Per clip: ``av (n_tok, d)``, ``frames (n_tok*down, 56)`` decoded from a stage-2 sample and
    ``gt (n_tok*down, 56)`` (last frame repeated to fill the token), all normalised; ``n`` = real frames.

    Clip ``i`` is sampled as :func:`~mm2face.engine.generate.generate` samples it (its own caption, raw;
    seed ``seed + i``; the streaming defaults), ``batch`` clips at a time through one batched G step per
    token (:meth:`MM2Face.g_logits`, each clip its own cache rows and generator; a clip's steps past its
    end are never read), which costs about what one clip alone does on a CPU. Clips are grouped by
    length (little padding); the result keeps the order of ``clips``."""
    from mm2face.engine.generate import audio_vectors
    from mm2face.engine.session import StreamConfig
    from mm2face.training.eval_cli import has_audio

    sc = StreamConfig()
    out: list = [None] * len(clips)
    order = sorted(range(len(clips)), key=lambda i: len(clips[i].motion))
    bar = progress_bar(len(clips), desc, progress)
    for b0 in range(0, len(clips), max(1, batch)):
        idx = order[b0:b0 + max(1, batch)]
        group = [clips[i] for i in idx]
        n_frames = [len(c.motion) for c in group]
        n_toks = [max(1, -(-T // model.down)) for T in n_frames]
        audios = [c.audio_16k if has_audio(c) else None for c in group]
        avs = [audio_vectors(model, a, n).clone() for a, n in zip(audios, n_toks)]
        L = max(n_toks)
        av = torch.zeros(len(group), L, avs[0].shape[-1])
        for j, (a, n) in enumerate(zip(avs, n_toks)):
            av[j, :n] = a
        text = torch.stack([model.text_embed(clip_caption(c)) for c in group])          # raw captions
        gens = [torch.Generator().manual_seed(int(seed + i)) for i in idx]
        cache = model.gpt.new_cache()
        prev = torch.full((len(group),), model.gpt.bos, dtype=torch.long)
        toks = torch.zeros(len(group), L, dtype=torch.long)
        for t in range(L):
            logits = model.g_logits(prev, av[:, t], text, cache, sc.guidance)
            prev = torch.stack([model.sample(logits[j], sc.temperature, sc.top_k, gens[j]) for j in range(len(group))])
            toks[:, t] = prev
        for j, c in enumerate(group):
            T = n_frames[j]
            frames = model.vq.decode(toks[j:j + 1, :n_toks[j]])[0]
            gt = model.normalize(torch.from_numpy(np.asarray(c.motion, np.float32)))
            gt = torch.cat([gt, gt[-1:].expand(len(frames) - T, -1)]) if len(frames) > T else gt[:len(frames)]
            out[idx[j]] = {"av": avs[j], "frames": frames, "gt": gt, "n": T, "audio": audios[j] is not None}
        bar.update(len(group))
    bar.close()
    return out


def augmented_clips(clips, share: float, seed: int) -> tuple[list, list[str]]:
    """``clips`` with the audio of ``share`` of the talking ones replaced by one random microphone condition
    each (:func:`mm2face.training.augment.augment`, seeded per clip id); the ids changed."""
    from dataclasses import replace

    from mm2face.training.augment import augment
    from mm2face.training.eval_cli import has_audio
    out, ids = [], []
    for c in clips:
        cid = str(getattr(c, "id", ""))
        rng = np.random.default_rng([seed, int(hashlib.sha1(cid.encode()).hexdigest()[:8], 16)])
        if share > 0 and has_audio(c) and rng.random() < share:
            c = replace(c, audio_16k=augment(np.asarray(c.audio_16k, np.float32), rng))
            ids.append(cid)
        out.append(c)
    return out, ids


def widen_new_dims(model, clips, floor: float = 1e-2) -> dict[int, float]:
    """Give frame dimensions that stages 1-2 never saw move a usable normalisation.

    A unit added to the head after stages 1-2 were trained (e.g. the stand-in's ``mouth_close``) has mean 0
    and the std floor in the model's statistics, so its values would be a hundred normalised units and
    swamp the refiner's loss. Where the model has mean 0 and std at ``floor`` but ``clips``' ground truth
    varies, the std becomes that data's (the mean stays 0, so stages 1-2's ~0 output still decodes to rest).
    Returns ``{dim: new std}``."""
    x = np.concatenate([np.asarray(c.motion, np.float32) for c in clips])
    sd = x.std(0)
    new = {}
    for d in range(x.shape[1]):
        if float(model.mean[d]) == 0.0 and float(model.std[d]) <= floor * (1 + 1e-4) and sd[d] > 2 * floor:
            new[d] = float(sd[d])
            model.std[d] = float(sd[d])
    return new


@torch.no_grad()
def clip_mels(front, clips, n_toks: list[int], progress: bool = True) -> list:
    """The refiner front's raw log-mel per clip (:meth:`MelFront.clip_mel`, float16 ``(F, n_mels)``), None
    for clips without audio."""
    from mm2face.training.eval_cli import has_audio
    out = []
    for c, n in zip(tqdm(clips, desc="log-mel", disable=not progress, dynamic_ncols=True), n_toks):
        a = torch.from_numpy(np.asarray(c.audio_16k, np.float32))[None] if has_audio(c) else None
        out.append(None if a is None else front.clip_mel(a, n)[0].half())
    return out


def set_mel_stats(front, mels) -> None:
    """Per-band mean and std of the training clips' log-mel into the front's normalisation buffers."""
    x = torch.cat([m.float() for m in mels if m is not None])
    front.mel_mean.copy_(x.mean(0))
    front.mel_std.copy_(x.std(0).clamp(min=1e-3))


def _batch(items, down: int, dev, states: dict, style_drop: float = 0.0, rng=None, front=None) -> dict:
    """Left-aligned padding of whole clips: ``av (B, L, d)``, ``frames, gt (B, L*down, 56)``, ``mask
    (B, L*down)``, ``t_tok (B, L)``; the captions' token states ``text (B, N, d_text)`` with ``text_mask
    (B, N)``, and ``null (B,)`` True where the clip is trained without style (no caption, or dropped);
    with the refiner's audio front, ``mel (B, F, n_mels)`` raw log-mel and ``audio_null (B, L)`` (True
    for clips without audio; padding past a clip's end only reaches its masked tokens)."""
    L = max(len(it["av"]) for it in items)
    B, d = len(items), items[0]["av"].shape[1]
    av = torch.zeros(B, L, d)
    fr = torch.zeros(B, L * down, items[0]["frames"].shape[1])
    gt = torch.zeros_like(fr)
    mask = torch.zeros(B, L * down)
    caps = [it["texts"][int(rng.integers(len(it["texts"])))] if rng is not None else it["texts"][0] for it in items]
    st = [states.get(c) for c in caps]
    N = max([1] + [len(x) for x in st if x is not None])
    text = torch.zeros(B, N, next((x.shape[1] for x in st if x is not None), 1))
    text_mask = torch.zeros(B, N, dtype=torch.bool)
    text_mask[:, 0] = True                                # rows without text: one dummy token (result unused)
    null = torch.zeros(B, dtype=torch.bool)
    no_audio = torch.tensor([not it.get("audio", it.get("mel", 0) is not None) for it in items])   # caches
                                                                        # written before "audio": the log-mel tells
    for i, it in enumerate(items):
        n = len(it["av"])
        av[i, :n] = it["av"]
        fr[i, :n * down] = it["frames"]
        gt[i, :n * down] = it["gt"]
        mask[i, :it["n"]] = 1
        drop = rng is not None and rng.random() < style_drop
        if st[i] is None or drop:
            null[i] = True
        else:
            text[i, :len(st[i])] = st[i].float()
            text_mask[i, :len(st[i])] = True
    t_tok = torch.arange(L)[None].expand(B, L)
    b = {"av": av, "frames": fr, "gt": gt, "mask": mask, "t_tok": t_tok, "text": text, "text_mask": text_mask,
         "null": null, "no_audio": no_audio}
    if front is not None:
        mel = torch.zeros(B, front.hop_frames * (L - 1) + front.window_frames, front.mel_mean.shape[0])
        anull = torch.zeros(B, L, dtype=torch.bool)
        for i, it in enumerate(items):
            if it["mel"] is None:
                anull[i] = True
            else:
                mel[i, :len(it["mel"])] = it["mel"].float()
        b.update(mel=mel, audio_null=anull)
    return {k: v.to(dev) for k, v in b.items()}


def _sorted_sq(pred, gt, m):
    """Squared difference of ``pred`` and ``gt (B, T, D)`` after sorting each clip's values of every
    dimension over time; ``m (B, T, 1)`` marks real frames (padding sorts last in both and cancels)."""
    big = torch.tensor(1e4, dtype=pred.dtype, device=pred.device)
    ps = torch.where(m > 0, pred, big).sort(1).values
    gs = torch.where(m > 0, gt, big).sort(1).values
    return (ps - gs) ** 2


def _loss(model, w, b: dict, w_vel: float, w_clip_mean: float = 0.0, text_only_loss: str = "frames"):
    r = model.refiner
    style = None
    if r.cfg.d_text:
        code = r.pool_text(b["text"], b["text_mask"])                                  # (B, W)
        code = torch.where(b["null"][:, None], r.null_style[None].expand_as(code), code)
        style = code[:, None].expand(-1, b["av"].shape[1], -1)
    pred = r(b["av"], b["frames"], style, b["t_tok"], b.get("mel"), b.get("audio_null"), guidance=1.0)
    gt, mask = b["gt"], b["mask"]
    d = torch.cat([r.dims, r.head_dims]) if r.head_out is not None else r.dims
    sort = b["no_audio"][:, None, None] if text_only_loss == "sorted" and bool(b["no_audio"].any()) else None
    m = mask[..., None]
    mv = (mask[:, 1:] * mask[:, :-1])[..., None]

    def sq(p, g, mk):                           # (B, T, len(d)) squared error, timing-free on text-only clips
        e = (p - g) ** 2
        return e if sort is None else torch.where(sort, _sorted_sq(p, g, mk), e)

    err = sq(pred[..., d], gt[..., d], m) * w[d]
    rec = (err * m).sum() / (m.sum() * len(d)).clamp(min=1)
    vel = sq((pred[:, 1:] - pred[:, :-1])[..., d], (gt[:, 1:] - gt[:, :-1])[..., d], mv) * w[d]
    vel = (vel * mv).sum() / (mv.sum() * len(d)).clamp(min=1)
    loss = rec + w_vel * vel
    if w_clip_mean:          # per-clip mean error: a low-noise signal for what the caption implies on average
        e = ((pred - gt)[..., d] * m).sum(1) / m.sum(1).clamp(min=1)                    # (B, dims)
        loss = loss + w_clip_mean * (e.pow(2) * w[d]).mean()
    return loss, rec, pred


def text_states(model, captions: list[str], path: Path, progress: bool = True) -> dict:
    """Token states (float16) of every distinct non-empty caption, cached in ``path``."""
    have = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else {}
    todo = sorted({c for c in captions if c and c.strip() and c not in have})
    enc = model.text_encoder
    for i in tqdm(range(0, len(todo), 256), desc="caption token states", disable=not (progress and todo),
                  dynamic_ncols=True):
        chunk = todo[i:i + 256]
        for c, h in zip(chunk, enc.token_states([c.strip() for c in chunk])):
            have[c] = torch.from_numpy(h).half()
    if todo:
        torch.save(have, path)
    return have


def stage12_digest(model) -> str:
    """SHA-1 of the weights and normalisation that sampling depends on (everything but the refiner), so
    the sample cache follows the model's content, not its file name."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        if not k.startswith("refiner."):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def spread(clips: list, n: int) -> list:
    """At most ``n`` of ``clips``, evenly spaced, so that every part of a list ordered by subset is in the
    sample. The first ``n`` of a corpus's val split are all talking clips (the loader lists talking
    before text-only), so a validation loss on them could not see what a change did to text-only motion."""
    if len(clips) <= n:
        return list(clips)
    return [clips[int(i)] for i in np.linspace(0, len(clips) - 1, n).round().astype(int)]


def _snapshot(module) -> dict:
    """A CPU copy of ``module``'s state dict (the best-validation weights so far)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _cache(path: Path, key: dict, make):
    if path.exists():
        st = torch.load(path, map_location="cpu", weights_only=False)
        if st.get("key") == key:
            return st["items"]
    items = make()
    torch.save({"key": key, "items": items}, path)
    return items


def train_refiner(cfg: RefinerTrainConfig, train_clips, val_clips, progress: bool = True) -> Path:
    """Train stage 3; returns ``OUT/model.pt`` (the init model with the best-validation refiner)."""
    from mm2face.engine.model import default_checkpoint_path, load_model
    from mm2face.engine.refiner import RefinerConfig
    from mm2face.engine.session import StreamConfig

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = seed_all(cfg.seed)
    dev = torch_device(cfg.device)
    init = cfg.init or str(default_checkpoint_path())
    model = load_model(init)
    sc = StreamConfig()
    sampling = {"guidance": sc.guidance, "temperature": sc.temperature, "top_k": sc.top_k}
    train_clips = list(train_clips)
    if len(train_clips) > cfg.max_clips:
        train_clips = [train_clips[i] for i in sorted(rng.choice(len(train_clips), cfg.max_clips, replace=False))]
    val_clips = spread(list(val_clips or []), cfg.max_val_clips) or train_clips[:max(1, len(train_clips) // 10)]
    widened = widen_new_dims(model, train_clips)
    if widened:
        print(f"new dimensions get the training data's std: {widened}")
    train_clips, augmented = augmented_clips(train_clips, cfg.augment_share, cfg.seed)
    key = {"stages12": stage12_digest(model), "seed": cfg.seed,
           "sampling": sampling, "train": [getattr(c, "id", i) for i, c in enumerate(train_clips)],
           "val": [getattr(c, "id", i) for i, c in enumerate(val_clips)], "augmented": augmented}
    t0 = time.time()
    data = _cache(out / "inputs.pt", key, lambda: {
        "train": sample_inputs(model, train_clips, cfg.seed, progress, "sampling train clips", cfg.sample_batch),
        "val": sample_inputs(model, val_clips, cfg.seed + 10_000, progress, "sampling val clips", cfg.sample_batch)})
    t_sample = time.time() - t0
    for it, c in zip(data["train"], train_clips):      # training texts: each caption kind alone, and joined
        it["texts"] = clip_texts(c, cfg.movements_alone) or [""]
    for it, c in zip(data["val"], val_clips):          # validation: the joined caption, as mm2face-eval
        it["texts"] = [clip_caption(c)]
    states = text_states(model, [t for p in data.values() for it in p for t in it["texts"]],
                         out / "text_states.pt", progress)
    rcfg = RefinerConfig(**cfg.refiner)
    old = model.refiner.state_dict() if (cfg.warm_start and model.refiner is not None) else None
    model.attach_refiner(rcfg)
    same = {}
    if old is not None:
        mine = model.refiner.state_dict()
        same = {k: v for k, v in old.items() if k in mine and mine[k].shape == v.shape}
        model.refiner.load_state_dict(same, strict=False)
        print(f"warm start: {len(same)} of {len(mine)} refiner tensors from {init}")
    front = model.refiner.front
    if front is not None:
        for split, clips in (("train", train_clips), ("val", val_clips)):
            mels = clip_mels(front, clips, [len(it["av"]) for it in data[split]], progress)
            for it, m in zip(data[split], mels):
                it["mel"] = m
        if "front.mel_mean" not in same:          # a warm-started front keeps the normalisation it learned with
            set_mel_stats(front, [it["mel"] for it in data["train"]])
    model.to(dev).eval()
    ref = model.refiner.train()
    w = dim_weights(model.head_name, cfg.w_jaw, cfg.w_mouth, cfg.w_head)
    if model.head_name == "standin":
        w[[unit("mouth_close"), unit("lower_lip_roll")]] *= cfg.w_contact
    w = w.to(dev)
    frozen = [n for n, p in ref.named_parameters() if any(n.startswith(f) for f in cfg.freeze)]
    if cfg.freeze and not frozen:
        raise ValueError(f"--freeze {cfg.freeze} matches no refiner parameter; names: "
                         f"{sorted({n.split('.')[0] for n, _ in ref.named_parameters()})}")
    for n, p in ref.named_parameters():
        p.requires_grad_(n not in frozen)
    opt = make_adam([p for p in ref.parameters() if p.requires_grad], cfg.lr)
    vb = _batch(data["val"], model.down, dev, states, front=front)
    with torch.no_grad():
        base_val = _loss(model, w, vb, cfg.w_vel, text_only_loss=cfg.text_only_loss)[1].item()
    # the error at step 0: of the sampled motions (a new refiner is the identity) or of the warm start
    base_key = "val_rec_start" if old is not None else "val_rec_unrefined"
    best, best_state, best_step, t_start = float("inf"), None, 0, time.time()
    budget = TimeBudget(cfg.time_budget_min)
    if old is not None:          # a warm start competes too: a run that never beats it returns it unchanged
        best, best_state = base_val, _snapshot(ref)
    bar = progress_bar(cfg.steps, "refiner", progress)
    tr = data["train"]
    last_step = cfg.steps
    for step in range(1, cfg.steps + 1):
        out_of_time = budget.over()
        set_lr(opt, lr_at(step - 1, cfg.lr, cfg.steps))
        items = [tr[i] for i in rng.integers(len(tr), size=cfg.batch)]
        b = _batch(items, model.down, dev, states, cfg.style_drop, rng, front)
        loss, rec, _ = _loss(model, w, b, cfg.w_vel, cfg.w_clip_mean, cfg.text_only_loss)
        optimizer_step(opt, loss, ref.parameters())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0 or step == 1:
            log_line(out, {"step": step, "loss": loss.item(), "rec": rec.item(), "t_s": time.time() - t_start})
        if step % cfg.val_every == 0 or step == cfg.steps or out_of_time:
            ref.eval()
            with torch.no_grad():
                _, vrec, pred = _loss(model, w, vb, cfg.w_vel, text_only_loss=cfg.text_only_loss)
                m, g, f = vb["mask"].bool(), vb["gt"], vb["frames"]
                mae = lambda x, sl: ((x - g)[m][:, sl] * model.std[sl]).abs().mean().item()
                jaw, jaw0, head, head0 = mae(pred, JAW), mae(f, JAW), mae(pred, HEAD), mae(f, HEAD)
            ref.train()
            rec_val = {"step": step, "val_rec": vrec.item(), base_key: base_val,
                       "val_jaw_mae_rad": jaw, "val_jaw_mae_rad_unrefined": jaw0,
                       "val_head_mae_rad": head, "val_head_mae_rad_unrefined": head0}
            report(out, rec_val, progress)
            if vrec.item() < best:
                best, best_step = vrec.item(), step
                best_state = _snapshot(ref)
        if out_of_time:
            last_step = step
            print(f"time budget of {cfg.time_budget_min} min reached at step {step}")
            break
    bar.close()
    ref.load_state_dict(best_state)
    model.eval().cpu()
    model.info.meta.update({"refiner_steps": last_step, "refiner_clips": len(train_clips),
                            "refiner_widened_std": widened, "refiner_augmented_clips": len(augmented),
                            "refiner_sampling": sampling, "refiner_val_rec": best, "refiner_best_step": best_step,
                            "refiner_" + base_key: base_val, "refiner_sample_s": round(t_sample, 1),
                            "refiner_wall_s": round(time.time() - t_start, 1), "refiner_init": init,
                            "refiner_train_cfg": asdict(cfg)})
    path = out / "model.pt"
    model.save(path)
    return path


__all__ = ["RefinerTrainConfig", "train_refiner", "sample_inputs"]
