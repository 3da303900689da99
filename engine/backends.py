"""Inference backends for the per-hop work of a stream: audio encoder, one G step, D on the last token.

    model = apply_backend(MM2Face.load(path), "onnx", device="cpu")    # then use it as usual
    s = StreamSession(model)

Backends (``BACKENDS``):

* ``eager``: plain PyTorch (the reference).
* ``static``: eager PyTorch with *static shapes*: the KV cache is always ``ctx_tokens - 1`` long
  (left padding masked out) and batches are padded up to a bucket (1, 2, 4, 8, ...). It is the
  shape discipline that ``compile`` / ``onnx`` / ``tensorrt`` build on; on its own it shows their cost.
* ``compile``: ``torch.compile`` of the static-shape step (inductor; ``mode="reduce-overhead"`` on CUDA,
  i.e. CUDA graphs). The first hop of each batch bucket compiles (seconds to a minute).
* ``int8``: dynamic int8 quantisation of every ``nn.Linear`` (CPU only; a copy of the model).
* ``onnx``: ONNX Runtime sessions of the three static-shape parts, exported at first use.
* ``tensorrt``: Torch-TensorRT (``pip install 'mm2face-live[tensorrt]'``, CUDA only) of the
  static-shape parts, one engine per batch bucket.

:func:`apply_backend` patches the model *instance* (``g_logits``, ``audio.encode_windows``,
``vq.decode_last``) so that :class:`~mm2face.engine.session.StreamSession`, ``step_sessions`` and the
batcher use the backend without knowing about it; weights stay shared (``int8`` works on a copy).
The optional stage-3 refiner (``model.refiner.step``, one token per hop) runs eager under every backend.
``TOLERANCE`` documents how far each backend's guided logits and decoded frames may drift from eager
(checked by ``tests/test_backends_*.py`` where the backend runs on CPU).
"""
from __future__ import annotations

import copy
import os
import tempfile
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mm2face.engine.gpt import KVCache

BACKENDS = ("eager", "static", "compile", "int8", "onnx", "tensorrt")

# max |difference| to eager on CPU: (guided logits, decoded normalised frames).
TOLERANCE = {
    "eager": (0.0, 0.0),
    "static": (1e-4, 1e-5),       # padding only reorders float sums
    "compile": (1e-3, 1e-4),      # fused kernels
    "onnx": (1e-3, 1e-4),         # ORT kernels
    "int8": (0.5, 0.1),           # quantised weights: tokens may differ; see docs/benchmarks.md
    "tensorrt": (5e-2, 1e-2),     # fp16/tf32 kernels on GPU
}


# The default per device, chosen by measurement (docs/benchmarks.md, "Backends"): on this project's
# 2-core CPU, ONNX Runtime runs a hop about twice as fast as eager PyTorch with the same outputs, while
# int8 dynamic quantisation is no faster for a model this small and changes tokens. CUDA stays on
# eager until GPU numbers say otherwise (compile costs a long warm-up at start).
DEFAULT_BACKEND = {"cpu": "onnx", "cuda": "eager"}


def default_backend(device="cpu") -> str:
    """The backend to use on ``device`` by default (falls back to eager if its library is missing)."""
    dev = torch.device(device)
    name = DEFAULT_BACKEND.get(dev.type, "eager")
    if name == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "eager"
    return name


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says what to install or which device to use."""


def bucket(n: int) -> int:
    """Batch bucket: the next power of two >= n."""
    return 1 << max(0, (int(n) - 1).bit_length())


# ----------------------------------------------------------------------------- static-shape parts

class GStep(nn.Module):
    """One G step on a static cache, with everything that does not change every token computed outside:
    the style's modulation (it changes only when the style text does) and the attention bias (ALiBi and
    the padding mask; constant once the cache is full). Each layer's keys/values go in and come out as
    their own tensors, so neither the graph nor the caller stacks or splits them every token.

    ``prev (R, 1) long, audio (R, 1, d_model), text_x (R, 1, d_model), bias (R, H, 1, L + 1)``, then per
    layer ``mod_l (R, 1, 4 d_model)``, then ``k_l``, then ``v_l (R, H, L, hd)`` with ``L = ctx_tokens - 1``
    -> ``logits (R, n_codes)``, then the new ``k_l``, then ``v_l`` (same shapes: the window slid by one).
    R counts rows (2 per stream with classifier-free guidance); see :func:`step_modulation`,
    :func:`step_bias` and :func:`step_names`."""

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
        return (logits, *cache.k, *cache.v)


def step_names(n_layer: int) -> tuple[list[str], list[str]]:
    """Input and output names of :class:`GStep` (for exporters)."""
    per = lambda *p: [f"{x}{l}" for x in p for l in range(n_layer)]
    return ["prev", "audio", "text_x", "bias"] + per("mod", "k", "v"), ["logits"] + per("k_new", "v_new")


def step_modulation(gpt, text: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``text (R, d_text)`` -> ``mods`` (per layer ``(R, 1, 4 d_model)``), ``text_x (R, 1, d_model)`` (zeros
    for a model without the style input term): :class:`GStep`'s style inputs (memoised while the text stays)."""
    _, mods, text_x = gpt.modulation(text[:, None])
    mods = [m.contiguous() for m in mods]
    text_x = text_x.contiguous() if text_x is not None else text.new_zeros(text.shape[0], 1, gpt.cfg.d_model)
    return mods, text_x


