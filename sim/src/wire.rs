//! vLLM's OpenAI-compatible wire format, written by hand for speed and byte-exactness.
//!
//! Chat stream chunks follow `model_dump_json(exclude_unset=True)` (only set fields),
//! completion stream chunks follow `exclude_unset=False` (every field, `"usage":null`),
//! non-stream responses follow `model_dump()` (all null fields present). Field order is
//! the pydantic declaration order as seen on the wire.

use std::io::Write as _;

/// Which OpenAI endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// Append `s` as a JSON string literal.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Token counts of a usage object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt: u32,
    /// Completion tokens.
    pub completion: u32,
}

impl Usage {
    /// `{"prompt_tokens":P,"total_tokens":T,"completion_tokens":C}` (stream form).
    pub fn write_stream(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{}}}",
            self.prompt,
            u64::from(self.prompt) + u64::from(self.completion),
            self.completion
        );
    }

    /// Non-stream form, with `"prompt_tokens_details":null`.
    pub fn write_full(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{},\"prompt_tokens_details\":null}}",
            self.prompt,
            u64::from(self.prompt) + u64::from(self.completion),
            self.completion
        );
    }
}

/// What a chunk or a final choice carries besides its text, where vLLM writes `null` by
/// default (`serving_chat.py` / `protocol.py`): `logprobs`, `stop_reason`, tool calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    /// The rendered chat `logprobs` object (`{"content":[...]}`), else `null`.
    pub logprobs: Option<&'a str>,
    /// The stop string that ended the choice, else `null`.
    pub stop_reason: Option<&'a str>,
    /// The choice is a tool call `(id, function name)`: its text is the arguments, sent as
    /// `tool_calls` deltas (`DeltaToolCall`: `id`, `type`, `index`, `function`; id, type
    /// and name only on the first), as vLLM does for `tool_choice` `required` / named.
    pub tool: Option<(&'a str, &'a str)>,
    /// First chunk of this choice.
    pub first: bool,
}

/// Per-request chunk writer: holds the pre-rendered `{"id":…,"choices":[` prefix.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    kind: Kind,
    prefix: Vec<u8>,
}

impl ChunkWriter {
    /// Writer for one response.
    #[must_use]
    pub fn new(kind: Kind, id: &str, created: u64, model: &str) -> Self {
        let mut prefix = Vec::with_capacity(128);
        prefix.extend_from_slice(b"{\"id\":");
        json_str(&mut prefix, id);
        let object = match kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let _ = write!(
            prefix,
            ",\"object\":\"{object}\",\"created\":{created},\"model\":"
        );
        json_str(&mut prefix, model);
        prefix.extend_from_slice(b",\"choices\":[");
        Self { kind, prefix }
    }

    /// The chat role chunk of one choice (not used for completions).
    pub fn role(&self, out: &mut Vec<u8>, index: u32, usage: Option<Usage>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.prefix);
        let _ = write!(
            out,
            "{{\"index\":{index},\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]"
        );
        if let Some(u) = usage {
            out.extend_from_slice(b",\"usage\":");
            u.write_stream(out);
        }
        out.extend_from_slice(b",\"prompt_token_ids\":null}\n\n");
    }

    /// A content chunk; `finish` set makes it the finish chunk (last text + reason).
    pub fn content(
        &self,
        out: &mut Vec<u8>,
        index: u32,
        text: &str,
        finish: Option<&str>,
        usage: Option<Usage>,
    ) {
        self.content_ex(out, index, text, finish, usage, Extra::default());
    }

    /// [`Self::content`] with logprobs, a stop string or a tool call.
    pub fn content_ex(
        &self,
        out: &mut Vec<u8>,
        index: u32,
        text: &str,
        finish: Option<&str>,
        usage: Option<Usage>,
        extra: Extra<'_>,
    ) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.prefix);
        match self.kind {
            Kind::Chat => {
                let _ = write!(out, "{{\"index\":{index},\"delta\":{{");
                match extra.tool {
                    Some((id, name)) => {
                        out.extend_from_slice(b"\"tool_calls\":[{");
                        if extra.first {
                            out.extend_from_slice(b"\"id\":");
                            json_str(out, id);
                            out.extend_from_slice(
                                b",\"type\":\"function\",\"index\":0,\"function\":{\"name\":",
                            );
                            json_str(out, name);
                            out.extend_from_slice(b",\"arguments\":");
                        } else {
                            out.extend_from_slice(b"\"index\":0,\"function\":{\"arguments\":");
                        }
                        json_str(out, text);
                        out.extend_from_slice(b"}}]");
                    }
                    None => {
                        out.extend_from_slice(b"\"content\":");
                        json_str(out, text);
                    }
                }
                out.extend_from_slice(b"},\"logprobs\":");
                out.extend_from_slice(extra.logprobs.unwrap_or("null").as_bytes());
                out.extend_from_slice(b",\"finish_reason\":");
                match finish {
                    Some(f) => {
                        json_str(out, f);
                        out.extend_from_slice(b",\"stop_reason\":");
                        match extra.stop_reason {
                            Some(r) => json_str(out, r),
                            None => out.extend_from_slice(b"null"),
                        }
                    }
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"token_ids\":null}]");
                if let Some(u) = usage {
                    out.extend_from_slice(b",\"usage\":");
                    u.write_stream(out);
                }
                out.extend_from_slice(b"}\n\n");
            }
            Kind::Completion => {
                let _ = write!(out, "{{\"index\":{index},\"text\":");
                json_str(out, text);
                out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
                match finish {
                    Some(f) => json_str(out, f),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"stop_reason\":");
                match extra.stop_reason.filter(|_| finish.is_some()) {
                    Some(r) => json_str(out, r),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(
                    b",\"prompt_token_ids\":null,\"token_ids\":null}],\"usage\":",
                );
                match usage {
                    Some(u) => u.write_stream(out),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b"}\n\n");
            }
        }
    }

    /// The usage-only chunk (`choices: []`).
    pub fn usage(&self, out: &mut Vec<u8>, usage: Usage) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"],\"usage\":");
        usage.write_stream(out);
        out.extend_from_slice(b"}\n\n");
    }
}

