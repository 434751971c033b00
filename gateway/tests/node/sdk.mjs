// The official openai Node SDK against llm-gateway: a chat stream the client aborts,
// a Responses API stream, and raw answers through the gateway and directly from the
// simulator. Prints one JSON object; gateway/tests/python/test_vllm_routes.py checks it
// together with the gateway's events.
//
//   node sdk.mjs GATEWAY_BASE_URL DIRECT_BASE_URL MODEL
import OpenAI from "openai";

const [gwUrl, directUrl, model] = process.argv.slice(2);
const via = new OpenAI({ baseURL: `${gwUrl}/v1`, apiKey: "unused", maxRetries: 0, timeout: 20000 });
const direct = new OpenAI({ baseURL: `${directUrl}/v1`, apiKey: "unused", maxRetries: 0, timeout: 20000 });
const out = {};

// 1. A slow chat stream, aborted by the client after three content chunks.
const ac = new AbortController();
let chunks = 0;
let aborted = false;
try {
  const stream = await via.chat.completions.create(
    { model, messages: [{ role: "user", content: "a long answer" }], stream: true },
    {
      signal: ac.signal,
      headers: { "x-request-id": "node-abort", "x-sim-tokens-per-second": "20", "x-sim-output-tokens": "200" },
    },
  );
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta?.content) chunks += 1;
    if (chunks >= 3) {
      ac.abort();
      aborted = true;
    }
  }
} catch (e) {
  // Depending on timing the SDK ends the iteration or throws its abort error.
  if (!(e instanceof OpenAI.APIUserAbortError || e.name === "AbortError")) throw e;
  aborted = true;
}
out.abort = { chunks, aborted };

// 2. A Responses API stream, read to its end.
const events = [];
const rstream = await via.responses.create(
  { model, input: "node responses", stream: true },
  { headers: { "x-request-id": "node-responses" } },
);
for await (const ev of rstream) events.push(ev);
out.responses = {
  types: events.map((e) => e.type),
  text: events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join(""),
  final_text: events.at(-1)?.response?.output?.[0]?.content?.[0]?.text ?? null,
  output_tokens: events.at(-1)?.response?.usage?.output_tokens ?? null,
};

// 3. Raw bytes of the same requests through the gateway and directly.
const body = { model, input: [{ role: "user", content: "node bytes" }] };
const a = await via.responses.create(body, { headers: { "x-request-id": "node-raw" } }).asResponse();
const b = await direct.responses.create(body, { headers: { "x-request-id": "node-raw" } }).asResponse();
out.raw = { status: a.status, via: await a.text(), direct: await b.text() };
const sa = await via.chat.completions
  .create({ model, messages: [{ role: "user", content: "node sse" }], stream: true }, { headers: { "x-request-id": "node-sse" } })
  .asResponse();
const sb = await direct.chat.completions
  .create({ model, messages: [{ role: "user", content: "node sse" }], stream: true }, { headers: { "x-request-id": "node-sse" } })
  .asResponse();
out.sse = { via: await sa.text(), direct: await sb.text() };

process.stdout.write(JSON.stringify(out) + "\n");
