"""``mm2face-eval styles``: score a labelled set of free-text styles, text-only and talking.

    mm2face-eval styles --set training/styles/heldout_everyday.json --seeds 2 --out runs/styles/heldout.json
    mm2face-eval styles --set training/styles/templates.json --raw-styles     # the model without the parser

A style set is JSON ``{"styles": [{"text", "emotion", "intensity", "head": [...], "neutral"}]}`` (see
training/styles/). The labels travel with the set, so everyday wording is scored by what it means, not
by whether the caption matcher of :mod:`mm2face.training.metrics` knows its words (how many items the
matcher would have read right is reported as ``matcher_agrees``).

For every style, mode and seed the motion is generated offline (:func:`mm2face.engine.generate.generate`,
the parser on unless ``--raw-styles``): text-only for ``--seconds``, and talking over one of the fixed
speech clips cut from ``--speech`` (default: the bundled demo speech). Checks, with the rules of
:mod:`mm2face.training.metrics`:

* emotion: the labelled emotion's rule passes (score above its margin);
* head pose: each labelled gesture's rule passes (turns, looks, tilts: peak rotation; nod, shake: swings);
* neutral: a style labelled neutral *fires* when any emotion rule passes; the empty style likewise,
  over ``--empty-seeds`` seeds per mode.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mm2face.engine.frame import SAMPLE_RATE
from mm2face.training import metrics as M

SPEECH_CLIP_S = 4.0           # length of each fixed speech clip (and of the text-only motions)
SPEECH_CLIPS = 2              # clips cut from the speech file, one second apart
MODES = ("text", "talk")


def default_speech_path() -> Path:
    return Path(__file__).resolve().parents[1] / "realtime" / "assets" / "demo_speech.wav"


def load_style_set(path) -> list[dict]:
    """The labelled styles of a set file; a clear error for unknown labels."""
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"mm2face-eval styles: style set not found: {p} (see training/styles/*.json)")
    items = json.loads(p.read_text())["styles"]
    emo = {r.name for r in M.STYLE_RULES}
    pose = {r.name for r in M.POSE_RULES}
    for it in items:
        if it.get("emotion") and it["emotion"] not in emo:
            raise SystemExit(f"{p}: {it['text']!r} has emotion {it['emotion']!r}; known: {sorted(emo)}")
        for g in it.get("head", []):
            if g not in pose:
                raise SystemExit(f"{p}: {it['text']!r} has head gesture {g!r}; known: {sorted(pose)}")
    return items


def speech_clips(path, seconds: float = SPEECH_CLIP_S, n: int = SPEECH_CLIPS) -> list[np.ndarray]:
    """``n`` fixed ``(samples,)`` float32 16 kHz clips of ``seconds`` from a speech file, 1 s apart."""
    from mm2face.engine.audio import AudioFileError, load_audio_16k
    try:
        a = load_audio_16k(path)
    except AudioFileError as e:
        raise SystemExit(f"speech file: {e}") from None
    L = int(seconds * SAMPLE_RATE)
    if len(a) < L:
        raise SystemExit(f"speech file {path} is {len(a) / SAMPLE_RATE:.1f} s; need at least {seconds} s")
    starts = [min(i * (L + SAMPLE_RATE), len(a) - L) for i in range(n)]
    return [a[s:s + L] for s in starts]


def emotion_scores(motion) -> dict[str, float]:
    return {r.name: r.score(motion) for r in M.STYLE_RULES}


def fired(scores: dict[str, float]) -> list[str]:
    """Emotion rules whose score passes their margin."""
    return [r.name for r in M.STYLE_RULES if scores[r.name] > r.margin]


def matcher_agrees(item: dict) -> bool:
    """Would the caption matcher alone have read the item's labels (emotion and head gestures)?"""
    emo, pose = M.matching_rules(item["text"])
    want_e = {item["emotion"]} if item.get("emotion") else set()
    return {r.name for r in emo} == want_e and {r.name for r in pose} == set(item.get("head", []))


