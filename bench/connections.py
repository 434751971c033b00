#!/usr/bin/env python3
"""Connection-level benchmark of llm-gateway: memory after connection storms,
and latency of a normal request while slow-body clients hold connections.

    cargo build --release --locked -p gateway -p sim
    python3 bench/connections.py            # full run (~3 min)
    python3 bench/connections.py --quick    # smoke run (~1 min)

Loopback only; every phase is bounded in time. Writes
bench/results/connections-<date>.md and .json.

Method
------
Memory: one gateway (release build) in front of vllm-sim. Each round opens
N connections (default 5,000): half connect and say nothing, half make one
`GET /healthz` and then idle on the kept-alive connection. The gateway's RSS
(VmRSS from /proc) is read while they are open, 3 s and 15 s after they are
all closed; five rounds. The first storm sets the allocator's working set; goal:
RSS 15 s after the last round within 10 % (or 4 MB) of RSS 15 s after the
second, i.e. it does not keep growing round after round.

Slow bodies: a gateway with `max_concurrent_requests = 64`. C slow clients
(default 1,000) each send a chat request head with `content-length: 100000`
and then one body byte per second; when the gateway cuts one (408 after its
minimum-rate grace), it reconnects at once, so C connections stay open for
the whole window. Meanwhile a normal client sends one non-streaming chat
request every 50 ms on a fresh connection and records its latency. The same
normal client runs first without the slow clients (baseline), side by side
in one run. Goal: p99 of the normal requests under 100 ms with the slow
clients connected. The slow clients run in a process of their own.
"""

import argparse
import asyncio
import datetime
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
GATEWAY_BIN = os.path.join(BIN, "llm-gateway")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_http(url, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


class Proc:
    def __init__(self, argv, log):
        self.log = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()


def start_stack(tmp, server_cfg):
    sim_port, gw_port = free_port(), free_port()
    sim = Proc([os.path.join(BIN, "vllm-sim"), "--listen", f"127.0.0.1:{sim_port}",
                "--model", "m", "--ttft-ms", "0", "--tokens-per-second", "0",
                "--max-concurrency", "100000"], os.path.join(tmp, "sim.log"))
    if not wait_http(f"http://127.0.0.1:{sim_port}/health", 20):
        raise RuntimeError("vllm-sim did not start")
    cfg = os.path.join(tmp, f"gateway-{gw_port}.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{gw_port}"\n{server_cfg}\n'
                f'[events]\noutput = "{tmp}/events-{gw_port}.log"\n'
                f'[routing]\ndefault_pool = "p"\n[pools.p]\nendpoints = ["http://127.0.0.1:{sim_port}"]\n')
    gw = Proc([GATEWAY_BIN, "--config", cfg],
              os.path.join(tmp, f"gateway-{gw_port}.log"))
    if not wait_http(f"http://127.0.0.1:{gw_port}/healthz", 20):
        raise RuntimeError("llm-gateway did not start")
    return sim, gw, gw_port


async def open_idle(port, n):
    """n connections: half silent, half after one kept-alive GET /healthz."""
    conns = []
    sem = asyncio.Semaphore(200)

    async def one(i):
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            if i % 2:
                w.write(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
                await w.drain()
                head = await r.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await r.readexactly(length)
            conns.append(w)

    await asyncio.gather(*(one(i) for i in range(n)))
    return conns


async def memory_phase(args, tmp):
    sim, gw, port = start_stack(tmp, "")
    try:
        rounds = []
        base = rss_kb(gw.p.pid)
        for i in range(args.rounds):
            conns = await open_idle(port, args.connections)
            await asyncio.sleep(1)
            held = rss_kb(gw.p.pid)
            for w in conns:
                w.close()
            await asyncio.sleep(3)
            after = rss_kb(gw.p.pid)
            await asyncio.sleep(12)
            later = rss_kb(gw.p.pid)
            rounds.append({"round": i + 1, "open_kb": held, "after_kb": after, "later_kb": later})
            print(f"  round {i + 1}: RSS {held / 1024:.1f} MB with {len(conns)} open, "
                  f"{after / 1024:.1f} MB 3 s after close, {later / 1024:.1f} MB 15 s after",
                  file=sys.stderr)
        return {"start_kb": base, "rounds": rounds}
    finally:
        gw.stop()
        sim.stop()


async def slow_client(port, stop, counts):
    body_len = 100000
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write((f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
                     f"content-type: application/json\r\ncontent-length: {body_len}\r\n\r\n{{").encode())
            await w.drain()
            counts["open"] += 1
            while not stop.is_set():
                w.write(b" ")
                await w.drain()
                try:
                    data = await asyncio.wait_for(r.read(1024), 1.0)
                except asyncio.TimeoutError:
                    continue
                if not data or data.startswith(b"HTTP/1.1 408"):
                    counts["cut"] += 1
                    break
                counts["other"] += 1
                break
            counts["open"] -= 1
            w.close()
        except OSError:
            counts["errors"] += 1
            await asyncio.sleep(0.1)


async def normal_requests(port, duration, interval):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 4}).encode()
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
           f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body
    lat, statuses = [], {}
    t_end = time.monotonic() + duration
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(req)
            await w.drain()
            data = await asyncio.wait_for(r.read(), 10)
            w.close()
            st = data[9:12].decode() if data else "closed"
        except (OSError, asyncio.TimeoutError) as e:
            st = type(e).__name__
        lat.append((time.monotonic() - t0) * 1000)
        statuses[st] = statuses.get(st, 0) + 1
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))
    return lat, statuses


