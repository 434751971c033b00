//! `POST /v1/responses`: the OpenAI Responses API as vLLM serves it (text output only).
//!
//! Wire format followed (vLLM `vllm/entrypoints/openai/responses/`):
//! - `api_router.py`: a non-streaming answer is `ResponsesResponse.model_dump()`; a stream
//!   writes every event as `event: {type}\ndata: {model_dump_json()}\n\n` and ends without
//!   `[DONE]`.
//! - `serving.py` `responses_stream_generator`: `response.created`, `response.in_progress`,
//!   then the output events, then `response.completed` carrying the final response object;
//!   `sequence_number` counts every event from 0.
//! - `streaming_events.py` (`emit_text_delta_events`, `emit_text_output_done_events`):
//!   `response.output_item.added` (message, `in_progress`), `response.content_part.added`
//!   (`output_text`, empty, `logprobs: []`), one `response.output_text.delta` per token,
//!   `response.output_text.done`, `response.content_part.done`, `response.output_item.done`.
//! - `protocol.py`: `ResponsesResponse` field order, `from_request` (`incomplete_details:
//!   {"reason":"max_output_tokens"}` when `status` is `incomplete`), `ResponseUsage`
//!   (`input_tokens`, `input_tokens_details`, `output_tokens`, `output_tokens_details`,
//!   `total_tokens`).
//!
//! Event field order is the openai-python type's (`openai.types.responses.*Event`, fields in
//! alphabetical order). A mid-stream engine error is sent as the Responses API `error`
//! event (`ResponseErrorEvent`: `code`, `message`, `param`, `sequence_number`, `type`).
//!
//! The store (`serving.py`, `VLLM_ENABLE_RESPONSES_API_STORE=1`, off by default): a response
//! whose request left `store` true is kept in the server's memory when it completes; a
//! request naming an unknown `previous_response_id`, and `GET /v1/responses/{id}` or
//! `POST /v1/responses/{id}/cancel` of an unknown id, get `_make_not_found_error` (404,
//! `Response with id '{id}' not found.`, type `invalid_request_error`, param
//! `response_id`); cancelling a finished response is `Cannot cancel a synchronous
//! response.` (400). The follow-up's prompt is the new instructions, the stored
//! conversation and the new input (`_construct_input_messages`). vLLM never evicts; this
//! store keeps the last [`STORE_CAPACITY`] responses.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use crate::server::{Sim, json_response, vllm_error};
use crate::wire::{Usage, json_str};

/// Responses the simulator's store keeps (the oldest go first).
pub const STORE_CAPACITY: usize = 10_000;

/// One stored response: its object as served and the conversation text so far
/// (inputs and outputs, without instructions) for a follow-up's prompt.
#[derive(Debug)]
struct Stored {
    body: Vec<u8>,
    history: String,
}

/// The in-memory response store of one server.
#[derive(Debug, Default)]
pub(crate) struct ResponseStore {
    inner: Mutex<(HashMap<String, Stored>, VecDeque<String>)>,
}

impl ResponseStore {
    pub(crate) fn history(&self, id: &str) -> Option<String> {
        let g = self.inner.lock().ok()?;
        g.0.get(id).map(|s| s.history.clone())
    }

    fn body(&self, id: &str) -> Option<Vec<u8>> {
        let g = self.inner.lock().ok()?;
        g.0.get(id).map(|s| s.body.clone())
    }

    fn put(&self, id: &str, body: Vec<u8>, history: String) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let (map, order) = &mut *g;
        if map
            .insert(id.to_owned(), Stored { body, history })
            .is_none()
        {
            order.push_back(id.to_owned());
        }
        while order.len() > STORE_CAPACITY {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}

/// vLLM's `_make_not_found_error`.
pub(crate) fn not_found(id: &str) -> Response {
    vllm_error(
        StatusCode::NOT_FOUND,
        &format!("Response with id '{id}' not found."),
        "invalid_request_error",
        Some("response_id"),
    )
}

/// `GET /v1/responses/{id}`: a stored response as it was served.
pub(crate) async fn retrieve(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    match sim.store.as_ref().and_then(|s| s.body(&id)) {
        Some(body) => json_response(StatusCode::OK, body),
        None => not_found(&id),
    }
}

/// `POST /v1/responses/{id}/cancel`: only background responses can be
/// cancelled, and the simulator has none.
pub(crate) async fn cancel(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    match sim.store.as_ref().and_then(|s| s.body(&id)) {
        Some(_) => vllm_error(
            StatusCode::BAD_REQUEST,
            "Cannot cancel a synchronous response.",
            "invalid_request_error",
            Some("response_id"),
        ),
        None => not_found(&id),
    }
}

/// What a response object repeats from its request.
#[derive(Debug, Clone)]
pub(crate) struct ResponsesMeta {
    pub(crate) id: String,
    pub(crate) created_at: u64,
    pub(crate) model: String,
    pub(crate) instructions: Option<String>,
    pub(crate) previous_response_id: Option<String>,
    /// Where to keep the response when it completes, with the conversation
    /// so far (`None`: not stored).
    pub(crate) store: Option<(Arc<ResponseStore>, String)>,
    pub(crate) max_output_tokens: u32,
    pub(crate) temperature: f64,
    pub(crate) top_p: f64,
}

impl ResponsesMeta {
    /// Stores the finished response `object` (with its output `text`) if asked to.
    pub(crate) fn keep(&self, object: &[u8], text: &str) {
        if let Some((store, history)) = &self.store {
            store.put(&self.id, object.to_vec(), format!("{history}{text}"));
        }
    }
}

/// One output message: its id and text so far.
pub(crate) struct Message<'a> {
    pub(crate) id: &'a str,
    pub(crate) text: &'a str,
}

