"""How low could LVE go on the synthetic corpus, and what limits it? An oracle on the ground truth.

    python scripts/lve_oracle.py --data data/synth

For every talking test clip the jaw of the ground truth is replaced by the jaw the corpus factory
(``training/synth_face.mouth_curves``) computes from the clip's true phone timings (``synth_meta``),
without its per-phone random jitter, and LVE against the untouched ground truth is measured:

* ``all phones``: the whole utterance known (any lookahead);
* ``heard so far``: for each frame only the phones that start before the audio the model has heard
  when it emits that frame (the end of the frame's token + the model's lookahead); the last heard
  phone is assumed to go on;

each with the clip's true articulation scale and with the corpus mean (which a model cannot read from
the audio). The gap between the two rows is what the lookahead costs; the rest is the jitter and the
articulation no audio carries. Everything but the jaw stays ground truth.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MEAN_ARTICULATION = (0.8 + 1.25) / 2          # the factory draws it uniformly from [0.8, 1.25]


class _NoJitter:
    """Stands in for the factory's random generator: every per-phone jitter factor is 1."""

    @staticmethod
    def uniform(low, high, size=None):
        return np.ones(size) if size is not None else 1.0


def heard_phones(phones, limit_s: float):
    """The phones starting before ``limit_s``; the last of them runs on (its end is not heard yet)."""
    from mm2face.training.synth_speech import Phone
    known = [p for p in phones if p.t0_s < limit_s]
    if known and known[-1].t1_s >= limit_s:
        p = known[-1]
        known[-1] = Phone(p.ph, p.t0_s, 1e9, p.stressed)
    return known


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/synth", help="synthetic corpus (needs synth_meta/)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--ckpt", default="", help="model whose token length and lookahead apply (default checkpoint)")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from mm2face.engine.flame import load_head
    from mm2face.engine.frame import FPS
    from mm2face.engine.model import load_model
    from mm2face.training import synth_face as SF
    from mm2face.training.dataset import load_clips
    from mm2face.training.metrics import head_mask, lve_fve_mm, metric_head, vertices
    from mm2face.training.synth_speech import Phone

    model = load_model(args.ckpt or None)
    token_s, look_s = model.samples_per_token / 16000, model.lookahead_samples / 16000
    root = Path(args.data)
    head = metric_head(load_head("standin"))
    lips, face = head_mask(head, "lips"), head_mask(head, "face")
    rows: dict[str, list[float]] = {}
    clips = load_clips(root, args.split, subsets=("talking",))
    for c in tqdm(clips, desc="clips"):
        meta = json.loads((root / "synth_meta" / f"{c.id}.json").read_text())
        phones = [Phone(p[0], p[1], p[2], p[3]) for p in meta["phones"]]
        T = len(c.motion)
        gt = vertices(head, c.motion)
        for art_name, art in (("true articulation", meta["articulation"]), ("mean articulation", MEAN_ARTICULATION)):
            m = c.motion.copy()
            m[:, SF.JAW_RX] = SF.mouth_curves(phones, T, _NoJitter(), art)["jaw"]
            rows.setdefault(f"all phones, {art_name}", []).append(lve_fve_mm(vertices(head, m), gt, lips, face)[0])
            m = c.motion.copy()
            for k in range(-(-T // model.down)):        # the frames of one token have heard the same audio
                heard = heard_phones(phones, (k + 1) * token_s + look_s)
                fr = slice(k * model.down, min(T, (k + 1) * model.down))
                m[fr, SF.JAW_RX] = SF.mouth_curves(heard, T, _NoJitter(), art)["jaw"][fr] if heard else 0.0
            rows.setdefault(f"heard so far, {art_name}", []).append(lve_fve_mm(vertices(head, m), gt, lips, face)[0])
    print(f"{len(clips)} talking {args.split} clips of {root}; token {token_s * 1e3:.0f} ms, "
          f"lookahead {look_s * 1e3:.0f} ms, {FPS} fps")
    print("| oracle jaw | LVE (mm) |\n|---|---:|")
    for k, v in rows.items():
        print(f"| {k} | {np.mean(v):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
