//! Response inspection without changing the bytes the client sees.
//!
//! * [`SseRelay`]: incremental SSE framing (events end on a blank line, with
//!   `\n`, `\r\n` or `\r` line ends). Complete events are passed on at once,
//!   byte for byte; only the usage-only chunk (`choices: []`) is removed when
//!   the client did not ask for usage. Each `data:` payload is parsed once
//!   with a small borrowed struct for what the gateway needs: content, refusal,
//!   finish reason, usage and error.
//! * [`inspect_body`]: the same for a complete (non-streaming) JSON body.
//!
//! Besides chat and completion chunks (`choices[]`), the same view reads the
//! OpenAI Responses API as vLLM serves it (`vllm/entrypoints/openai/responses/`:
//! `api_router.py` writes each event as `event: {type}\ndata: {json}\n\n`, no
//! `[DONE]`; `streaming_events.py` builds `response.output_text.delta`, ...;
//! `protocol.py` `ResponsesResponse` / `ResponseUsage` with `input_tokens` /
//! `output_tokens`): the `type` of each event, output deltas, the final
//! `response` object of `response.completed` / `response.incomplete` /
//! `response.failed`, its `status` and `incomplete_details`, and `refusal`
//! content parts. Usage named `input_tokens` / `output_tokens` (Responses,
//! Anthropic `/v1/messages`) is read as prompt / completion tokens.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::IgnoredAny;

/// Most choices whose text is kept for refusal detection.
const MAX_CHOICES: usize = 16;
/// An event larger than this without an end is passed on unparsed.
const MAX_PENDING_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// Token counts from upstream `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// `usage` as the upstream names it: `prompt_tokens` / `completion_tokens`
/// (chat, completions, embeddings, pooling) or `input_tokens` /
/// `output_tokens` (Responses API, `/v1/messages`).
#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawUsage::deserialize(d)?;
        Ok(Usage {
            prompt_tokens: r.prompt_tokens.or(r.input_tokens),
            completion_tokens: r.completion_tokens.or(r.output_tokens),
        })
    }
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<usize>,
    #[serde(borrow, default, alias = "message")]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

/// A content part of a Responses API output item (`output_text` or `refusal`).
#[derive(Deserialize)]
struct OutputPart<'a> {
    #[serde(borrow, default, rename = "type")]
    typ: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
}

/// An output item of a Responses API response (`message`, `function_call`, `reasoning`, ...).
#[derive(Deserialize)]
struct OutputItem<'a> {
    #[serde(borrow, default, rename = "type")]
    typ: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Vec<OutputPart<'a>>>,
}

#[derive(Deserialize)]
struct IncompleteDetails<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResponseView<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<ErrorView>,
    /// Model that answered (the request may not name one).
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    /// Responses API: the event type (`response.output_text.delta`, ...) or
    /// the Anthropic message event type.
    #[serde(borrow, default, rename = "type")]
    typ: Option<Cow<'a, str>>,
    /// Responses API: the text of a `*.delta` event (a string there; an object
    /// in Anthropic `content_block_delta`, read only as "some output").
    #[serde(borrow, default)]
    delta: Option<&'a serde_json::value::RawValue>,
    /// Responses API: the response object of `response.completed` & co.
    #[serde(borrow, default)]
    response: Option<Box<ResponseView<'a>>>,
    /// Responses API `object: "response"`.
    #[serde(borrow, default)]
    object: Option<Cow<'a, str>>,
    /// The object's `id` (kept only for a Responses API response).
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    incomplete_details: Option<IncompleteDetails<'a>>,
    #[serde(borrow, default)]
    output: Option<Vec<OutputItem<'a>>>,
    /// Responses API `error` event: `{"type":"error","code":..,"message":..}`.
    #[serde(default)]
    message: Option<serde_json::Value>,
    /// Responses API events are numbered from 0.
    #[serde(default)]
    sequence_number: Option<u64>,
    /// `/v1/messages` body: why the message ended (read only on that body).
    #[serde(borrow, default)]
    stop_reason: Option<&'a serde_json::value::RawValue>,
    /// `/v1/messages` body: its content blocks (`{"type":"text","text":..}`; read
    /// only on that body, so another route's `content` of any type parses).
    #[serde(borrow, default)]
    content: Option<&'a serde_json::value::RawValue>,
}