fn write_usage(out: &mut Vec<u8>, u: Usage) {
    let _ = write!(
        out,
        "{{\"input_tokens\":{},\"input_tokens_details\":{{\"cached_tokens\":0,\"input_tokens_per_turn\":[],\"cached_tokens_per_turn\":[]}},\"output_tokens\":{},\"output_tokens_details\":{{\"reasoning_tokens\":0,\"tool_output_tokens\":0,\"output_tokens_per_turn\":[],\"tool_output_tokens_per_turn\":[]}},\"total_tokens\":{}}}",
        u.prompt,
        u.completion,
        u64::from(u.prompt) + u64::from(u.completion)
    );
}

/// `ResponseOutputText` (`logprobs` as given: `[]` while streaming, `null` when done).
fn write_output_text(out: &mut Vec<u8>, text: &str, logprobs: &str) {
    out.extend_from_slice(b"{\"annotations\":[],\"text\":");
    json_str(out, text);
    let _ = write!(out, ",\"type\":\"output_text\",\"logprobs\":{logprobs}}}");
}

/// `ResponseOutputMessage`; `content: None` writes an empty content list.
fn write_message(out: &mut Vec<u8>, id: &str, content: Option<&str>, status: &str) {
    out.extend_from_slice(b"{\"id\":");
    json_str(out, id);
    out.extend_from_slice(b",\"content\":[");
    if let Some(t) = content {
        write_output_text(out, t, "null");
    }
    let _ = write!(
        out,
        "],\"role\":\"assistant\",\"status\":\"{status}\",\"type\":\"message\"}}"
    );
}

/// A `ResponsesResponse` object (`model_dump()` field order).
pub(crate) fn write_response(
    out: &mut Vec<u8>,
    meta: &ResponsesMeta,
    status: &str,
    message: Option<Message<'_>>,
    usage: Option<Usage>,
) {
    out.extend_from_slice(b"{\"id\":");
    json_str(out, &meta.id);
    let _ = write!(
        out,
        ",\"created_at\":{},\"incomplete_details\":",
        meta.created_at
    );
    if status == "incomplete" {
        out.extend_from_slice(b"{\"reason\":\"max_output_tokens\"}");
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"instructions\":");
    match &meta.instructions {
        Some(i) => json_str(out, i),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"metadata\":null,\"model\":");
    json_str(out, &meta.model);
    out.extend_from_slice(b",\"object\":\"response\",\"output\":[");
    if let Some(m) = message {
        write_message(out, m.id, Some(m.text), "completed");
    }
    let _ = write!(
        out,
        "],\"parallel_tool_calls\":true,\"temperature\":{:?},\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":{:?},\"background\":false,\"max_output_tokens\":{},\"max_tool_calls\":null,\"previous_response_id\":",
        meta.temperature, meta.top_p, meta.max_output_tokens
    );
    match &meta.previous_response_id {
        Some(p) => json_str(out, p),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"prompt\":null,\"reasoning\":null,\"service_tier\":\"auto\",\"status\":\"{status}\",\"text\":null,\"top_logprobs\":null,\"truncation\":\"disabled\",\"usage\":"
    );
    match usage {
        Some(u) => write_usage(out, u),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"user\":null,\"input_messages\":null,\"output_messages\":null}");
}

/// The event stream of one response (stateful: sequence numbers and the text so far).
#[derive(Debug)]
pub(crate) struct ResponsesWriter {
    meta: ResponsesMeta,
    msg_id: String,
    seq: u64,
    text: String,
    started_item: bool,
    incomplete: bool,
}

impl ResponsesWriter {
    pub(crate) fn new(meta: ResponsesMeta) -> Self {
        let msg_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        Self {
            meta,
            msg_id,
            seq: 0,
            text: String::new(),
            started_item: false,
            incomplete: false,
        }
    }

    fn event(&mut self, out: &mut Vec<u8>, typ: &str, body: impl FnOnce(&mut Vec<u8>)) {
        let _ = write!(out, "event: {typ}\ndata: {{");
        body(out);
        let _ = write!(
            out,
            "\"sequence_number\":{},\"type\":\"{typ}\"}}\n\n",
            self.seq
        );
        self.seq += 1;
    }

    /// `response.created` and `response.in_progress`.
    pub(crate) fn start(&mut self, out: &mut Vec<u8>) {
        let meta = self.meta.clone();
        for typ in ["response.created", "response.in_progress"] {
            self.event(out, typ, |o| {
                o.extend_from_slice(b"\"response\":");
                write_response(o, &meta, "in_progress", None, None);
                o.push(b',');
            });
        }
    }

