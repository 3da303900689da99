"""``mm2face-train vqvae|mm2face|refiner``: train the stages on an MMHead-layout corpus.

    mm2face-train vqvae   --data data/synth --out runs/vqvae   --steps 3000
    mm2face-train mm2face --data data/synth --out runs/mm2face --vq runs/vqvae/model.pt --steps 3000
    mm2face-train refiner --data data/synth --out runs/refiner --init runs/mm2face/model.pt   # optional stage 3
    mm2face-train closure --data data/synth5 --out runs/closure                                # optional stage 4
    mm2face-train refiner-config --ckpt runs/refiner/model.pt --out model.pt --set silent_dims=[53,54,55]
    mm2face-train refiner-config --ckpt runs/mm2face2/model.pt --out model.pt --refiner-from runs/refiner/model.pt
    torchrun --nproc_per_node 2 -m mm2face.training.train_cli vqvae ...     # data parallel (gloo on CPU)

Each run writes ``OUT/model.pt`` (an MM2Face file any tool loads with --ckpt) and ``OUT/log.jsonl``;
stages 1-2 also ``OUT/last.pt`` (trainer state, for --resume). Stage 3 takes minutes, single process.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _kv(items: list[str]) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"--set expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def add_run_arguments(p: argparse.ArgumentParser, set_help: str) -> None:
    """The options every training stage takes: data, output, validation, seed, threads, device, progress."""
    p.add_argument("--data", required=True, help="corpus folder (MMHead layout, real or synthetic)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--val-every", type=int, default=250, help="validate every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    p.add_argument("--device", default="cpu",
                   help="torch device for training, e.g. cpu or cuda (default: cpu); checkpoints load on CPU")
    p.add_argument("--limit", type=int, default=0, help="use at most N clips per split (quick runs)")
    p.add_argument("--subsets", default="talking,t2m", help="comma list of subsets")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", default=[], help=set_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mm2face-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    for name, helptext in (("vqvae", "stage 1: the motion VQ-VAE"),
                           ("mm2face", "stage 2: the token transformer + audio encoder (needs --vq)")):
        p = sub.add_parser(name, help=helptext)
        add_run_arguments(p, "model config overrides, e.g. width=128 n_codes=512 (VQConfig) or "
                             "d_model=192 n_layer=6 (GPTConfig) / audio.window_feats=16 (AudioConfig)")
        p.add_argument("--steps", type=int, default=3000, help="optimiser steps (default 3000)")
        p.add_argument("--batch", type=int, default=None, help="batch per process (vqvae 32, mm2face 16)")
        p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (Adam, betas 0.5/0.999)")
        p.add_argument("--save-every", type=int, default=None, help="write OUT/last.pt every N steps")
        p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
        if name == "vqvae":
            p.add_argument("--head", default="standin", choices=["standin", "flame"],
                           help="parameter space of the data (recorded in the checkpoint)")
            p.add_argument("--window", type=int, default=64, help="frames per training window")
            p.add_argument("--w-head", type=float, default=3.0, help="loss weight of the head pose dims")
        else:
            p.add_argument("--vq", required=True, help="stage-1 MM2Face file (OUT/model.pt of the vqvae run)")
            p.add_argument("--n-tokens", type=int, default=64, help="tokens per training crop")
            p.add_argument("--token-noise", type=float, default=0.15,
                           help="share of input tokens replaced by random ones in training (default 0.15)")
            p.add_argument("--time-budget-min", type=float, default=0.0,
                           help="also stop after this many minutes; the lr schedule follows time (single process)")
            p.add_argument("--text-encoder", default="", metavar="DIR",
                           help="local sentence encoder folder (default: the bundled all-MiniLM-L6-v2)")
            p.add_argument("--audio-encoder", default="", metavar="DIR",
                           help="local pretrained wav2vec2 folder (e.g. wav2vec2-base-960h); its CNN is frozen")
            p.add_argument("--hist-drop", type=float, default=0.0,
                           help="share of training crops whose input tokens are all random, so audio and text "
                                "alone must predict the motion (default 0)")
            p.add_argument("--aux", nargs=3, type=float, default=[1.0, 0.5, 1.0], metavar=("AUDIO", "HIDDEN", "TEXT"),
                           help="weights of the auxiliary frame regressions from the audio vector, the GPT hidden "
                                "state and the style vector (default 1 0.5 1; 0 0 0 = token loss only)")
            p.add_argument("--init", default="", metavar="CKPT",
                           help="fine-tune: start the GPT and audio encoder from this MM2Face file (its shapes "
                                "are kept; pass the same file as --vq, e.g. engine/assets/default.pt)")
    p = sub.add_parser("refiner", help="stage 3 (optional): the causal audio refiner on the model's own samples")
    add_run_arguments(p, "RefinerConfig overrides, e.g. width=96 dilations=[1,2,4]")
    p.add_argument("--init", default="", metavar="CKPT",
                   help="MM2Face file to refine; stages 1-2 stay frozen (default: the shipped default checkpoint)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    p.add_argument("--batch", type=int, default=16, help="whole clips per step (default 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (Adam, betas 0.5/0.999)")
    p.add_argument("--clips", type=int, default=600,
                   help="training clips whose motions are sampled from the model (default 600; ~1 s each on CPU)")
    p.add_argument("--w-clip-mean", type=float, default=1.0,
                   help="weight of the per-clip mean error (emotion level, head offset; default 1)")
    p.add_argument("--text-only-loss", choices=["frames", "sorted"], default="frames",
                   help="clips without audio: compare frame by frame (default), or each dimension's sorted "
                        "values over the clip, so a sampled emotion is not averaged away for being at "
                        "another moment than the ground truth's")
    p.add_argument("--movement-captions", choices=["alone", "with-emotion"], default="alone",
                   help="action and head-pose captions that name no emotion: train them alone on every clip "
                        "(default), or on emotional clips only after the emotion caption, so that a style "
                        "naming no emotion asks for a calm face")
    p.add_argument("--warm-start", action="store_true",
                   help="start from the --init file's own refiner where shapes match (new parts start fresh)")
    p.add_argument("--freeze", nargs="*", default=[], metavar="PREFIX",
                   help="refiner parameters (name prefixes) to keep as they start, e.g. head_out text_ time "
                        "to keep a warm start's head-pose path")
    p.add_argument("--augment-share", type=float, default=0.0,
                   help="share of the talking training clips heard through a random microphone condition "
                        "(training.augment: gain -30..0 dBFS peak, noise beds, reverb) before sampling; the "
                        "ground truth stays (default 0)")
    p.add_argument("--w-contact", type=float, default=1.0,
                   help="loss weight of the stand-in's lip-contact units mouth_close and lower_lip_roll (default 1)")
    p.add_argument("--sample-batch", type=int, default=32,
                   help="clips sampled together by stage 2 before training (default 32)")
    p.add_argument("--time-budget-min", type=float, default=0.0,
                   help="stop training after this many minutes of steps (a last validation first; "
                        "0 = all --steps)")
    k = sub.add_parser("closure", help="stage 4 (optional, stand-in head): the lip-contact classifier, trained on "
                                       "a synthetic corpus's phone timings (engine/closure.py)")
    k.add_argument("--data", required=True, nargs="+", help="MMHead-layout corpus folder(s) whose synth_meta has phones")
    k.add_argument("--out", required=True, help="run folder: OUT/model.pt (the --init model with the stage) and log.jsonl")
    k.add_argument("--init", default="", metavar="CKPT",
                   help="MM2Face file to add the stage to; the rest stays as it is (default: the shipped default)")
    k.add_argument("--steps", type=int, default=2500, help="optimiser steps (default 2500)")
    k.add_argument("--batch", type=int, default=24, help="crops per step (default 24)")
    k.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, one-cycle)")
    k.add_argument("--augment-share", type=float, default=0.7,
                   help="share of crops heard through a random microphone condition (training.augment; default 0.7)")
    k.add_argument("--time-budget-min", type=float, default=0.0, help="stop after this many minutes (0 = all --steps)")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    k.add_argument("--set", nargs="*", metavar="KEY=VALUE", default=[],
                   help="ClosureConfig overrides, e.g. channels=96 on_p=0.35 jaw_max_rad=0.16")
    c = sub.add_parser("refiner-config", help="change settings of a trained model that keep its weights "
                                              "(the refiner's silent_dims, another file's refiner, the empty "
                                              "style) and write a new model file; no training")
    c.add_argument("--ckpt", required=True, help="MM2Face file to change (with a stage-3 refiner unless "
                                                 "--refiner-from gives one)")
    c.add_argument("--out", required=True, help="model file to write")
    c.add_argument("--empty-style", metavar="TEXT", default=None,
                   help="caption stage 2 reads when a stream or clip has no style (ModelInfo.empty_style; "
                        "\"\" = the learned null embedding, i.e. any emotion of the training clips)")
    c.add_argument("--refiner-from", metavar="CKPT", default=None,
                   help="take the trained refiner of this MM2Face file instead (e.g. the default after "
                        "fine-tuning stage 2 with mm2face-train mm2face --init); same VQ-VAE required")
    c.add_argument("--set", nargs="*", metavar="KEY=VALUE", default=[],
                   help="RefinerConfig fields, e.g. silent_dims=[8,13,15,16,17,19,20,26,53,54,55] (the stand-in "
                        "head's speech mouth units and the jaw: what the correction may still change on tokens "
                        "without audio) or silent_dims=null (all of dims)")
    return ap


def refiner_config(args) -> str:
    from mm2face.engine.model import MM2Face
    if not args.set and not args.refiner_from and args.empty_style is None:
        raise SystemExit("mm2face-train refiner-config: nothing to change; give --set KEY=VALUE, --refiner-from CKPT "
                         "and/or --empty-style TEXT")
    model = MM2Face.load(args.ckpt)
    changes = _kv(args.set)
    try:
        if args.refiner_from:
            model.take_refiner(MM2Face.load(args.refiner_from))
            model.info.meta["refiner_from"] = str(args.refiner_from)
        if changes:
            model.reconfigure_refiner(**changes)
    except ValueError as e:
        raise SystemExit(f"mm2face-train refiner-config: {e}") from None
    if args.empty_style is not None:
        model.info.empty_style = args.empty_style.strip()
    if changes:
        model.info.meta.setdefault("refiner_config_changes", []).append(changes)
    return str(model.save(args.out))


def closure(args) -> str:
    from mm2face.engine.closure import ClosureConfig
    from mm2face.engine.model import load_model
    from mm2face.training.train_closure import ClosureTrainConfig, train_closure
    try:
        model = load_model(args.init or None)
        net_cfg = ClosureConfig(**_kv(args.set))
    except (FileNotFoundError, TypeError) as e:
        raise SystemExit(f"mm2face-train closure: {e}") from None
    cfg = ClosureTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, augment_share=args.augment_share,
                             seed=args.seed, time_budget_min=args.time_budget_min)
    from mm2face.training.mmhead import CorpusError
    try:
        train_closure(model, args.data, args.out, cfg, net_cfg)
    except (ValueError, CorpusError) as e:
        raise SystemExit(f"mm2face-train closure: {e}") from None
    return str(Path(args.out) / "model.pt")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.stage == "refiner-config":
        print(f"wrote {refiner_config(args)}")
        return
    if args.stage == "closure":
        torch.set_num_threads(max(1, args.threads))
        print(f"wrote {closure(args)}")
        return
    torch.set_num_threads(max(1, args.threads))
    from mm2face.training.trainer import torch_device
    try:
        torch_device(args.device)              # a device this machine lacks: say so before loading any data
    except ValueError as e:
        raise SystemExit(f"mm2face-train: {e}") from None
    from mm2face.training.dataset import load_clips
    subsets = tuple(s for s in args.subsets.split(",") if s)
    train = load_clips(args.data, "train", subsets, args.limit)
    try:
        val = load_clips(args.data, "val", subsets, args.limit)
    except ValueError:
        print("no val split found: validating on train clips", file=sys.stderr)
        val = []
    over = _kv(args.set)
    if args.stage == "vqvae":
        from mm2face.training.train_vqvae import VQTrainConfig, train_vqvae
        cfg = VQTrainConfig(out=args.out, steps=args.steps, batch=args.batch or 32, window=args.window, lr=args.lr,
                            val_every=args.val_every, save_every=args.save_every or 500, seed=args.seed,
                            head=args.head, resume=args.resume, vq=over, w_head=args.w_head,
                            device=args.device)
        path = train_vqvae(cfg, train, val, progress=not args.no_progress)
    elif args.stage == "refiner":
        from mm2face.training.train_refiner import RefinerTrainConfig, train_refiner
        cfg = RefinerTrainConfig(out=args.out, init=args.init, steps=args.steps, batch=args.batch, lr=args.lr,
                                 max_clips=args.clips, val_every=args.val_every, seed=args.seed,
                                 w_clip_mean=args.w_clip_mean, warm_start=args.warm_start, freeze=args.freeze,
                                 text_only_loss=args.text_only_loss,
                                 movements_alone=args.movement_captions == "alone",
                                 augment_share=args.augment_share, sample_batch=args.sample_batch,
                                 w_contact=args.w_contact,
                                 time_budget_min=args.time_budget_min, device=args.device, refiner=over)
        path = train_refiner(cfg, train, val, progress=not args.no_progress)
    else:
        from mm2face.training.train_mm2face import GPTTrainConfig, train_mm2face
        gpt = {k: v for k, v in over.items() if not k.startswith("audio.")}
        audio = {k[6:]: v for k, v in over.items() if k.startswith("audio.")}
        cfg = GPTTrainConfig(out=args.out, vq=args.vq, steps=args.steps, batch=args.batch or 16,
                             n_tokens=args.n_tokens, lr=args.lr, val_every=args.val_every,
                             save_every=args.save_every or 250, seed=args.seed, resume=args.resume,
                             text_encoder=args.text_encoder, audio_encoder=args.audio_encoder, gpt=gpt, audio=audio,
                             time_budget_min=args.time_budget_min, device=args.device,
                             token_noise=args.token_noise, init=args.init, aux_audio=args.aux[0],
                             aux_hidden=args.aux[1], aux_text=args.aux[2], hist_drop=args.hist_drop)
        path = train_mm2face(cfg, train, val, progress=not args.no_progress)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