/// `data: [DONE]`.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// The in-stream error event vLLM sends for an engine error after headers went out.
pub const MIDSTREAM_ERROR: &[u8] =
    b"data: {\"error\":{\"message\":\"Internal server error\",\"type\":\"InternalServerError\",\"param\":null,\"code\":500}}\n\n";

/// One finished choice of a non-stream response.
#[derive(Debug, Clone)]
pub struct FinalChoice {
    /// Choice index.
    pub index: u32,
    /// Full text.
    pub text: String,
    /// Finish reason.
    pub finish_reason: &'static str,
    /// Rendered chat `logprobs` object, else `null`.
    pub logprobs: Option<String>,
    /// The stop string that ended the choice.
    pub stop_reason: Option<String>,
    /// A tool call `(id, function name)` whose arguments are `text`.
    pub tool: Option<(String, String)>,
}

/// A non-stream `chat.completion` or `text_completion` body.
#[must_use]
pub fn full_response(
    kind: Kind,
    id: &str,
    created: u64,
    model: &str,
    choices: &[FinalChoice],
    usage: Usage,
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(512 + choices.iter().map(|c| c.text.len() + 256).sum::<usize>());
    out.extend_from_slice(b"{\"id\":");
    json_str(&mut out, id);
    let object = match kind {
        Kind::Chat => "chat.completion",
        Kind::Completion => "text_completion",
    };
    let _ = write!(
        out,
        ",\"object\":\"{object}\",\"created\":{created},\"model\":"
    );
    json_str(&mut out, model);
    out.extend_from_slice(b",\"choices\":[");
    for (i, c) in choices.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match kind {
            Kind::Chat => {
                let _ = write!(
                    out,
                    "{{\"index\":{},\"message\":{{\"role\":\"assistant\",\"content\":",
                    c.index
                );
                json_str(&mut out, if c.tool.is_some() { "" } else { &c.text });
                out.extend_from_slice(
                    b",\"refusal\":null,\"annotations\":null,\"audio\":null,\"function_call\":null,\"tool_calls\":[",
                );
                if let Some((id, name)) = &c.tool {
                    out.extend_from_slice(b"{\"id\":");
                    json_str(&mut out, id);
                    out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                    json_str(&mut out, name);
                    out.extend_from_slice(b",\"arguments\":");
                    json_str(&mut out, &c.text);
                    out.extend_from_slice(b"}}");
                }
                out.extend_from_slice(b"],\"reasoning\":null},\"logprobs\":");
                out.extend_from_slice(c.logprobs.as_deref().unwrap_or("null").as_bytes());
                out.extend_from_slice(b",\"finish_reason\":");
                json_str(&mut out, c.finish_reason);
                out.extend_from_slice(b",\"stop_reason\":");
                match &c.stop_reason {
                    Some(r) => json_str(&mut out, r),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"token_ids\":null}");
            }
            Kind::Completion => {
                let _ = write!(out, "{{\"index\":{},\"text\":", c.index);
                json_str(&mut out, &c.text);
                out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
                json_str(&mut out, c.finish_reason);
                out.extend_from_slice(b",\"stop_reason\":");
                match &c.stop_reason {
                    Some(r) => json_str(&mut out, r),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(
                    b",\"token_ids\":null,\"prompt_logprobs\":null,\"prompt_token_ids\":null}",
                );
            }
        }
    }
    out.extend_from_slice(b"],\"service_tier\":null,\"system_fingerprint\":null,\"usage\":");
    usage.write_full(&mut out);
    match kind {
        Kind::Chat => out.extend_from_slice(
            b",\"prompt_logprobs\":null,\"prompt_token_ids\":null,\"kv_transfer_params\":null}",
        ),
        Kind::Completion => out.extend_from_slice(b",\"kv_transfer_params\":null}"),
    }
    out
}