    /// One token of text; `finish` closes the message (`length` makes the response incomplete).
    pub(crate) fn delta(&mut self, out: &mut Vec<u8>, text: &str, finish: Option<&str>) {
        let id = self.msg_id.clone();
        if !self.started_item {
            self.started_item = true;
            self.event(out, "response.output_item.added", |o| {
                o.extend_from_slice(b"\"item\":");
                write_message(o, &id, None, "in_progress");
                o.extend_from_slice(b",\"output_index\":0,");
            });
            self.event(out, "response.content_part.added", |o| {
                o.extend_from_slice(b"\"content_index\":0,\"item_id\":");
                json_str(o, &id);
                o.extend_from_slice(b",\"output_index\":0,\"part\":");
                write_output_text(o, "", "[]");
                o.push(b',');
            });
        }
        if !text.is_empty() {
            self.text.push_str(text);
            self.event(out, "response.output_text.delta", |o| {
                o.extend_from_slice(b"\"content_index\":0,\"delta\":");
                json_str(o, text);
                o.extend_from_slice(b",\"item_id\":");
                json_str(o, &id);
                o.extend_from_slice(b",\"logprobs\":[],\"output_index\":0,");
            });
        }
        if let Some(f) = finish {
            self.incomplete = f == "length";
            let full = std::mem::take(&mut self.text);
            self.event(out, "response.output_text.done", |o| {
                o.extend_from_slice(b"\"content_index\":0,\"item_id\":");
                json_str(o, &id);
                o.extend_from_slice(b",\"logprobs\":[],\"output_index\":0,\"text\":");
                json_str(o, &full);
                o.push(b',');
            });
            self.event(out, "response.content_part.done", |o| {
                o.extend_from_slice(b"\"content_index\":0,\"item_id\":");
                json_str(o, &id);
                o.extend_from_slice(b",\"output_index\":0,\"part\":");
                write_output_text(o, &full, "null");
                o.push(b',');
            });
            self.event(out, "response.output_item.done", |o| {
                o.extend_from_slice(b"\"item\":");
                write_message(o, &id, Some(&full), "completed");
                o.extend_from_slice(b",\"output_index\":0,");
            });
            self.text = full;
        }
    }

    /// `response.completed` with the final response object and usage.
    pub(crate) fn completed(&mut self, out: &mut Vec<u8>, usage: Usage) {
        let meta = self.meta.clone();
        let status = if self.incomplete {
            "incomplete"
        } else {
            "completed"
        };
        let id = self.msg_id.clone();
        let text = std::mem::take(&mut self.text);
        let mut object = Vec::with_capacity(1024);
        write_response(
            &mut object,
            &meta,
            status,
            Some(Message {
                id: &id,
                text: &text,
            }),
            Some(usage),
        );
        meta.keep(&object, &text);
        self.event(out, "response.completed", |o| {
            o.extend_from_slice(b"\"response\":");
            o.extend_from_slice(&object);
            o.push(b',');
        });
    }

    /// The Responses API `error` event (an engine error after the stream started).
    pub(crate) fn error(&mut self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "event: error\ndata: {{\"code\":\"500\",\"message\":\"Internal server error\",\"param\":null,\"sequence_number\":{},\"type\":\"error\"}}\n\n",
            self.seq
        );
        self.seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ResponsesMeta {
        ResponsesMeta {
            id: "resp_1".into(),
            created_at: 7,
            model: "m".into(),
            instructions: None,
            previous_response_id: None,
            store: None,
            max_output_tokens: 16,
            temperature: 1.0,
            top_p: 1.0,
        }
    }

    #[test]
    fn stream_events_are_numbered_and_parse() {
        let mut w = ResponsesWriter::new(meta());
        let mut out = Vec::new();
        w.start(&mut out);
        w.delta(&mut out, "Hi", None);
        w.delta(&mut out, "!", Some("stop"));
        w.completed(
            &mut out,
            Usage {
                prompt: 3,
                completion: 2,
            },
        );
        let text = String::from_utf8(out).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        let types: Vec<&str> = events
            .iter()
            .map(|e| e.lines().next().unwrap().trim_start_matches("event: "))
            .collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (i, e) in events.iter().enumerate() {
            let data = e.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["sequence_number"], i);
            assert_eq!(v["type"], types[i]);
        }
        let last = events[9]
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["response"]["status"], "completed");
        assert_eq!(v["response"]["output"][0]["content"][0]["text"], "Hi!");
        assert_eq!(v["response"]["usage"]["output_tokens"], 2);
    }

    #[test]
    fn length_makes_the_response_incomplete() {
        let mut w = ResponsesWriter::new(meta());
        let mut out = Vec::new();
        w.delta(&mut out, "a", Some("length"));
        out.clear();
        w.completed(&mut out, Usage::default());
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("\"status\":\"incomplete\""));
        assert!(s.contains("\"incomplete_details\":{\"reason\":\"max_output_tokens\"}"));
    }
}
