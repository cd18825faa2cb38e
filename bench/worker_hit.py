"""How much latency the worker adds to GET /hit, and how fast it answers GET /health.

Run by hand (not part of the test suite), from the repository root:

    .venv/bin/python bench/worker_hit.py [--layout both|split|shared] [--requests 2000]

It starts a local upstream and the real worker (`manage.py run_worker`), pushes a configuration
pointing at the upstream, then measures GET /hit against a direct GET of the same upstream,
interleaved in one run so both see the same machine load, with 1 and with 16 concurrent clients.
Each client keeps one persistent connection to each server, as a real client would. In the split
layout the worker has CPU 0 to itself and the clients and upstream run on the other CPUs; in the
shared layout everything competes for every CPU. The worker's CPU time per hit is reported too.
Each layout runs `--runs` times (3) with a fresh worker; the results go to
docs/bench/worker_hit.json (see bench/results.py).
"""

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import results  # noqa: E402
from bench.common import cpu_seconds  # noqa: E402
from bench.results import percentile  # noqa: E402
from protocol import signing  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

KEY = "bench-internal-key-0123456789abcdef"
UPSTREAM_BODY = b"203.0.113.7\n"


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024  # headers and body leave in one write

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(UPSTREAM_BODY)))
        self.end_headers()
        self.wfile.write(UPSTREAM_BODY)

    def log_message(self, *args):
        pass


class UpstreamServer(ThreadingHTTPServer):
    # http.server's default backlog of 5 drops connections when 16 clients and the worker's
    # threads connect at once, and a dropped SYN costs a second.
    request_queue_size = 128


def serve_upstream(port: int) -> None:
    server = UpstreamServer(("127.0.0.1", port), Upstream)
    server.daemon_threads = True
    server.serve_forever()


