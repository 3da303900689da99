"""Stress benchmark: well-behaved clients against hostile ones, on loopback, bounded in time.

    mm2face-bench stress                          # 3 good clients, 12 s of speech per phase
    mm2face-bench stress --good 4 --seconds 20 --malformed 10000

A real ``mm2face-live --serve`` process (text-only default session, limits as configured) serves
three kinds of process: this one runs the good clients (real-time speech in 20 ms chunks, binary
frames), a second one the hostile clients of each phase (from another loopback address, 127.0.0.2,
so the per-client limit applies to them and not to the good clients), and the server itself. The
good clients measure audio-to-face on their own clock: a frame's receipt time minus the time the
client sent the chunk holding that frame's audio instant.

Phases, each with the good clients streaming the same speech:

* ``quiet``: no hostile client (the baseline);
* ``hoard``: one client tries to hold 100 idle sessions (opened, never sent audio);
* ``upload``: one client sends 1 MiB audio messages (32.8 s of PCM16 each);
* ``flood``: clients send control messages and tiny audio chunks as fast as the server takes them;
* ``malformed``: ``--malformed`` bad inputs of 17 kinds (error codes counted; ``internal`` must be 0);
* ``stalled``: clients subscribe to the default session in JSON and never read;
* ``capacity``: new sessions are opened until refused (each must be refused with ``capacity``).

Reports the good clients' p50/p95 per phase beside the quiet baseline, refusals by code, and the
server's RSS before and after the malformed phase. Writes ``stress.json``/``.md``/``.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mm2face.benchmarks.common import machine_info, md_table, stats_ms, write_report

SR = 16000
CHUNK_S = 0.02                    # good clients send 20 ms of PCM16 per message
HOSTILE_ADDR = "127.0.0.2"        # hostile clients connect from here (the per-client limit is per address)
PHASES = ("quiet", "hoard", "upload", "flood", "malformed", "stalled", "capacity")
UPLOAD_BYTES = 1024 * 1024        # one maximal audio message (protocol.MAX_AUDIO_BYTES)
HOARD_TRIES = 100
WARMUP_S = 3                      # seconds of speech the good clients stream, unmeasured, before the phases
HOARD_SETTLE_S = 7.0              # the good clients start this long after the hoarder began opening sessions
MALFORMED_CONNECTIONS = 40        # the bad inputs are spread over this many connections, each paced
MALFORMED_BURST, MALFORMED_PACE_S = 80, 1 / 45   # under realtime.admission's 100 burst / 50 per s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm2face-bench stress", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--good", type=int, default=3, help="well-behaved streaming clients (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=12.0, help="speech per good client per phase (default: %(default)s)")
    p.add_argument("--malformed", type=int, default=10000, help="bad inputs in the malformed phase (default: %(default)s)")
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of: " + ", ".join(PHASES))
    p.add_argument("--server-args", default="", help="extra mm2face-live flags, e.g. '--capacity 8'")
    p.add_argument("--random-model", action="store_true", help="serve the small random model (wiring checks only)")
    p.add_argument("--out", default=None, help="output folder (default runs/bench/stress-<time>)")
    p.add_argument("--role", choices=("bench", "hostile"), default="bench", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    return p


# ----------------------------------------------------------------------------- server process

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return math.nan


async def wait_hello(url: str, timeout_s: float = 300.0) -> dict:
    from websockets.asyncio.client import connect
    t_end = time.monotonic() + timeout_s
    while True:
        try:
            async with connect(url) as ws:
                await ws.send('{"type":"hello"}')
                while True:
                    m = json.loads(await ws.recv())
                    if m.get("type") == "hello":
                        return m
        except OSError:
            if time.monotonic() > t_end:
                raise RuntimeError(f"the server at {url} did not answer within {timeout_s:.0f} s") from None
            await asyncio.sleep(0.5)


# ----------------------------------------------------------------------------- good clients

async def good_client(url: str, j: int, audio: np.ndarray, start_delay: float) -> dict:
    """Stream ``audio`` at real-time pace; a2f per frame on this client's clock; error codes seen."""
    from websockets.asyncio.client import connect

    from mm2face.realtime import protocol as P
    n = int(CHUNK_S * SR)
    n_chunks = -(-len(audio) // n)
    sent = np.full(n_chunks, np.nan)
    a2f: list[float] = []
    errors: list[str] = []
    await asyncio.sleep(start_delay)
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "open", "format": "binary", "idle": False}))
        while True:
            m = await ws.recv()
            if isinstance(m, str):
                m = json.loads(m)
                if m["type"] == "opened":
                    break
                if m["type"] == "error":
                    return {"a2f_s": [], "errors": [m["code"]], "opened": False}
        done = asyncio.Event()

        async def reader():
            async for msg in ws:
                now = time.time()
                if isinstance(msg, bytes):
                    f = P.decode_frame_binary(msg)
                    i = int(f.t_audio_s / CHUNK_S + 1e-9)
                    if i < n_chunks and math.isfinite(sent[i]):
                        a2f.append(now - sent[i])
                else:
                    m = json.loads(msg)
                    if m["type"] == "error":
                        errors.append(m["code"])
                    elif m["type"] == "ended":
                        done.set()
        rt = asyncio.create_task(reader())
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
        t0 = time.perf_counter()
        for i in range(n_chunks):
            delay = t0 + i * CHUNK_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[i] = time.time()
            await ws.send(pcm[i * n:(i + 1) * n].tobytes())
        await ws.send('{"type":"end"}')
        with contextlib.suppress(Exception):
            await asyncio.wait_for(done.wait(), 30)
        await ws.send('{"type":"close"}')
        rt.cancel()
    return {"a2f_s": a2f, "errors": errors, "opened": True}


