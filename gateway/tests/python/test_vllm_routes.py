"""The whole vLLM API through the gateway, with the official `openai` client (and httpx,
which the client is built on, for vLLM's non-OpenAI routes): the Responses API streaming
and not, every other relayed route, CORS, 405, requests without a model, a stream the
client leaves, an upstream API key given by flag. Each answer is compared with the one
vllm-sim gives directly (ids and timestamps aside) and each request must have exactly one
correct event.

Run from the repository root after `cargo build -p gateway -p sim`:

    python3 -m pytest -q gateway/tests/python
"""

import asyncio
import json
import os
import pathlib
import re
import subprocess
import tempfile

import openai

try:  # the HTTP client the openai package is built on (httpx, or httpx2 in openai >= 3)
    import httpx
except ImportError:  # pragma: no cover
    import httpx2 as httpx
import pytest

from test_openai_sdk import GATEWAY_BIN, SIM_BIN, read_events, start, with_ids

MODEL = "sim-routes"
PRICE_PROMPT = 1.0  # USD per million tokens
PRICE_COMPLETION = 2.0


def stop(*procs):
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


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
    config = pathlib.Path(tmp.name) / "gateway.toml"
    config.write_text(
        f'[pools.default]\nendpoints = ["http://{sim_addr}"]\n'
        f'[routing]\ndefault_pool = "default"\n'
        f'[models."{MODEL}"]\nprompt_usd_per_million_tokens = {PRICE_PROMPT}\n'
        f'completion_usd_per_million_tokens = {PRICE_COMPLETION}\n'
    )
    gw, gw_addr, _ = start(
        [GATEWAY_BIN, "--config", str(config), "--listen", "127.0.0.1:0", "--events", str(events)],
        env=env,
    )
    gw_url = f"http://{gw_addr}"
    sim_url = f"http://{sim_addr}"
    via = openai.OpenAI(base_url=f"{gw_url}/v1", api_key="unused", max_retries=0, timeout=20)
    direct = openai.OpenAI(base_url=f"{sim_url}/v1", api_key="unused", max_retries=0, timeout=20)
    try:
        yield {"via": via, "direct": direct, "gw": gw_url, "sim": sim_url, "events": events}
    finally:
        stop(gw, sim)
        tmp.cleanup()


def event_of(s, rid):
    evs = read_events(s["events"], with_ids(rid))
    mine = [e for e in evs if e["request_id"] == rid]
    assert len(mine) == 1, f"exactly one event for {rid}: {mine}"
    return mine[0]


def cost(prompt, completion):
    return round((prompt * PRICE_PROMPT + completion * PRICE_COMPLETION) / 1e6, 10)


# ids (msg_<uuid>, resp_<uuid>, chatcmpl-...) and timestamps differ between two answers
IDS = re.compile(rb'"(msg|resp|rerank|score|pool|classify|embd)[_-][0-9a-f]{32}"|"(created|created_at)":\d+')


def same_bytes(a: bytes, b: bytes):
    assert IDS.sub(b"X", a) == IDS.sub(b"X", b)


# --- Responses API -----------------------------------------------------------------------


def test_responses_non_stream(stack):
    rid = "py-resp-1"
    r = stack["via"].responses.create(model=MODEL, input="Hello there", extra_headers={"x-request-id": rid})
    assert r.status == "completed"
    assert r.output_text
    assert r.usage.output_tokens == 12
    ev = event_of(stack, rid)
    assert ev["route"] == "/v1/responses"
    assert ev["status"] == 200 and ev["stream"] is False
    assert ev["finish_reason"] == "stop"
    assert ev["prompt_tokens"] == r.usage.input_tokens
    assert ev["completion_tokens"] == 12
    assert ev["cost_usd"] == cost(r.usage.input_tokens, 12)
    assert ev["refusal"] is False
    assert ev["error_type"] is None
    assert "usage_source" not in ev