def step_bias(gpt, valid: torch.Tensor | None, rows: int, like: torch.Tensor) -> torch.Tensor:
    """:class:`GStep`'s ``bias (rows, H, 1, L + 1)``: ALiBi over the full static window, with the keys
    where ``valid (rows, L)`` is False masked out (None = all valid)."""
    L = gpt.cfg.ctx_tokens - 1
    bias = gpt.attn_bias(1, L, like.dtype, like.device, valid, rows)
    return bias.expand(rows, -1, -1, -1).contiguous()


class AudioStep(nn.Module):
    """``cnn_windows (N, W, C)`` -> token audio vectors ``(N, d_model)``."""

    def __init__(self, audio):
        super().__init__()
        self.audio = audio
        self.eval()
        self._encode = type(audio).encode_windows

    def forward(self, wins):
        return self._encode(self.audio, wins)


class DecodeStep(nn.Module):
    """``codes (n, receptive_tokens)`` -> frames of the last token ``(n, down, 56)`` (normalised)."""

    def __init__(self, vq):
        super().__init__()
        self.vq = vq
        self.eval()
        self._decode_last = type(vq).decode_last

    def forward(self, codes):
        return self._decode_last(self.vq, codes)


def static_cache(cache: KVCache, rows: int, L: int, H: int, hd: int, n_layer: int, like: torch.Tensor):
    """``cache`` (any length <= L, optional ``valid``) -> per layer left-padded ``k, v (rows, H, L, hd)``
    (lists) and ``valid (rows, L)``, or None when every key is valid (a full window, the steady state)."""
    Tc = cache.length
    if Tc == 0:
        z = like.new_zeros(rows, H, L, hd)
        return [z] * n_layer, [z] * n_layer, torch.zeros(rows, L, dtype=torch.bool, device=like.device)
    if Tc > L:
        raise ValueError(f"cache holds {Tc} tokens, more than the static length {L}")
    valid = cache.valid
    if Tc == L:
        return list(cache.k), list(cache.v), valid
    if valid is None:
        valid = torch.ones(rows, Tc, dtype=torch.bool, device=like.device)
    pad = lambda x: F.pad(x, (0, 0, L - Tc, 0))
    return ([pad(k) for k in cache.k], [pad(v) for v in cache.v], F.pad(valid, (L - Tc, 0), value=False))