async def run_good(url: str, k: int, audio: np.ndarray) -> dict:
    res = await asyncio.gather(*(good_client(url, j, audio, 0.3 + j * 0.013) for j in range(k)))
    a2f = [x for r in res for x in r["a2f_s"]]
    return {"a2f_ms": stats_ms(a2f), "errors": sorted({e for r in res for e in r["errors"]}),
            "opened": sum(r["opened"] for r in res)}


# ----------------------------------------------------------------------------- hostile clients

def malformed_inputs(n: int, seed: int = 0) -> list:
    """``n`` bad inputs of 17 kinds (text and binary), deterministic."""
    rng = random.Random(seed)
    odd = ["\ud800", "\udfff x", "\u202e\u0000", "😀" * 50, "\U000e0001", "a\x00b", "\ufeff", "\u0301" * 30]

    def kinds(i):
        r = rng.random()
        return [
            lambda: "{" * rng.randint(1, 50),                                          # broken JSON
            lambda: json.dumps(rng.choice([[], 1, "x", None, True])),                   # not an object
            lambda: json.dumps({"type": rng.choice([[1], {"a": 1}, 3.5, None, "dance", ""])}),  # odd type
            lambda: json.dumps({"no_type": 1}),                                          # missing type
            lambda: "[" * 20000 + "]" * 20000,                                          # deep nesting
            lambda: json.dumps({"type": "style", "text": "x" * 70000}),                 # over the size limit
            lambda: json.dumps({"type": "style", "text": rng.choice(odd) + " calm"}),   # odd Unicode style
            lambda: json.dumps({"type": "style", "text": "y" * 2500}),                  # style too long
            lambda: json.dumps({"type": "open", "sample_rate": rng.choice([1e400, -5, 0, "x", [1], 1e30, 7.5])}),
            lambda: json.dumps({"type": "open", "sample_format": rng.choice(["wav", 1, None, {}])}) + "",
            lambda: json.dumps({"type": "subscribe", "session": rng.choice(["", "x" * 100, "\x07", "nope"])}),
            lambda: json.dumps({"type": "hello", "version": rng.choice([2, "1", 1.5, -1])}),
            lambda: json.dumps({"type": "style", "text": "a", "blend_s": rng.choice([-1, 1e9, "s"]),
                                "guidance": rng.choice([1e9, -3, "g"])}),
            lambda: json.dumps({"type": "end", "session": "default"}),                  # control of the server's own
            lambda: bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 3, 5, 7]))),  # audio: no session / odd bytes
            lambda: json.dumps({"type": "audio_format", "sample_rate": 16000}),         # before open
            lambda: json.dumps({"type": "close", "session": "default", "token": "\ud800"}),
        ][i % 17]()
    return [kinds(i) for i in range(n)]


