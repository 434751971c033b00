#!/usr/bin/env python3
"""Smoke tests of the benchmark harness itself (no release build, a few seconds):

    python3 bench/test_bench.py

- the per-round "added latency" arithmetic, medians and the saturation verdicts;
- the goal evaluation and the Markdown report on a synthetic result;
- the accept-everything receiver answers a push and counts its bytes;
- /proc readers on this process.
"""

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def win(target, rnd, p50, p99, rate=1000, ok=True, ttft=None):
    return {"target": target, "rate": rate, "round": rnd, "p50_ms": p50, "p99_ms": p99,
            "ttft_p50_ms": ttft, "ttft_p99_ms": ttft, "achieved_rps": rate, "requests": rate,
            "ok": rate, "errors": 0, "skipped": 0, "unfinished": 0, "sustained": ok,
            "cpu_us_per_req": {target: 50.0}, "loadgen_cpu_us_per_req": 30.0}


class Harness(unittest.TestCase):
    def test_added_latency_is_per_round_median(self):
        per = {
            "direct": [win("direct", 0, 0.5, 1.0), win("direct", 1, 0.6, 3.0), win("direct", 2, 0.5, 1.1)],
            "gateway": [win("gateway", 0, 0.7, 1.4), win("gateway", 1, 0.8, 3.1), win("gateway", 2, 0.6, 1.9)],
        }
        row = bench.summarize_rate(1000, per)
        # per-round p99 differences 0.4, 0.1, 0.8 -> median 0.4 (not p99 of medians)
        self.assertAlmostEqual(row["gateway"]["added_ms"]["p99"], 0.4, places=6)
        self.assertAlmostEqual(row["gateway"]["added_ms"]["p50"], 0.2, places=6)
        self.assertTrue(row["gateway"]["sustained"])
        self.assertEqual(row["direct"]["p99_ms"], 1.1)

    def test_one_bad_round_means_not_sustained(self):
        per = {"direct": [win("direct", 0, 0.5, 1.0), win("direct", 1, 0.5, 1.0)],
               "gateway": [win("gateway", 0, 0.7, 1.4), win("gateway", 1, 70, 900, ok=False)]}
        row = bench.summarize_rate(1000, per)
        self.assertFalse(row["gateway"]["sustained"])
        self.assertTrue(row["direct"]["sustained"])

    def test_goals_and_report(self):
        per = {"direct": [win("direct", 0, 0.5, 1.0)], "gateway": [win("gateway", 0, 0.6, 1.3)],
               "litellm": [win("litellm", 0, 9.0, 31.0)]}
        res = {
            "machine": {"nproc": 2, "cpu_model": "test", "mem_total_gib": 1.0, "kernel": "k",
                        "rustc": "rustc", "git_commit": "abc", "loadavg_start": (0, 0, 0),
                        "loadavg_end": (0, 0, 0)},
            "command": "bench/run.sh", "duration_s": 1.0, "notes": [],
            "litellm": {"status": "test"},
            "overhead": {"rates": [dict(bench.summarize_rate(1000, per), gateway_requests_sent=1000,
                                        gateway_events_written=1000, gateway_metrics_requests=1000.0)],
                         "gateway_max_sustained_rps": 1000},
            "many_streams": {"streams": 1000, "rss_before_kb": 10000, "rss_all_open_max_kb": 60000,
                             "samples_with_all_open": 5, "max_in_flight_seen": 1000,
                             "vm_hwm_kb": 61000, "loadgen": {}},
            "shipper": {"input_bytes": 10**8, "input_lines": 10**5, "runs": [
                {"name": "null", "mb_per_s": 150.0, "lines_per_s": 1, "cpu_s": 0.5,
                 "mb_per_cpu_s": 200.0, "max_rss_kb": 20000, "exit": 0}]},
        }
        goals = {g["goal"]: g for g in bench.evaluate(res)}
        p99 = [g for k, g in goals.items() if k.startswith("gateway added latency")][0]
        self.assertTrue(p99["met"])  # 0.3 ms
        ratio = [g for k, g in goals.items() if "LiteLLM" in k][0]
        # (9.0-0.5)/(0.6-0.5) = 85x p50, (31-1)/(1.3-1) = 100x p99
        self.assertTrue(ratio["met"], ratio)
        self.assertIn("85.0x", ratio["value"])
        rss = [g for k, g in goals.items() if k.startswith("1,000")][0]
        self.assertTrue(rss["met"])
        with tempfile.TemporaryDirectory() as d:
            old = bench.BENCH
            bench.BENCH = d
            try:
                ctx = argparse.Namespace(stamp="2026-01-01T000000Z", quick=True, pin=False,
                                         args=argparse.Namespace(rounds=1, window_secs=4))
                base = bench.write_report(ctx, res)
            finally:
                bench.BENCH = old
            with open(base + ".md") as f:
                md = f.read()
        self.assertIn("| 1000 | 0.500 / 1.000 | 0.100 / 0.300 | 8.500 / 30.000 |", md)
        self.assertIn("## Goals", md)

    def test_nginx_ratio_and_per_chunk_goals(self):
        per = {"direct": [win("direct", 0, 1.0, 2.0, rate=500)],
               "gateway": [win("gateway", 0, 1.3, 2.5, rate=500)],
               "nginx": [win("nginx", 0, 1.2, 2.2, rate=500)]}
        row = dict(bench.summarize_rate(500, per), gateway_requests_sent=500,
                   gateway_events_written=500, gateway_metrics_requests=500.0)
        sper = {"direct": [win("direct", 0, 700, 710, rate=200, ttft=52.0)],
                "gateway": [win("gateway", 0, 700.2, 710, rate=200, ttft=52.2)],
                "nginx": [win("nginx", 0, 700.2, 710, rate=200, ttft=52.2)]}
        srow = bench.summarize_rate(200, sper)
        srow["gateway"]["cpu_us_per_chunk"] = 7.5
        res = {"overhead": {"rates": [row], "gateway_max_sustained_rps": 6000},
               "streams": {"rates": [srow], "chunks_per_stream": 66}}
        goals = {g["goal"]: g for g in bench.evaluate(res)}
        non_stream = goals["added latency <= 1.25x nginx's (non-streaming)"]
        # (1.3-1.0)/(1.2-1.0) = 1.5x: missed
        self.assertFalse(non_stream["met"], non_stream)
        self.assertIn("1.5x latency p50 at 500 req/s", non_stream["value"])
        self.assertTrue(goals["added latency <= 1.25x nginx's (streams)"]["met"])
        chunk = [g for k, g in goals.items() if "per relayed chunk" in k][0]
        self.assertTrue(chunk["met"], chunk)
        self.assertTrue([g for k, g in goals.items() if k.startswith("max sustained")][0]["met"])
        self.assertTrue([g for k, g in goals.items() if k.startswith("requests = events")][0]["met"])
        table = "\n".join(bench.side_by_side([row], False))
        self.assertIn("| 500 | nginx | 0.200 / 0.200 |", table)

    def test_null_receiver_accepts_a_push(self):
        port = bench.free_port()
        p = subprocess.Popen([sys.executable, os.path.join(bench.BENCH, "null_receiver.py"), str(port)],
                             stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 10
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    body = b"x" * 100_000
                    for _ in range(3):  # keep-alive: several requests on one connection
                        c.request("POST", "/loki/api/v1/push", body=body,
                                  headers={"Content-Type": "application/x-protobuf"})
                        r = c.getresponse()
                        r.read()
                        self.assertEqual(r.status, 204)
                    c.close()
                    break
                except ConnectionRefusedError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            p.terminate()
            _, err = p.communicate(timeout=10)
        self.assertIn(b"requests 3 body_bytes 300000", err)

    def test_proc_readers(self):
        self.assertGreater(bench.status_kb(os.getpid(), "VmRSS"), 0)
        self.assertGreaterEqual(bench.read_stat_cpu(os.getpid()), 0.0)
        self.assertIn(os.getpid(), bench.tree(os.getpid()))


if __name__ == "__main__":
    unittest.main()