class Client:
    """One persistent HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(self, path: str) -> float:
        started = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200 or not body:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        return elapsed


def measure_hit(worker_port: int, upstream_port: int, clients: int, per_client: int) -> dict:
    direct: list[float] = []
    via_worker: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def run() -> None:
        to_upstream, to_worker = Client(upstream_port), Client(worker_port)
        for _ in range(20):  # warm up connections and the worker's pool
            to_upstream.get("/ip")
            to_worker.get("/hit")
        mine_direct, mine_worker = [], []
        start.wait()
        for _ in range(per_client):
            mine_direct.append(to_upstream.get("/ip"))
            mine_worker.append(to_worker.get("/hit"))
        with lock:
            direct.extend(mine_direct)
            via_worker.extend(mine_worker)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples = {"direct": to_ms(direct), "hit": to_ms(via_worker)}
    return {"clients": clients, **hit_figures(samples, clients), "samples_ms": samples}


def to_ms(seconds: list[float]) -> list[float]:
    """Samples as kept in the results file: milliseconds to the microsecond. Every summary is
    computed from these, so that a check can compute it again."""
    return [round(value * 1000, 3) for value in seconds]


def hit_figures(samples: dict[str, list[float]], clients: int) -> dict:
    direct, via_worker = samples["direct"], samples["hit"]
    return {
        "requests": len(via_worker),
        # Each client waits for the direct GET and the hit in turn: the hits' own rate is the
        # number of hits over the time spent in them, per client, times the clients.
        "hits_per_second": len(via_worker) / (sum(via_worker) / 1000) * clients,
        "direct_p50_ms": statistics.median(direct),
        "direct_p99_ms": percentile(direct, 0.99),
        "hit_p50_ms": statistics.median(via_worker),
        "hit_p99_ms": percentile(via_worker, 0.99),
        "added_p50_ms": statistics.median(via_worker) - statistics.median(direct),
        "added_p99_ms": percentile(via_worker, 0.99) - percentile(direct, 0.99),
    }


def latency_figures(samples: list[float]) -> dict:
    return {"p50_ms": statistics.median(samples), "p99_ms": percentile(samples, 0.99)}


def measure_health_latency(worker_port: int, count: int) -> dict:
    client = Client(worker_port)
    for _ in range(50):
        client.get("/health")
    samples = to_ms([client.get("/health") for _ in range(count)])
    return {**latency_figures(samples), "samples_ms": samples}


def measure_health(worker_port: int, clients: int, seconds: float) -> dict:
    counts = [0] * clients
    stop = threading.Event()

    def run(index: int) -> None:
        client = Client(worker_port)
        while not stop.is_set():
            client.get("/health")
            counts[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": sum(counts),
        "requests_per_second": sum(counts) / seconds,
    }


def wait_ready(port: int, process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        exited = process.poll() if isinstance(process, subprocess.Popen) else process.exitcode
        if exited is not None:
            raise RuntimeError(f"{port}: process exited with {exited}")
        try:
            Client(port).get("/health")
            return
        except (OSError, http.client.HTTPException, RuntimeError):
            time.sleep(0.05)
    raise RuntimeError("worker not ready")


def push_config(worker_port: int, url: str) -> None:
    body = json.dumps(
        {
            "config_url": url,
            "pooling_interval": 60,
            "version": 1,
            "uuid": "00000000-0000-4000-8000-000000000001",
        }
    ).encode()
    conn = http.client.HTTPConnection("127.0.0.1", worker_port, timeout=10)
    conn.request("POST", "/config", body, {"X-Signature": signing.sign(body, KEY)})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"push failed: {response.status} {response.read()!r}")


def run_layout(layout: str, args, upstream_port: int, cpus: list[int]) -> dict:
    """Start a worker, measure, stop it. `split`: the worker gets CPU 0 to itself and the
    clients and upstream the others, as when they are different machines; `shared`: everything
    shares every CPU."""
    worker_port = free_port()
    env = {
        **os.environ,
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-secret"),
        "INTERNAL_KEY": KEY,
        "WORKER_THREADS": str(args.threads),
        # The bench's upstream listens on 127.0.0.1, which a worker refuses by default.
        "WORKER_BLOCK_PRIVATE_UPSTREAMS": "0",
        "VAR_DIR": tempfile.mkdtemp(prefix="worker-bench-"),
        "LOG_LEVEL": "WARNING",
    }
    worker_cpus = set(cpus[:1]) if layout == "split" else set(cpus)
    os.sched_setaffinity(0, set(cpus[1:]) if layout == "split" else set(cpus))
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "run_worker", "--bind", f"127.0.0.1:{worker_port}"],
        cwd=REPO_ROOT,
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, worker_cpus),
    )
    try:
        wait_ready(worker_port, worker)
        push_config(worker_port, f"http://127.0.0.1:{upstream_port}/ip")
        print(
            f"\n== layout {layout}: worker on CPUs {sorted(worker_cpus)}, clients and upstream "
            f"on CPUs {sorted(os.sched_getaffinity(0))}"
        )
        floor = measure_health_latency(worker_port, args.requests)
        print(
            "GET /health, 1 client, {n} requests: p50 {p50_ms:.2f} ms p99 {p99_ms:.2f} ms".format(
                n=args.requests, p50_ms=floor["p50_ms"], p99_ms=floor["p99_ms"]
            )
        )
        hits = []
        for clients, per_client in ((1, args.requests), (16, max(50, args.requests // 16))):
            before = cpu_seconds(worker.pid)
            result = measure_hit(worker_port, upstream_port, clients, per_client)
            # The warm-up hits are counted too: 20 per client.
            result["cpu_ms"] = (
                (cpu_seconds(worker.pid) - before) * 1000 / (result["requests"] + 20 * clients)
            )
            print(
                "GET /hit vs direct, {clients:>2} client(s), {requests} requests: "
                "direct p50 {direct_p50_ms:.2f} ms p99 {direct_p99_ms:.2f} ms | "
                "hit p50 {hit_p50_ms:.2f} ms p99 {hit_p99_ms:.2f} ms | "
                "added p50 {added_p50_ms:.2f} ms p99 {added_p99_ms:.2f} ms | "
                "{hits_per_second:.0f} hits/s | worker CPU {cpu_ms:.3f} ms per hit".format(
                    **{key: value for key, value in result.items() if key != "samples_ms"}
                )
            )
            hits.append(result)
        health = measure_health(worker_port, 16, args.seconds)
        print(
            "GET /health, {clients} clients, {seconds:g} s: "
            "{requests_per_second:.0f} requests/s".format(**health)
        )
        return {
            "layout": layout,
            "health_latency": {"requests": args.requests, **floor},
            "hits": hits,
            "health_throughput": health,
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="GET /hit with one client")
    parser.add_argument("--seconds", type=float, default=5.0, help="GET /health duration")
    parser.add_argument("--threads", type=int, default=16, help="worker threads")
    parser.add_argument(
        "--layout", choices=("split", "shared", "both"), default="both", help="CPU placement"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each layout")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    layouts = ("split", "shared") if args.layout == "both" else (args.layout,)
    if "split" in layouts and len(cpus) < 2:
        parser.error("the split layout needs at least 2 CPUs")

    # The upstream runs in a process of its own, so neither the worker nor the clients share a
    # GIL with it; it stays off the worker's CPU in the split layout.
    upstream_port = free_port()
    os.sched_setaffinity(0, set(cpus[1:]) if "split" in layouts else set(cpus))
    upstream = multiprocessing.get_context("fork").Process(
        target=serve_upstream, args=(upstream_port,), daemon=True
    )
    upstream.start()
    started = results.start()
    runs = []
    try:
        wait_ready(upstream_port, upstream)
        print(
            f"Python {platform.python_version()}, {len(cpus)} CPUs, worker threads {args.threads}"
        )
        for layout in layouts:
            if layout == "shared":
                os.sched_setaffinity(upstream.pid, set(cpus))
            runs += [run_layout(layout, args, upstream_port, cpus) for _ in range(args.runs)]
    finally:
        upstream.terminate()
        upstream.join(5)
    figures = {"threads": args.threads, "cpus": len(cpus), "runs": runs}
    results.save("worker_hit", figures, started)


TARGET_MS = 1.0


def _by(figures: dict, layout: str, clients: int) -> list[dict]:
    """The hit measurements of one layout and client count, one per run, by added p50."""
    found = [
        hit
        for run in figures["runs"]
        if run["layout"] == layout
        for hit in run["hits"]
        if hit["clients"] == clients
    ]
    return sorted(found, key=lambda hit: hit["added_p50_ms"])


def _range(values: list[float], unit: str = "ms", digits: int = 2) -> str:
    low, high = min(values), max(values)
    if len(values) == 1 or f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{low:.{digits}f} {unit}"
    return f"{low:.{digits}f}–{high:.{digits}f} {unit}"


def render(figures: dict) -> str:
    layouts = list(dict.fromkeys(run["layout"] for run in figures["runs"]))
    runs = sum(1 for run in figures["runs"] if run["layout"] == layouts[0])
    lines = [
        f"{runs} run(s) of each layout, a fresh worker ({figures['threads']} threads) each time; "
        "each row shows the run with the middle added p50, the range in brackets covers every "
        "run.",
        "",
        "| layout | measurement | direct p50 | via worker p50 | added p50 | added p99 "
        "| worker CPU per hit |",
        "|---|---|---|---|---|---|---|",
    ]
    for layout in layouts:
        for clients in (1, 16):
            hits = _by(figures, layout, clients)
            if not hits:
                continue
            middle = hits[len(hits) // 2]
            added = _range([hit["added_p50_ms"] for hit in hits])
            lines.append(
                f"| {layout} | `GET /hit`, {clients} client(s), {middle['requests']} requests | "
                f"{middle['direct_p50_ms']:.2f} ms | {middle['hit_p50_ms']:.2f} ms | "
                f"**{middle['added_p50_ms']:.2f} ms** ({added}) | "
                f"{middle['added_p99_ms']:.2f} ms | {middle['cpu_ms']:.2f} ms |"
            )
    lines += ["", "| measurement | result |", "|---|---|"]
    for layout in layouts:
        mine = [run for run in figures["runs"] if run["layout"] == layout]
        latency = [run["health_latency"] for run in mine]
        lines.append(
            f"| `GET /health`, 1 client, {latency[0]['requests']} requests ({layout}) | "
            f"p50 {_range([each['p50_ms'] for each in latency])}, "
            f"p99 {_range([each['p99_ms'] for each in latency])} |"
        )
        throughput = [run["health_throughput"] for run in mine]
        lines.append(
            f"| `GET /health`, {throughput[0]['clients']} clients, "
            f"{throughput[0]['seconds']:g} s ({layout}) | "
            f"{_range([each['requests_per_second'] for each in throughput], 'requests/s', 0)} |"
        )
        hits = _by(figures, layout, 16)
        lines.append(
            f"| `GET /hit` throughput with 16 clients ({layout}) | "
            f"{_range([hit['hits_per_second'] for hit in hits], 'hits/s', 0)} |"
        )
    return "\n".join(lines)


def check(figures: dict, *, required: bool) -> list[str]:
    """Where a run's p50, p99 and rates do not follow from its samples and counters; with
    `required` (results of the current format), a run kept without its samples too."""
    problems = []
    for number, run in enumerate(figures["runs"], 1):
        measured = [("health latency", run["health_latency"], latency_figures)]
        measured += [
            (f"{hit['clients']} client(s)", hit, lambda s, c=hit["clients"]: hit_figures(s, c))
            for hit in run["hits"]
        ]
        for label, kept, compute in measured:
            samples = kept.get("samples_ms")
            if samples is None:
                if required:
                    problems.append(f"run {number}, {label}: kept without its samples")
                continue
            for key, value in compute(samples).items():
                if kept.get(key) != value:
                    problems.append(f"run {number}, {label}: {key} does not follow from samples")
        health = run["health_throughput"]
        if "requests" in health:
            if health["requests"] / health["seconds"] != health["requests_per_second"]:
                problems.append(f"run {number}: GET /health rate does not follow from its count")
        elif required:
            problems.append(f"run {number}: GET /health rate kept without its count")
    return problems


def summary(figures: dict) -> list[tuple[str, ...]]:
    rows = []
    for layout, clients, label, target in (
        ("split", 1, "1 client", True),
        ("split", 16, "16 clients, worker on a core of its own", True),
        ("shared", 16, "16 clients, everything on the same 2 cores", False),
    ):
        hits = _by(figures, layout, clients)
        if not hits:
            continue
        added = [hit["added_p50_ms"] for hit in hits]
        met = max(added) <= TARGET_MS
        rows.append(
            (
                f"worker: `GET /hit` added latency, p50, {label}",
                f"≤ {TARGET_MS:g} ms" if target else "(report)",
                _range(added),
                ("met" if met else "**not met**") if target else "see Worker",
            )
        )
    return rows


if __name__ == "__main__":
    main()
