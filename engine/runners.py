"""Runners: the code that runs a hop's three model parts, one object per backend.

A :class:`Runner` has three calls, and :func:`mm2face.engine.session.step_sessions` (and
:func:`mm2face.engine.generate.generate`) use nothing else of the model's per-hop work::

    av = runner.encode_audio(wins)                               # (N, W, C) CNN windows -> (N, d_model)
    logits = runner.g_logits(prev, av, text, state.kv, rows, g)  # one G step, both rows, guided
    frames = runner.decode(codes)                                # (n, k) tokens -> (n, down, 56) normalised

``g_logits`` is the same for every runner: it builds the two rows of each stream (with the style and
with the null style), runs the runner's :meth:`Runner.g_rows` on them once, writes the new keys/values
into the :class:`~mm2face.engine.batch_state.KVRing` in place, and combines the two rows with
:func:`guide`, the one place classifier-free guidance is computed. A runner differs only in how it runs
:class:`GStep`, :class:`AudioStep` and :class:`DecodeStep`:

* :class:`EagerRunner` - plain PyTorch (the reference);
* :class:`StaticRunner` - callables that want static shapes, one per batch bucket (1, 2, 4, 8 ... rows);
  its subclasses build them: :class:`CompileRunner` (``torch.compile``), :class:`OnnxRunner` (ONNX
  Runtime sessions exported at construction; dynamic batch, so no buckets) and :class:`TensorRTRunner`
  (Torch-TensorRT, CUDA only). The shapes come from the batch state: every row's ring holds
  ``ctx_tokens - 1`` slots, so no cache is padded in time, and a bucket larger than the ready rows is
  filled with the state's next rows (stepped, their results dropped) instead of copied zeros.

:func:`mm2face.engine.backends.apply_backend` picks the runner and sets ``model.runner``;
:func:`runner_for` returns it (an :class:`EagerRunner` when none was set). The optional stage-3 refiner
runs eager under every runner (``model.refiner.step``), and so does the audio encoder's CNN feature step
(``model.audio.cnn`` on each hop's new samples only; its windows are what :meth:`Runner.encode_audio` reads).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from mm2face.engine.gpt import KVCache


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says what to install or which device to use."""


def bucket(n: int) -> int:
    """Batch bucket: the next power of two >= n."""
    return 1 << max(0, (int(n) - 1).bit_length())


