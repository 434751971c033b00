#!/usr/bin/env python3
"""Does the optional refusal judge change what clients see?

Method: one upstream (vllm-sim in instant mode, 30 % refusals), the gateway with events
to a file, and `loadgen steady` (open loop, latency from each request's scheduled start)
at a fixed rate, non-streaming. Three gateway set-ups, alternated round by round so that
machine drift hits them alike:

  off    no [refusal.judge]
  slow   judge on, every response sampled (sample_rate 1, no budget), the judge a vllm-sim
         that takes 300 ms per verdict, concurrency 4, queue 1024
  down   judge on, sample_rate 1, the judge URL a closed port (every judgement fails)

Reported per set-up: client latency p50/p99 (ms), requests, errors, and from the
gateway's /metrics the judgements by verdict and the skips by reason. Loopback only,
bounded in time (about 2 minutes). Standard library only.

  python3 bench/judge.py [--rate 100] [--secs 15] [--rounds 2] [--out bench/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERDICT_RE = re.compile(r'verdict="(\w+)"')


def binary(name: str) -> str:
    for profile in ("release", "debug"):
        p = ROOT / "target" / profile / name
        if p.exists():
            return str(p)
    sys.exit(f"{name} not built: cargo build --release -p gateway -p sim")


def start(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    addr: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if not addr and line.startswith("listening on "):
                addr.append(line.split()[-1])
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(20):
        proc.kill()
        sys.exit(f"did not start: {cmd}")
    return proc, addr[0]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        return r.read().decode()


def series(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name):]] = out.get(labels[len(name):], 0.0) + float(value)
    return out


def run_one(setup: str, upstream: str, judge: str | None, rate: int, secs: int, tmp: Path) -> dict:
    cfg = tmp / f"{setup}.toml"
    text = ""
    if setup != "off":
        text = (
            "[refusal.judge]\nenabled = true\n"
            f'url = "{judge}"\nmodel = "judge"\nsample_rate = 1.0\n'
            "max_per_minute = 0\nconcurrency = 4\nqueue_capacity = 1024\ntimeout_ms = 2000\n"
            "shutdown_drain_ms = 500\n"
        )
    cfg.write_text(text)
    events = tmp / f"{setup}-{time.monotonic_ns()}.jsonl"
    gw, addr = start([
        binary("llm-gateway"), "--listen", "127.0.0.1:0", "--upstream", upstream,
        "--events", str(events), "--config", str(cfg),
    ])
    url = f"http://{addr}"
    try:
        out = subprocess.run(
            [binary("loadgen"), "steady", "--target", url, "--model", "m", "--rate", str(rate),
             "--duration-secs", str(secs), "--no-stream", "--json", "-q", "--max-tokens", "64",
             "--drain-secs", "10"],
            capture_output=True, text=True, timeout=secs + 60, check=True,
        )
        summary = json.loads(out.stdout)
        time.sleep(1.0)  # judgements in flight land before the counters are read
        m = metrics(url)
    finally:
        stop(gw)
    lines = [json.loads(x) for x in events.read_text().splitlines() if x.strip()]
    return {
        "setup": setup,
        "requests": summary["requests"],
        "ok": summary["ok"],
        "errors": summary["errors"],
        "p50": summary["latency_ms"]["p50"],
        "p99": summary["latency_ms"]["p99"],
        "judgements": series(m, "llm_gateway_refusal_judgements_total"),
        "skipped": series(m, "llm_gateway_refusal_judge_skipped_total"),
        "response_events": sum(1 for e in lines if e["event"] == "response"),
        "judgement_events": sum(1 for e in lines if e["event"] == "refusal_judgement"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--secs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    up, up_addr = start([binary("vllm-sim"), "--listen", "127.0.0.1:0", "--model", "m",
                         "--ttft-ms", "0", "--tokens-per-second", "0", "--refusal-ratio", "0.3"])
    jd, jd_addr = start([binary("vllm-sim"), "--listen", "127.0.0.1:0", "--model", "judge",
                         "--ttft-ms", "300", "--max-concurrency", "64"])
    judges = {"off": None, "slow": f"http://{jd_addr}", "down": f"http://127.0.0.1:{dead_port()}"}
    results = []
    try:
        with tempfile.TemporaryDirectory() as d:
            for r in range(a.rounds):
                for setup in ("off", "slow", "down"):
                    res = run_one(setup, f"http://{up_addr}", judges[setup], a.rate, a.secs, Path(d))
                    res["round"] = r + 1
                    print(json.dumps(res), flush=True)
                    results.append(res)
    finally:
        stop(up)
        stop(jd)
    build = "release" if "release" in binary("llm-gateway") else "debug"
    now = dt.datetime.now(dt.timezone.utc)
    md = [
        f"# Refusal judge: client latency with and without it ({now:%Y-%m-%d %H:%M} UTC)",
        "",
        f"`python3 bench/judge.py --rate {a.rate} --secs {a.secs} --rounds {a.rounds}`, {build} build, "
        f"{os.cpu_count()} CPUs shared with other work. Method: see the script's docstring.",
        "",
        "| round | setup | requests | errors | p50 ms | p99 ms | response events | judgement events | judgements by verdict | skipped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in results:
        by_verdict: dict[str, int] = {}
        for k, v in x["judgements"].items():
            m = VERDICT_RE.search(k)
            name = m.group(1) if m else k
            by_verdict[name] = by_verdict.get(name, 0) + int(v)
        verdicts = ", ".join(f"{k}={v}" for k, v in sorted(by_verdict.items())) or "-"
        skipped = ", ".join(f"{k}={int(v)}" for k, v in sorted(x["skipped"].items())) or "-"
        md.append(
            f"| {x['round']} | {x['setup']} | {x['requests']} | {x['errors']} | {x['p50']:.2f} | "
            f"{x['p99']:.2f} | {x['response_events']} | {x['judgement_events']} | {verdicts} | {skipped} |"
        )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"judge-{now:%Y-%m-%d}.md"
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
