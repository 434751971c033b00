//! The route table: every vLLM route the gateway relays, described once as
//! data (its event `route` label, the methods it accepts, how its request and
//! answer are read). The proxy path ([`crate::proxy::handle`]) is one function
//! that consults this table.
//!
//! Paths follow vLLM's OpenAI-compatible server (`vllm/entrypoints/openai/`:
//! `api_server.py` and the per-API `api_router.py` files: chat_completion,
//! completion, responses, embed/pooling/score/rerank/classify, tokenize,
//! speech_to_text, anthropic `/v1/messages`). A path not in the table is still
//! relayed (to the default pool) with the route label `other`.

use axum::http::Method;

/// How the gateway reads a request and its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses` (OpenAI Responses API).
    Responses,
    /// `POST /v1/messages` (Anthropic Messages API).
    Messages,
    /// A JSON route without generated text: tokenize, detokenize, rerank,
    /// score, pooling, classify, `/v1/responses/{id}`, `/version`, ...
    Json,
    /// A multipart upload: `/v1/audio/transcriptions`, `/v1/audio/translations`.
    Multipart,
    /// `GET /v1/models/{id}`.
    ModelInfo,
    /// Anything else: relayed as it is.
    Other,
}

impl Api {
    /// The answer carries generated text: finish reason, TTFT and refusal
    /// detection apply, and a stream must end properly.
    pub fn generates(self) -> bool {
        matches!(
            self,
            Api::ChatCompletions | Api::Completions | Api::Responses | Api::Messages
        )
    }

    /// The request body is JSON (a body that is not is refused with 400).
    pub fn json_request(self) -> bool {
        !matches!(self, Api::Multipart | Api::Other | Api::ModelInfo)
    }

    /// A 2xx answer must be JSON (else it is reported as an invalid upstream
    /// response, 502). Audio can answer text/srt/vtt; unknown routes anything.
    pub fn json_response(self) -> bool {
        !matches!(self, Api::Multipart | Api::Other)
    }

    /// The gateway asks the upstream for usage on streams (chat and
    /// completions; the Responses API always reports it).
    pub fn injects_stream_usage(self) -> bool {
        matches!(self, Api::ChatCompletions | Api::Completions)
    }
}

/// One entry of the route table.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub api: Api,
    /// The event's `route` and the metrics' `route` label (bounded).
    pub label: &'static str,
    /// Methods vLLM accepts on this path (empty: any).
    pub methods: &'static [Method],
}

const POST: &[Method] = &[Method::POST];
const GET: &[Method] = &[Method::GET];

/// The known vLLM paths (exact match).
const EXACT: &[(&str, Api, &[Method])] = &[
    ("/v1/chat/completions", Api::ChatCompletions, POST),
    ("/v1/completions", Api::Completions, POST),
    ("/v1/embeddings", Api::Embeddings, POST),
    ("/v1/responses", Api::Responses, POST),
    ("/v1/messages", Api::Messages, POST),
    ("/v1/messages/count_tokens", Api::Json, POST),
    ("/tokenize", Api::Json, POST),
    ("/detokenize", Api::Json, POST),
    ("/v1/rerank", Api::Json, POST),
    ("/v2/rerank", Api::Json, POST),
    ("/rerank", Api::Json, POST),
    ("/v1/score", Api::Json, POST),
    ("/score", Api::Json, POST),
    ("/pooling", Api::Json, POST),
    ("/classify", Api::Json, POST),
    ("/v1/audio/transcriptions", Api::Multipart, POST),
    ("/v1/audio/translations", Api::Multipart, POST),
    ("/version", Api::Json, GET),
    ("/invocations", Api::Json, POST),
];

/// Looks a request path up in the table.
pub fn lookup(path: &str) -> Route {
    for (p, api, methods) in EXACT {
        if *p == path {
            return Route {
                api: *api,
                label: p,
                methods,
            };
        }
    }
    if let Some(rest) = path.strip_prefix("/v1/models/")
        && !rest.is_empty()
    {
        return Route {
            api: Api::ModelInfo,
            label: "/v1/models/{id}",
            methods: GET,
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/responses/")
        && !rest.is_empty()
    {
        if rest.ends_with("/cancel") {
            return Route {
                api: Api::Json,
                label: "/v1/responses/{id}/cancel",
                methods: POST,
            };
        }
        return Route {
            api: Api::Json,
            label: "/v1/responses/{id}",
            methods: GET,
        };
    }
    Route {
        api: Api::Other,
        label: "other",
        methods: &[],
    }
}

/// Every `route` label the table can give (bounded: the metrics' `route` label).
pub fn labels() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = EXACT.iter().map(|(p, _, _)| *p).collect();
    v.extend([
        "/v1/models/{id}",
        "/v1/responses/{id}",
        "/v1/responses/{id}/cancel",
        "other",
    ]);
    v
}

/// The `Allow` header value of a route.
pub fn allow_header(methods: &[Method]) -> String {
    let mut v: Vec<&str> = methods.iter().map(Method::as_str).collect();
    v.push("OPTIONS");
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        for (path, label, api) in [
            (
                "/v1/chat/completions",
                "/v1/chat/completions",
                Api::ChatCompletions,
            ),
            ("/v1/responses", "/v1/responses", Api::Responses),
            ("/v1/responses/resp_1", "/v1/responses/{id}", Api::Json),
            (
                "/v1/responses/resp_1/cancel",
                "/v1/responses/{id}/cancel",
                Api::Json,
            ),
            ("/tokenize", "/tokenize", Api::Json),
            (
                "/v1/audio/transcriptions",
                "/v1/audio/transcriptions",
                Api::Multipart,
            ),
            ("/v1/models/m", "/v1/models/{id}", Api::ModelInfo),
            ("/v1/models/org/m", "/v1/models/{id}", Api::ModelInfo),
            ("/v1/nope", "other", Api::Other),
            ("/anything", "other", Api::Other),
            ("/v1/models/", "other", Api::Other),
        ] {
            let r = lookup(path);
            assert_eq!((r.label, r.api), (label, api), "{path}");
        }
        assert_eq!(allow_header(POST), "POST, OPTIONS");
    }

    #[test]
    fn every_label_is_in_the_published_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events.schema.json");
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let allowed = schema["properties"]["route"]["enum"].as_array().unwrap();
        for l in labels() {
            assert!(
                allowed.iter().any(|a| a == l),
                "{l} missing from the schema's route enum"
            );
        }
    }
}