async def hostile(url: str, kind: str, seconds: float) -> dict:
    """One hostile phase against ``url`` from HOSTILE_ADDR; returns what it got (codes, sessions held)."""
    from websockets.asyncio.client import connect
    out: dict = {"kind": kind, "codes": {}}

    def count(code):
        out["codes"][code] = out["codes"].get(code, 0) + 1

    async def conn():
        return await connect(url, local_addr=(HOSTILE_ADDR, 0), max_size=None, compression=None)

    async def reply(ws, types=("opened", "error")):
        while True:
            m = await ws.recv()
            if isinstance(m, str):
                m = json.loads(m)
                if m.get("type") in types:
                    return m

    t_end = time.monotonic() + seconds
    if kind == "hoard":
        held = []
        for _ in range(HOARD_TRIES):
            ws = await conn()
            await ws.send('{"type":"open","idle":true}')
            m = await reply(ws)
            count(m.get("code", "opened"))
            if m["type"] == "opened":
                held.append(ws)
            else:
                await ws.close()
        out["held"] = len(held)

        async def drain(ws):                       # a hoarder that reads (it wants its sessions to live)
            with contextlib.suppress(Exception):
                async for _ in ws:
                    pass
        tasks = [asyncio.create_task(drain(ws)) for ws in held]
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        for t in tasks:
            t.cancel()
        for ws in held:
            await ws.close()
    elif kind == "upload":
        ws = await conn()
        await ws.send('{"type":"open","idle":false,"format":"binary"}')
        count((await reply(ws)).get("code", "opened"))
        blob = (np.random.default_rng(1).standard_normal(UPLOAD_BYTES // 2) * 3000).astype("<i2").tobytes()
        n = 0

        async def drain():
            with contextlib.suppress(Exception):
                async for _ in ws:
                    pass
        dt = asyncio.create_task(drain())
        while time.monotonic() < t_end:
            await ws.send(blob)
            n += 1
            await asyncio.sleep(UPLOAD_BYTES / 2 / SR / 2)   # one 32.8 s message every 16 s: twice real time
        out["uploads"] = n
        dt.cancel()
        await ws.close()
    elif kind == "flood":
        socks = [await conn() for _ in range(4)]
        await socks[0].send('{"type":"open","idle":false}')
        count((await reply(socks[0])).get("code", "opened"))
        sent = 0

        async def drain(ws):
            with contextlib.suppress(Exception):
                async for m in ws:
                    if isinstance(m, str) and '"error"' in m:
                        count(json.loads(m)["code"])
        ds = [asyncio.create_task(drain(ws)) for ws in socks]
        tiny = np.zeros(32, "<i2").tobytes()
        from websockets.exceptions import ConnectionClosed
        try:
            while time.monotonic() < t_end:
                for i, ws in enumerate(socks):
                    await ws.send(tiny if i == 0 else '{"type":"stats"}')
                    sent += 1
                if sent % 200 == 0:
                    await asyncio.sleep(0)
        except ConnectionClosed as e:             # a throttled flooder's keepalive may time out
            out["closed"] = str(e)[:120]
        out["sent"] = sent
        for d in ds:
            d.cancel()
        for ws in socks:
            with contextlib.suppress(Exception):
                await ws.close()
    elif kind == "malformed":
        n = int(os.environ.get("STRESS_MALFORMED", "10000"))
        inputs = malformed_inputs(n)
        socks = [await conn() for _ in range(MALFORMED_CONNECTIONS)]
        got = 0

        async def one(ws, items):
            nonlocal got
            for k, data in enumerate(items):
                if k >= MALFORMED_BURST:                    # stay under the server's control-message rate
                    await asyncio.sleep(MALFORMED_PACE_S)
                await ws.send(data)
                m = await reply(ws, ("error", "ended", "flushed", "style", "subscribed", "hello",
                                     "session_closed", "audio_format", "opened"))
                got += 1
                count(m.get("code", m["type"]))
        await asyncio.gather(*(one(ws, inputs[i::len(socks)]) for i, ws in enumerate(socks)))
        out["sent"], out["answered"] = n, got
        for ws in socks:
            await ws.close()
    elif kind == "stalled":
        socks = []
        for _ in range(4):
            ws = await conn()
            await ws.send('{"type":"subscribe","session":"default","format":"json"}')
            socks.append(ws)                       # and never read again
        # pause reading on our side: the kernel buffers fill and the server's outbox drops for us alone
        for ws in socks:
            ws.transport.pause_reading()
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        for ws in socks:
            ws.transport.abort()
        out["stalled"] = len(socks)
    elif kind == "capacity":
        held, i = [], 0
        while i < 64:
            i += 1
            ws = await connect(url, local_addr=(f"127.0.1.{i}", 0))
            await ws.send('{"type":"open","idle":false}')
            m = await reply(ws)
            count(m.get("code", "opened"))
            if m["type"] != "opened":
                out["refusal"] = m["message"]
                await ws.close()
                break
            held.append(ws)
        out["opened_before_refusal"] = len(held)
        for ws in held:
            await ws.close()
    return out


def start_hostile(url: str, kind: str, seconds: float, malformed: int) -> subprocess.Popen:
    env = {**os.environ, "STRESS_MALFORMED": str(malformed)}
    return subprocess.Popen([sys.executable, "-m", "mm2face.benchmarks.stress", "--role", "hostile", "--url", url,
                             "--kind", kind, "--seconds", str(seconds)], stdout=subprocess.PIPE, env=env, text=True)


def hostile_result(proc: subprocess.Popen, timeout_s: float) -> dict:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return {"error": f"hostile process ran past {timeout_s:.0f} s", "stdout": out[-500:]}
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"hostile process exited {proc.returncode}", "stdout": out[-500:]}


# ----------------------------------------------------------------------------- the run

async def stats_of(url: str) -> dict:
    from websockets.asyncio.client import connect
    async with connect(url) as ws:
        await ws.send('{"type":"stats","session":"default"}')
        while True:
            m = json.loads(await ws.recv())
            if m.get("type") == "stats":
                return m["server"]


def run(args) -> dict:
    from mm2face.benchmarks.harness import load_speech
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = set(phases) - set(PHASES)
    if bad:
        raise SystemExit(f"mm2face-bench stress: unknown phases {sorted(bad)}; choose from {', '.join(PHASES)}")
    audio, src = load_speech(args.seconds)
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mm2face.realtime.cli", "--serve", "--port", str(port),
           "--quiet"] + (["--random-model"] if args.random_model else []) + args.server_args.split()
    res: dict = {"machine": machine_info(), "server_cmd": " ".join(cmd[1:]), "good_clients": args.good,
                 "speech_s": args.seconds, "speech": src, "phases": {}}
    err_path = Path(args.out_dir) / "server-stderr.log"
    err_file = open(err_path, "w")                      # a file, not a pipe: a full pipe would stall the server
    srv = subprocess.Popen(cmd, stderr=err_file, text=True)
    try:
        hello = asyncio.run(wait_hello(url))
        res["limits"] = hello.get("limits")
        print(f"stress: server up, limits {hello.get('limits')}", flush=True)
        asyncio.run(run_good(url, args.good, audio[:WARMUP_S * SR]))   # unmeasured: first-step costs
        for phase in phases:
            t = time.time()
            rss0 = server_rss_mb(srv.pid)
            hproc = None
            if phase != "quiet":
                hproc = start_hostile(url, phase, args.seconds + 3.0 + (HOARD_SETTLE_S if phase == "hoard" else 0.0),
                                      args.malformed)
                # hoarded sessions are measured once idle (their first ~5.5 s they cost like speaking ones,
                # until realtime.idle_loop has recorded their motion)
                time.sleep({"hoard": HOARD_SETTLE_S, "stalled": 2.0, "capacity": 2.0}.get(phase, 0.5))
            good = asyncio.run(run_good(url, args.good, audio)) if phase not in ("malformed", "capacity") else None
            h = hostile_result(hproc, 600) if hproc is not None else None
            if phase == "malformed" and good is None:
                good = asyncio.run(run_good(url, args.good, audio))    # after the flood of bad input
            time.sleep(1.0)                            # let the server close the phase's sessions
            entry = {"good": good, "hostile": h, "server_rss_mb": [rss0, server_rss_mb(srv.pid)],
                     "wall_s": time.time() - t}
            key, n = phase, 2
            while key in res["phases"]:                 # a phase may repeat (e.g. quiet again at the end)
                key, n = f"{phase} #{n}", n + 1
            res["phases"][key] = entry
            print(f"stress: {phase}: good {good and good['a2f_ms'].get('p95')} ms p95; hostile {h}", flush=True)
            if srv.poll() is not None:
                res["server_crashed"] = srv.returncode
                break
        res["server_stats"] = asyncio.run(stats_of(url)) if srv.poll() is None else None
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        err_file.close()
        res["server_exit"] = srv.returncode
        res["server_stderr_tail"] = err_path.read_text(errors="replace")[-3000:]
    return res