/// The finish reason of a Responses API response: `status` and
/// `incomplete_details.reason` mapped onto the chat finish reasons.
pub fn responses_finish_reason(
    status: &str,
    incomplete_reason: Option<&str>,
    tool_call: bool,
) -> Option<&'static str> {
    Some(match (status, incomplete_reason) {
        ("completed", _) if tool_call => "tool_calls",
        ("completed", _) => "stop",
        ("incomplete", Some("content_filter")) => "content_filter",
        ("incomplete", _) => "length",
        ("failed", _) => "error",
        ("cancelled", _) => "abort",
        _ => return None,
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorView {
    Object {
        #[serde(default)]
        message: Option<serde_json::Value>,
    },
    Other(serde_json::Value),
}

/// What a complete response body was.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum BodyShape {
    /// A JSON object (what every proxied route promises).
    #[default]
    Object,
    /// JSON, but not an object.
    OtherJson,
    /// Not JSON at all.
    NotJson,
}

/// What was learnt from a response (stream or body).
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Shape of a complete body (streams: always `Object`).
    pub shape: BodyShape,
    /// SSE events with a `data:` field (streams).
    pub data_events: u64,
    /// Finish reason of choice 0 (else of the last choice that had one).
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// Assistant text per choice, each bounded to the scan limit.
    pub texts: Vec<String>,
    /// `message.refusal` / `delta.refusal` was non-empty.
    pub upstream_refusal: bool,
    /// A choice finished with `content_filter`.
    pub content_filter: bool,
    /// An error object in the body or stream, with its message.
    pub error: Option<String>,
    /// `data: [DONE]` was seen, or the terminal event of a Responses API
    /// stream (`response.completed` / `incomplete` / `failed`).
    pub done: bool,
    /// Events (or bodies) that carried output: on a stream, one per token
    /// as vLLM sends them, so a count of what was relayed.
    pub output_events: u64,
    /// `model` of the answer.
    pub model: Option<String>,
    /// Responses API: the `sequence_number` the next event would have.
    pub next_sequence: u64,
    /// Responses API: the response's `id` (at most 256 bytes).
    pub response_id: Option<String>,
}

impl Summary {
    fn absorb(&mut self, mut view: ResponseView<'_>, scan_limit: usize) -> bool {
        let mut content = false;
        if let Some(u) = view.usage {
            self.merge_usage(u);
        }
        if self.model.is_none()
            && let Some(m) = &view.model
        {
            self.model = Some(m.chars().take(256).collect());
        }
        if let Some(n) = view.sequence_number {
            self.next_sequence = n + 1;
        }
        if let Some(t) = view.typ.as_deref() {
            content |= self.absorb_event(t, &view, scan_limit);
        }
        if let Some(r) = view.response.take() {
            self.note_response_id(r.id);
            // response.created / in_progress / completed / incomplete / failed
            let terminal = view.typ.as_deref().is_some_and(|t| {
                matches!(
                    t,
                    "response.completed" | "response.incomplete" | "response.failed"
                )
            });
            if terminal {
                self.done = true;
                self.absorb_response(*r, scan_limit, false);
            } else if self.model.is_none()
                && let Some(m) = &r.model
            {
                self.model = Some(m.chars().take(256).collect());
            }
            return content;
        }
        if view.object.as_deref() == Some("response") {
            // A complete (non-streaming) Responses API body.
            self.note_response_id(view.id);
            return self.absorb_response(view, scan_limit, true);
        }
        if let Some(e) = view.error {
            let msg = match e {
                ErrorView::Object { message } => message
                    .map(|m| match m {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| "upstream error".to_owned()),
                ErrorView::Other(serde_json::Value::Null) => String::new(),
                ErrorView::Other(v) => v.to_string(),
            };
            if !msg.is_empty() || self.error.is_none() {
                self.error = Some(if msg.is_empty() {
                    "upstream error".to_owned()
                } else {
                    msg
                });
            }
        }
        let from_event = content;
        for (pos, c) in view.choices.into_iter().flatten().enumerate() {
            let idx = c.index.unwrap_or(pos);
            if let Some(fr) = c.finish_reason {
                if fr == "content_filter" {
                    self.content_filter = true;
                }
                if idx == 0 || self.finish_reason.is_none() {
                    self.finish_reason = Some(fr.into_owned());
                }
            }
            let mut text: Option<Cow<'_, str>> = c.text;
            if let Some(d) = c.delta {
                if let Some(r) = &d.refusal
                    && !r.is_empty()
                {
                    self.upstream_refusal = true;
                    content = true;
                }
                if d.tool_calls.is_some()
                    || d.reasoning.as_deref().is_some_and(|s| !s.is_empty())
                    || d.reasoning_content
                        .as_deref()
                        .is_some_and(|s| !s.is_empty())
                {
                    content = true;
                }
                if d.content.is_some() {
                    text = d.content;
                }
            }
            if let Some(t) = text
                && !t.is_empty()
            {
                content = true;
                if idx < MAX_CHOICES {
                    if self.texts.len() <= idx {
                        self.texts.resize(idx + 1, String::new());
                    }
                    push_bounded(&mut self.texts[idx], &t, scan_limit);
                }
            }
        }
        if content && !from_event {
            self.output_events += 1;
        }
        content
    }
}

impl Summary {
    /// New usage; a count it leaves out is kept (`/v1/messages` streams send the input
    /// tokens in `message_start`, the output tokens in `message_delta`).
    fn merge_usage(&mut self, u: Usage) {
        let old = self.usage.unwrap_or_default();
        self.usage = Some(Usage {
            prompt_tokens: u.prompt_tokens.or(old.prompt_tokens),
            completion_tokens: u.completion_tokens.or(old.completion_tokens),
        });
    }

