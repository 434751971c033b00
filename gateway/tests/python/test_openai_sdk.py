"""The official `openai` Python client against llm-gateway in front of vllm-sim.

Run from the repository root after `cargo build -p gateway -p sim`:

    python3 -m pytest -q gateway/tests/python

Binaries: $LLM_GATEWAY_BIN and $VLLM_SIM_BIN, default target/debug/{llm-gateway,vllm-sim}.
"""

import json
import os
import pathlib
import subprocess
import tempfile
import threading
import time

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
GATEWAY_BIN = os.environ.get("LLM_GATEWAY_BIN", str(ROOT / "target" / "debug" / "llm-gateway"))
SIM_BIN = os.environ.get("VLLM_SIM_BIN", str(ROOT / "target" / "debug" / "vllm-sim"))
MODEL = "sim-chat"


def start(cmd, env=None):
    """Starts a server that prints `listening on ADDR` on stderr; returns (proc, addr, log)."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env=env,
    )
    found = {}
    log = []
    ready = threading.Event()

    def pump():
        for line in proc.stderr:
            log.append(line)
            if line.startswith("listening on ") and "addr" not in found:
                found["addr"] = line.split("listening on ", 1)[1].strip()
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(20) or "addr" not in found:
        proc.kill()
        raise RuntimeError(f"{cmd[0]} did not start:\n{''.join(log)}")
    return proc, found["addr"], log


@pytest.fixture(scope="module")
def stack():
    for b in (GATEWAY_BIN, SIM_BIN):
        if not os.path.exists(b):
            pytest.fail(f"{b} not found: run `cargo build -p gateway -p sim` first")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_GATEWAY_")}
    sim, sim_addr, _ = start(
        [SIM_BIN, "--listen", "127.0.0.1:0", "--model", MODEL, "--ttft-ms", "5",
         "--tokens-per-second", "2000", "--max-tokens-default", "12"],
        env=env,
    )
    tmp = tempfile.TemporaryDirectory()
    events = pathlib.Path(tmp.name) / "events.log"
    gw, gw_addr, gw_log = start(
        [GATEWAY_BIN, "--listen", "127.0.0.1:0", "--upstream", f"http://{sim_addr}",
         "--events", str(events)],
        env=env,
    )
    client = openai.OpenAI(base_url=f"http://{gw_addr}/v1", api_key="unused", max_retries=0, timeout=20)
    try:
        yield client, events, gw_log
    finally:
        for p in (gw, sim):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        tmp.cleanup()


def read_events(path, until, timeout=5.0):
    """The events written so far, once `until(events)` holds (or at the timeout).

    An event is written when the gateway has finished with a request, which can be a
    moment after the client has read the last byte: wait for the ones a test needs.
    """
    deadline = time.time() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        events = [json.loads(l) for l in lines]
        if until(events) or time.time() > deadline:
            return events
        time.sleep(0.05)


def with_ids(*ids):
    """A `read_events` condition: an event for each of these request ids."""
    return lambda events: set(ids) <= {e["request_id"] for e in events}


def test_models_list(stack):
    client, _, _ = stack
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids


def test_chat_non_streaming_has_usage(stack):
    client, _, _ = stack
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}])
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert r.usage.completion_tokens == 12


def test_chat_streaming_without_usage(stack):
    client, events, _ = stack
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], stream=True,
        extra_headers={"x-request-id": "py-stream-no-usage"},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The client did not ask for usage: it sees no usage chunk ...
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    # ... but the gateway still knows the exact token counts.
    evs = read_events(events, with_ids("py-stream-no-usage"))
    ev = next(e for e in evs if e["request_id"] == "py-stream-no-usage")
    assert ev["completion_tokens"] == 12
    assert ev["prompt_tokens"] > 0
    assert ev["ttft_ms"] is not None


def test_chat_streaming_with_usage(stack):
    client, _, _ = stack
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], stream=True,
        stream_options={"include_usage": True},
    ))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12


def test_completions_streaming_and_not(stack):
    client, _, _ = stack
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert r.choices[0].text
    assert r.usage.completion_tokens == 5
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks)


def test_unknown_model_raises_not_found(stack):
    client, _, _ = stack
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])


def test_mid_stream_error_raises_api_error(stack):
    client, _, _ = stack
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True,
            extra_headers={"x-sim-behavior": "error-midstream"},
        ):
            pass


def test_bad_request_raises_bad_request(stack):
    client, _, _ = stack
    with pytest.raises(openai.BadRequestError):
        client.post("/chat/completions", body={"model": MODEL, "messages": "not a list"}, cast_to=object)


def test_every_request_has_one_event(stack):
    client, events, _ = stack
    for i in range(5):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}],
            extra_headers={"x-request-id": f"py-{i}"},
        )
    evs = read_events(events, with_ids(*(f"py-{i}" for i in range(5))))
    ids = [e["request_id"] for e in evs]
    for i in range(5):
        assert ids.count(f"py-{i}") == 1
    for e in evs:
        assert e["event"] == "response"
        assert "Hello" not in json.dumps(e)