class StaticRunner:
    """Runs G steps, audio windows and D through callables that want static shapes.

    ``g_fn(prev, audio, text, k, v, valid)``, ``a_fn(wins)``, ``d_fn(codes)``: per batch bucket they see
    one shape only; None means eager for that part. ``make_*(bucket)`` may build one callable per
    bucket (e.g. a TensorRT engine) on first use."""

    def __init__(self, model, make_g, make_a=None, make_d=None):
        self.model = model
        g = model.gpt
        self.n_layer, self.H = g.cfg.n_layer, g.cfg.n_head
        self.hd = g.cfg.d_model // g.cfg.n_head
        self.L = g.cfg.ctx_tokens - 1
        self.R = model.vq.receptive_tokens
        self.make_g, self.make_a, self.make_d = make_g, make_a, make_d
        self._g, self._a, self._d = {}, {}, {}
        self._style = None              # (text_emb, mods, text_x) of the last G step
        self._full_bias: dict[int, torch.Tensor] = {}    # rows -> the bias of a full, all-valid window
        self._eager_encode = model.audio.encode_windows
        self._eager_decode = model.vq.decode_last

    def _get(self, table, make, b):
        if make is None:
            return None
        if b not in table:
            table[b] = make(b)
        return table[b]

    @torch.no_grad()
    def g_logits(self, prev, audio_vec, text_emb, cache: KVCache, guidance):
        m = self.model
        B = prev.shape[0]
        rows = 2 * B
        p, a = prev.repeat_interleave(2)[:, None], audio_vec.repeat_interleave(2, 0)[:, None]   # rows: b cond, b uncond
        last = self._style
        if last is not None and last[0].shape == text_emb.shape and torch.equal(last[0], text_emb):
            mods, tx = last[1], last[2]                  # the styles did not change: same modulation
        else:
            null = m.gpt.null_text.detach()[None].expand(B, -1)
            t = torch.stack([text_emb, null], 1).reshape(2 * B, -1)
            mods, tx = step_modulation(m.gpt, t)
            self._style = (text_emb.clone(), mods, tx)
        ks, vs, valid = static_cache(cache, rows, self.L, self.H, self.hd, self.n_layer, a)
        if valid is None:
            bias = self._full_bias.get(rows)
            if bias is None:
                bias = self._full_bias[rows] = step_bias(m.gpt, None, rows, a)
        else:
            bias = step_bias(m.gpt, valid, rows, a)
        bb = bucket(rows)
        if bb > rows:                                    # pad the batch to its bucket with dummy rows
            grow = lambda x: torch.cat([x, x.new_zeros(bb - rows, *x.shape[1:])])
            p, a, tx, bias = grow(p), grow(a), grow(tx), grow(bias)
            mods, ks, vs = [grow(x) for x in mods], [grow(x) for x in ks], [grow(x) for x in vs]
        fn = self._get(self._g, self.make_g, bb)
        out = fn(p, a, tx, bias, *mods, *[k.contiguous() for k in ks], *[v.contiguous() for v in vs])
        logits, n = out[0], self.n_layer
        ks, vs = list(out[1:1 + n]), list(out[1 + n:])
        if bb > rows:
            logits, ks, vs = logits[:rows], [k[:rows] for k in ks], [v[:rows] for v in vs]
        cache.k, cache.v = ks, vs
        if valid is not None:                            # the window slid by one: the new key is valid
            valid = torch.cat([valid[:, 1:], valid.new_ones(rows, 1)], 1)
            cache.valid = None if bool(valid.all()) else valid
        cache.t += 1
        logits = logits.view(B, 2, -1)
        cond, unc = logits[:, 0], logits[:, 1]
        if not isinstance(guidance, float):
            guidance = torch.as_tensor(guidance, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
        return unc + guidance * (cond - unc)

    @torch.no_grad()
    def encode_windows(self, wins):
        n = wins.shape[0]
        bb = max(2, bucket(n))          # never 1: compilers specialise size 1, one graph serves all
        fn = self._get(self._a, self.make_a, bb)
        if fn is None:
            return self._eager_encode(wins)
        if bb > n:
            wins = torch.cat([wins, wins.new_zeros(bb - n, *wins.shape[1:])])
        return fn(wins.contiguous())[:n]

    @torch.no_grad()
    def decode_last(self, codes):
        n, k = codes.shape
        if k < self.R:                                   # stream start: short history, eager
            return self._eager_decode(codes)
        codes = codes[:, -self.R:]
        bb = max(2, bucket(n))
        fn = self._get(self._d, self.make_d, bb)
        if fn is None:
            return self._eager_decode(codes)
        if bb > n:
            codes = torch.cat([codes, codes[:1].expand(bb - n, -1)])
        return fn(codes.contiguous())[:n]

    def install(self):
        m = self.model
        m.g_logits = self.g_logits
        m.audio.encode_windows = self.encode_windows
        m.vq.decode_last = self.decode_last
        m.backend_runner = self
        return m


def _example_inputs(model, rows: int, device):
    """Zeros in :class:`GStep`'s input shapes for ``rows`` rows."""
    g = model.gpt.cfg
    L, hd, n = g.ctx_tokens - 1, g.d_model // g.n_head, g.n_layer
    z = lambda *shape: torch.zeros(*shape, device=torch.device(device))
    return (torch.zeros(rows, 1, dtype=torch.long, device=torch.device(device)), z(rows, 1, g.d_model),
            z(rows, 1, g.d_model), z(rows, g.n_head, 1, L + 1), *[z(rows, 1, 4 * g.d_model) for _ in range(n)],
            *[z(rows, g.n_head, L, hd) for _ in range(2 * n)])


def _audio_example(model, n: int, device):
    c = model.audio.cfg
    return torch.zeros(n, c.window_feats, model.audio.cnn_channels, device=torch.device(device))


def _decode_example(model, n: int, device):
    return torch.zeros(n, model.vq.receptive_tokens, dtype=torch.long, device=torch.device(device))


# ----------------------------------------------------------------------------- the backends

def _reset(model):
    """Undo an earlier apply_backend on this instance (back to the class methods)."""
    for obj, name in ((model, "g_logits"), (model.audio, "encode_windows"), (model.vq, "decode_last")):
        obj.__dict__.pop(name, None)
    model.__dict__.pop("backend_runner", None)


def apply_backend(model, name: str = "eager", device="cpu", **opts):
    """Make ``model`` run its per-hop work on backend ``name``. Returns the model to use (the same
    object, except ``int8`` which returns a quantised copy). Raises :class:`BackendUnavailable`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    dev = torch.device(device)
    model = model.to(dev).eval()
    _reset(model)
    if name == "eager":
        model.backend = "eager"
        return model
    if name == "int8":
        if dev.type != "cpu":
            raise BackendUnavailable("int8 dynamic quantisation runs on CPU only; use --backend compile on CUDA")
        te, model._text_encoder = model._text_encoder, None       # shared, not copied
        try:
            q = copy.deepcopy(model)
        finally:
            model._text_encoder = te
        q._text_encoder = te
        for part in ("gpt", "audio"):
            setattr(q, part, torch.ao.quantization.quantize_dynamic(getattr(q, part), {nn.Linear}, dtype=torch.qint8))
        q.backend = "int8"
        return q
    if name == "static":
        StaticRunner(model, lambda b: GStep(model.gpt), lambda b: AudioStep(model.audio),
                     lambda b: DecodeStep(model.vq)).install()
    elif name == "compile":
        _install_compile(model, dev, **opts)
    elif name == "onnx":
        _install_onnx(model, dev, **opts)
    elif name == "tensorrt":
        _install_tensorrt(model, dev, **opts)
    model.eval()         # whatever a build toggled: inference only (eager fallbacks would run dropout)
    model.backend = name
    return model


def _install_compile(model, dev, mode: str | None = None, compiler: str = "inductor", dynamic: bool | None = None,
                     **_):
    """``compiler``: torch.compile backend ("inductor"; "aot_eager" traces without code generation,
    which the tests use to check the graph capture quickly). ``dynamic``: compile once with symbolic
    sizes (default; CUDA graphs are still recorded per batch bucket) or once per bucket (False)."""
    if dynamic is None:
        dynamic = True
    if mode is None:
        mode = "reduce-overhead" if dev.type == "cuda" else "default"
    if compiler != "inductor":
        mode = None
    if dev.type == "cpu" and compiler == "inductor" and not _have_cxx():
        raise BackendUnavailable("torch.compile on CPU needs a C++ compiler (g++); install build-essential "
                                 "or use --backend eager/onnx")
    g, a, d = GStep(model.gpt), AudioStep(model.audio), DecodeStep(model.vq)
    # one compiled graph per bucket (static shapes); CUDA graphs need the inputs in stable storage,
    # which reduce-overhead handles by copying them in.
    cg, ca, cd = (torch.compile(x, backend=compiler, mode=mode, dynamic=dynamic) for x in (g, a, d))
    import torch._dynamo as dynamo
    dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)

    def wrap(fn):
        def call(*args):
            out = fn(*args)
            if dev.type == "cuda" and mode == "reduce-overhead":    # CUDA-graph outputs are reused: copy out
                out = tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()
            return out
        return call

    StaticRunner(model, lambda b: wrap(cg), lambda b: wrap(ca), lambda b: wrap(cd)).install()


def _have_cxx() -> bool:
    import shutil
    return bool(shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++"))


# ---- ONNX Runtime

def _install_onnx(model, dev, workdir: str | None = None, threads: int | None = None, **_):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailable("the onnx backend needs onnxruntime: pip install onnxruntime") from e
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

    def export(mod, example, names_in, names_out, dyn, fname):
        path = wd / fname
        mod_cpu = mod.to(cpu)
        with torch.no_grad():
            torch.onnx.export(mod_cpu, tuple(e.to(cpu) for e in example), str(path), input_names=names_in,
                              output_names=names_out, dynamic_axes=dyn, opset_version=17, dynamo=False)
        mod.to(dev)
        return ort.InferenceSession(str(path), so, providers=providers)

    on_cpu = dev.type == "cpu"

    def runner(sess, names_in):
        def call(*args):        # per call overhead matters here: a G step is ~0.35 ms inside ONNX Runtime
            feeds = {n: (a.numpy() if on_cpu else a.detach().cpu().numpy()) for n, a in zip(names_in, args)}
            outs = [torch.from_numpy(o) for o in sess.run(None, feeds)]
            res = tuple(outs) if on_cpu else tuple(o.to(dev) for o in outs)
            return res if len(res) > 1 else res[0]
        return call

    gi, go = step_names(model.gpt.cfg.n_layer)

    def g_step(rows: int | None):
        """The G step exported for ``rows`` rows with static shapes (the shape arithmetic of a dynamic
        batch axis is a quarter of the graph), or for any batch."""
        dyn = None if rows else {n: {0: "R"} for n in gi + go}
        sess = export(GStep(model.gpt), _example_inputs(model, rows or 2, cpu), gi, go, dyn,
                      f"g_step_{rows or 'any'}.onnx")
        return runner(sess, gi)

    # one stream (2 rows) gets its own static graph; batches share one dynamic graph, built now, so that
    # a new batch size never stalls serving with an export
    single, batched = g_step(2), g_step(None)
    make_g = lambda rows: single if rows == 2 else batched

    a_sess = export(AudioStep(model.audio), (_audio_example(model, 2, cpu),), ["wins"], ["vec"],
                    {"wins": {0: "N"}, "vec": {0: "N"}}, "audio.onnx")
    d_sess = export(DecodeStep(model.vq), (_decode_example(model, 2, cpu),), ["codes"], ["frames"],
                    {"codes": {0: "N"}, "frames": {0: "N"}}, "decode.onnx")
    a_fn, d_fn = runner(a_sess, ["wins"]), runner(d_sess, ["codes"])
    StaticRunner(model, make_g, lambda b: a_fn, lambda b: d_fn).install()
    model.onnx_dir = str(wd)


# ---- TensorRT

def _install_tensorrt(model, dev, precision: str = "fp16", **_):
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise BackendUnavailable("the tensorrt backend needs an NVIDIA GPU with CUDA (--device cuda); "
                                 "on CPU use --backend onnx or eager")
    try:
        import torch_tensorrt
    except ImportError as e:
        raise BackendUnavailable("the tensorrt backend needs Torch-TensorRT: pip install 'mm2face-live[tensorrt]' "
                                 "(torch-tensorrt matching your torch and CUDA)") from e
    dtypes = {torch.float32} if precision == "fp32" else {torch.float16, torch.float32}

    def build(mod, example):
        with torch.no_grad():
            return torch_tensorrt.compile(mod, ir="dynamo", inputs=list(example), enabled_precisions=dtypes,
                                          min_block_size=1)

    g, a, d = GStep(model.gpt), AudioStep(model.audio), DecodeStep(model.vq)
    StaticRunner(model,
                 lambda b: build(g, _example_inputs(model, b, dev)),
                 lambda b: build(a, (_audio_example(model, b, dev),)),
                 lambda b: build(d, (_decode_example(model, b, dev),))).install()


def backend_status(device="cpu") -> dict[str, str]:
    """``{backend: "ok" | why it cannot run here}`` without building anything."""
    dev = torch.device(device)
    out = {"eager": "ok", "static": "ok"}
    out["compile"] = "ok" if (dev.type == "cuda" or _have_cxx()) else "needs a C++ compiler for CPU inductor"
    out["int8"] = "ok" if dev.type == "cpu" else "CPU only"
    try:
        import onnxruntime as ort
        if dev.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            out["onnx"] = "onnxruntime has no CUDA provider here"
        else:
            out["onnx"] = "ok"
    except ImportError:
        out["onnx"] = "onnxruntime not installed"
    if dev.type != "cuda" or not torch.cuda.is_available():
        out["tensorrt"] = "needs CUDA"
    else:
        try:
            import torch_tensorrt  # noqa: F401
            out["tensorrt"] = "ok"
        except ImportError:
            out["tensorrt"] = "torch-tensorrt not installed (pip install 'mm2face-live[tensorrt]')"
    return out