def score_style(motion, item: dict) -> dict:
    """Checks of one motion against one labelled item."""
    sc = emotion_scores(motion)
    out: dict = {"emotion_scores": {k: round(v, 4) for k, v in sc.items()}, "fired": fired(sc)}
    if item.get("emotion"):
        rule = next(r for r in M.STYLE_RULES if r.name == item["emotion"])
        out["emotion_pass"] = bool(sc[rule.name] > rule.margin)
    out["head"] = {}
    for g in item.get("head", []):
        rule = next(r for r in M.POSE_RULES if r.name == g)
        s = rule.score(motion)
        out["head"][g] = {"score": round(s, 4), "pass": bool(s > rule.margin_rad)}
    return out


def _rate(vals) -> float | None:
    return float(np.mean(vals)) if len(vals) else None


def evaluate_styles(model, items: list[dict], seeds: int = 2, seed: int = 0, seconds: float = SPEECH_CLIP_S,
                    speech=None, parse_styles: bool = True, empty_seeds: int = 25, device: str = "cpu",
                    progress: bool = True) -> dict:
    """Generate and check every item (see the module docstring); returns the JSON-able results."""
    from tqdm import tqdm

    from mm2face.engine.generate import generate
    clips = speech_clips(speech or default_speech_path(), seconds)
    n = int(round(seconds * M.FPS))

    def gen(text, mode, s, i):
        audio = None if mode == "text" else clips[(i + s) % len(clips)]
        return generate(model, audio, text, seed=s, n_frames=n, device=device, parse_styles=parse_styles)

    rows = []
    t0 = time.perf_counter()
    for i, it in enumerate(tqdm(items, desc="styles", disable=not progress)):
        row = {"text": it["text"], "labels": {k: v for k, v in it.items() if k != "text"},
               "matcher_agrees": matcher_agrees(it), "runs": []}
        for mode in MODES:
            for s in range(seed, seed + seeds):
                row["runs"].append({"mode": mode, "seed": s, **score_style(gen(it["text"], mode, s, i), it)})
        rows.append(row)
    empty = []
    for mode in MODES:
        for s in range(seed, seed + empty_seeds):
            empty.append({"mode": mode, "seed": s, "fired": fired(emotion_scores(gen("", mode, s, s)))})
    res = {"items": len(items), "seeds": seeds, "seconds": seconds, "parse_styles": parse_styles,
           "speech": str(speech or default_speech_path()), "wall_s": time.perf_counter() - t0,
           "summary": summarize(rows, empty), "per_style": rows, "empty": empty}
    return res


def summarize(rows: list[dict], empty: list[dict]) -> dict:
    """Pass rates per mode: emotion, head pose (and per gesture), neutral and empty fire rates, and the
    labelled emotion's mean score per intensity label."""
    out: dict = {"matcher_agrees": f"{sum(r['matcher_agrees'] for r in rows)} of {len(rows)}"}
    for mode in MODES:
        runs = [(r, x) for r in rows for x in r["runs"] if x["mode"] == mode]
        emo = [x["emotion_pass"] for _, x in runs if "emotion_pass" in x]
        head = [h["pass"] for _, x in runs for h in x["head"].values()]
        by_g: dict[str, list] = {}
        for _, x in runs:
            for g, h in x["head"].items():
                by_g.setdefault(g, []).append(h["pass"])
        by_e: dict[str, list] = {}
        for r, x in runs:
            if "emotion_pass" in x:
                by_e.setdefault(r["labels"]["emotion"], []).append(x["emotion_pass"])
        neutral = [bool(x["fired"]) for r, x in runs if r["labels"].get("neutral")]
        head_only = [bool(x["fired"]) for r, x in runs
                     if not r["labels"].get("emotion") and not r["labels"].get("neutral")]
        intensity: dict[str, list] = {}
        for r, x in runs:
            e = r["labels"].get("emotion")
            if e:
                intensity.setdefault(r["labels"].get("intensity") or "normal", []).append(x["emotion_scores"][e])
        emp = [bool(e["fired"]) for e in empty if e["mode"] == mode]
        out[mode] = {
            "emotion_pass_rate": _rate(emo), "emotion_checks": len(emo),
            "pose_pass_rate": _rate(head), "pose_checks": len(head),
            "neutral_fire_rate": _rate(neutral), "neutral_runs": len(neutral),
            "head_only_fire_rate": _rate(head_only), "head_only_runs": len(head_only),
            "empty_fire_rate": _rate(emp), "empty_runs": len(emp),
            "by_emotion": {k: _rate(v) for k, v in sorted(by_e.items())},
            "by_gesture": {k: _rate(v) for k, v in sorted(by_g.items())},
            "emotion_score_by_intensity": {k: float(np.mean(v)) for k, v in sorted(intensity.items())},
        }
    return out


