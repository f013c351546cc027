"""Benchmark: ONNX latency while NEGF traffic saturates the server, and how fast abandoned NEGF work stops.

    python bench/server_isolation.py          # bundled model, 6 NEGF clients, 200 ONNX calls per phase
    python bench/server_isolation.py --requests 50 --negf-clients 6 --cancels 3

Starts ``neqforce serve`` (a separate process on 127.0.0.1, default limits, bundled model) and measures:

1. ONNX p50/p99 at 30x28 (AUTO, covered by the bundled model) with the server otherwise idle (half the
   calls before the NEGF load, half after it, so a drift of the machine's load hits both phases);
2. the same while ``--negf-clients`` clients keep the NEGF backend busy (exact NEGF on 30x28 at V = 2.5,
   which no model covers: AUTO routes it to NEGF), with health checked during the load;
3. cancellation: an NEGF call on a 40x40 lattice (seconds of work) is cancelled once it computes; the
   time until its slot is free again (``neqforce_in_flight{backend="negf"}`` back to 0 on /metrics) and
   until a fresh small NEGF request is answered (its worker process was killed and restarted).

Targets (issue 8): ONNX p50 under NEGF load < 100 ms; a cancelled NEGF request frees its worker < 1 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np

from neqforce.client import ForceClient
from neqforce.physics import HolsteinParams, staggered_sign
from neqforce.v1 import force_service_pb2 as pb
from neqforce.v1 import force_service_pb2_grpc as pb_grpc

ONNX_P50_TARGET_MS = 100.0
FREE_TARGET_S = 1.0


def start_server(extra: list[str]) -> tuple[subprocess.Popen, str, int]:
    env = {**os.environ}
    env.pop("NEQFORCE_TOKEN", None)
    command = [sys.executable, "-c", "from neqforce.cli import app; app()", "serve", "--port", "0",
               "--metrics-port", "0", "--log-level", "warning", *extra]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+) .*metrics on :(\d+)/metrics", line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, match.group(1), int(match.group(2))


def gauge(metrics_port: int, name: str, backend: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    match = re.search(rf'^{name}{{backend="{backend}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def request(q: np.ndarray, params: HolsteinParams, backend: int) -> pb.ComputeForcesRequest:
    arr = np.ascontiguousarray(q[None] if q.ndim == 2 else q, dtype="<f8")
    return pb.ComputeForcesRequest(q=pb.Tensor(shape=arr.shape, dtype=pb.DATA_TYPE_FP64,
                                               raw_contents=arr.tobytes()),
                                   parameters=params.physical(), backend=backend)


def onnx_latencies(address: str, params: HolsteinParams, n: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds per ComputeForces call (AUTO -> ONNX) at params.shape, ``n`` calls after 5 warm-ups."""
    base = 2.4 * staggered_sign(params.lx, params.ly)
    times = []
    with ForceClient(address, retries=0, timeout=60) as c:
        for i in range(n + 5):
            q = base + 0.3 * rng.standard_normal(params.shape)
            t0 = time.perf_counter()
            r = c.compute_forces(q, params)
            if i >= 5:
                times.append(time.perf_counter() - t0)
            assert r.backend == "onnx", r.reason
    return np.array(times)


