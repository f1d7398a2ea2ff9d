"""Load test of `lmforge serve` on loopback, with models it trains itself in seconds.

    .venv/bin/python benchmarks/load_serve.py                  # 16 clients x 2,000 requests, then classify throughput
    .venv/bin/python benchmarks/load_serve.py --requests 200 --repeats 1 --throughput-requests 100   # a quick look

1. Trains a GPT (configs/gpt-tiny.yaml on a generated corpus, ``--train-steps``), fine-tunes it into a
   classifier ("clf"), and trains a larger classifier ("clf-medium", 4 layers x 256, ~20-token inputs)
   for 3 steps, with `lmforge pretrain` / `lmforge finetune`, into a scratch folder.
2. Starts `lmforge serve` twice as child processes on free 127.0.0.1 ports: one as is, one with
   ``--no-batching``.
3. Mixed load on the first: ``--requests`` requests from ``--clients`` concurrent clients (HTTP
   keep-alive, a minimal asyncio client), even ones classify one text with "clf", odd ones ask "gpt" for a
   ``--max-tokens``-token completion. Latency is per request, client-side.
4. Classify throughput of each classifier at 1, 8 and 32 concurrent clients, with and without
   batching: ``--repeats`` runs of ``--throughput-requests`` requests per figure, alternating the two
   servers so that a change in the machine's load hits both; medians are reported.

Every run is bounded in requests and in seconds (``--max-seconds``); the servers are stopped at the
end whatever happens. The last line printed is one JSON object: requests/s, p50 / p99 latency,
errors and the server's peak thread count (from /proc) of the mixed load, and classify requests/s
per concurrency with and without batching. Each run also reports the server's CPU time per request
(from /proc, user + system): on a machine shared with other work, requests/s mostly measure the
share of CPU the server got, while CPU per request measures what a request costs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
WORDS = "the king and queen walk to the castle at night while the people sing of bread and rain".split()


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def lmforge(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "lmforge", *args], capture_output=True, text=True, env=env(), cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"lmforge {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))


def make_models(folder: Path, steps: int) -> dict[str, Path]:
    """A tiny GPT LM ("gpt"), a classifier fine-tuned from it ("clf"), and a larger classifier trained
    from scratch for a few steps ("clf-medium": 4 layers, width 256), whose forward pass, not HTTP,
    dominates a request: the case batching is for."""
    rng = random.Random(0)
    (folder / "corpus.txt").write_text("\n".join(sentence(rng) + "." for _ in range(2000)) + "\n", encoding="utf-8")
    rows = ["text\tlabel"]
    for _ in range(400):
        s = sentence(rng)
        rows.append(f"{s}\t{'positive' if ('bread' in s or 'sing' in s) else 'negative'}")
    (folder / "labelled.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    common = [f"--train.max_steps={steps}", "--train.eval_interval=0", f"--train.save_interval={steps}"]
    lmforge("pretrain", "--config", str(REPO / "configs" / "gpt-tiny.yaml"), "--data.path", str(folder / "corpus.txt"),
            *common, "--out", str(folder / "gpt"))
    lmforge("finetune", "--finetune.data", str(folder / "labelled.tsv"), "--base", str(folder / "gpt"), *common,
            "--train.batch_size=16", "--finetune.max_length=32", "--out", str(folder / "clf"))
    lmforge("finetune", "--finetune.data", str(folder / "labelled.tsv"), "--model.n_layer=4", "--model.n_head=4",
            "--model.n_embd=256", "--model.block_size=64", "--data.vocab_size=1024", "--finetune.max_length=64",
            "--train.max_steps=3", "--train.eval_interval=0", "--train.save_interval=3", "--train.batch_size=8",
            "--out", str(folder / "clf-medium"))
    return {name: folder / name for name in ("gpt", "clf", "clf-medium")}


class Server:
    """`lmforge serve ...` on a free loopback port, as a child process."""

    def __init__(self, run_dirs: list[Path], extra: list[str]):
        argv = [sys.executable, "-m", "lmforge", "serve", *map(str, run_dirs), "--port", "0", "--log-level", "warning", *extra]
        self.proc = subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        if not match:
            self.stop()
            raise SystemExit(f"the server did not start: {line!r}")
        self.url = match.group(1)
        for _ in range(600):
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise SystemExit("the server never answered /healthz")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server has used so far: a figure the machine's other load barely moves."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def threads(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status")
        if not status.exists():
            return -1
        return int(re.search(r"^Threads:\s+(\d+)", status.read_text(), re.M).group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: a load generator that costs the machine
    far less CPU per request than a full client library (the server shares this machine's cores)."""

    def __init__(self, url: str):
        self.host, self.port = url.removeprefix("http://").split(":")
        self.reader = self.writer = None

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        length = re.search(r"\r\ncontent-length: *(\d+)", head)
        if not length:  # every non-streaming answer of lmforge serve has a length
            await self.close()
            return int(head[9:12]), b"(no content-length)"
        payload = await self.reader.readexactly(int(length.group(1)))
        if "\r\nconnection: close" in head:
            await self.close()
        return int(head[9:12]), payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def run_load(server: Server, clients: int, total: int, max_seconds: float, make_request) -> dict:
    """``total`` requests from ``clients`` concurrent clients (stopping early after ``max_seconds``)."""
    latencies: dict[str, list[float]] = {}
    errors: list[str] = []
    next_i, peak_threads = 0, 0
    t_end = time.monotonic() + max_seconds

    async def client() -> None:
        nonlocal next_i
        conn = Connection(server.url)
        while next_i < total and time.monotonic() < t_end:
            i, next_i = next_i, next_i + 1
            kind, path, body = make_request(i)
            t0 = time.perf_counter()
            try:
                status, payload = await asyncio.wait_for(conn.post(path, body), 60)
                if status != 200 or not (b'"data"' in payload or b'"choices"' in payload):
                    errors.append(f"{status} {payload[:200]!r}")
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                await conn.close()
            latencies.setdefault(kind, []).append(time.perf_counter() - t0)
        await conn.close()

    async def watch() -> None:
        nonlocal peak_threads
        while True:
            peak_threads = max(peak_threads, server.threads())
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    t0, cpu0, own0 = time.perf_counter(), server.cpu_seconds(), time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - t0
    cpu, own = server.cpu_seconds() - cpu0, time.process_time() - own0
    watcher.cancel()
    every = sorted(x for v in latencies.values() for x in v)
    done = len(every)
    out = {"clients": clients, "requests": done, "seconds": round(seconds, 2), "requests_per_s": round(done / seconds, 1),
           "p50_ms": round(1e3 * statistics.median(every), 2) if every else None,
           "p99_ms": round(1e3 * every[min(done - 1, int(0.99 * done))], 2) if every else None,
           "errors": len(errors), "not_sent": total - done, "server_threads_peak": peak_threads,
           "server_cpu_ms_per_request": round(1e3 * cpu / max(done, 1), 2),
           "client_cpu_ms_per_request": round(1e3 * own / max(done, 1), 2)}
    if len(latencies) > 1:
        out["by_kind"] = {k: {"requests": len(v), "p50_ms": round(1e3 * statistics.median(v), 2),
                              "p99_ms": round(1e3 * sorted(v)[min(len(v) - 1, int(0.99 * len(v)))], 2)}
                          for k, v in latencies.items()}
    if errors:
        out["first_errors"] = errors[:3]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000, help="requests in the mixed load (default 2000)")
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens per completion (default 8)")
    ap.add_argument("--throughput-requests", type=int, default=300, help="classify requests per throughput run")
    ap.add_argument("--concurrency", default="1,8,32", help="classify throughput at these client counts")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per figure, alternating the two servers (median)")
    ap.add_argument("--max-seconds", type=float, default=120, help="time bound of each run (default 120)")
    ap.add_argument("--train-steps", type=int, default=30, help="training steps of the GPT and of the classifier")
    ap.add_argument("--serve-args", default="", help="extra `lmforge serve` flags for both servers, e.g. '--batch-window-ms 2'")
    ap.add_argument("--workdir", default=None, help="keep the trained runs here and reuse them (default: a temporary folder)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lmforge-load-") as tmp:
        folder = Path(args.workdir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        load_before = round(os.getloadavg()[0], 2)
        t0 = time.perf_counter()
        runs = {n: folder / n for n in ("gpt", "clf", "clf-medium")}
        if not all((p / "model.safetensors").exists() for p in runs.values()):
            runs = make_models(folder, args.train_steps)
        train_s = round(time.perf_counter() - t0, 1)
        rng = random.Random(1)
        texts = [sentence(rng) for _ in range(256)]
        long_texts = [f"{sentence(rng)}. {sentence(rng)}" for _ in range(256)]  # ~20 tokens

        def mixed(i: int):
            if i % 2 == 0:
                return "classify", "/v1/classify", {"model": "clf", "input": [texts[i % len(texts)]]}
            return "completion", "/v1/completions", {"model": "gpt", "prompt": texts[i % len(texts)][:20],
                                                     "max_tokens": args.max_tokens, "temperature": 0.8, "seed": i}

        def classify(model: str, pool: list[str]):
            return lambda i: ("classify", "/v1/classify", {"model": model, "input": [pool[i % len(pool)]]})

        levels = [int(c) for c in args.concurrency.split(",")]
        extra = args.serve_args.split()
        servers = {"batching": Server(list(runs.values()), extra),
                   "no_batching": Server([runs["clf"], runs["clf-medium"]], ["--no-batching", *extra])}
        result: dict = {}
        try:
            asyncio.run(run_load(servers["batching"], 4, 40, 30, mixed))  # warm-up, not counted
            result["load"] = asyncio.run(run_load(servers["batching"], args.clients, args.requests, args.max_seconds, mixed))
            print(json.dumps({"load": result["load"]}), flush=True)
            result["classify_throughput"] = {}
            for model, pool in (("clf", texts), ("clf-medium", long_texts)):
                runs_by: dict = {mode: {c: [] for c in levels} for mode in servers}
                for c in levels:
                    for mode, server in servers.items():  # warm-up
                        asyncio.run(run_load(server, c, min(2 * c, 64), 30, classify(model, pool)))
                    for _ in range(args.repeats):  # alternate the servers: drifting load on the machine hits both
                        for mode, server in servers.items():
                            runs_by[mode][c].append(asyncio.run(run_load(server, c, args.throughput_requests,
                                                                         args.max_seconds, classify(model, pool))))
                fig: dict = {}
                for mode in servers:
                    fig[mode] = {str(c): {"requests_per_s": statistics.median(r["requests_per_s"] for r in rs),
                                          "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                                          "server_cpu_ms_per_request": statistics.median(r["server_cpu_ms_per_request"]
                                                                                         for r in rs),
                                          "errors": sum(r["errors"] + r["not_sent"] for r in rs)}
                                 for c, rs in runs_by[mode].items()}
                fig["speedup"] = {c: round(fig["batching"][c]["requests_per_s"] / fig["no_batching"][c]["requests_per_s"], 2)
                                  for c in fig["batching"]}
                fig["server_cpu_saving"] = {c: round(fig["no_batching"][c]["server_cpu_ms_per_request"] /
                                                     max(fig["batching"][c]["server_cpu_ms_per_request"], 1e-9), 2)
                                            for c in fig["batching"]}
                result["classify_throughput"][model] = fig
                print(json.dumps({model: fig}), flush=True)
        finally:
            for server in servers.values():
                server.stop()
        import torch

        result["setup"] = {"models": {"gpt": "configs/gpt-tiny.yaml (2 layers, width 64)", "clf": "a GPT classifier "
                                      "fine-tuned from it (inputs of ~8 tokens)", "clf-medium": "GPT classifier, 4 layers, "
                                      "width 256 (inputs of ~20 tokens)"},
                           "train_seconds": train_s, "max_tokens": args.max_tokens, "repeats": args.repeats,
                           "cpus": os.cpu_count(), "load_avg_1min_before": load_before,
                           "load_avg_1min_after": round(os.getloadavg()[0], 2), "torch": torch.__version__,
                           "serve_args": args.serve_args or "defaults (workers = min(4, CPUs), 1 torch thread, "
                                                            "window 5 ms, max batch 32)"}
        print(json.dumps(result))


if __name__ == "__main__":
    main()