/// A chat `logprobs` object for `tokens` (`ChatCompletionLogProbs`: `content`, a list of
/// `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`), with `top`
/// alternatives each (the chosen token first). Log-probabilities are deterministic
/// functions of `h` and the token, rounded like a float32 printed by Python.
#[must_use]
pub fn chat_logprobs<S: AsRef<str>>(tokens: &[S], top: u32, h: u64) -> String {
    fn one(out: &mut Vec<u8>, token: &str, lp: f64) {
        out.extend_from_slice(b"{\"token\":");
        json_str(out, token);
        let _ = write!(out, ",\"logprob\":{lp:?},\"bytes\":");
        let _ = serde_json::to_writer(&mut *out, token.as_bytes());
    }
    let mut out = Vec::with_capacity(64 + tokens.len() * 96);
    out.extend_from_slice(b"{\"content\":[");
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let t = t.as_ref();
        let th = crate::text::hash_bytes(h, t.as_bytes());
        let lp = -((crate::text::unit_f64(th) * 2.0 * 1e4).round() / 1e4);
        one(&mut out, t, lp);
        out.extend_from_slice(b",\"top_logprobs\":[");
        for k in 0..top {
            if k > 0 {
                out.push(b',');
            }
            if k == 0 {
                one(&mut out, t, lp);
            } else {
                let alt = crate::text::alt_token(th, k);
                let alp = lp - f64::from(k);
                one(&mut out, alt, alp);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
    String::from_utf8(out).unwrap_or_default()
}

/// vLLM's nested error body (>= v0.10.1): `code` is the integer HTTP status.
#[must_use]
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + message.len());
    out.extend_from_slice(b"{\"error\":{\"message\":");
    json_str(&mut out, message);
    out.extend_from_slice(b",\"type\":");
    json_str(&mut out, kind);
    out.extend_from_slice(b",\"param\":");
    match param {
        Some(p) => json_str(&mut out, p),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, ",\"code\":{code}}}}}");
    out
}