def test_responses_stream(stack):
    rid = "py-resp-stream"
    events = list(stack["via"].responses.create(
        model=MODEL, input="Hello there", stream=True, extra_headers={"x-request-id": rid}))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text
    ev = event_of(stack, rid)
    assert ev["route"] == "/v1/responses" and ev["stream"] is True
    assert ev["ttft_ms"] is not None and ev["ttft_ms"] <= ev["latency_ms"]
    assert ev["finish_reason"] == "stop"
    assert ev["completion_tokens"] == final.usage.output_tokens == 12
    assert ev["prompt_tokens"] == final.usage.input_tokens
    assert ev["cost_usd"] == cost(final.usage.input_tokens, 12)


@pytest.fixture(scope="module")
def stored():
    """Three replicas with vLLM's Responses API store on (each keeps its own responses in
    memory), behind one round-robin pool: without routing by response, every follow-up
    would land on a replica that does not have the previous response."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_GATEWAY_")}
    env["VLLM_ENABLE_RESPONSES_API_STORE"] = "1"
    sims = [start([SIM_BIN, "--listen", "127.0.0.1:0", "--model", MODEL, "--ttft-ms", "5",
                   "--tokens-per-second", "2000", "--max-tokens-default", "12"], env=env)
            for _ in range(3)]
    tmp = tempfile.TemporaryDirectory()
    events = pathlib.Path(tmp.name) / "events.log"
    config = pathlib.Path(tmp.name) / "gateway.toml"
    urls = ", ".join(f'"http://{addr}"' for _, addr, _ in sims)
    config.write_text(f'[pools.default]\nrouting = "round-robin"\nendpoints = [{urls}]\n'
                      f'[routing]\ndefault_pool = "default"\n')
    gw, gw_addr, _ = start(
        [GATEWAY_BIN, "--config", str(config), "--listen", "127.0.0.1:0", "--events", str(events)],
        env=env,
    )
    via = openai.OpenAI(base_url=f"http://{gw_addr}/v1", api_key="unused", max_retries=0, timeout=20)
    direct = [openai.OpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0, timeout=20)
              for _, addr, _ in sims]
    try:
        yield {"via": via, "direct": direct, "events": events}
    finally:
        stop(gw, *(p for p, _, _ in sims))
        tmp.cleanup()


def test_stored_responses_are_found_on_the_replica_that_made_them(stored):
    via, direct = stored["via"], stored["direct"]
    # The replicas do not share their stores: asking another one is a 404 (vLLM's text).
    first = direct[0].responses.create(model=MODEL, input="Hello")
    with pytest.raises(openai.NotFoundError, match=f"Response with id '{first.id}' not found."):
        direct[1].responses.create(model=MODEL, input="And?", previous_response_id=first.id)

    def ev_of(rid):
        return [e for e in read_events(stored["events"], with_ids(rid)) if e["request_id"] == rid][-1]

    # A conversation of five turns through the round-robin pool, streamed and not.
    prev = None
    endpoints = []
    prompts = []
    for turn in range(5):
        rid = f"py-stored-{turn}"
        kw = {"previous_response_id": prev} if prev else {}
        if turn % 2:
            events = list(via.responses.create(model=MODEL, input=f"turn {turn}", stream=True,
                                               extra_headers={"x-request-id": rid}, **kw))
            r = events[-1].response
        else:
            r = via.responses.create(model=MODEL, input=f"turn {turn}",
                                     extra_headers={"x-request-id": rid}, **kw)
        assert r.status == "completed" and r.output_text
        assert r.previous_response_id == prev
        ev = ev_of(rid)
        assert ev["status"] == 200, ev
        assert ev["routing_reason"] == ("round_robin" if turn == 0 else "previous_response"), ev
        endpoints.append(ev["endpoint"])
        prompts.append(r.usage.input_tokens)
        prev = r.id
    assert len(set(endpoints)) == 1, endpoints
    # Each turn's prompt holds the conversation so far (the replica's store): it grows.
    assert prompts == sorted(prompts) and len(set(prompts)) == 5, prompts
    # Retrieval and cancel name the response in the path.
    got = via.responses.retrieve(prev, extra_headers={"x-request-id": "py-stored-get"})
    assert got.id == prev and got.output_text
    ev = ev_of("py-stored-get")
    assert (ev["route"], ev["routing_reason"], ev["endpoint"]) == (
        "/v1/responses/{id}", "previous_response", endpoints[0])
    assert ev["completion_tokens"] is None and ev["cost_usd"] is None, "counted when it was made"
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        via.responses.cancel(prev)
    # An id no replica has: routed by the policy, and the replica's 404 is relayed.
    with pytest.raises(openai.NotFoundError, match="Response with id 'resp_nope' not found."):
        via.responses.create(model=MODEL, input="x", previous_response_id="resp_nope")


def test_responses_bytes_equal_direct(stack):
    body = {"model": MODEL, "input": [{"role": "user", "content": "Same bytes?"}]}
    a = stack["via"].responses.with_raw_response.create(**body, extra_headers={"x-request-id": "py-raw-1"})
    b = stack["direct"].responses.with_raw_response.create(**body, extra_headers={"x-request-id": "py-raw-1"})
    assert a.http_response.status_code == 200
    same_bytes(a.http_response.content, b.http_response.content)
    assert a.parse().output_text == b.parse().output_text
    with stack["via"].responses.with_streaming_response.create(
            **body, stream=True, extra_headers={"x-request-id": "py-raw-2"}) as r:
        via = b"".join(r.iter_bytes())
    with stack["direct"].responses.with_streaming_response.create(
            **body, stream=True, extra_headers={"x-request-id": "py-raw-2"}) as r:
        direct = b"".join(r.iter_bytes())
    same_bytes(via, direct)
    assert b"event: response.completed" in via


def test_responses_incomplete_and_refusal(stack):
    r = stack["via"].responses.create(model=MODEL, input="x", max_output_tokens=3,
                                      extra_headers={"x-request-id": "py-resp-len"})
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert event_of(stack, "py-resp-len")["finish_reason"] == "length"
    events = list(stack["via"].responses.create(
        model=MODEL, input="x", stream=True,
        extra_headers={"x-request-id": "py-resp-refuse", "x-sim-behavior": "refuse"}))
    assert events[-1].type == "response.completed"
    ev = event_of(stack, "py-resp-refuse")
    assert ev["refusal"] is True and ev["refusal_reason"]


def test_responses_midstream_error_is_an_error_event(stack):
    events = list(stack["via"].responses.create(
        model=MODEL, input="x", stream=True,
        extra_headers={"x-request-id": "py-resp-err", "x-sim-behavior": "error-midstream"}))
    assert events[-1].type == "error"
    ev = event_of(stack, "py-resp-err")
    assert ev["status"] == 200 and ev["finish_reason"] == "error"
    assert ev["error_type"] == "stream_error"


def test_async_client_20_concurrent_streams(stack):
    client = openai.AsyncOpenAI(base_url=f"{stack['gw']}/v1", api_key="unused", max_retries=0, timeout=30)

    async def one(i):
        stream = await client.responses.create(
            model=MODEL, input=f"stream {i}", stream=True, extra_headers={"x-request-id": f"py-async-{i}"})
        last = None
        async for e in stream:
            last = e
        return last.response.usage.output_tokens

    async def main():
        try:
            return await asyncio.gather(*(one(i) for i in range(20)))
        finally:
            await client.close()

    assert asyncio.run(main()) == [12] * 20
    evs = read_events(stack["events"], with_ids(*(f"py-async-{i}" for i in range(20))))
    for i in range(20):
        mine = [e for e in evs if e["request_id"] == f"py-async-{i}"]
        assert len(mine) == 1
        assert mine[0]["completion_tokens"] == 12 and mine[0]["stream"] is True


# --- Chat: gaps ----------------------------------------------------------------------------


def test_no_usage_anywhere_when_continuous_usage_without_include_usage(stack):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
                  stream_options={"include_usage": False, "continuous_usage_stats": True})
    via = list(stack["via"].chat.completions.create(**kwargs, extra_headers={"x-request-id": "py-cont"}))
    direct = list(stack["direct"].chat.completions.create(**kwargs))
    assert all(c.usage is None for c in direct), "vLLM: no usage without include_usage"
    assert all(c.usage is None for c in via)
    assert len(via) == len(direct)
    assert event_of(stack, "py-cont")["completion_tokens"] == 12


def test_request_without_model_is_served(stack):
    r = stack["via"].post("/chat/completions", body={"messages": [{"role": "user", "content": "hi"}]},
                          cast_to=object, options={"headers": {"x-request-id": "py-nomodel"}})
    assert r["model"] == MODEL
    ev = event_of(stack, "py-nomodel")
    assert ev["status"] == 200 and ev["model"] == MODEL
    assert ev["cost_usd"] is not None


def test_client_leaving_a_stream_still_costs(stack):
    rid = "py-leave"
    with httpx.Client(timeout=20) as h:
        with h.stream("POST", f"{stack['gw']}/v1/chat/completions",
                      headers={"x-request-id": rid, "x-sim-tokens-per-second": "20",
                               "x-sim-output-tokens": "200"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "long"}],
                            "stream": True}) as r:
            got = 0
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                    got += 1
                if got >= 3:
                    break
    ev = event_of(stack, rid)
    assert ev["error_type"] == "client_disconnect"
    assert ev["usage_source"] == "counted"
    assert ev["completion_tokens"] >= 3
    assert ev["cost_usd"] is not None and ev["cost_usd"] > 0


# --- Other vLLM routes ----------------------------------------------------------------------


ROUTES = [
    ("/tokenize", {"model": MODEL, "prompt": "Hello world, how are you?"}),
    ("/detokenize", {"model": MODEL, "tokens": [1, 2, 3]}),
    ("/v1/rerank", {"model": MODEL, "query": "q", "documents": ["a", "bb", "ccc"]}),
    ("/rerank", {"model": MODEL, "query": "q", "documents": ["a", "bb"]}),
    ("/v1/score", {"model": MODEL, "text_1": "q", "text_2": ["a", "b"]}),
    ("/pooling", {"model": MODEL, "input": "pool me"}),
    ("/classify", {"model": MODEL, "input": ["good", "bad"]}),
]


@pytest.mark.parametrize("path,body", ROUTES)
def test_json_routes_relayed(stack, path, body):
    rid = "py-route" + path.replace("/", "-")
    with httpx.Client(timeout=20) as h:
        via = h.post(stack["gw"] + path, json=body, headers={"x-request-id": rid})
        direct = h.post(stack["sim"] + path, json=body)
    assert via.status_code == direct.status_code == 200
    same_bytes(via.content, direct.content)
    ev = event_of(stack, rid)
    assert ev["route"] == path
    assert ev["model"] == MODEL and ev["status"] == 200 and ev["error_type"] is None
    usage = direct.json().get("usage")
    if usage:
        assert ev["prompt_tokens"] == usage["prompt_tokens"]


def test_audio_transcription_multipart(stack):
    audio = bytes(range(256)) * 200  # 51 kB
    rid = "py-audio"
    r = stack["via"].audio.transcriptions.create(
        model=MODEL, file=("a.wav", audio, "audio/wav"), extra_headers={"x-request-id": rid})
    d = stack["direct"].audio.transcriptions.create(model=MODEL, file=("a.wav", audio, "audio/wav"))
    assert r.text and r.text == d.text
    ev = event_of(stack, rid)
    assert ev["route"] == "/v1/audio/transcriptions"
    assert ev["model"] == MODEL and ev["status"] == 200


def test_unknown_route_is_relayed_not_model_not_found(stack):
    with httpx.Client(timeout=20) as h:
        r = h.get(stack["gw"] + "/v1/no-such-route", headers={"x-request-id": "py-unknown"})
    assert r.status_code == 404
    ev = event_of(stack, "py-unknown")
    assert ev["route"] == "other"
    assert ev["error_type"] == "upstream_error"


def test_health_and_version(stack):
    with httpx.Client(timeout=20) as h:
        assert h.get(stack["gw"] + "/health").status_code == 200
        v = h.get(stack["gw"] + "/version", headers={"x-request-id": "py-version"})
        assert v.status_code == 200
        assert v.json() == h.get(stack["sim"] + "/version").json()
    assert event_of(stack, "py-version")["route"] == "/version"


def test_cors_preflight_has_no_event_and_wrong_method_is_405(stack):
    with httpx.Client(timeout=20) as h:
        r = h.options(stack["gw"] + "/v1/responses", headers={
            "origin": "http://app.example", "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type", "x-request-id": "py-preflight"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert r.headers["x-request-id"] == "py-preflight", "every response carries x-request-id"
        d = h.options(stack["sim"] + "/v1/responses", headers={
            "origin": "http://app.example", "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type"})
        assert d.status_code == r.status_code and d.text == r.text
        for k in ("access-control-allow-origin", "access-control-allow-methods",
                  "access-control-max-age", "access-control-allow-headers"):
            assert r.headers[k] == d.headers[k], k
        r = h.get(stack["gw"] + "/v1/chat/completions", headers={"x-request-id": "py-405"})
        assert r.status_code == 405
        assert r.headers["allow"] == "POST, OPTIONS"
        assert r.json()["error"]["code"] == "method_not_allowed"
        r = h.post(stack["gw"] + "/v1/chat/completions", headers={"origin": "http://app.example"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert r.headers["access-control-allow-origin"] == "*"
    ev = event_of(stack, "py-405")
    assert ev["status"] == 405 and ev["error_type"] == "method_not_allowed"
    evs = read_events(stack["events"], lambda _: False, timeout=0.3)
    assert not [e for e in evs if e["request_id"] == "py-preflight"]


def test_flat_error_code_stays_an_integer(stack):
    with httpx.Client(timeout=20) as h:
        r = h.post(stack["gw"] + "/v1/chat/completions", headers={"x-sim-behavior": "error-flat"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == 500


# --- Upstream API key -----------------------------------------------------------------------


def test_upstream_key_from_flag_and_401_relayed():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_GATEWAY_")}
    sim, sim_addr, _ = start([SIM_BIN, "--listen", "127.0.0.1:0", "--model", MODEL,
                              "--ttft-ms", "0", "--tokens-per-second", "0", "--api-key", "sk-upstream"], env=env)
    with tempfile.TemporaryDirectory() as tmp:
        key = pathlib.Path(tmp) / "key"
        key.write_text("sk-upstream\n")
        events = pathlib.Path(tmp) / "events.log"
        good, good_addr, _ = start([GATEWAY_BIN, "--listen", "127.0.0.1:0", "--upstream", f"http://{sim_addr}",
                                    "--upstream-api-key-file", str(key), "--events", str(events)], env=env)
        bad, bad_addr, _ = start([GATEWAY_BIN, "--listen", "127.0.0.1:0", "--upstream", f"http://{sim_addr}",
                                  "--events", str(events)], env=env)
        try:
            ok = openai.OpenAI(base_url=f"http://{good_addr}/v1", api_key="x", max_retries=0)
            assert MODEL in [m.id for m in ok.models.list()]
            assert ok.responses.create(model=MODEL, input="hi").output_text
            no = openai.OpenAI(base_url=f"http://{bad_addr}/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                no.models.list()
            with pytest.raises(openai.AuthenticationError):
                no.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                           extra_headers={"x-request-id": "py-401"})
            evs = read_events(events, with_ids("py-401"))
            ev = next(e for e in evs if e["request_id"] == "py-401")
            assert ev["status"] == 401 and ev["error_type"] == "upstream_auth"
        finally:
            stop(good, bad, sim)


# --- Chat features: tools, logprobs, n > 1, JSON output, stop ------------------------------

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}]

FEATURES = [
    ("tools", dict(tools=TOOLS, tool_choice="required")),
    ("named-tool", dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})),
    ("logprobs", dict(logprobs=True, top_logprobs=2)),
    ("n3", dict(n=3)),
    ("json", dict(response_format={"type": "json_object"})),
    ("stop", None),  # a word of the unstopped answer, see below
]


@pytest.mark.parametrize("name,extra", FEATURES)
@pytest.mark.parametrize("stream", [False, True])
def test_chat_features_equal_direct(stack, name, extra, stream):
    rid = f"py-feat-{name}-{stream}"
    messages = [{"role": "user", "content": f"feature {name}"}]
    if name == "stop":
        plain = stack["direct"].chat.completions.create(model=MODEL, messages=messages)
        word = " " + plain.choices[0].message.content.split()[3]
        extra = dict(stop=["never-there", word])
    kwargs = dict(model=MODEL, messages=messages, **extra)
    if stream:
        kwargs["stream"] = True
        with stack["via"].chat.completions.with_streaming_response.create(
                **kwargs, extra_headers={"x-request-id": rid}) as r:
            via = b"".join(r.iter_bytes())
        with stack["direct"].chat.completions.with_streaming_response.create(
                **kwargs, extra_headers={"x-request-id": rid}) as r:
            direct = b"".join(r.iter_bytes())
        same_bytes(via, direct)
        chunks = [json.loads(l[6:]) for l in via.decode().splitlines()
                  if l.startswith("data: {")]
        finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    else:
        via = stack["via"].chat.completions.with_raw_response.create(**kwargs, extra_headers={"x-request-id": rid})
        direct = stack["direct"].chat.completions.with_raw_response.create(**kwargs, extra_headers={"x-request-id": rid})
        same_bytes(via.http_response.content, direct.http_response.content)
        r = via.parse()
        finals = [c.finish_reason for c in r.choices]
        if name in ("tools", "named-tool"):
            call = r.choices[0].message.tool_calls[0]
            assert call.function.name == "get_weather"
            assert json.loads(call.function.arguments)["city"]
        if name == "logprobs":
            lp = r.choices[0].logprobs.content
            assert lp and len(lp[0].top_logprobs) == 2
        if name == "json":
            assert isinstance(json.loads(r.choices[0].message.content), dict)
        if name == "stop":
            word = extra["stop"][1]
            assert word not in r.choices[0].message.content
            assert len(r.choices[0].message.content.split()) == 3
            assert f'"stop_reason":"{word}"'.encode() in via.http_response.content
        if name == "n3":
            assert [c.index for c in r.choices] == [0, 1, 2]
    ev = event_of(stack, rid)
    assert ev["status"] == 200 and ev["error_type"] is None
    want = "tool_calls" if "tool" in name else "stop"
    assert finals and all(f == want for f in finals)
    assert ev["finish_reason"] == want
    assert ev["completion_tokens"] > 0
    if stream:
        assert ev["ttft_ms"] is not None


# --- The official Node SDK ----------------------------------------------------------------

NODE_DIR = pathlib.Path(__file__).resolve().parents[1] / "node"


def test_node_sdk_abort_responses_and_bytes(stack):
    """gateway/tests/node/sdk.mjs (npm `openai`, installed by scripts/test.sh setup)."""
    if not (NODE_DIR / "node_modules" / "openai").exists():
        pytest.fail(f"npm packages missing: run `npm ci --prefix {NODE_DIR}` (scripts/test.sh setup does)")
    run = subprocess.run(["node", str(NODE_DIR / "sdk.mjs"), stack["gw"], stack["sim"], MODEL],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    # The abort: the client left after 3 chunks; its event says so and costs what was relayed.
    assert out["abort"]["aborted"] and out["abort"]["chunks"] >= 3
    ev = event_of(stack, "node-abort")
    assert ev["error_type"] == "client_disconnect" and ev["status"] == 200
    assert ev["usage_source"] == "counted" and ev["completion_tokens"] >= 3
    assert ev["cost_usd"] > 0
    # The Responses stream, as the SDK parsed it, and its event.
    r = out["responses"]
    assert r["types"][0] == "response.created" and r["types"][-1] == "response.completed"
    assert r["text"] and r["text"] == r["final_text"]
    ev = event_of(stack, "node-responses")
    assert ev["route"] == "/v1/responses" and ev["completion_tokens"] == r["output_tokens"] == 12
    # Byte equality with the direct answers (ids and timestamps aside).
    assert out["raw"]["status"] == 200
    same_bytes(out["raw"]["via"].encode(), out["raw"]["direct"].encode())
    same_bytes(out["sse"]["via"].encode(), out["sse"]["direct"].encode())
    assert "data: [DONE]" in out["sse"]["via"]
    for rid in ("node-raw", "node-sse"):
        assert event_of(stack, rid)["status"] == 200