    /// Anthropic `stop_reason` (`/v1/messages`) as a finish reason.
    fn messages_stop_reason(&mut self, reason: &str) {
        let fr = match reason {
            "end_turn" | "stop_sequence" | "pause_turn" => "stop",
            "max_tokens" | "model_context_window_exceeded" => "length",
            "tool_use" => "tool_calls",
            "refusal" => {
                self.upstream_refusal = true;
                self.content_filter = true;
                "content_filter"
            }
            other => other,
        };
        self.finish_reason = Some(fr.to_owned());
    }

    /// One Responses API (or `/v1/messages`) stream event by its `type`.
    fn absorb_event(&mut self, typ: &str, view: &ResponseView<'_>, scan_limit: usize) -> bool {
        // Anthropic Messages API (vLLM `/v1/messages`): message_start (usage.input_tokens),
        // content_block_delta (text), message_delta (stop_reason, usage.output_tokens),
        // message_stop (the end; no [DONE]); a non-stream body has type "message".
        match typ {
            "message_stop" => {
                self.done = true;
                return false;
            }
            "message_start" => {
                if let Some(serde_json::Value::Object(m)) = &view.message {
                    if let Some(u) = m.get("usage")
                        && let Ok(u) = serde_json::from_value::<Usage>(u.clone())
                    {
                        self.merge_usage(u);
                    }
                    if self.model.is_none()
                        && let Some(model) = m.get("model").and_then(|v| v.as_str())
                    {
                        self.model = Some(model.chars().take(256).collect());
                    }
                }
                return false;
            }
            "message_delta" => {
                #[derive(Deserialize)]
                struct StopDelta<'b> {
                    #[serde(borrow, default)]
                    stop_reason: Option<Cow<'b, str>>,
                }
                if let Some(d) = view.delta
                    && let Ok(d) = serde_json::from_str::<StopDelta<'_>>(d.get())
                    && let Some(r) = d.stop_reason
                {
                    self.messages_stop_reason(&r);
                }
                return false;
            }
            "message" => {
                if let Some(r) = view.stop_reason
                    && let Ok(r) = serde_json::from_str::<String>(r.get())
                {
                    self.messages_stop_reason(&r);
                }
                let parts: Vec<OutputPart<'_>> = view
                    .content
                    .and_then(|c| serde_json::from_str(c.get()).ok())
                    .unwrap_or_default();
                let mut content = false;
                for part in &parts {
                    if part.typ.as_deref() == Some("text")
                        && let Some(t) = &part.text
                        && !t.is_empty()
                    {
                        content = true;
                        if self.texts.is_empty() {
                            self.texts.push(String::new());
                        }
                        push_bounded(&mut self.texts[0], t, scan_limit);
                    }
                }
                if content {
                    self.output_events += 1;
                }
                return content;
            }
            _ => {}
        }
        if typ == "error" {
            let msg = match &view.message {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "upstream error".to_owned(),
            };
            self.error = Some(msg);
            return false;
        }
        if !typ.ends_with(".delta") && typ != "content_block_delta" {
            return false;
        }
        let Some(raw) = view.delta else {
            return false;
        };
        let text: Option<Cow<'_, str>> = if raw.get().starts_with('"') {
            serde_json::from_str(raw.get()).ok()
        } else {
            // `/v1/messages` content_block_delta: {"type":"text_delta","text":..}
            #[derive(Deserialize)]
            struct Inner<'b> {
                #[serde(borrow, default)]
                text: Option<Cow<'b, str>>,
            }
            serde_json::from_str::<Inner<'_>>(raw.get())
                .ok()
                .and_then(|i| i.text.map(|t| Cow::Owned(t.into_owned())))
        };
        let Some(text) = text else {
            return true;
        };
        if text.is_empty() {
            return false;
        }
        self.output_events += 1;
        if typ == "response.refusal.delta" {
            self.upstream_refusal = true;
        } else if typ == "response.output_text.delta" || typ == "content_block_delta" {
            if self.texts.is_empty() {
                self.texts.push(String::new());
            }
            push_bounded(&mut self.texts[0], &text, scan_limit);
        }
        true
    }

    /// A Responses API response object: status, usage, output text and
    /// refusal parts (`whole`: a non-streaming body, whose text is read here;
    /// a stream's text came from its deltas).
    fn note_response_id(&mut self, id: Option<&serde_json::value::RawValue>) {
        if self.response_id.is_none()
            && let Some(id) = id
            && id.get().len() <= 258
            && let Ok(id) = serde_json::from_str::<String>(id.get())
        {
            self.response_id = Some(id);
        }
    }

    fn absorb_response(&mut self, r: ResponseView<'_>, scan_limit: usize, whole: bool) -> bool {
        if let Some(u) = r.usage {
            self.usage = Some(u);
        }
        if self.model.is_none()
            && let Some(m) = &r.model
        {
            self.model = Some(m.chars().take(256).collect());
        }
        if let Some(e) = r.error {
            self.error = Some(match e {
                ErrorView::Object {
                    message: Some(serde_json::Value::String(m)),
                } => m,
                _ => "upstream error".to_owned(),
            });
        }
        let mut tool_call = false;
        let mut content = false;
        for item in r.output.into_iter().flatten() {
            if item.typ.as_deref() == Some("function_call") {
                tool_call = true;
                content = true;
            }
            for part in item.content.into_iter().flatten() {
                match part.typ.as_deref() {
                    Some("refusal") if part.refusal.as_deref().is_some_and(|r| !r.is_empty()) => {
                        self.upstream_refusal = true;
                        content = true;
                    }
                    Some("output_text") if whole => {
                        if let Some(t) = part.text
                            && !t.is_empty()
                        {
                            content = true;
                            if self.texts.is_empty() {
                                self.texts.push(String::new());
                            }
                            push_bounded(&mut self.texts[0], &t, scan_limit);
                        }
                    }
                    _ => {}
                }
            }
        }
        if whole && content {
            self.output_events += 1;
        }
        if let Some(status) = r.status.as_deref() {
            let reason = r
                .incomplete_details
                .as_ref()
                .and_then(|d| d.reason.as_deref());
            if reason == Some("content_filter") {
                self.content_filter = true;
            }
            if let Some(fr) = responses_finish_reason(status, reason, tool_call) {
                self.finish_reason = Some(fr.to_owned());
            }
        }
        content
    }
}

