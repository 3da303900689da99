"""Rest in pauses and flicker under a noise bed, with and without the voice-activity gate (engine/vad.py).

    python scripts/eval_vad_rest.py --data data/synth5 --split test --out runs/vad_eval/synth5_test.json
    python scripts/eval_vad_rest.py --data data/synth_heldout --split test      # held-out voices

Every talking clip of the split is generated offline by the checkpoint (sampling seed ``--seed``, the
clip's captions as the text, no style parser, as ``mm2face-eval`` does) in four listening conditions:
the clean clip, and the clip scaled to a peak of -30 / -15 / 0 dBFS over the -45 dBFS low-frequency
noise bed of :func:`mm2face.training.articulation.noise_bed_audio`. Each motion is scored with the gate
off and on (on = the same motion with the gate's weights on the mouth dims, which is what
``generate(vad=True)`` computes; checked on the first clip). Scores are
:func:`mm2face.training.articulation.aggregate_articulation`'s ``rest_rate`` (share of pause frames
whose jaw and midline lip gap are in the rest band) and ``flicker_mm_per_frame``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

GAINS_DBFS = (-30.0, -15.0, 0.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="MMHead-layout corpus with synth_meta speech masks")
    ap.add_argument("--split", default="test", help="split to score (default test)")
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: the shipped default)")
    ap.add_argument("--max-clips", type=int, default=None, help="only the first N talking clips")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from mm2face.engine.flame import load_head
    from mm2face.engine.generate import generate
    from mm2face.engine.model import load_model
    from mm2face.engine.session import mouth_dims
    from mm2face.engine.vad import VadConfig, vad_frame_weights
    from mm2face.training import articulation as A
    from mm2face.training.eval_cli import clip_caption, clip_speech_mask
    from mm2face.training.mmhead import MMHeadCorpus

    if not Path(args.data).exists():
        raise SystemExit(f"corpus not found: {args.data}; make one with `mm2face-data synth --out {args.data}`")
    model = load_model(args.ckpt) if args.ckpt else load_model()
    head = load_head(model.head_name)
    dims = mouth_dims(model.head_name)
    clips = [c for c in MMHeadCorpus(args.data).clips(args.split) if c.audio_16k is not None][:args.max_clips]
    conds = ["clean"] + [f"bed -45 dBFS, gain {g:+.0f} dBFS" for g in GAINS_DBFS]
    rows: dict = {(c, v): [] for c in conds for v in ("vad on", "vad off")}
    t0, checked = time.time(), False
    for i, clip in enumerate(clips):
        T = len(clip.motion)
        speech = clip_speech_mask(clip, T)
        for cond, gain in zip(conds, (None,) + GAINS_DBFS):
            x = clip.audio_16k if gain is None else A.noise_bed_audio(clip.audio_16k, gain,
                                                                       np.random.default_rng([i, int(-gain)]))
            off = generate(model, x, clip_caption(clip), seed=args.seed, n_frames=T, parse_styles=False, vad=False)
            on = off.copy()
            on[:, dims] *= vad_frame_weights(x, T, VadConfig(lookahead_samples=model.lookahead_samples))[:, None]
            if not checked:
                ref = generate(model, x, clip_caption(clip), seed=args.seed, n_frames=T, parse_styles=False)
                if not np.array_equal(ref, on):
                    raise AssertionError("gate weights on the no-gate motion differ from generate(vad=True)")
                checked = True
            rows[(cond, "vad off")].append(A.clip_articulation(head, off, None, speech))
            rows[(cond, "vad on")].append(A.clip_articulation(head, on, None, speech))
        print(f"{i + 1}/{len(clips)} clips, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    res = {"data": args.data, "split": args.split, "clips": len(clips), "seed": args.seed,
           "ckpt": args.ckpt or "default", "results": {}}
    print(f"| condition | gate | rest in pauses | flicker (mm/frame) | pause frames |\n|---|---|---:|---:|---:|")
    for (cond, v), r in rows.items():
        a = A.aggregate_articulation(r)
        res["results"][f"{cond} | {v}"] = a
        print(f"| {cond} | {v} | {a.get('rest_rate', float('nan')):.1%} | "
              f"{a.get('flicker_mm_per_frame', float('nan')):.3f} | {a.get('rest_frames', 0)} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