/// vLLM's flat error body (< v0.10.1).
#[must_use]
pub fn flat_error_body(message: &str, kind: &str, code: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + message.len());
    out.extend_from_slice(b"{\"object\":\"error\",\"message\":");
    json_str(&mut out, message);
    out.extend_from_slice(b",\"type\":");
    json_str(&mut out, kind);
    let _ = write!(out, ",\"param\":null,\"code\":{code}}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[u8]) -> &str {
        std::str::from_utf8(v).unwrap()
    }

    #[test]
    fn chat_chunks_match_reference_capture() {
        let w = ChunkWriter::new(Kind::Chat, "chatcmpl-1", 1, "m");
        let mut out = Vec::new();
        w.role(&mut out, 0, None);
        w.content(&mut out, 0, "Hi", None, None);
        w.content(&mut out, 0, "!", Some("length"), None);
        w.usage(
            &mut out,
            Usage {
                prompt: 32,
                completion: 3,
            },
        );
        out.extend_from_slice(DONE);
        let want = concat!(
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"prompt_token_ids\":null}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"logprobs\":null,\"finish_reason\":null,\"token_ids\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null,\"token_ids\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":32,\"total_tokens\":35,\"completion_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(s(&out), want);
    }

    #[test]
    fn completion_chunks_match_reference_capture() {
        let w = ChunkWriter::new(Kind::Completion, "cmpl-1", 1, "m");
        let mut out = Vec::new();
        w.content(&mut out, 0, " Hello", None, None);
        w.usage(
            &mut out,
            Usage {
                prompt: 5,
                completion: 2,
            },
        );
        let want = concat!(
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"text\":\" Hello\",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null,\"prompt_token_ids\":null,\"token_ids\":null}],\"usage\":null}\n\n",
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"total_tokens\":7,\"completion_tokens\":2}}\n\n",
        );
        assert_eq!(s(&out), want);
    }

    #[test]
    fn full_chat_matches_reference_shape() {
        let body = full_response(
            Kind::Chat,
            "chatcmpl-9",
            1786650747,
            "qwen",
            &[FinalChoice {
                index: 0,
                text: "391".into(),
                finish_reason: "stop",
                logprobs: None,
                stop_reason: None,
                tool: None,
            }],
            Usage {
                prompt: 163,
                completion: 58,
            },
        );
        let want = "{\"id\":\"chatcmpl-9\",\"object\":\"chat.completion\",\"created\":1786650747,\"model\":\"qwen\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"391\",\"refusal\":null,\"annotations\":null,\"audio\":null,\"function_call\":null,\"tool_calls\":[],\"reasoning\":null},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null,\"token_ids\":null}],\"service_tier\":null,\"system_fingerprint\":null,\"usage\":{\"prompt_tokens\":163,\"total_tokens\":221,\"completion_tokens\":58,\"prompt_tokens_details\":null},\"prompt_logprobs\":null,\"prompt_token_ids\":null,\"kv_transfer_params\":null}";
        assert_eq!(s(&body), want);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 221);
    }

    #[test]
    fn tool_call_logprobs_and_stop_shapes() {
        let w = ChunkWriter::new(Kind::Chat, "c", 1, "m");
        let mut out = Vec::new();
        let tool = Some(("chatcmpl-tool-1", "get_weather"));
        w.content_ex(
            &mut out,
            0,
            "{\"ci",
            None,
            None,
            Extra {
                tool,
                first: true,
                ..Extra::default()
            },
        );
        w.content_ex(
            &mut out,
            0,
            "ty\":1}",
            Some("tool_calls"),
            None,
            Extra {
                tool,
                ..Extra::default()
            },
        );
        let text = s(&out);
        assert!(text.contains(r#""delta":{"tool_calls":[{"id":"chatcmpl-tool-1","type":"function","index":0,"function":{"name":"get_weather","arguments":"{\"ci"}}]}"#), "{text}");
        assert!(text.contains(r#""delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":1}"}}]},"logprobs":null,"finish_reason":"tool_calls","stop_reason":null"#), "{text}");
        let lp = chat_logprobs(&["Hi"], 2, 5);
        let v: serde_json::Value = serde_json::from_str(&lp).unwrap();
        assert_eq!(v["content"][0]["token"], "Hi");
        assert_eq!(v["content"][0]["bytes"], serde_json::json!([72, 105]));
        assert_eq!(v["content"][0]["top_logprobs"].as_array().unwrap().len(), 2);
        let mut out = Vec::new();
        w.content_ex(
            &mut out,
            0,
            "a",
            Some("stop"),
            None,
            Extra {
                stop_reason: Some("."),
                logprobs: Some(&lp),
                ..Extra::default()
            },
        );
        assert!(s(&out).contains(r#""finish_reason":"stop","stop_reason":".""#));
        assert!(s(&out).contains(r#""logprobs":{"content":[{"token":"Hi""#));
    }

    #[test]
    fn errors() {
        assert_eq!(
            s(&error_body(
                "The model `x` does not exist.",
                "NotFoundError",
                Some("model"),
                404
            )),
            "{\"error\":{\"message\":\"The model `x` does not exist.\",\"type\":\"NotFoundError\",\"param\":\"model\",\"code\":404}}"
        );
        assert_eq!(
            s(&flat_error_body("boom", "InternalServerError", 500)),
            "{\"object\":\"error\",\"message\":\"boom\",\"type\":\"InternalServerError\",\"param\":null,\"code\":500}"
        );
        let v: serde_json::Value = serde_json::from_slice(&MIDSTREAM_ERROR[6..]).unwrap();
        assert_eq!(v["error"]["code"], 500);
    }

    #[test]
    fn escaping_in_text_and_model() {
        let w = ChunkWriter::new(Kind::Chat, "c", 1, "a\"b");
        let mut out = Vec::new();
        w.content(
            &mut out,
            2,
            "line\n\"q\"",
            None,
            Some(Usage {
                prompt: 1,
                completion: 1,
            }),
        );
        let v: serde_json::Value = serde_json::from_slice(&out[6..out.len() - 2]).unwrap();
        assert_eq!(v["model"], "a\"b");
        assert_eq!(v["choices"][0]["delta"]["content"], "line\n\"q\"");
        assert_eq!(v["choices"][0]["index"], 2);
        assert_eq!(v["usage"]["total_tokens"], 2);
    }
}