def summary(lat):
    s = sorted(lat)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]
    return {"n": len(s), "p50_ms": round(q(0.5), 2), "p99_ms": round(q(0.99), 2),
            "max_ms": round(s[-1], 2), "mean_ms": round(statistics.mean(s), 2)}


def slow_clients_process(port, n, stop_at, opened, result):
    """Runs in its own process, so that its event loop, busy with n clients,
    does not delay the normal client's measurements."""
    async def run():
        stop = asyncio.Event()
        counts = {"open": 0, "cut": 0, "other": 0, "errors": 0}
        tasks = [asyncio.create_task(slow_client(port, stop, counts)) for _ in range(n)]
        while time.time() < stop_at:
            opened.value = counts["open"]
            await asyncio.sleep(0.2)
        counts["open_at_end"] = counts["open"]
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        result.put(counts)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run())


async def slow_phase(args, tmp):
    import multiprocessing as mp
    sim, gw, port = start_stack(tmp, "max_concurrent_requests = 64")
    try:
        base_lat, base_st = await normal_requests(port, args.window, 0.05)
        opened, result = mp.Value("i", 0), mp.Queue()
        stop_at = time.time() + 30 + args.window + 5
        proc = mp.Process(target=slow_clients_process,
                          args=(port, args.slow, stop_at, opened, result))
        proc.start()
        t0 = time.monotonic()
        while opened.value < args.slow * 0.95 and time.monotonic() - t0 < 30:
            await asyncio.sleep(0.2)
        at_start = opened.value
        lat, st = await normal_requests(port, args.window, 0.05)
        counts = result.get(timeout=120)
        proc.join(timeout=30)
        return {"baseline": summary(base_lat), "baseline_status": base_st,
                "with_slow": summary(lat), "with_slow_status": st,
                "slow_clients": args.slow, "slow_open_at_start": at_start,
                "slow_open_at_end": counts["open_at_end"], "slow_cut_408": counts["cut"],
                "slow_other": counts["other"], "slow_connect_errors": counts["errors"]}
    finally:
        gw.stop()
        sim.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer connections, shorter window")
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--window", type=float, default=20.0, help="seconds of normal requests")
    ap.add_argument("--gateway-bin", default=GATEWAY_BIN,
                    help="gateway binary to measure (e.g. a build with another allocator)")
    ap.add_argument("--label", default="", help="suffix of the results file name")
    args = ap.parse_args()
    globals()["GATEWAY_BIN"] = args.gateway_bin
    if args.quick:
        args.connections, args.rounds, args.slow, args.window = 1000, 3, 200, 5.0
    for b in ("llm-gateway", "vllm-sim"):
        if not os.access(os.path.join(BIN, b), os.X_OK):
            sys.exit(f"{BIN}/{b} missing: cargo build --release --locked -p gateway -p sim")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    tmp = tempfile.mkdtemp(prefix="bench-conn-")
    print("== memory: connection storms", file=sys.stderr)
    mem = asyncio.run(memory_phase(args, tmp))
    print("== latency with slow-body clients", file=sys.stderr)
    slow = asyncio.run(slow_phase(args, tmp))
    shutil.rmtree(tmp, ignore_errors=True)

    first = mem["rounds"][min(1, len(mem["rounds"]) - 1)]["later_kb"]
    last = mem["rounds"][-1]["later_kb"]
    growth_ok = last - first <= max(first * 0.10, 4096)
    lat_ok = slow["with_slow"]["p99_ms"] < 100 and set(slow["with_slow_status"]) == {"200"}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    result = {"date": datetime.date.today().isoformat(), "commit": commit,
              "cpus": os.cpu_count(), "quick": args.quick, "memory": mem, "slow_bodies": slow,
              "goals": {"rss_not_growing": growth_ok, "p99_under_100ms_with_slow_clients": lat_ok}}
    lines = [f"# Connection benchmark {result['date']} (commit {commit}, {os.cpu_count()} CPUs"
             f"{', ' + args.label if args.label else ''}"
             f"{', quick' if args.quick else ''})", "",
             "Method: see the docstring of bench/connections.py.", "",
             f"## Memory: {args.rounds} rounds of {args.connections} idle connections", "",
             f"RSS at start: {mem['start_kb'] / 1024:.1f} MB", "",
             "| round | RSS while open (MB) | 3 s after close (MB) | 15 s after close (MB) |",
             "|---|---|---|---|"]
    for r in mem["rounds"]:
        lines.append(f"| {r['round']} | {r['open_kb'] / 1024:.1f} | {r['after_kb'] / 1024:.1f} | "
                     f"{r['later_kb'] / 1024:.1f} |")
    lines += ["", f"Goal (no growth round after round: 15 s after the last round within 10 % or 4 MB "
                  f"of 15 s after round 2): "
                  f"{'met' if growth_ok else 'MISSED'}", "",
              f"## Normal requests with {args.slow} slow-body clients (max_concurrent_requests = 64)", "",
              "| | n | p50 ms | p99 ms | max ms | statuses |", "|---|---|---|---|---|---|",
              f"| baseline | {slow['baseline']['n']} | {slow['baseline']['p50_ms']} | "
              f"{slow['baseline']['p99_ms']} | {slow['baseline']['max_ms']} | {slow['baseline_status']} |",
              f"| with slow clients | {slow['with_slow']['n']} | {slow['with_slow']['p50_ms']} | "
              f"{slow['with_slow']['p99_ms']} | {slow['with_slow']['max_ms']} | {slow['with_slow_status']} |",
              "", f"Slow clients open at the start / end of the window: {slow['slow_open_at_start']} / "
                  f"{slow['slow_open_at_end']}; cut with 408 (then reconnected): {slow['slow_cut_408']}; "
                  f"other answers: {slow['slow_other']}; connect errors: {slow['slow_connect_errors']}.", "",
              f"Goal (p99 < 100 ms, all 200): {'met' if lat_ok else 'MISSED'}", ""]
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stem = os.path.join(ROOT, "bench", "results",
                        f"connections-{result['date']}{'-' + args.label if args.label else ''}")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    print("\n".join(lines))
    print(f"written: {stem}.md", file=sys.stderr)


if __name__ == "__main__":
    main()