fn push_bounded(buf: &mut String, s: &str, limit: usize) {
    let room = limit.saturating_sub(buf.len());
    if room == 0 {
        return;
    }
    if s.len() <= room {
        buf.push_str(s);
    } else {
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        buf.push_str(&s[..cut]);
    }
}

/// Inspects a complete JSON response body.
pub fn inspect_body(body: &[u8], scan_limit: usize) -> Summary {
    let mut s = Summary::default();
    match serde_json::from_slice::<ResponseView>(body) {
        Ok(view) => {
            s.absorb(view, scan_limit);
        }
        Err(e) if e.is_data() => {
            let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            if !object {
                s.shape = BodyShape::OtherJson;
            }
        }
        Err(_) => s.shape = BodyShape::NotJson,
    }
    s
}

/// Output of one [`SseRelay::feed`].
#[derive(Debug, Default)]
pub struct Fed {
    /// Bytes to send to the client now (complete events only).
    pub out: Bytes,
    /// An event with content (text, refusal, tool call) passed.
    pub content: bool,
}

/// Incremental SSE relay and accumulator.
#[derive(Debug)]
pub struct SseRelay {
    buf: BytesMut,
    strip_usage_chunk: bool,
    scan_limit: usize,
    pub summary: Summary,
    passthrough: bool,
    scan: Scan,
}

/// Where the scan of the pending (incomplete) event stopped, so that each
/// byte is looked at once however the event is split into chunks. Offsets are
/// relative to the start of the pending event.
#[derive(Debug, Default)]
struct Scan {
    /// Next byte to look at.
    pos: usize,
    /// Start of the current line.
    line_start: usize,
    /// Ranges of the event's `data:` values seen so far.
    data: Vec<(usize, usize)>,
}

impl Scan {
    fn reset(&mut self) {
        self.pos = 0;
        self.line_start = 0;
        self.data.clear();
    }

    fn push_data(&mut self, buf: &[u8], line_end: usize) {
        if let Some(rest) = buf[self.line_start..line_end].strip_prefix(b"data:") {
            let off = usize::from(rest.first() == Some(&b' '));
            self.data.push((self.line_start + 5 + off, line_end));
        }
    }
}

/// Continues the scan of `buf` (which starts with the pending event) and
/// returns the end of the event (after the blank line) once it is complete;
/// its `data:` ranges are then in `st.data`. At `eof`, a lone `\r` ends a
/// line and the end of the buffer ends the event. Linear: a call resumes where
/// the previous one stopped.
fn next_event(buf: &[u8], st: &mut Scan, eof: bool) -> Option<usize> {
    let mut i = st.pos;
    while let Some(off) = memchr::memchr2(b'\n', b'\r', &buf[i..]) {
        i += off;
        let next = if buf[i] == b'\r' {
            match buf.get(i + 1) {
                // A lone \r at the end may be the first half of \r\n.
                None if !eof => {
                    st.pos = i;
                    return None;
                }
                Some(b'\n') => i + 2,
                _ => i + 1,
            }
        } else {
            i + 1
        };
        if i == st.line_start {
            st.pos = next;
            return Some(next);
        }
        st.push_data(buf, i);
        st.line_start = next;
        i = next;
    }
    st.pos = buf.len();
    if eof && !buf.is_empty() {
        if st.line_start < buf.len() {
            st.push_data(buf, buf.len());
        }
        return Some(buf.len());
    }
    None
}