def markdown(res: dict) -> str:
    base = (res["phases"].get("quiet", {}).get("good") or {}).get("a2f_ms", {})
    rows = []
    for name, e in res["phases"].items():
        g = (e.get("good") or {}).get("a2f_ms", {})
        h = e.get("hostile") or {}
        d95 = (100.0 * (g["p95"] / base["p95"] - 1.0)) if g.get("n") and base.get("n") else None
        what = {k: v for k, v in h.items() if k not in ("kind", "refusal")}
        rows.append([name, g.get("p50", math.nan), g.get("p95", math.nan),
                     "" if d95 is None else f"{d95:+.1f} %", g.get("n", 0),
                     f"{e['server_rss_mb'][0]:.0f} -> {e['server_rss_mb'][1]:.0f}", json.dumps(what)[:160]])
    lines = [f"# mm2face-bench stress ({res['machine']['time_utc']} UTC, {res['machine']['cpu']}, "
             f"{res['machine']['cpu_count']} CPUs)", "",
             f"{res['good_clients']} good clients x {res['speech_s']:.0f} s of {res['speech']} per phase; server: "
             f"`{res['server_cmd']}`; limits {json.dumps(res.get('limits'))}", "",
             md_table(["phase", "good a2f p50 ms", "good a2f p95 ms", "p95 vs quiet", "frames", "server RSS MiB",
                       "hostile got"], rows)]
    cap = (res["phases"].get("capacity", {}).get("hostile") or {}).get("refusal")
    if cap:
        lines += ["", f"capacity refusal: {cap}"]
    if res.get("server_crashed") is not None:
        lines += ["", f"**server exited with {res['server_crashed']}**"]
    st = res.get("server_stats") or {}
    lines += ["", f"server errors by code: {json.dumps(st.get('errors'))}; refused: {json.dumps(st.get('refused'))}"]
    return "\n".join(lines) + "\n"


def save_png(path: Path, res: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(res["phases"])
    p50 = [((res["phases"][n].get("good") or {}).get("a2f_ms") or {}).get("p50", np.nan) for n in names]
    p95 = [((res["phases"][n].get("good") or {}).get("a2f_ms") or {}).get("p95", np.nan) for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, p50, 0.4, label="p50")
    ax.bar(x + 0.2, p95, 0.4, label="p95")
    ax.set_xticks(x, names)
    ax.set_ylabel("good clients' audio-to-face (ms)")
    ax.legend()
    ax.set_title("mm2face-bench stress")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.role == "hostile":
        print(json.dumps(asyncio.run(hostile(args.url, args.kind, args.seconds))), flush=True)
        return 0
    out = Path(args.out or f"runs/bench/stress-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    args.out_dir = str(out)
    res = run(args)
    save_png(out / "stress.png", res)
    write_report(out, "stress", res, markdown)
    return 0 if res.get("server_crashed") is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
