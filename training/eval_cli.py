"""``mm2face-eval``: score a checkpoint on a corpus split and compare it with the mean-frame baseline.

    mm2face-eval --data data/synth --split test --out runs/eval/results.json
    mm2face-eval --ckpt runs/mm2face/last.pt --data data/synth --max-clips 50

For every clip of the split it generates motion from the clip's audio (or from text alone for
text-only clips) and its caption, offline (the whole clip at once), then computes the metrics of
:mod:`mm2face.training.metrics` against the ground truth. The baseline predicts the training split's
mean frame for every frame. A text-only contrast ("smiles" vs "frowns") checks that captions alone
steer the face, and a head-rest probe that captions naming no head movement leave the head near
rest. Prints a table and writes everything (aggregate and per clip) as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from mm2face.training import articulation as A
from mm2face.training import metrics as M

CONTRAST_PAIRS = [("A person smiles warmly.", "A person frowns sadly.", "happy", "sad")]
# Captions that name no head movement: a text-only motion should keep the head near rest (an emotion
# must not come out as a lean). On the synthetic corpus the clips whose captions mention a smile hold the
# head at +0.00 rad on average.
HEAD_REST_CAPTIONS = ["A person smiles.", "A person frowns sadly.", "The person looks surprised.",
                      "A person talks calmly."]
HEAD_REST_LIMIT_RAD = 0.1      # about 6 degrees: the largest held head offset the probe accepts
# Captions that name no emotion (and the empty style of an idle stream): no emotion check may fire on
# their text-only motion. A sampled model can have a favourite expression (a smile) that only shows here,
# since the emotion checks score captions that ask for one.
EMOTION_REST_CAPTIONS = ["", "A person talks calmly.", "The person nods.", "The person turns the head to the left."]


def clip_caption(clip) -> str:
    """The text the model is conditioned on: the clip's captions joined in the training order
    (:func:`mm2face.training.dataset.joined_caption`)."""
    from mm2face.training.dataset import joined_caption
    caps = getattr(clip, "captions", None) or {}
    return caps if isinstance(caps, str) else joined_caption(caps)


def clip_speech_mask(clip, T: int):
    """Per-frame speech activity ``(T,)`` from the synthetic corpus's ``meta["speech"]`` / ``meta["speech_mask"]``
    (talking clips only), else None."""
    meta = getattr(clip, "meta", None) or {}
    sp = meta.get("speech", meta.get("speech_mask"))
    if sp is None or not has_audio(clip):
        return None
    return np.asarray(sp).astype(bool)[:T]


def has_audio(clip) -> bool:
    a = getattr(clip, "audio_16k", None)
    return a is not None and len(a) > 0


def generate_motion(model, text: str, audio_16k, n_frames: int, device: str, seed: int,
                    guidance: float | None = None, **sampling) -> np.ndarray:
    """Offline generation (:func:`mm2face.engine.generate.generate`) -> ``(T, 56)`` float32.

    ``audio_16k``: ``(samples,)`` float32 at 16 kHz or None for text only (``n_frames`` frames);
    ``guidance`` and ``sampling`` (``temperature``, ``top_k``): None keeps generate's defaults."""
    from mm2face.engine.generate import generate
    kw = {k: v for k, v in dict(guidance=guidance, **sampling).items() if v is not None}
    # by default the corpus's captions go to the model as they are (no style parser or gesture layer):
    # they describe the clip's own course, which the scores compare with; parse_styles=True scores the
    # path mm2face-live runs (parser + gesture layer); `mm2face-eval styles` scores the parser on its own sets
    kw.setdefault("parse_styles", False)
    audio = None if audio_16k is None else np.asarray(audio_16k, np.float32)
    return np.asarray(generate(model, audio, text, seed=seed, n_frames=n_frames, device=device, **kw), np.float32)


def load_checkpoint(ckpt: str | None, device: str):
    """The model from ``ckpt``, or the default checkpoint when ``ckpt`` is None."""
    from mm2face.engine.model import load_model
    return load_model(ckpt, device=device) if ckpt else load_model(device=device)