impl SseRelay {
    /// `strip_usage_chunk`: drop the usage-only chunk (`choices: []` with
    /// usage) because the gateway, not the client, asked for it.
    pub fn new(strip_usage_chunk: bool, scan_limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            strip_usage_chunk,
            scan_limit,
            summary: Summary::default(),
            passthrough: false,
            scan: Scan::default(),
        }
    }

    /// Feeds upstream bytes; returns the bytes to send on.
    pub fn feed(&mut self, chunk: &[u8]) -> Fed {
        self.feed_bytes(Bytes::copy_from_slice(chunk))
    }

    /// Feeds upstream bytes without copying them: when nothing is pending
    /// (the usual case, one or more whole events per upstream chunk), the
    /// bytes passed on are a slice of `chunk` itself; only the unfinished
    /// tail of an event is copied into the pending buffer.
    pub fn feed_bytes(&mut self, chunk: Bytes) -> Fed {
        if self.passthrough {
            return Fed {
                out: chunk,
                content: false,
            };
        }
        let data = if self.buf.is_empty() {
            chunk
        } else {
            self.buf.extend_from_slice(&chunk);
            self.buf.split().freeze()
        };
        let mut scan = std::mem::take(&mut self.scan);
        let mut fed = Fed::default();
        let mut pos = 0;
        // Output assembled only if an event is removed; otherwise a prefix of data.
        let mut rebuilt: Option<BytesMut> = None;
        while let Some(len) = next_event(&data[pos..], &mut scan, false) {
            let ev = &data[pos..pos + len];
            let (keep, content) = self.inspect_event(ev, &scan.data);
            scan.reset();
            fed.content |= content;
            match (&mut rebuilt, keep) {
                (None, true) => {}
                (None, false) => {
                    let mut r = BytesMut::with_capacity(pos);
                    r.extend_from_slice(&data[..pos]);
                    rebuilt = Some(r);
                }
                (Some(r), true) => r.extend_from_slice(ev),
                (Some(_), false) => {}
            }
            pos += len;
        }
        self.scan = scan;
        // The unfinished event (its scan state is relative to its start).
        if pos < data.len() {
            self.buf.extend_from_slice(&data[pos..]);
        }
        fed.out = match rebuilt {
            Some(r) => r.freeze(),
            None => data.slice(..pos),
        };
        if self.buf.len() > MAX_PENDING_EVENT_BYTES {
            // Not SSE as we know it: stop parsing and pass everything on.
            self.passthrough = true;
            let rest = self.buf.split().freeze();
            let mut all = BytesMut::from(&fed.out[..]);
            all.extend_from_slice(&rest);
            fed.out = all.freeze();
        }
        fed
    }

    /// Bytes left over at the end of the upstream stream (an unterminated
    /// event), inspected like the others.
    pub fn finish(&mut self) -> Bytes {
        let buf = self.buf.split().freeze();
        if self.passthrough || buf.is_empty() {
            return buf;
        }
        let mut scan = std::mem::take(&mut self.scan);
        if next_event(&buf, &mut scan, true).is_some() {
            let (keep, _) = self.inspect_event(&buf, &scan.data);
            if !keep {
                return Bytes::new();
            }
        }
        buf
    }

    /// Drops a partly received event (the stream is being cut).
    pub fn discard(&mut self) {
        self.buf.clear();
        self.scan.reset();
    }

    /// True if nothing is buffered (the relay is between events).
    pub fn at_boundary(&self) -> bool {
        self.buf.is_empty()
    }

    /// Returns (keep, has_content).
    fn inspect_event(&mut self, ev: &[u8], data: &[(usize, usize)]) -> (bool, bool) {
        if data.is_empty() {
            return (true, false);
        }
        self.summary.data_events += 1;
        let joined: Cow<'_, [u8]> = if data.len() == 1 {
            Cow::Borrowed(&ev[data[0].0..data[0].1])
        } else {
            let mut v = Vec::new();
            for (n, (a, b)) in data.iter().enumerate() {
                if n > 0 {
                    v.push(b'\n');
                }
                v.extend_from_slice(&ev[*a..*b]);
            }
            Cow::Owned(v)
        };
        let payload = joined.as_ref();
        if payload.starts_with(b"[DONE]") {
            self.summary.done = true;
            return (true, false);
        }
        let Ok(view) = serde_json::from_slice::<ResponseView>(payload) else {
            return (true, false);
        };
        let usage_only = matches!(&view.choices, Some(c) if c.is_empty()) && view.usage.is_some();
        let content = self.summary.absorb(view, self.scan_limit);
        (!(usage_only && self.strip_usage_chunk), content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"prompt_token_ids\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"logprobs\":null,\"finish_reason\":null,\"token_ids\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null,\"token_ids\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":32,\"total_tokens\":35,\"completion_tokens\":3}}\n\n",
        "data: [DONE]\n\n"
    );

    fn run(input: &str, strip: bool, split: usize) -> (String, SseRelay) {
        let mut r = SseRelay::new(strip, 1024);
        let mut out = Vec::new();
        for piece in input.as_bytes().chunks(split) {
            out.extend_from_slice(&r.feed(piece).out);
        }
        out.extend_from_slice(&r.finish());
        (String::from_utf8(out).unwrap(), r)
    }

    #[test]
    fn passes_bytes_through_and_accumulates() {
        for split in [1, 2, 3, 7, 64, 10_000] {
            let (out, r) = run(CHAT, false, split);
            assert_eq!(out, CHAT, "split {split}");
            let s = &r.summary;
            assert_eq!(s.texts, vec!["Hi!".to_owned()]);
            assert_eq!(s.finish_reason.as_deref(), Some("length"));
            assert_eq!(
                s.usage,
                Some(Usage {
                    prompt_tokens: Some(32),
                    completion_tokens: Some(3)
                })
            );
            assert!(s.done);
            assert!(s.error.is_none());
        }
    }

    #[test]
    fn whole_events_are_passed_on_without_a_copy() {
        let mut r = SseRelay::new(true, 1024);
        let events: Vec<&str> = CHAT.split_inclusive("\n\n").collect();
        // One event per chunk, as vLLM writes them: the bytes sent on are the chunk's own.
        let chunk = Bytes::from(events[1].to_owned());
        let fed = r.feed_bytes(chunk.clone());
        assert_eq!(fed.out, chunk);
        assert_eq!(fed.out.as_ptr(), chunk.as_ptr(), "same buffer, not a copy");
        // Two events and half of a third: the two whole ones go on (a slice), the rest waits.
        let two = format!("{}{}{}", events[1], events[2], &events[0][..10]);
        let chunk = Bytes::from(two.clone());
        let fed = r.feed_bytes(chunk.clone());
        assert_eq!(fed.out.len(), events[1].len() + events[2].len());
        assert_eq!(fed.out.as_ptr(), chunk.as_ptr());
        assert!(!r.at_boundary());
        let fed = r.feed_bytes(Bytes::from(events[0][10..].to_owned()));
        assert_eq!(&fed.out[..], events[0].as_bytes());
        // The usage chunk is removed: that output is rebuilt, the others are still slices.
        let fed = r.feed_bytes(Bytes::from(events[3].to_owned()));
        assert!(fed.out.is_empty());
        assert!(r.at_boundary());
    }

    #[test]
    fn strips_only_the_usage_chunk() {
        for split in [1, 5, 10_000] {
            let (out, r) = run(CHAT, true, split);
            assert!(!out.contains("\"usage\""), "{out}");
            assert!(out.ends_with("data: [DONE]\n\n"));
            assert_eq!(out.matches("data: ").count(), 4);
            assert_eq!(r.summary.usage.unwrap().completion_tokens, Some(3));
        }
    }

    #[test]
    fn crlf_and_cr_line_ends_and_multiline_data() {
        let table: &[(&str, usize, Option<&str>)] = &[
            (
                "data: {\"choices\":[{\"index\":0,\"text\":\"a\",\"finish_reason\":\"stop\"}]}\r\n\r\ndata: [DONE]\r\n\r\n",
                2,
                Some("stop"),
            ),
            (
                "data: {\"choices\":[{\"index\":0,\"text\":\"a\",\"finish_reason\":\"stop\"}]}\r\rdata: [DONE]\r\r",
                2,
                Some("stop"),
            ),
            (
                ": comment\n\ndata: {\"choices\":\ndata: [{\"index\":0,\"text\":\"a\",\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n",
                3,
                Some("length"),
            ),
        ];
        for (input, _events, fr) in table {
            for split in [1, 2, 1000] {
                let (out, r) = run(input, true, split);
                assert_eq!(&out, input);
                assert_eq!(r.summary.finish_reason.as_deref(), *fr, "{input:?}");
                assert_eq!(r.summary.texts, vec!["a".to_owned()]);
                assert!(r.summary.done);
            }
        }
    }

    #[test]
    fn content_flag_ignores_empty_role_chunk() {
        let mut r = SseRelay::new(false, 100);
        let first = CHAT.split("\n\n").next().unwrap().to_owned() + "\n\n";
        let fed = r.feed(first.as_bytes());
        assert!(!fed.content);
        assert_eq!(&fed.out[..], first.as_bytes());
        let fed = r.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n");
        assert!(fed.out.is_empty(), "incomplete event held back");
        let fed = r.feed(b"\n");
        assert!(fed.content);
    }

    #[test]
    fn error_event_and_refusal_signals() {
        let input = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"no\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"b\"},\"finish_reason\":\"content_filter\"}]}\n\n",
            "data: {\"error\":{\"message\":\"boom\",\"type\":\"InternalServerError\",\"param\":null,\"code\":500}}\n\n",
            "data: [DONE]\n\n"
        );
        let (out, r) = run(input, true, 3);
        assert_eq!(out, input);
        assert!(r.summary.upstream_refusal);
        assert!(r.summary.content_filter);
        assert_eq!(r.summary.error.as_deref(), Some("boom"));
        assert_eq!(r.summary.texts, vec![String::new(), "b".to_owned()]);
    }

    #[test]
    fn text_is_bounded_at_char_boundary() {
        let mut r = SseRelay::new(false, 5);
        for _ in 0..3 {
            r.feed("data: {\"choices\":[{\"index\":0,\"text\":\"éé\"}]}\n\n".as_bytes());
        }
        assert_eq!(
            r.summary.texts[0],
            "ééé".chars().take(2).collect::<String>()
        );
    }

    /// A Responses API stream as vLLM writes it (`event:` + `data:`, no `[DONE]`).
    const RESPONSES: &str = concat!(
        "event: response.created\ndata: {\"response\":{\"id\":\"resp_1\",\"model\":\"m\",\"object\":\"response\",\"output\":[],\"status\":\"in_progress\",\"usage\":null},\"sequence_number\":0,\"type\":\"response.created\"}\n\n",
        "event: response.output_text.delta\ndata: {\"content_index\":0,\"delta\":\"I can't\",\"item_id\":\"msg_1\",\"logprobs\":[],\"output_index\":0,\"sequence_number\":1,\"type\":\"response.output_text.delta\"}\n\n",
        "event: response.output_text.delta\ndata: {\"content_index\":0,\"delta\":\" help with that.\",\"item_id\":\"msg_1\",\"logprobs\":[],\"output_index\":0,\"sequence_number\":2,\"type\":\"response.output_text.delta\"}\n\n",
        "event: response.output_text.done\ndata: {\"content_index\":0,\"item_id\":\"msg_1\",\"logprobs\":[],\"output_index\":0,\"sequence_number\":3,\"text\":\"I can't help with that.\",\"type\":\"response.output_text.done\"}\n\n",
        "event: response.completed\ndata: {\"response\":{\"id\":\"resp_1\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"model\":\"m\",\"object\":\"response\",\"output\":[{\"id\":\"msg_1\",\"content\":[{\"annotations\":[],\"text\":\"I can't help with that.\",\"type\":\"output_text\",\"logprobs\":null}],\"role\":\"assistant\",\"status\":\"completed\",\"type\":\"message\"}],\"status\":\"incomplete\",\"usage\":{\"input_tokens\":9,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":2,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":11}},\"sequence_number\":4,\"type\":\"response.completed\"}\n\n",
    );

    #[test]
    fn responses_stream_is_read() {
        for split in [1, 7, 10_000] {
            let (out, r) = run(RESPONSES, true, split);
            assert_eq!(out, RESPONSES, "relayed untouched (split {split})");
            let s = &r.summary;
            assert!(s.done, "response.completed ends the stream");
            assert_eq!(s.texts, vec!["I can't help with that.".to_owned()]);
            assert_eq!(s.finish_reason.as_deref(), Some("length"));
            assert_eq!(
                s.usage,
                Some(Usage {
                    prompt_tokens: Some(9),
                    completion_tokens: Some(2)
                })
            );
            assert_eq!(s.output_events, 2);
            assert_eq!(s.model.as_deref(), Some("m"));
            assert_eq!(s.next_sequence, 5);
            assert!(s.error.is_none());
            assert_eq!(s.response_id.as_deref(), Some("resp_1"));
        }
    }

    #[test]
    fn responses_first_output_delta_is_content() {
        let mut r = SseRelay::new(false, 100);
        let mut parts = RESPONSES.split_inclusive("\n\n");
        let created = parts.next().unwrap();
        assert!(!r.feed(created.as_bytes()).content);
        assert!(r.feed(parts.next().unwrap().as_bytes()).content);
    }

    #[test]
    fn responses_refusal_error_and_failed() {
        let refusal = "event: response.refusal.delta\ndata: {\"delta\":\"no\",\"sequence_number\":5,\"type\":\"response.refusal.delta\"}\n\n";
        let (_, r) = run(refusal, false, 4);
        assert!(r.summary.upstream_refusal);
        let err = "event: error\ndata: {\"code\":\"500\",\"message\":\"boom\",\"param\":null,\"sequence_number\":3,\"type\":\"error\"}\n\n";
        let (_, r) = run(err, false, 4);
        assert_eq!(r.summary.error.as_deref(), Some("boom"));
        let failed = "event: response.failed\ndata: {\"response\":{\"object\":\"response\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"x\"},\"output\":[]},\"type\":\"response.failed\"}\n\n";
        let (_, r) = run(failed, false, 4);
        assert!(r.summary.done);
        assert_eq!(r.summary.finish_reason.as_deref(), Some("error"));
        assert_eq!(r.summary.error.as_deref(), Some("x"));
    }

    #[test]
    fn responses_bodies_are_read() {
        let body = br#"{"id":"resp_1","created_at":1,"incomplete_details":null,"model":"m","object":"response","output":[{"id":"msg_1","content":[{"annotations":[],"text":"Hello.","type":"output_text","logprobs":null},{"type":"refusal","refusal":"I won't."}],"role":"assistant","status":"completed","type":"message"}],"status":"completed","usage":{"input_tokens":4,"output_tokens":3,"total_tokens":7}}"#;
        let s = inspect_body(body, 4096);
        assert_eq!(s.texts, vec!["Hello.".to_owned()]);
        assert!(s.upstream_refusal);
        assert_eq!(s.finish_reason.as_deref(), Some("stop"));
        assert_eq!(s.usage.unwrap().completion_tokens, Some(3));
        assert_eq!(s.response_id.as_deref(), Some("resp_1"));
        // A chat completion's id is not a response id.
        let chat = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[]}"#;
        assert_eq!(inspect_body(chat, 10).response_id, None);
        let tools = br#"{"object":"response","output":[{"type":"function_call","name":"f","arguments":"{}"}],"status":"completed"}"#;
        assert_eq!(
            inspect_body(tools, 10).finish_reason.as_deref(),
            Some("tool_calls")
        );
        for (status, reason, want) in [
            ("completed", None, Some("stop")),
            ("incomplete", Some("max_output_tokens"), Some("length")),
            ("incomplete", Some("content_filter"), Some("content_filter")),
            ("failed", None, Some("error")),
            ("cancelled", None, Some("abort")),
            ("in_progress", None, None),
        ] {
            assert_eq!(responses_finish_reason(status, reason, false), want);
        }
    }

    #[test]
    fn messages_api_stream_and_body() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":11,\"output_tokens\":0}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let (out, r) = run(stream, false, 5);
        assert_eq!(out, stream);
        let s = &r.summary;
        assert!(s.done);
        assert_eq!(s.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            s.usage,
            Some(Usage {
                prompt_tokens: Some(11),
                completion_tokens: Some(5)
            })
        );
        assert_eq!(s.texts, vec!["Hello".to_owned()]);
        assert_eq!(s.model.as_deref(), Some("m"));
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"I can't help with that."}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":7}}"#;
        let s = inspect_body(body, 100);
        assert_eq!(s.finish_reason.as_deref(), Some("stop"));
        assert_eq!(s.texts, vec!["I can't help with that.".to_owned()]);
        assert_eq!(s.usage.unwrap().completion_tokens, Some(7));
    }

    #[test]
    fn chat_deltas_are_counted() {
        let (_, r) = run(CHAT, false, 5);
        // "" role chunk carries nothing; "Hi" and "!" do.
        assert_eq!(r.summary.output_events, 2);
        assert_eq!(r.summary.model.as_deref(), Some("m"));
    }

    #[test]
    fn inspect_non_stream_bodies() {
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"I can't help with that.","refusal":null,"tool_calls":[]},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"total_tokens":12,"completion_tokens":7}}"#;
        let s = inspect_body(body, 4096);
        assert_eq!(s.finish_reason.as_deref(), Some("stop"));
        assert_eq!(s.texts, vec!["I can't help with that.".to_owned()]);
        assert_eq!(s.usage.unwrap().prompt_tokens, Some(5));
        assert!(!s.upstream_refusal);
        let emb = br#"{"object":"list","data":[{"embedding":[0.1,0.2],"index":0}],"usage":{"prompt_tokens":3,"total_tokens":3}}"#;
        let s = inspect_body(emb, 4096);
        assert_eq!(s.usage.unwrap().prompt_tokens, Some(3));
        assert_eq!(s.usage.unwrap().completion_tokens, None);
        let s = inspect_body(b"not json", 10);
        assert!(s.usage.is_none());
        assert_eq!(s.shape, BodyShape::NotJson);
        assert_eq!(inspect_body(b"[1]", 10).shape, BodyShape::OtherJson);
        assert_eq!(inspect_body(br#"{"x":1}"#, 10).shape, BodyShape::Object);
        assert_eq!(
            inspect_body(br#"{"choices":5}"#, 10).shape,
            BodyShape::Object,
            "an object of unexpected types is still an object"
        );
    }
}
