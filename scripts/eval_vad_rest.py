"""The voice-activity gate (engine/vad.py) and its settings: rest and flicker in pauses under a noise
bed, LVE, and how open the gate stays over speech.

    python scripts/eval_vad_rest.py --data data/synth5 --split test --out runs/vad_eval/synth5_test.json
    python scripts/eval_vad_rest.py --data data/synth_heldout --split test      # held-out voices
    python scripts/eval_vad_rest.py --data data/synth5 --split val --max-clips 40 \\
        --gate "band 4 kHz:band_hz=300,4000" --gate "25 dB:offset_drop_db=25"   # candidate settings

Every talking clip of the split is generated offline once per listening condition with the gate and
the contact stage off (sampling seed ``--seed``, the clip's captions as the text, no style parser, as
``mm2face-eval`` does): the clean clip, and the clip scaled to each peak of ``--gains`` over the
-45 dBFS low-frequency noise bed of :func:`mm2face.training.articulation.noise_bed_audio`. Each gate
(none, the default :class:`VadConfig`, and every ``--gate NAME:FIELD=VALUE;FIELD=VALUE``) is then
applied as the engine does it: the mouth dims times the gate, the contact weights times the gate, then
the contact stage (checked against ``generate`` on the first clip). Scores: LVE on the clean clips,
the gate's mean weight over speech frames, and per condition
:func:`mm2face.training.articulation.aggregate_articulation`'s ``rest_rate`` (share of pause frames
whose jaw and midline lip gap are in the rest band) and ``flicker_mm_per_frame``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np


def parse_gate(spec: str, base):
    """``"NAME:field=value;field=value"`` -> ``(NAME, VadConfig)``; tuple fields take comma lists."""
    name, _, body = spec.partition(":")
    kw = {}
    fields = {f.name: f for f in dataclasses.fields(base)}
    for item in filter(None, (s.strip() for s in body.split(";"))):
        key, _, val = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--gate {spec!r}: VadConfig has no field {key!r}; fields: {', '.join(fields)}")
        cur = getattr(base, key)
        kw[key] = tuple(float(v) for v in val.split(",")) if isinstance(cur, tuple) else type(cur)(val)
    return name.strip() or spec, dataclasses.replace(base, **kw)


def main(argv=None) -> int:
    from mm2face.training import articulation as A
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="MMHead-layout corpus with synth_meta speech masks")
    ap.add_argument("--split", default="test", help="split to score (default test)")
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: the shipped default)")
    ap.add_argument("--max-clips", type=int, default=None, help="only the first N talking clips")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--gains", type=float, nargs="*", default=list(A.GAINS_DBFS), metavar="DBFS",
                    help="speech peak levels over the noise bed (default: mm2face-eval's)")
    ap.add_argument("--gate", action="append", default=[], metavar="NAME:FIELD=VALUE;...",
                    help="a candidate gate: VadConfig fields changed from the default (repeatable)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from mm2face.engine.closure import apply_contact
    from mm2face.engine.flame import load_head
    from mm2face.engine.generate import generate
    from mm2face.engine.model import load_model
    from mm2face.engine.session import mouth_dims
    from mm2face.engine.vad import VadConfig, vad_frame_weights
    from mm2face.training import metrics as M
    from mm2face.training.eval_cli import clip_caption, clip_speech_mask
    from mm2face.training.mmhead import MMHeadCorpus

    if not Path(args.data).exists():
        raise SystemExit(f"corpus not found: {args.data}; make one with `mm2face-data synth --out {args.data}`")
    model = load_model(args.ckpt) if args.ckpt else load_model()
    head = load_head(model.head_name)          # a model with a contact stage is a stand-in model
    mh = M.metric_head(head)
    lips, face = M.head_mask(mh, "lips"), M.head_mask(mh, "face")
    dims = mouth_dims(model.head_name)
    base = VadConfig(lookahead_samples=model.lookahead_samples)
    gates = [("none", None), ("default", base)] + [parse_gate(g, base) for g in args.gate]
    clips = [c for c in MMHeadCorpus(args.data).clips(args.split) if c.audio_16k is not None][:args.max_clips]
    conds = [("clean", None)] + [(f"bed -45 dBFS, gain {g:+.0f} dBFS", g) for g in args.gains]
    scores = {name: {"lve": [], "gate_speech": [], **{c: [] for c, _ in conds}} for name, _ in gates}
    t0 = time.time()
    for i, clip in enumerate(clips):
        T = len(clip.motion)
        speech = clip_speech_mask(clip, T)
        gt_verts = M.vertices(mh, clip.motion[:T])
        for cond, gain in conds:
            x = clip.audio_16k if gain is None else A.noise_bed_audio(clip.audio_16k, gain,
                                                                       np.random.default_rng([i, int(-gain)]))
            raw = generate(model, x, clip_caption(clip), seed=args.seed, n_frames=T, parse_styles=False,
                           vad=False, contact=False)
            contact = model.closure.clip_weights(x, T) if model.closure is not None else None
            for name, cfg in gates:
                gate = np.ones(T, np.float32) if cfg is None else vad_frame_weights(x, T, cfg)
                m = raw.copy()
                m[:, dims] *= gate[:, None]
                if contact is not None:
                    m = apply_contact(m, contact * gate[:, None], head, model.closure.cfg)
                if i == 0 and name == "default":        # the same computation as the engine's
                    ref = generate(model, x, clip_caption(clip), seed=args.seed, n_frames=T, parse_styles=False)
                    if not np.allclose(ref, m, atol=1e-6):
                        raise AssertionError("gate and contact on the raw motion differ from generate()")
                s = scores[name]
                s[cond].append(A.clip_articulation(head, m, None, speech))
                if gain is None:
                    s["lve"].append(M.lve_fve_mm(M.vertices(mh, m), gt_verts, lips, face)[0])
                    if speech is not None and speech.any():
                        s["gate_speech"].append(gate[speech.astype(bool)])
        print(f"{i + 1}/{len(clips)} clips, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    res = {"data": args.data, "split": args.split, "clips": len(clips), "seed": args.seed,
           "ckpt": args.ckpt or "default", "gates": {n: (dataclasses.asdict(c) if c else None) for n, c in gates},
           "results": {}}
    print("| gate | LVE (mm, clean) | gate over speech | " + " | ".join(f"rest, {c}" for c, _ in conds)
          + " | flicker, worst (mm/frame) |")
    print("|---" * (4 + len(conds)) + "|")
    for name, _ in gates:
        s = scores[name]
        agg = {c: A.aggregate_articulation(s[c]) for c, _ in conds}
        over = float(np.concatenate(s["gate_speech"]).mean()) if s["gate_speech"] else float("nan")
        res["results"][name] = {"lve_mm": float(np.mean(s["lve"])), "gate_over_speech": over, "conditions": agg}
        flick = max(a.get("flicker_mm_per_frame", float("nan")) for a in agg.values())
        print(f"| {name} | {np.mean(s['lve']):.3f} | {over:.3f} | "
              + " | ".join(f"{agg[c].get('rest_rate', float('nan')):.1%}" for c, _ in conds) + f" | {flick:.3f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