def model_head_spec(model, override: str | None) -> str:
    """Which head's parameter space the checkpoint speaks ("standin" unless it says otherwise)."""
    if override:
        return override
    for obj in (model, getattr(model, "cfg", None), getattr(model, "config", None)):
        h = getattr(obj, "head", None)
        if isinstance(h, str) and h:
            return h
    return "standin"


# ----------------------------------------------------------------------------- evaluation

TRACE_CLIPS = 2     # talking clips whose jaw trajectories (GT and model, first seed) go into the JSON and plot


def combine_seeds(aggs: list[dict]) -> dict:
    """One aggregate from several sampling seeds' aggregates: numbers are averaged (pass rates too,
    i.e. pooled over the seeds' checks), per-rule pass rates likewise; ``seeds`` says how many."""
    if len(aggs) == 1:
        return dict(aggs[0], seeds=1)
    out: dict = {"seeds": len(aggs)}
    for k, v in aggs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [a[k] for a in aggs if k in a]
            out[k] = float(np.mean(vals)) if not k.endswith(("checks", "clips")) else v
            if k.endswith("pass_rate") or k in M.LIP_SYNC_KEYS:
                out[f"{k}_seed_range"] = [float(min(vals)), float(max(vals))]
        elif k.endswith("style_by_rule"):
            out[k] = {r: {"pass_rate": float(np.mean([a[k][r]["pass_rate"] for a in aggs if r in a.get(k, {})])),
                          "clips": d["clips"]} for r, d in v.items()}
        else:
            out[k] = v
    return out


def clip_phones(clip):
    """The clip's phone timings (``synth_meta["phones"]``: ``[ipa, t0_s, t1_s, stressed]`` rows) or None."""
    meta = getattr(clip, "meta", None) or {}
    return meta.get("phones") or None