def guide(logits: torch.Tensor, guidance) -> torch.Tensor:
    """Classifier-free guidance, the only place it is computed: ``logits (B, 2, n_codes)`` (row 0 with
    the style, row 1 with the null style), ``guidance`` float or ``(B,)`` -> ``(B, n_codes)``
    ``uncond + g * (cond - uncond)`` (g = 1: the styled logits; g > 1: the style exaggerated)."""
    cond, unc = logits[:, 0], logits[:, 1]
    g = torch.as_tensor(guidance, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
    return unc + g * (cond - unc)


# ----------------------------------------------------------------------------- the model parts

class GStep(nn.Module):
    """One G step over ring caches, with everything that does not change every token computed outside:
    the style's modulation (it changes only when the style text does) and the attention bias (ALiBi
    over the ring's slots and the mask of slots not yet written; :meth:`KVRing.bias`).

    ``prev (R, 1) long, audio (R, 1, d_model), text_x (R, 1, d_model), bias (R, H, 1, L + 1)``, then per
    layer ``mod_l (R, 1, 4 d_model)``, then ``k_l``, then ``v_l (R, H, L, hd)`` the rows' rings
    (``L = ctx_tokens - 1`` slots, any order: the bias holds each slot's distance)
    -> ``logits (R, n_codes)``, then the new token's ``k_l``, then ``v_l (R, H, 1, hd)`` per layer (the
    caller writes them into the ring). R counts rows (2 per stream: with and without the style)."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt
        self.n_layer = gpt.cfg.n_layer
        self.eval()      # exporters restore the wrapper's mode afterwards, recursively: it must be eval

    def forward(self, prev, audio, text_x, bias, *layers):
        n = self.n_layer
        cache = KVCache(n, self.gpt.cfg.ctx_tokens)
        cache.k, cache.v = list(layers[n:2 * n]), list(layers[2 * n:])
        logits = self.gpt(prev, audio, None, cache, modulation=(None, list(layers[:n]), text_x), bias=bias)[:, -1]
        return (logits, *[k[:, :, -1:] for k in cache.k], *[v[:, :, -1:] for v in cache.v])


def step_names(n_layer: int) -> tuple[list[str], list[str]]:
    """Input and output names of :class:`GStep` (for exporters)."""
    per = lambda *p: [f"{x}{l}" for x in p for l in range(n_layer)]
    return ["prev", "audio", "text_x", "bias"] + per("mod", "k", "v"), ["logits"] + per("k_new", "v_new")


def step_modulation(gpt, text: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``text (R, d_text)`` -> ``mods`` (per layer ``(R, 1, 4 d_model)``), ``text_x (R, 1, d_model)`` (zeros
    for a model without the style input term): :class:`GStep`'s style inputs."""
    _, mods, text_x = gpt.modulation(text[:, None])
    mods = [m.contiguous() for m in mods]
    text_x = text_x.contiguous() if text_x is not None else text.new_zeros(text.shape[0], 1, gpt.cfg.d_model)
    return mods, text_x


class AudioStep(nn.Module):
    """``cnn_windows (N, W, C)`` -> token audio vectors ``(N, d_model)``."""

    def __init__(self, audio):
        super().__init__()
        self.audio = audio
        self.eval()

    def forward(self, wins):
        return self.audio.encode_windows(wins)


class DecodeStep(nn.Module):
    """``codes (n, receptive_tokens)`` -> frames of the last token ``(n, down, 56)`` (normalised)."""

    def __init__(self, vq):
        super().__init__()
        self.vq = vq
        self.eval()

    def forward(self, codes):
        return self.vq.decode_last(codes)


# ----------------------------------------------------------------------------- runners

class Runner:
    """The per-hop work of a model on one backend. Subclasses implement :meth:`g_rows`,
    :meth:`encode_audio` and :meth:`decode`; :meth:`g_logits` is shared."""

    name = "?"

    def __init__(self, model):
        self.model = model
        self._style = None              # (text_emb, mods, text_x) of the last G step

    # -- what a backend implements
    def shape_rows(self, rows: int) -> int:
        """The row count :meth:`g_rows` is run with for ``rows`` rows (static-shape runners: a bucket)."""
        return rows

    def g_rows(self, prev, audio, text_x, bias, mods, ks, vs):
        """:class:`GStep` on ``R`` rows -> (logits ``(R, n_codes)``, new keys, new values per layer)."""
        raise NotImplementedError

    def encode_audio(self, wins: torch.Tensor) -> torch.Tensor:
        """``wins (N, window_feats, C)`` CNN feature windows -> token audio vectors ``(N, d_model)``."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes (n, k)`` each stream's last ``k <= receptive_tokens`` tokens -> the last token's frames
        ``(n, down, 56)`` normalised (fewer tokens than ``receptive_tokens`` only at a stream's start)."""
        raise NotImplementedError

    # -- shared
    def _modulation(self, text_emb: torch.Tensor):
        """The style inputs of the rows ``[stream b with its style, stream b with the null style, ...]``,
        reused while the streams' style vectors stay the same."""
        last = self._style
        if last is not None and last[0].shape == text_emb.shape and torch.equal(last[0], text_emb):
            return last[1], last[2]
        B = text_emb.shape[0]
        null = self.model.gpt.null_text.detach()[None].expand(B, -1)
        mods, tx = step_modulation(self.model.gpt, torch.stack([text_emb, null], 1).reshape(2 * B, -1))
        self._style = (text_emb.clone(), mods, tx)
        return mods, tx

    @torch.no_grad()
    def g_logits(self, prev: torch.Tensor, audio_vec: torch.Tensor, text_emb: torch.Tensor, kv, rows: list[int],
                 guidance) -> torch.Tensor:
        """One token for ``B`` streams: ``prev (B,)`` long, ``audio_vec (B, d_model)``, ``text_emb (B, d_text)``,
        ``kv`` the :class:`~mm2face.engine.batch_state.KVRing` whose rows ``rows[b]`` (with the style) and
        ``rows[b] + 1`` (null style) are stream b's, ``guidance`` float or ``(B,)``. Steps those rows of
        ``kv`` in place and returns the guided logits ``(B, n_codes)``."""
        B = prev.shape[0]
        g_rows = [r + j for r in rows for j in (0, 1)]
        p = prev.repeat_interleave(2)[:, None]
        a = audio_vec.repeat_interleave(2, 0)[:, None]
        mods, tx = self._modulation(text_emb)
        R, run = len(g_rows), g_rows
        bb = self.shape_rows(R)
        if bb > R and g_rows == list(range(g_rows[0], g_rows[0] + R)) and g_rows[0] + bb <= kv.rows:
            # a static shape of bb rows: the state's next rows fill it (read as views, results dropped),
            # so the caches are not copied to pad them; only the per-row inputs get zero rows
            run = list(range(g_rows[0], g_rows[0] + bb))
            pad = lambda x: torch.cat([x, x.new_zeros(bb - R, *x.shape[1:])])
            p, a, tx, mods = pad(p), pad(a), pad(tx), [pad(m) for m in mods]
        ks, vs = kv.gather(run)
        logits, k_new, v_new = self.g_rows(p, a, tx, kv.bias(run), mods, ks, vs)
        if len(run) > R:
            logits, k_new, v_new = logits[:R], [k[:R] for k in k_new], [v[:R] for v in v_new]
        kv.write(g_rows, k_new, v_new)
        return guide(logits.view(B, 2, -1), guidance)


class EagerRunner(Runner):
    """Plain PyTorch: the reference every other runner is compared with."""

    name = "eager"

    def __init__(self, model):
        super().__init__(model)
        self.g = GStep(model.gpt)

    def g_rows(self, prev, audio, text_x, bias, mods, ks, vs):
        out = self.g(prev, audio, text_x, bias, *mods, *ks, *vs)
        n = self.g.n_layer
        return out[0], list(out[1:1 + n]), list(out[1 + n:])

    def encode_audio(self, wins):
        return self.model.audio.encode_windows(wins)

    def decode(self, codes):
        return self.model.vq.decode_last(codes)


class StaticRunner(Runner):
    """Runs the three parts through callables that want static shapes: per batch bucket they see one
    shape only (rows padded with zeros; the padding rows' outputs are dropped). ``make_g(rows)``,
    ``make_a(n)``, ``make_d(n)`` build (or return) the callable for a bucket on first use; None = eager
    for that part. On its own (``--backend static``) it runs the eager modules with that shape
    discipline, which shows what the padding costs."""

    name = "static"
    buckets = True      # pad batches to powers of two (False: the callables take any batch, e.g. ONNX's
                        # dynamic-batch graphs; audio and decoder batches still get at least 2 rows)

    def __init__(self, model, make_g=None, make_a=None, make_d=None, device=None):
        super().__init__(model)
        if make_g is None:
            g, a, d = GStep(model.gpt), AudioStep(model.audio), DecodeStep(model.vq)
            make_g, make_a, make_d = (lambda b: g), (lambda b: a), (lambda b: d)
        self.n_layer = model.gpt.cfg.n_layer
        self.R = model.vq.receptive_tokens
        self.make_g, self.make_a, self.make_d = make_g, make_a, make_d
        self._g, self._a, self._d = {}, {}, {}

    @staticmethod
    def _get(table, make, b):
        if make is None:
            return None
        if b not in table:
            table[b] = make(b)
        return table[b]

    def shape_rows(self, rows: int) -> int:
        return bucket(rows) if self.buckets else rows

    def g_rows(self, prev, audio, text_x, bias, mods, ks, vs):
        rows = prev.shape[0]
        bb = self.shape_rows(rows)
        args = [prev, audio, text_x, bias, *mods, *ks, *vs]
        if bb > rows:               # rows the state could not fill (see g_logits): zeros, caches included
            args = [torch.cat([x, x.new_zeros(bb - rows, *x.shape[1:])]) for x in args]
        out = self._get(self._g, self.make_g, bb)(*[x.contiguous() for x in args])
        out = [o[:rows] for o in out] if bb > rows else list(out)
        n = self.n_layer
        return out[0], out[1:1 + n], out[1 + n:]

    def encode_audio(self, wins):
        n = wins.shape[0]
        bb = max(2, self.shape_rows(n))   # never 1: compilers specialise size 1, one graph serves all
        fn = self._get(self._a, self.make_a, bb)
        if fn is None:
            return self.model.audio.encode_windows(wins)
        if bb > n:
            wins = torch.cat([wins, wins.new_zeros(bb - n, *wins.shape[1:])])
        return fn(wins.contiguous())[:n]

    def decode(self, codes):
        n, k = codes.shape
        if k < self.R:                                   # stream start: short history, eager
            return self.model.vq.decode_last(codes)
        codes = codes[:, -self.R:]
        bb = max(2, self.shape_rows(n))
        fn = self._get(self._d, self.make_d, bb)
        if fn is None:
            return self.model.vq.decode_last(codes)
        if bb > n:
            codes = torch.cat([codes, codes[:1].expand(bb - n, -1)])
        return fn(codes.contiguous())[:n]


def example_inputs(model, rows: int, device):
    """Zeros in :class:`GStep`'s input shapes for ``rows`` rows."""
    g = model.gpt.cfg
    L, hd, n = g.ctx_tokens - 1, g.d_model // g.n_head, g.n_layer
    dev = torch.device(device)
    z = lambda *shape: torch.zeros(*shape, device=dev)
    return (torch.zeros(rows, 1, dtype=torch.long, device=dev), z(rows, 1, g.d_model),
            z(rows, 1, g.d_model), z(rows, g.n_head, 1, L + 1), *[z(rows, 1, 4 * g.d_model) for _ in range(n)],
            *[z(rows, g.n_head, L, hd) for _ in range(2 * n)])


def audio_example(model, n: int, device):
    c = model.audio.cfg
    return torch.zeros(n, c.window_feats, model.audio.cnn_channels, device=torch.device(device))


def decode_example(model, n: int, device):
    return torch.zeros(n, model.vq.receptive_tokens, dtype=torch.long, device=torch.device(device))


def have_cxx() -> bool:
    import shutil
    return bool(shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++"))


class CompileRunner(StaticRunner):
    """``torch.compile`` of the static-shape parts (inductor; ``mode="reduce-overhead"`` on CUDA, i.e. CUDA
    graphs). ``compiler``: the torch.compile backend ("aot_eager" traces without code generation, which
    the tests use to check the graph capture quickly); ``dynamic``: compile once with symbolic sizes
    (default; CUDA graphs are still recorded per bucket) or once per bucket (False)."""

    name = "compile"

    def __init__(self, model, device="cpu", mode: str | None = None, compiler: str = "inductor",
                 dynamic: bool | None = None, **_):
        dev = torch.device(device)
        if dynamic is None:
            dynamic = True
        if mode is None:
            mode = "reduce-overhead" if dev.type == "cuda" else "default"
        if compiler != "inductor":
            mode = None
        if dev.type == "cpu" and compiler == "inductor" and not have_cxx():
            raise BackendUnavailable("torch.compile on CPU needs a C++ compiler (g++); install build-essential "
                                     "or use --backend eager/onnx")
        import torch._dynamo as dynamo
        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
        cg, ca, cd = (torch.compile(x, backend=compiler, mode=mode, dynamic=dynamic)
                      for x in (GStep(model.gpt), AudioStep(model.audio), DecodeStep(model.vq)))
        copy_out = dev.type == "cuda" and mode == "reduce-overhead"    # CUDA-graph outputs are reused

        def wrap(fn):
            def call(*args):
                out = fn(*args)
                if copy_out:
                    out = tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()
                return out
            return call

        super().__init__(model, lambda b: wrap(cg), lambda b: wrap(ca), lambda b: wrap(cd))


class OnnxRunner(StaticRunner):
    """ONNX Runtime sessions of the three parts, exported at construction into ``workdir`` (a temporary
    folder by default): the G step for one stream (2 rows) as its own static graph, one graph with a
    dynamic row axis for batches (built now, so that a new batch size never stalls serving with an
    export), the audio encoder and the decoder with a dynamic batch axis."""

    name = "onnx"
    buckets = False     # the batched graphs have a dynamic batch axis: no padding to a bucket

    def __init__(self, model, device="cpu", workdir: str | None = None, threads: int | None = None, **_):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable("the onnx backend needs onnxruntime: pip install onnxruntime") from e
        dev = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if dev.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime here has no CUDA provider; pip install onnxruntime-gpu or "
                                         "use --backend compile on CUDA")
            providers = ["CUDAExecutionProvider"]
        wd = Path(workdir or tempfile.mkdtemp(prefix="mm2face-onnx-"))
        wd.mkdir(parents=True, exist_ok=True)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")   # no busy-waiting between hops
        cpu = torch.device("cpu")
        on_cpu = dev.type == "cpu"

        def export(mod, example, names_in, names_out, dyn, fname):
            path = wd / fname
            mod_cpu = mod.to(cpu)
            with torch.no_grad():
                torch.onnx.export(mod_cpu, tuple(e.to(cpu) for e in example), str(path), input_names=names_in,
                                  output_names=names_out, dynamic_axes=dyn, opset_version=17, dynamo=False)
            mod.to(dev)
            sess = ort.InferenceSession(str(path), so, providers=providers)

            def call(*args):    # per call overhead matters here: a G step is ~0.35 ms inside ONNX Runtime
                feeds = {n: (a.numpy() if on_cpu else a.detach().cpu().numpy()) for n, a in zip(names_in, args)}
                outs = [torch.from_numpy(o) for o in sess.run(None, feeds)]
                res = tuple(outs) if on_cpu else tuple(o.to(dev) for o in outs)
                return res if len(res) > 1 else res[0]
            return call

        gi, go = step_names(model.gpt.cfg.n_layer)

        def g_step(rows: int | None):
            """The G step for ``rows`` rows with static shapes (the shape arithmetic of a dynamic row axis
            is a quarter of the graph), or for any number of rows."""
            dyn = None if rows else {n: {0: "R"} for n in gi + go}
            return export(GStep(model.gpt), example_inputs(model, rows or 2, cpu), gi, go, dyn,
                          f"g_step_{rows or 'any'}.onnx")

        single, batched = g_step(2), g_step(None)
        a_fn = export(AudioStep(model.audio), (audio_example(model, 2, cpu),), ["wins"], ["vec"],
                      {"wins": {0: "N"}, "vec": {0: "N"}}, "audio.onnx")
        d_fn = export(DecodeStep(model.vq), (decode_example(model, 2, cpu),), ["codes"], ["frames"],
                      {"codes": {0: "N"}, "frames": {0: "N"}}, "decode.onnx")
        super().__init__(model, lambda rows: single if rows == 2 else batched, lambda b: a_fn, lambda b: d_fn)
        self.workdir = str(wd)


class TensorRTRunner(StaticRunner):
    """Torch-TensorRT (CUDA only) of the static-shape parts, one engine per batch bucket, built on first
    use. ``precision``: "fp16" (default; fp32 kept where TensorRT chooses) or "fp32"."""

    name = "tensorrt"

    def __init__(self, model, device="cpu", precision: str = "fp16", **_):
        dev = torch.device(device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailable("the tensorrt backend needs an NVIDIA GPU with CUDA (--device cuda); "
                                     "on CPU use --backend onnx or eager")
        try:
            import torch_tensorrt
        except ImportError as e:
            raise BackendUnavailable("the tensorrt backend needs Torch-TensorRT: pip install "
                                     "'mm2face-live[tensorrt]' (torch-tensorrt matching your torch and CUDA)") from e
        dtypes = {torch.float32} if precision == "fp32" else {torch.float16, torch.float32}

        def build(mod, example):
            with torch.no_grad():
                return torch_tensorrt.compile(mod, ir="dynamo", inputs=list(example), enabled_precisions=dtypes,
                                              min_block_size=1)

        g, a, d = GStep(model.gpt), AudioStep(model.audio), DecodeStep(model.vq)
        super().__init__(model, lambda b: build(g, example_inputs(model, b, dev)),
                         lambda b: build(a, (audio_example(model, b, dev),)),
                         lambda b: build(d, (decode_example(model, b, dev),)))


def runner_for(model) -> Runner:
    """The model's runner (set by :func:`mm2face.engine.backends.apply_backend`); a plain model gets an
    :class:`EagerRunner`, made once."""
    r = getattr(model, "runner", None)
    if r is None:
        r = model.runner = EagerRunner(model)
    return r


__all__ = ["AudioStep", "BackendUnavailable", "CompileRunner", "DecodeStep", "EagerRunner", "GStep", "OnnxRunner",
           "Runner", "StaticRunner", "TensorRTRunner", "bucket", "guide", "runner_for", "step_modulation",
           "step_names"]
