"""Same-run comparisons: KV cache vs prefix recomputation, streaming vs offline, backends vs eager; the
voice-activity gate's CPU cost."""
from __future__ import annotations

import time

import numpy as np

from mm2face.benchmarks.common import stats_ms

SR = 16000


def _sync(device):
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def vad_cost(audio_16k: np.ndarray, down: int = 2, reps: int = 3) -> dict:
    """CPU time of the voice-activity gate (:class:`mm2face.engine.vad.VadStream`) on ``audio_16k``,
    fed hop by hop (``down`` frames a hop) as a session does: thread CPU time and wall time per hop
    and per 512-sample model call, the best of ``reps`` passes (the least disturbed by other load)."""
    from mm2face.engine.vad import VadStream, vad_frame_weights
    audio = np.asarray(audio_16k, np.float32)
    vad_frame_weights(audio[:SR], 25)                           # load the model outside the timing

    def get(a, b):
        out = np.zeros(b - a, np.float32)
        seg = audio[a:min(b, len(audio))]
        out[:len(seg)] = seg
        return out
    n_hops = max(1, len(audio) // (640 * down) - 1)
    best = None
    for _ in range(reps):
        v = VadStream()
        c0, w0 = time.thread_time(), time.perf_counter()
        for k in range(n_hops):
            v.frame_weights(get, down * k, down)
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
        if best is None or cpu < best[0]:
            best = (cpu, wall, v.chunk_calls)
    cpu, wall, calls = best
    return {"hops": n_hops, "chunks": calls, "cpu_us_per_hop": cpu * 1e6 / n_hops,
            "cpu_us_per_chunk": cpu * 1e6 / calls, "wall_us_per_hop": wall * 1e6 / n_hops,
            "hop_ms": 640 * down / SR * 1e3}


def kv_vs_prefix(model, contexts_s=(5, 10, 30), reps: int = 40, device="cpu", kv_per_prefix: int = 5) -> list[dict]:
    """Per-step time of one G step (B=1 stream, 2 rows for guidance) with the sliding KV cache vs
    re-running the whole prefix of ``context_s`` seconds every step (FaceFormer/CodeTalker style).

    The two are interleaved so that both see the same machine load: ``kv_per_prefix`` KV steps (each
    method's steady state: a stream runs its steps back to back) between prefix runs, ``reps`` prefix
    runs at most (fewer for long contexts). Each KV row also reports its steps that came right after a
    prefix run (``kv_after_prefix_ms``: caches just emptied by a large computation)."""
    import torch
    from mm2face.engine.model import MM2Face
    g = model.gpt
    c = g.cfg
    dev = torch.device(device)
    tok_s = 25 / model.down                               # tokens per second
    out = []
    text = torch.randn(1, c.d_text, device=dev)
    with torch.no_grad():
        for ctx_s in contexts_s:
            n = int(round(ctx_s * tok_s))
            # KV cache: fill with n tokens (the window keeps ctx_tokens - 1 of them), then time steps
            cache = g.new_cache()
            prev = torch.zeros(1, dtype=torch.long, device=dev)
            av = torch.randn(1, c.d_model, device=dev)
            for _ in range(min(n, c.ctx_tokens + 2)):
                MM2Face.g_logits(model, prev, av, text, cache, 2.0)
            # prefix recomputation: the whole n-token prefix through G, 2 rows (cond + uncond)
            toks = torch.randint(0, c.n_codes, (2, n), device=dev)
            aud = torch.randn(2, n, c.d_model, device=dev)
            txt = torch.randn(2, c.d_text, device=dev)
            g(toks, aud, txt)                             # warm-up
            # interleaved, so that both see the same machine load
            kv, pre, kvb, cold, coldb = [], [], [], [], []
            n_pre = max(5, reps // (1 + n // 150))
            backend_step = None                                  # the backend's G step, if one is set
            runner = getattr(model, "runner", None)
            if runner is not None and runner.name != "eager":
                from mm2face.engine.batch_state import KVRing
                bkv = KVRing(c, 2, dev)                          # one stream's ring, as a session holds it
                backend_step = lambda: runner.g_logits(prev, av, text, bkv, [0], 2.0)
                for _ in range(min(n, c.ctx_tokens + 2)):
                    backend_step()
            kv_per_prefix = max(2, int(kv_per_prefix))
            for i in range(n_pre * kv_per_prefix):
                after_prefix = i % kv_per_prefix == 0 and i > 0
                _sync(dev)
                t = time.perf_counter()
                MM2Face.g_logits(model, prev, av, text, cache, 2.0)
                _sync(dev)
                (cold if after_prefix else kv).append(time.perf_counter() - t)
                if backend_step is not None:
                    t = time.perf_counter()
                    backend_step()
                    _sync(dev)
                    (coldb if after_prefix else kvb).append(time.perf_counter() - t)
                if i % kv_per_prefix == kv_per_prefix - 1:
                    _sync(dev)
                    t = time.perf_counter()
                    g(toks, aud, txt)[:, -1]
                    _sync(dev)
                    pre.append(time.perf_counter() - t)
            kvs, prs = stats_ms(kv), stats_ms(pre)
            row = {"context_s": ctx_s, "tokens": n, "kv_cache_ms": kvs, "prefix_ms": prs,
                   "speedup_p50": prs["p50"] / kvs["p50"], "cache_tokens": min(n, c.ctx_tokens - 1),
                   "kv_per_prefix": kv_per_prefix, "kv_after_prefix_ms": stats_ms(cold)}
            if kvb:
                kb = stats_ms(kvb)
                row.update({"kv_cache_backend": getattr(model, "backend", "?"), "kv_cache_backend_ms": kb,
                            "speedup_backend_p50": prs["p50"] / kb["p50"], "kv_backend_after_prefix_ms": stats_ms(coldb)})
            out.append(row)
    return out


def streaming_vs_offline(model, audio: np.ndarray, device="cpu", head: str | None = "standin") -> dict:
    """The same audio through a StreamSession (pushed as fast as possible) and through offline
    :func:`generate` (whole clip at once): frame differences, LVE/FVE between them, compute time."""
    from mm2face.engine.generate import generate
    from mm2face.engine.session import StreamConfig, StreamSession
    cfg = StreamConfig()
    s = StreamSession(model, cfg, device=device)
    t = time.perf_counter()
    s.push_audio(audio)
    frames = s.poll()
    t_stream = time.perf_counter() - t
    stream = np.stack([f.params for f in frames])
    t = time.perf_counter()
    off = generate(model, audio, seed=cfg.seed, guidance=cfg.guidance, temperature=cfg.temperature,
                   top_k=cfg.top_k, device=device)
    t_off = time.perf_counter() - t
    T = min(len(stream), len(off))
    d = np.abs(stream[:T] - off[:T])
    res = {"audio_s": len(audio) / SR, "frames_compared": int(T), "max_abs_diff": float(d.max()),
           "mean_abs_diff": float(d.mean()), "identical_frames": float((d.max(1) < 1e-4).mean()),
           "stream_compute_s": t_stream, "offline_compute_s": t_off,
           "offline_first_frame_latency_s": len(audio) / SR + t_off,
           "note": "offline generation must hear the whole clip before its first frame"}
    if head:
        try:
            from mm2face.engine.flame import load_head
            from mm2face.training.metrics import clip_metrics
            m = clip_metrics(stream[:T], off[:T], head=load_head(head))
            res["lve_mm_stream_vs_offline"] = m["lve_mm"]
            res["fve_mm_stream_vs_offline"] = m["fve_mm"]
        except Exception as e:  # noqa: BLE001 - the head is optional here
            res["vertex_metrics"] = f"skipped: {type(e).__name__}: {e}"
    return res


def hop_ms(model, audio: np.ndarray, device="cpu", sessions: int = 1) -> dict:
    """Compute time per hop with ``sessions`` streams batched (audio pushed as fast as possible)."""
    from mm2face.engine.batching import SessionBatcher
    from mm2face.engine.session import StreamConfig, StreamSession
    b = SessionBatcher(model, device=device)
    keys = [b.add(StreamSession(model, StreamConfig(seed=j), device=device)) for j in range(sessions)]
    warm = audio[: SR * 2]
    for k in keys:
        b.push_audio(k, warm)
    b.run_until_idle()
    b.stats["round_ms"].clear()
    for k in keys:
        b.push_audio(k, audio[SR * 2:])
    t = time.perf_counter()
    hops = b.run_until_idle()
    dt = time.perf_counter() - t
    rounds = np.asarray(b.stats["round_ms"]) / 1e3
    return {"sessions": sessions, "round_ms": stats_ms(rounds), "ms_per_round": dt * 1e3 / max(len(rounds), 1),
            "hops_per_s": hops / dt if dt else 0.0}


def greedy_frames(model, audio: np.ndarray, device="cpu") -> np.ndarray:
    from mm2face.engine.session import StreamConfig, StreamSession
    s = StreamSession(model, StreamConfig(temperature=0.0), device=device)
    s.push_audio(audio)
    return np.stack([f.params for f in s.poll()])


def backends_vs_eager(load, backends, audio: np.ndarray, device="cpu", batch: int = 8, reps: int = 3) -> list[dict]:
    """For each backend: build time, compute per round at 1 and ``batch`` sessions, and the largest
    frame difference to eager under greedy decoding. ``load()`` returns a fresh eager model.

    The timings are taken in ``reps`` interleaved passes over all backends (so that a burst of other
    work on the machine hits them alike); each backend reports its best pass's p50 and all passes."""
    from mm2face.engine.backends import BackendUnavailable, apply_backend
    eager = load()
    ref = greedy_frames(eager, audio, device)
    rows, models = [], {}
    for name in backends:
        row = {"backend": name}
        try:
            t = time.perf_counter()
            m = apply_backend(load(), name, device)
            greedy = greedy_frames(m, audio, device)          # includes compilation / export on first hops
            hop_ms(m, audio[: SR * 3], device, batch)         # warm the batch bucket too
            row["build_and_first_run_s"] = time.perf_counter() - t
            row["max_abs_diff_vs_eager"] = float(np.abs(greedy[:len(ref)] - ref[:len(greedy)]).max())
            models[name] = m
        except BackendUnavailable as e:
            row["unavailable"] = str(e)
        except Exception as e:  # noqa: BLE001 - report and go on with the other backends
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        rows.append(row)
    for _ in range(reps):
        for row in rows:
            m = models.get(row["backend"])
            if m is None:
                continue
            for key, n in (("single", 1), (f"batch{batch}", batch)):
                if n == batch and batch <= 1:
                    continue
                r = hop_ms(m, audio, device, n)
                row.setdefault(key + "_passes", []).append(r["round_ms"]["p50"])
                if key not in row or r["round_ms"]["p50"] < row[key]["round_ms"]["p50"]:
                    row[key] = r
    return rows