class NegfLoad:
    """``clients`` threads, each keeping one NEGF request in flight until ``stop``."""

    def __init__(self, address: str, params: HolsteinParams, clients: int) -> None:
        self._stop = threading.Event()
        self.done = 0
        self._channel = grpc.insecure_channel(address)
        stub = pb_grpc.ForceServiceStub(self._channel)
        q = 2.4 * staggered_sign(params.lx, params.ly)
        self._req = request(q, params, pb.BACKEND_NEGF)
        self._threads = [threading.Thread(target=self._loop, args=(stub,), daemon=True)
                         for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _loop(self, stub) -> None:
        while not self._stop.is_set():
            call = stub.ComputeForces.future(self._req, timeout=600)
            while not call.done():
                if self._stop.wait(0.05):
                    call.cancel()
                    return
            try:
                call.result()
                self.done += 1
            except grpc.RpcError:
                pass

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        self._channel.close()


def percentiles(t: np.ndarray) -> tuple[float, float]:
    return 1e3 * float(np.percentile(t, 50)), 1e3 * float(np.percentile(t, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="timed ONNX calls per phase")
    ap.add_argument("--negf-clients", type=int, default=6)
    ap.add_argument("--cancels", type=int, default=3, help="cancelled NEGF calls timed")
    args = ap.parse_args()

    params = HolsteinParams(lx=30, ly=28)  # the bundled model's domain, V = 3
    negf_params = params.replace(voltage=2.5)  # no model covers it: exact NEGF
    big = params.replace(lx=40, ly=40, voltage=2.5)
    proc, address, metrics_port = start_server(["--negf-max-sites", "1600"])
    rng = np.random.default_rng(0)
    try:
        with ForceClient(address, retries=0, timeout=120) as c:
            c.compute_forces(2.4 * staggered_sign(8, 6), negf_params.replace(lx=8, ly=6), backend="negf")
            info = c.server_info()
        idle_before = onnx_latencies(address, params, args.requests // 2, rng)

        load = NegfLoad(address, negf_params, args.negf_clients)
        deadline = time.monotonic() + 120
        while gauge(metrics_port, "neqforce_in_flight", "negf") < 1:
            if time.monotonic() > deadline:
                raise SystemExit("NEGF load never started")
            time.sleep(0.05)
        busy_slots = gauge(metrics_port, "neqforce_in_flight", "negf")
        queued = gauge(metrics_port, "neqforce_queued", "negf")
        with ForceClient(address, retries=0, timeout=30) as c:
            health = c.health()
        loaded = onnx_latencies(address, params, args.requests, rng)
        negf_done = load.done
        load.stop()
        while gauge(metrics_port, "neqforce_in_flight", "negf") > 0:
            time.sleep(0.05)
        idle_after = onnx_latencies(address, params, args.requests - args.requests // 2, rng)
        idle = np.concatenate([idle_before, idle_after])

        frees, nexts = [], []
        with grpc.insecure_channel(address) as ch, ForceClient(address, retries=0, timeout=120) as c:
            stub = pb_grpc.ForceServiceStub(ch)
            small = negf_params.replace(lx=8, ly=6)
            for _ in range(args.cancels):
                call = stub.ComputeForces.future(
                    request(2.4 * staggered_sign(40, 40) + 0.1 * rng.standard_normal((40, 40)), big,
                            pb.BACKEND_NEGF), timeout=600)
                while gauge(metrics_port, "neqforce_in_flight", "negf") < 1:
                    time.sleep(0.01)
                time.sleep(0.5)  # well inside the solve
                t0 = time.perf_counter()
                call.cancel()
                while gauge(metrics_port, "neqforce_in_flight", "negf") > 0:
                    time.sleep(0.005)
                frees.append(time.perf_counter() - t0)
                c.compute_forces(2.4 * staggered_sign(8, 6), small, backend="negf")
                nexts.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(60)

    p50_idle, p99_idle = percentiles(idle)
    p50_load, p99_load = percentiles(loaded)
    print(f"neqforce server isolation bench: {platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; ONNX slots {info['limits']['max_concurrency']}, "
          f"{args.negf_clients} NEGF clients (30x28 exact NEGF)")
    print()
    print("  ONNX 30x28 (AUTO)          |  idle p50/p99 ms  | under NEGF load p50/p99 ms | ratio p50 "
          "| target")
    print(f"  {args.requests:4d} calls each            |  {p50_idle:7.2f} / {p99_idle:7.2f} |"
          f"  {p50_load:9.2f} / {p99_load:9.2f}     | {p50_load / p50_idle:8.2f}x | p50 < "
          f"{ONNX_P50_TARGET_MS:.0f} ms: {'met' if p50_load < ONNX_P50_TARGET_MS else 'NOT met'}")
    print(f"  during the load: NEGF slots busy {busy_slots:.0f}, queued {queued:.0f}, health {health}, "
          f"NEGF solves finished {negf_done}")
    print()
    print("  cancelled NEGF call (40x40) |  slot free after s | next NEGF answered after s | target")
    for free, nxt in zip(frees, nexts, strict=True):
        print(f"                              |  {free:17.3f} | {nxt:26.3f} | free < {FREE_TARGET_S:.0f} s: "
              f"{'met' if free < FREE_TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