def evaluate(model, corpus, split: str, head, device: str = "cpu", max_clips: int | None = None,
             seed: int = 0, guidance: float | None = None, baseline_clips: int = 2000,
             progress: bool = True, seeds: int = 1, temperature: float | None = None,
             top_k: int | None = None, vad: bool | None = None, contact: bool | None = None,
             parse_styles: bool = False, noise_gains: tuple = A.GAINS_DBFS, baseline_corpus=None) -> dict:
    """Score ``model`` (may be None: baseline only) on ``corpus``'s ``split``. Returns the JSON-able results.

    ``seeds``: generate every clip with sampling seeds ``seed .. seed + seeds - 1`` and report the mean
    (the model samples its tokens; a style check on a few dozen clips moves by several points between
    seeds). Lip-sync metrics are averaged over the clips with audio (see :func:`metrics.aggregate`).
    ``temperature``/``top_k``: sampling settings (None: the generator's defaults); ``vad``: the voice-activity
    gate (engine/vad.py; None: generate's default, on); ``contact``: the lip-contact stage (engine/closure.py;
    None: generate's default, on where the model has one). ``baseline_corpus``: the corpus whose train split
    gives the mean-frame baseline (default ``corpus``; a held-out set without a train split needs one).

    Articulation (:mod:`training.articulation`, heads with a ``lip_midline`` mask, talking clips): closure,
    opening and rest counts of every seed's motion and of the ground truth on the clip's phones and pauses;
    and, for the first seed, rest and flicker in pauses with the clip heard at each peak level of
    ``noise_gains`` (dBFS) over the -45 dBFS low-frequency noise bed (empty: skipped)."""
    sampling = {"temperature": temperature, "top_k": top_k, "vad": vad, "contact": contact,
                "parse_styles": parse_styles}
    from tqdm import tqdm

    src = corpus if baseline_corpus is None else baseline_corpus     # whose train split gives the mean frame
    train = list(src.clips("train") if hasattr(src, "clips") else src.split("train"))
    mean = M.mean_frame([c.motion for c in train[:baseline_clips]]) if train else None
    test = list(corpus.clips(split) if hasattr(corpus, "clips") else corpus.split(split))
    if max_clips:
        test = test[:max_clips]
    if not test:
        raise SystemExit(f"no clips in split {split!r}; check --data and --split")
    seed_list = list(range(seed, seed + max(1, seeds)))
    per_model: dict[int, list] = {s: [] for s in seed_list}
    artic = head is not None and "lip_midline" in (getattr(head, "masks", None) or {})
    art: dict = {"model": [], "gt": [], "noise": {float(g): [] for g in noise_gains}}
    per_base, rows = [], []
    t0 = time.perf_counter()
    gen_s = 0.0
    for clip in tqdm(test, desc=f"eval {split}", disable=not progress):
        gt = np.asarray(clip.motion, np.float32)
        T = len(gt)
        text = clip_caption(clip)
        speech = clip_speech_mask(clip, T)
        row = {"id": clip.id, "subset": getattr(clip, "subset", ""), "frames": T, "text": text}
        gv = M.vertices(M.metric_head(head), gt) if head is not None else None
        if model is not None:
            for s in seed_list:
                tg = time.perf_counter()
                pred = generate_motion(model, text, clip.audio_16k if has_audio(clip) else None, T, device, s,
                                       guidance, **sampling)
                gen_s += time.perf_counter() - tg
                m = M.clip_metrics(pred, gt, head=head, speech=speech, captions=clip.captions, gt_verts=gv)
                m["audio"] = has_audio(clip)
                per_model[s].append(m)
                if artic and has_audio(clip):
                    art["model"].append(A.clip_articulation(head, pred[:T], clip_phones(clip), speech))
                    if s == seed:
                        row["articulation"] = _art_row(art["model"][-1])
                if s == seed:
                    row["model"] = m
                    if has_audio(clip) and sum(1 for r in rows if "trace" in r) < TRACE_CLIPS:
                        row["trace"] = {"jaw_gt": gt[:, 53].round(4).tolist(), "jaw_model": pred[:T, 53].round(4).tolist()}
                else:
                    row.setdefault("model_other_seeds", []).append(
                        {k: v for k, v in m.items() if k not in ("style_gt",)})
        if artic and has_audio(clip):
            art["gt"].append(A.clip_articulation(head, gt, clip_phones(clip), speech))
            row["articulation_gt"] = _art_row(art["gt"][-1])
            if model is not None and speech is not None:
                for g in noise_gains:
                    rng = np.random.default_rng([seed, zlib.crc32(str(clip.id).encode()), int(round(-10 * g))])
                    noisy = A.noise_bed_audio(clip.audio_16k, g, rng)
                    pred_n = generate_motion(model, text, noisy, T, device, seed, guidance, **sampling)
                    art["noise"][float(g)].append(A.clip_articulation(head, pred_n[:T], None, speech))
        if mean is not None:
            b = M.clip_metrics(M.mean_frame_motion(mean, T), gt, head=head, speech=speech, captions=clip.captions,
                              gt_verts=gv)
            b["audio"] = has_audio(clip)
            row["baseline"] = b
            per_base.append(b)
        rows.append(row)
    res: dict = {"split": split, "clips": len(test), "wall_s": time.perf_counter() - t0}
    if model is not None:
        aggs = [M.aggregate(per_model[s]) for s in seed_list]
        res["model"] = combine_seeds(aggs)
        res["seeds"] = seed_list
        if len(aggs) > 1:
            res["model_per_seed"] = aggs
        audio_s = sum(len(c.audio_16k) / 16000 for c in test if has_audio(c))
        res["model"]["generate_s"] = gen_s
        res["model"]["audio_s"] = audio_s
    if per_base:
        res["baseline_mean_frame"] = M.aggregate(per_base)
    if art["gt"]:
        res["articulation"] = articulation_summary(art)
    if model is not None:
        res["contrast"] = text_contrast(model, device, seed, guidance, **sampling)
        res["head_rest"] = head_rest_probe(model, device, seed, guidance, **sampling)
        res["emotion_rest"] = emotion_rest_probe(model, device, seed, guidance, **sampling)
        res["sampling"] = {"guidance": guidance, **sampling}
    res["per_clip"] = rows
    return res


def _art_row(r: dict) -> dict:
    """The per-clip articulation counts for the JSON (the list of minimal gaps rounded)."""
    return {k: ([round(x, 2) for x in v] if isinstance(v, list) else v) for k, v in r.items()}