def format_styles_table(res: dict, name: str) -> str:
    s = res["summary"]
    pct = lambda v: "–" if v is None else f"{v:.1%}"
    lines = [f"style set `{name}`: {res['items']} styles, {res['seeds']} seeds, {res['seconds']:.0f} s, "
             f"parser {'on' if res['parse_styles'] else 'off (raw text)'}; caption matcher alone reads "
             f"{s['matcher_agrees']} right", "",
             "| check | text-only | talking |", "|---|---:|---:|"]
    for key, label in (("emotion_pass_rate", "emotion checks pass"), ("pose_pass_rate", "head-pose checks pass"),
                       ("neutral_fire_rate", "neutral styles: an emotion rule fires"),
                       ("head_only_fire_rate", "head-only styles: an emotion rule fires"),
                       ("empty_fire_rate", "empty style: an emotion rule fires")):
        n = key.replace("_pass_rate", "_checks").replace("_fire_rate", "_runs")
        lines.append(f"| {label} | {pct(s['text'][key])} ({s['text'][n]}) | {pct(s['talk'][key])} ({s['talk'][n]}) |")
    for group in ("by_emotion", "by_gesture"):
        for k in sorted(set(s["text"][group]) | set(s["talk"][group])):
            lines.append(f"| {group.split('_')[1]} {k} | {pct(s['text'][group].get(k))} | {pct(s['talk'][group].get(k))} |")
    for k in ("low", "normal", "high"):
        if k in s["text"]["emotion_score_by_intensity"]:
            lines.append(f"| mean labelled-emotion score, intensity {k} | "
                         f"{s['text']['emotion_score_by_intensity'][k]:.3f} | "
                         f"{s['talk']['emotion_score_by_intensity'].get(k, float('nan')):.3f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mm2face-eval styles",
        description="Score a labelled set of free-text styles (training/styles/*.json) text-only and talking: "
                    "emotion and head-pose checks, and how often an emotion fires on neutral and empty styles.")
    p.add_argument("--set", required=True, dest="style_set", help="style set JSON (e.g. training/styles/heldout_everyday.json)")
    p.add_argument("--ckpt", default=None, help="checkpoint path (default: the shipped default checkpoint)")
    p.add_argument("--seeds", type=int, default=2, help="sampling seeds per style and mode (default 2)")
    p.add_argument("--seed", type=int, default=0, help="first sampling seed (default 0)")
    p.add_argument("--seconds", type=float, default=SPEECH_CLIP_S, help="motion length, s (default 4)")
    p.add_argument("--speech", default=None, help="speech file for the talking runs (default: the bundled demo speech)")
    p.add_argument("--empty-seeds", type=int, default=25, help="seeds per mode for the empty style (default 25)")
    p.add_argument("--raw-styles", action="store_true", help="turn the style parser off: raw text to the model")
    p.add_argument("--max-styles", type=int, default=None, help="score only the first N styles")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    torch.set_num_threads(max(1, args.threads))
    from mm2face.engine.model import load_model
    items = load_style_set(args.style_set)[:args.max_styles]
    model = load_model(args.ckpt, device=args.device)
    res = evaluate_styles(model, items, seeds=args.seeds, seed=args.seed, seconds=args.seconds, speech=args.speech,
                          parse_styles=not args.raw_styles, empty_seeds=args.empty_seeds, device=args.device)
    res["ckpt"] = args.ckpt or "default"
    res["set"] = args.style_set
    print(format_styles_table(res, Path(args.style_set).stem))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
