"""``mm2face-data``: build, clean, annotate and inspect MMHead-layout corpora.

    mm2face-data synth    --out data/synth --hours 1.0 --seed 0        # synthetic corpus
    mm2face-data synth    --out data/synth_heldout --hours 0.1 --voices heldout --t2m-fraction 0  # held-out voices
    mm2face-data clean    --in data/synth --out data/synth_clean        # outlier removal + smoothing
    mm2face-data annotate --data data/synth --out runs/annot            # frame lists, prompts, captions
    mm2face-data info     --data data/synth                             # counts, durations, load errors
    mm2face-data subset   --in data/synth5 --out data/synth5_eval --talking 64 --t2m 16   # fixed eval subset
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_synth(a) -> int:
    from .synth_factory import SynthConfig, synthesize
    cfg = SynthConfig(hours=a.hours, seed=a.seed, t2m_fraction=a.t2m_fraction, workers=a.workers,
                      voices=a.voices, gestures=a.gestures)
    summary = synthesize(a.out, cfg, progress=not a.quiet, overwrite=a.overwrite)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))
    return 0


def cmd_clean(a) -> int:
    from .clean import CleanConfig, clean_corpus
    cfg = CleanConfig(scale=a.scale, lam=a.lam, steps=a.steps, anchor=a.anchor)
    report = clean_corpus(a.inp, a.out, cfg, limit=a.limit)
    print(json.dumps(report, indent=1))
    return 0


def cmd_annotate(a) -> int:
    from .annotate import annotate_corpus
    report = annotate_corpus(a.data, a.out, ids=a.ids, llm_url=a.llm_url, llm_model=a.llm_model,
                             write_captions=a.write_captions, limit=a.limit)
    print(json.dumps(report, indent=1))
    return 0


def cmd_info(a) -> int:
    from .mmhead import MMHeadCorpus
    corpus = MMHeadCorpus(a.data)
    print(json.dumps(corpus.summary(), indent=1))
    for e in corpus.errors[:20]:
        print("error:", e, file=sys.stderr)
    return 1 if corpus.errors and a.strict else 0


def cmd_compress(a) -> int:
    from .compress import compress_corpus
    r = compress_corpus(a.inp, a.out, codec=a.codec)
    print(f"{r['clips']} clips: {r['src_bytes'] / 1e6:.1f} MB -> {r['dst_bytes'] / 1e6:.1f} MB in {a.out}")
    return 0


def cmd_subset(a) -> int:
    from .mmhead import subset_corpus
    r = subset_corpus(a.inp, a.out, split=a.split, talking=a.talking, t2m=a.t2m, as_split=a.as_split,
                      overwrite=a.overwrite)
    print(json.dumps(r, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .synth_face import GESTURE_STYLES
    from .synth_speech import VOICE_SETS
    p = argparse.ArgumentParser(prog="mm2face-data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="generate a synthetic corpus in MMHead layout")
    s.add_argument("--out", required=True, type=Path, help="output folder (created)")
    s.add_argument("--hours", type=float, default=1.0, help="hours of talking (audio) clips [1.0]")
    s.add_argument("--seed", type=int, default=0, help="corpus seed; same seed -> same corpus [0]")
    s.add_argument("--t2m-fraction", type=float, default=0.2,
                   help="share of all clips in the text-to-motion subset (no audio) [0.2]")
    s.add_argument("--workers", type=int, default=2, help="worker processes [2]")
    s.add_argument("--voices", choices=VOICE_SETS, default="train",
                   help="voice set: train (every English espeak-ng accent but the held-out one, all variants, "
                        "and piper), heldout (the held-out Scottish espeak-ng family only; every clip goes to "
                        "the test split, for a held-out-voices test set), legacy (sampling of corpora made "
                        "before the voice sets) [train]")
    s.add_argument("--gestures", choices=GESTURE_STYLES, default="rule",
                   help="head nods and shakes: rule (drawn briskly enough for mm2face-eval's nod and shake checks, "
                        "and captioned only where those checks see one), legacy (as corpora made before 6 Dec 2026, "
                        "session 10, e.g. data/synth5, the default checkpoint's) [rule]")
    s.add_argument("--overwrite", action="store_true", help="replace a corpus already in --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_synth)

    c = sub.add_parser("clean", help="replace outlier frames and smooth every motion (paper's Eq. 1)")
    c.add_argument("--in", dest="inp", required=True, type=Path, help="MMHead-layout input folder")
    c.add_argument("--out", required=True, type=Path, help="output folder (a copy with cleaned motion)")
    c.add_argument("--scale", type=float, default=3.0, help="IQR scale s of the outlier interval [3.0]")
    c.add_argument("--lam", type=float, default=1.0, help="weight lambda of the pose smoothness term [1.0]")
    c.add_argument("--steps", type=int, default=200, help="Adam steps per sequence [200]")
    c.add_argument("--anchor", type=float, default=1.0,
                   help="weight of the data term that keeps the result near the input; higher keeps more detail [1.0]")
    c.add_argument("--limit", type=int, default=None, help="only the first N clips (for a quick look)")
    c.set_defaults(fn=cmd_clean)

    n = sub.add_parser("annotate", help="per-frame unit/head-pose lists, LLM prompts and captions")
    n.add_argument("--data", required=True, type=Path, help="MMHead-layout folder")
    n.add_argument("--out", type=Path, default=None,
                   help="where to write <ID>.json with frames, prompts and captions [DATA/annotations]")
    n.add_argument("--ids", nargs="*", default=None, help="only these clip ids")
    n.add_argument("--limit", type=int, default=None, help="only the first N clips")
    n.add_argument("--llm-url", default=None,
                   help="OpenAI-compatible server (e.g. http://localhost:8000/v1); omitted: template captioner")
    n.add_argument("--llm-model", default="default", help="model name sent to the server")
    n.add_argument("--write-captions", action="store_true",
                   help="also overwrite DATA/text_annotations/<kind>/<ID>.txt with the new captions")
    n.set_defaults(fn=cmd_annotate)

    z = sub.add_parser("compress", help="copy a corpus with FLAC/Opus audio and zipped motion (smaller on disk)")
    z.add_argument("--in", dest="inp", required=True, help="MMHead-layout corpus folder")
    z.add_argument("--out", required=True, help="new folder")
    z.add_argument("--codec", choices=["opus", "flac"], default="opus",
                   help="opus: lossy, ~12x smaller; flac: lossless, ~2x smaller (default: opus)")
    z.set_defaults(fn=cmd_compress)

    u = sub.add_parser("subset", help="a folder that links a corpus's clips and lists the first N of one split "
                                      "(a fixed evaluation set without copying files)")
    u.add_argument("--in", dest="inp", required=True, type=Path, help="MMHead-layout corpus folder")
    u.add_argument("--out", required=True, type=Path, help="new folder (links + cut-down split files)")
    u.add_argument("--split", default="test", help="which split to take clips from [test]")
    u.add_argument("--talking", type=int, default=64, help="first N talking clips of that split, in the "
                                                          "split file's order (0 = none) [64]")
    u.add_argument("--t2m", type=int, default=16, help="first N text-to-motion clips, likewise [16]")
    u.add_argument("--as", dest="as_split", default=None,
                   help="list them under this split name instead, e.g. --split val --as test so that "
                        "`mm2face-eval --split test` scores validation clips [same as --split]")
    u.add_argument("--overwrite", action="store_true", help="replace the split files of an existing subset")
    u.set_defaults(fn=cmd_subset)

    i = sub.add_parser("info", help="counts, hours and load errors of a corpus")
    i.add_argument("--data", required=True, type=Path, help="MMHead-layout folder")
    i.add_argument("--strict", action="store_true", help="exit 1 if any file failed to load")
    i.set_defaults(fn=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