def articulation_summary(art: dict) -> dict:
    """Pooled articulation (:func:`articulation.aggregate_articulation`) of the model (all seeds), the ground
    truth, each noise-bed gain, and the worst gain (lowest rest rate, highest flicker)."""
    out = {"model": A.aggregate_articulation(art["model"]), "gt": A.aggregate_articulation(art["gt"]),
           "band_mm": A.LIP_BAND_MM, "labiodental_band_mm": A.LABIODENTAL_BAND_MM,
           "noise_bed_dbfs": A.NOISE_BED_DBFS, "noise_bed_kind": A.NOISE_BED_KIND}
    noise = {g: A.aggregate_articulation(rows) for g, rows in art["noise"].items() if rows}
    if noise:
        out["noise"] = {f"{g:g}": v for g, v in noise.items()}
        rest = [v["rest_rate"] for v in noise.values() if "rest_rate" in v]
        flick = [v["flicker_mm_per_frame"] for v in noise.values() if "flicker_mm_per_frame" in v]
        out["noise_worst"] = {"gains_dbfs": sorted(noise), "rest_rate": min(rest) if rest else None,
                              "flicker_mm_per_frame": max(flick) if flick else None}
    return out


def text_contrast(model, device: str, seed: int, guidance: float | None, seconds: float = 4.0,
                  seeds: int = 3, **sampling) -> list[dict]:
    """Text-only motions for contrasting captions; ``told_apart`` when their contrast score is > 0 for every seed."""
    out = []
    n = int(seconds * M.FPS)
    for cap_a, cap_b, rule_a, rule_b in CONTRAST_PAIRS:
        scores = []
        for s in range(seeds):
            a = generate_motion(model, cap_a, None, n, device, seed + s, guidance, **sampling)
            b = generate_motion(model, cap_b, None, n, device, seed + s, guidance, **sampling)
            scores.append(M.contrast_score(a, b, rule_a, rule_b))
        out.append({"a": cap_a, "b": cap_b, "rules": [rule_a, rule_b], "scores": scores,
                    "told_apart": bool(min(scores) > 0)})
    return out


def head_rest_probe(model, device: str, seed: int, guidance: float | None, seconds: float = 4.0,
                    seeds: int = 3, **sampling) -> dict:
    """Text-only motions for :data:`HEAD_REST_CAPTIONS`: per caption the head pose averaged over the
    second half and over ``seeds`` seeds ``(3,)`` rad (rx, ry, rz); ``worst_rad`` = the largest absolute
    axis value, ``at_rest`` when it stays under :data:`HEAD_REST_LIMIT_RAD`."""
    n = int(seconds * M.FPS)
    per = {}
    for cap in HEAD_REST_CAPTIONS:
        poses = [generate_motion(model, cap, None, n, device, seed + s, guidance, **sampling)[n // 2:, M.HEAD].mean(0)
                 for s in range(seeds)]
        per[cap] = [float(x) for x in np.mean(poses, 0)]
    worst_cap = max(per, key=lambda c: max(abs(x) for x in per[c]))
    worst = max(abs(x) for x in per[worst_cap])
    return {"per_caption_rad": per, "worst_caption": worst_cap, "worst_rad": worst,
            "limit_rad": HEAD_REST_LIMIT_RAD, "at_rest": bool(worst < HEAD_REST_LIMIT_RAD)}


def emotion_rest_probe(model, device: str, seed: int, guidance: float | None, seconds: float = 4.0,
                       seeds: int = 3, **sampling) -> dict:
    """Text-only motions for :data:`EMOTION_REST_CAPTIONS`: per caption and emotion rule the rule's score
    (:meth:`metrics.StyleRule.score`) averaged over ``seeds`` seeds; ``at_rest`` when every one stays under
    its rule's margin, i.e. no emotion check would pass on a caption that names no emotion."""
    n = int(seconds * M.FPS)
    per = {}
    for cap in EMOTION_REST_CAPTIONS:
        motions = [generate_motion(model, cap, None, n, device, seed + s, guidance, **sampling) for s in range(seeds)]
        per[cap] = {r.name: float(np.mean([r.score(x) for x in motions])) for r in M.STYLE_RULES}
    ratio = {(c, r.name): per[c][r.name] / r.margin for c in per for r in M.STYLE_RULES}
    worst_cap, worst_rule = max(ratio, key=ratio.get)
    return {"per_caption": per, "worst_caption": worst_cap, "worst_rule": worst_rule,
            "worst_score": per[worst_cap][worst_rule], "margin": next(r.margin for r in M.STYLE_RULES
                                                                   if r.name == worst_rule),
            "at_rest": bool(ratio[(worst_cap, worst_rule)] < 1.0)}


# ----------------------------------------------------------------------------- reporting

TABLE_ROWS = [  # (key, label, format)
    ("lve_mm", "LVE (mm, lower is better)", "{:.3f}"),
    ("fve_mm", "FVE (mm)", "{:.3f}"),
    ("jaw_corr", "jaw opening corr. with GT", "{:.3f}"),
    ("lip_open_corr", "lip gap corr. with GT", "{:.3f}"),
    ("pause_closed_rate", "mouth closed in pauses", "{:.1%}"),
    ("emotion_pass_rate", "emotion units move right way", "{:.1%}"),
    ("pose_pass_rate", "head pose matches caption", "{:.1%}"),
    ("held_pose_pass_rate", "... turns, looks up/down, tilts", "{:.1%}"),
    ("gesture_pass_rate", "... nods, head shakes", "{:.1%}"),
]


def articulation_rows(art: dict | None) -> list[str]:
    """Table rows (metric | model | – | ground truth) of :func:`articulation_summary`'s results."""
    if not art:
        return []
    mod, gt = art["model"], art["gt"]
    pct = lambda d, k: f"{d[k]:.1%}" if d.get(k) is not None else "–"
    num = lambda d, k, f="{:.2f}": f.format(d[k]) if d.get(k) is not None else "–"
    rows = [(f"bilabial closure (p/b/m within {art['band_mm']:.1f} mm of closed, {mod.get('bilabials', 0)} phones)",
             pct(mod, "bilabial_closure_rate"), pct(gt, "bilabial_closure_rate")),
            ("smallest midline lip gap in a p/b/m, median (mm)", num(mod, "bilabial_min_gap_mm_median"),
             num(gt, "bilabial_min_gap_mm_median")),
            ("vowel / bilabial opening ratio (mean midline gap)", num(mod, "vowel_bilabial_ratio"),
             num(gt, "vowel_bilabial_ratio")),
            ("vowel opening, mean midline gap (mm)", num(mod, "vowel_open_mm"), num(gt, "vowel_open_mm")),
            (f"labiodental contact (f/v, lower lip within {art['labiodental_band_mm']:.1f} mm of the upper teeth)",
             pct(mod, "labiodental_contact_rate"), pct(gt, "labiodental_contact_rate")),
            (f"rest in pauses of {A.PAUSE_MIN_S:g} s or more (clean audio)", pct(mod, "rest_rate"), pct(gt, "rest_rate")),
            ("flicker in those pauses (mm/frame, clean audio)", num(mod, "flicker_mm_per_frame", "{:.3f}"),
             num(gt, "flicker_mm_per_frame", "{:.3f}"))]
    worst = art.get("noise_worst")
    if worst:
        gains = ", ".join(f"{g:g}" for g in worst["gains_dbfs"])
        cond = f"{art['noise_bed_dbfs']:g} dBFS low-frequency noise bed, peak {gains} dBFS, worst"
        rows += [(f"rest in pauses ({cond})", pct(worst, "rest_rate"), "–"),
                 (f"flicker in pauses (mm/frame; {cond})", num(worst, "flicker_mm_per_frame", "{:.3f}"), "–")]
    return [f"| {label} | {m} | – | {g} |" for label, m, g in rows]


def format_table(res: dict) -> str:
    """A markdown table: metric | model | mean-frame baseline | ground truth (where it applies)."""
    mod, base = res.get("model", {}), res.get("baseline_mean_frame", {})
    gt_keys = {"pause_closed_rate": "pause_closed_rate_gt", "emotion_pass_rate": "gt_emotion_pass_rate",
               "pose_pass_rate": "gt_pose_pass_rate", "held_pose_pass_rate": "gt_held_pose_pass_rate",
               "gesture_pass_rate": "gt_gesture_pass_rate"}

    def cell(d, k, fmt):
        if k not in d:
            return "–"
        rng = d.get(f"{k}_seed_range")
        extra = f" ({fmt.format(rng[0])}–{fmt.format(rng[1])})" if rng and rng[0] != rng[1] else ""
        return fmt.format(d[k]) + extra

    n_talk = mod.get("talking_clips", base.get("talking_clips"))
    seeds = f", mean of {mod['seeds']} sampling seeds" if mod.get("seeds", 1) > 1 else ""
    talk = f" (lip-sync rows: the {n_talk} clips with audio)" if n_talk else ""
    lines = [f"split `{res['split']}`, {res['clips']} clips{talk}{seeds}", "",
             "| metric | model | mean-frame baseline | ground truth |", "|---|---:|---:|---:|"]
    for k, label, fmt in TABLE_ROWS:
        if k not in mod and k not in base:
            continue
        g = cell(mod or base, gt_keys[k], fmt) if k in gt_keys else "–"
        lines.append(f"| {label} | {cell(mod, k, fmt)} | {cell(base, k, fmt)} | {g} |")
    for c in res.get("contrast", []):
        lines.append(f"| text-only contrast \"{c['a']}\" vs \"{c['b']}\" | "
                     f"{'told apart' if c['told_apart'] else 'NOT told apart'} (min {min(c['scores']):.3f}) | – | – |")
    hr = res.get("head_rest")
    if hr:
        lines.append(f"| head at rest for captions naming no head movement (text only, limit "
                     f"{hr['limit_rad']:.2f} rad) | {'at rest' if hr['at_rest'] else 'NOT at rest'} (largest "
                     f"{hr['worst_rad']:.3f} rad, \"{hr['worst_caption']}\") | – | – |")
    er = res.get("emotion_rest")
    if er:
        lines.append(f"| no emotion for captions naming none (text only, the rules' margins) | "
                     f"{'at rest' if er['at_rest'] else 'NOT at rest'} (largest {er['worst_rule']} "
                     f"{er['worst_score']:.3f} of {er['margin']:.2f}, \"{er['worst_caption']}\") | – | – |")
    lines += articulation_rows(res.get("articulation"))
    by_rule = mod.get("style_by_rule", {})
    if by_rule:
        lines += ["", "| style rule | clips | pass rate |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['clips']} | {v['pass_rate']:.1%} |" for k, v in by_rule.items()]
    return "\n".join(lines)


def plot_results(res: dict, path) -> Path:
    """PNG: jaw opening over time (ground truth vs model) for the traced talking clips, and the pass rate
    of every style rule (model vs ground truth)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = [r for r in res["per_clip"] if "trace" in r]
    by_rule = res.get("model", {}).get("style_by_rule", {})
    gt_rule = res.get("model", {}).get("gt_style_by_rule", {})
    n = len(traces) + (1 if by_rule else 0)
    if n == 0:
        raise ValueError("nothing to plot: no model results with talking clips or style checks")
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.4), squeeze=False)
    for ax, r in zip(axes[0], traces):
        t = np.arange(len(r["trace"]["jaw_gt"])) / M.FPS
        ax.plot(t, r["trace"]["jaw_gt"], lw=1.2, label="ground truth")
        ax.plot(t, r["trace"]["jaw_model"], lw=1.0, label="model")
        ax.set_title(f"{r['id']}: jaw opening (corr {r['model']['jaw_corr']:.2f})", fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("jaw rx (rad)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if by_rule:
        ax = axes[0, -1]
        names = list(by_rule)
        x = np.arange(len(names))
        ax.bar(x - 0.2, [100 * by_rule[k]["pass_rate"] for k in names], 0.4, label="model")
        ax.bar(x + 0.2, [100 * gt_rule.get(k, {}).get("pass_rate", 0) for k in names], 0.4, label="ground truth")
        ax.set_xticks(x, [f"{k} ({by_rule[k]['clips']})" for k in names], fontsize=7, rotation=40, ha="right")
        ax.set_ylabel("clips passing (%)")
        ax.set_title("style checks by caption rule (clips)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CLOSURE_PICTURE_MIN = 4        # p/b/m a clip needs to be drawn in the closure picture
CLOSURE_TILE = (200, 130)      # (W, H) pixels of one mouth tile (cut from a 3W x 3W render)
CLOSURE_ZOOM = 1.4             # camera zoom of that render (the face camera centres the face, not the mouth)


def closure_picture(head, clip, pred: np.ndarray, path) -> Path:
    """PNG: for every p/b/m of ``clip``, the frame of its smallest midline lip gap, mouth close-up, model
    (``pred (T, 56)``) above and ground truth below, each labelled with the phone, time and gap (mm)."""
    from PIL import Image, ImageDraw, ImageFont

    from mm2face.viewer.render import Renderer, create_headless_context
    T = len(clip.motion)
    rows = [("model", np.asarray(pred[:T], np.float32)), ("ground truth", np.asarray(clip.motion, np.float32))]
    from mm2face.training.synth_face import phone_class
    bil = [(float(p[1]), float(p[2]), p[0]) for p in clip_phones(clip)
           if phone_class(p[0]) in A.BILABIALS and float(p[2]) > float(p[1])]
    W, H = CLOSURE_TILE
    ctx = create_headless_context()
    r = Renderer(ctx, head, size=(3 * W, 3 * W), zoom=CLOSURE_ZOOM)
    try:
        sheet = Image.new("RGB", (W * len(bil), H * len(rows)), (20, 20, 24))
        font = ImageFont.load_default()
        closed = A.closed_gap_mm(head)
        for j, (name, motion) in enumerate(rows):
            gap = A.lip_geometry(head, motion)["gap_mm"] - closed
            for i, (t0, t1, ph) in enumerate(bil):
                fr = A.phone_frames(t0, t1, T)
                k = int(fr[np.argmin(gap[fr])])
                f = motion[k].copy()
                f[50:53] = 0.0                                           # face the camera
                img = r.render(f)
                mid = r.project(r.vertices_for(f)[head.masks["lip_midline"]]).mean(0)
                c0 = int(np.clip(mid[0] - W / 2, 0, img.shape[1] - W))
                r0 = int(np.clip(mid[1] - H / 2, 0, img.shape[0] - H))
                tile = Image.fromarray(img[r0:r0 + H, c0:c0 + W])
                d = ImageDraw.Draw(tile)
                d.rectangle([0, 0, W, 14], fill=(0, 0, 0))
                d.text((3, 2), f"{name}  /{ph}/  {t0:.2f} s  gap {gap[k]:.1f} mm", font=font, fill=(255, 255, 255))
                sheet.paste(tile, (i * W, j * H))
    finally:
        r.release()
        ctx.release()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mm2face-eval",
        description="Score an MM2Face checkpoint on a corpus split (LVE/FVE, jaw and lip-gap correlation, "
                    "mouth closed in pauses, caption style adherence) next to the mean-frame baseline. "
                    "`mm2face-eval styles --set FILE` scores a labelled set of free-text styles instead "
                    "(see `mm2face-eval styles --help`).")
    p.add_argument("--ckpt", default=None, help="checkpoint path (default: the shipped default checkpoint)")
    p.add_argument("--data", required=True, help="corpus directory (MMHead layout or the synthetic corpus)")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--out", default=None, help="write results JSON here (default: print only)")
    p.add_argument("--max-clips", type=int, default=None, help="score only the first N clips of the split")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--head", default=None,
                   help="head for vertex metrics: 'standin' or a FLAME .pkl (default: the checkpoint's head)")
    p.add_argument("--seed", type=int, default=0, help="first sampling seed (default 0)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: the generator's; 0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens (0 = all)")
    p.add_argument("--seeds", type=int, default=3,
                   help="sampling seeds per clip, the table shows their mean (default 3)")
    p.add_argument("--guidance", type=float, default=None, help="text guidance scale (default: the model's)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw jaw opening over time (model vs ground truth) and the style pass rates")
    p.add_argument("--baseline-data", default=None, metavar="DIR",
                   help="corpus whose train split gives the mean-frame baseline (default: --data; for a held-out "
                        "set without a train split, the training corpus)")
    p.add_argument("--baseline-only", action="store_true", help="skip the model; score the mean-frame baseline")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--noise-gains", type=float, nargs="*", default=list(A.GAINS_DBFS), metavar="DBFS",
                   help="peak levels (dBFS) at which every talking clip is heard again over the -45 dBFS "
                        "low-frequency noise bed to score rest and flicker in pauses (first seed; default "
                        "-30 -20 -10 0; none = skip)")
    p.add_argument("--closure-picture", default=None, metavar="PNG",
                   help="also render the most-closed frame of each p/b/m of one test clip (model, first seed, "
                        "and ground truth) into this picture (needs headless OpenGL)")
    p.add_argument("--no-vad", action="store_true",
                   help="generate without the voice-activity gate (default: on, as mm2face-live runs)")
    p.add_argument("--parse-styles", action="store_true",
                   help="read each clip's caption as mm2face-live reads a style: the style parser rewrites it and "
                        "the head-gesture layer draws its nods, shakes, turns and tilts (default: the raw caption "
                        "to the model, no layer)")
    p.add_argument("--no-contact", action="store_true",
                   help="generate without the lip-contact stage (default: on where the model has one, as "
                        "mm2face-live runs)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["styles"]:                     # mm2face-eval styles --set FILE: free-text style sets
        from mm2face.training.style_eval import main as styles_main
        return styles_main(argv[1:])
    args = build_parser().parse_args(argv)
    import torch
    torch.set_num_threads(max(1, args.threads))
    from mm2face.engine.flame import load_head
    from mm2face.training.mmhead import MMHeadCorpus

    data = Path(args.data)
    if not data.exists():
        print(f"mm2face-eval: corpus not found: {data}. Build one with `mm2face-data synth --out {data}` "
              f"or point --data at an MMHead folder.", file=sys.stderr)
        return 2
    if args.baseline_data and not Path(args.baseline_data).exists():
        print(f"mm2face-eval: baseline corpus not found: {args.baseline_data}. Point --baseline-data at the "
              f"corpus the model was trained on (its train split gives the mean frame).", file=sys.stderr)
        return 2
    corpus = MMHeadCorpus(data)
    model = None if args.baseline_only else load_checkpoint(args.ckpt, args.device)
    head = load_head(model_head_spec(model, args.head))
    res = evaluate(model, corpus, args.split, head, device=args.device, max_clips=args.max_clips,
                   seed=args.seed, guidance=args.guidance, seeds=args.seeds, temperature=args.temperature,
                   top_k=args.top_k, vad=False if args.no_vad else None,
                   contact=False if args.no_contact else None, parse_styles=args.parse_styles,
                   noise_gains=tuple(args.noise_gains),
                   baseline_corpus=MMHeadCorpus(args.baseline_data) if args.baseline_data else None)
    res["ckpt"] = args.ckpt or "default"
    res["data"] = str(data)
    res["baseline_data"] = str(args.baseline_data or data)
    print(format_table(res))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, default=float))
        print(f"wrote {out}")
    if args.plot and model is not None:
        print(f"wrote {plot_results(res, args.plot)}")
    if args.closure_picture and model is not None:
        clip = next((c for c in corpus.clips(args.split) if has_audio(c) and sum(
            k == "bilabial" for k, _, _ in A.classed_phones(clip_phones(c))) >= CLOSURE_PICTURE_MIN), None)
        if clip is None:
            print(f"mm2face-eval: no talking clip with {CLOSURE_PICTURE_MIN} p/b/m in split {args.split!r}; "
                  "no closure picture", file=sys.stderr)
        else:
            pred = generate_motion(model, clip_caption(clip), clip.audio_16k, len(clip.motion), args.device,
                                   args.seed, args.guidance, temperature=args.temperature, top_k=args.top_k,
                                   vad=False if args.no_vad else None,
                                   contact=False if args.no_contact else None, parse_styles=args.parse_styles)
            print(f"wrote {closure_picture(head, clip, pred, args.closure_picture)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
