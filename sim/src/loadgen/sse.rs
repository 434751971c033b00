//! Minimal SSE reader for OpenAI-compatible streams: splits events, reads only what the
//! statistics need (content presence, finish reason, usage, error events).

use serde::Deserialize;
use serde::de::IgnoredAny;

/// What one `data:` payload told us.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ChunkInfo {
    /// Text carried by the chunk (chat `delta.content` or completion `text`).
    pub text: String,
    /// A `finish_reason` seen in the chunk.
    pub finish_reason: Option<String>,
    /// Usage totals, when the chunk carries them.
    pub usage: Option<(u64, u64)>,
    /// The payload is an error event.
    pub error: bool,
    /// The payload is `[DONE]`.
    pub done: bool,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    message: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// Read a JSON payload (a stream chunk or a whole non-stream response).
#[must_use]
pub fn parse_payload(data: &[u8]) -> ChunkInfo {
    if data.starts_with(b"[DONE]") {
        return ChunkInfo {
            done: true,
            ..ChunkInfo::default()
        };
    }
    let Ok(p) = serde_json::from_slice::<Payload>(data) else {
        return ChunkInfo {
            error: true,
            ..ChunkInfo::default()
        };
    };
    let mut info = ChunkInfo {
        error: p.error.is_some(),
        ..ChunkInfo::default()
    };
    for c in p.choices {
        if let Some(t) = c
            .delta
            .and_then(|d| d.content)
            .or(c.text)
            .or(c.message.and_then(|m| m.content))
        {
            info.text.push_str(&t);
        }
        if c.finish_reason.is_some() {
            info.finish_reason = c.finish_reason;
        }
    }
    info.usage = p.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
    info
}

/// Incremental SSE splitter: feed bytes, get complete `data:` payloads.
#[derive(Debug, Default)]
pub struct SseSplitter {
    buf: Vec<u8>,
}

impl SseSplitter {
    /// Add bytes; call `f` with each complete event's data (lines joined by `\n`).
    pub fn feed(&mut self, bytes: &[u8], mut f: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = find_event_end(&self.buf[start..]) {
            let (ev_len, sep_len) = end;
            let ev = &self.buf[start..start + ev_len];
            let mut data: Vec<u8> = Vec::new();
            let mut first = true;
            for line in ev.split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Some(d) = line.strip_prefix(b"data:") {
                    let d = d.strip_prefix(b" ").unwrap_or(d);
                    if !first {
                        data.push(b'\n');
                    }
                    data.extend_from_slice(d);
                    first = false;
                }
            }
            if !first {
                f(&data);
            }
            start += ev_len + sep_len;
        }
        self.buf.drain(..start);
    }
}

/// Position of the first blank-line separator: (event length, separator length).
fn find_event_end(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'\n' && b[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if b[i] == b'\r' && i + 3 < b.len() && &b[i..i + 4] == b"\r\n\r\n" {
            return Some((i, 4));
        }
        i += 1;
    }
    None
}

/// Does the text look like a model refusal?
#[must_use]
pub fn looks_like_refusal(text: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "i'm sorry",
        "i am sorry",
        "i can't help",
        "i can't assist",
        "i can't provide",
        "i cannot",
        "i'm unable",
        "i am unable",
        "i apologize",
        "sorry, i can't",
        "i won't",
    ];
    let head: String = text
        .chars()
        .take(200)
        .collect::<String>()
        .to_lowercase()
        .replace('\u{2019}', "'");
    PATTERNS.iter().any(|p| head.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_handles_partial_and_crlf() {
        let mut s = SseSplitter::default();
        let mut got = Vec::new();
        s.feed(b"data: {\"a\":1}\n\nda", |d| {
            got.push(String::from_utf8(d.to_vec()).unwrap())
        });
        s.feed(b"ta: x\r\n\r\n: comment\n\ndata: [DONE]\n\n", |d| {
            got.push(String::from_utf8(d.to_vec()).unwrap());
        });
        assert_eq!(got, vec!["{\"a\":1}", "x", "[DONE]"]);
    }

    #[test]
    fn payloads() {
        let c = parse_payload(
            br#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
        );
        assert_eq!(c.text, "Hi");
        assert!(!c.error && !c.done && c.finish_reason.is_none());
        let c =
            parse_payload(br#"{"choices":[{"text":" x","finish_reason":"length"}],"usage":null}"#);
        assert_eq!(
            (c.text.as_str(), c.finish_reason.as_deref()),
            (" x", Some("length"))
        );
        let c = parse_payload(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}}"#,
        );
        assert_eq!(c.usage, Some((3, 2)));
        assert!(parse_payload(br#"{"error":{"message":"x","code":500}}"#).error);
        assert!(parse_payload(b"[DONE]").done);
        let c = parse_payload(
            br#"{"choices":[{"message":{"content":"full"},"finish_reason":"stop"}]}"#,
        );
        assert_eq!(c.text, "full");
    }

    #[test]
    fn refusal_heuristic() {
        assert!(looks_like_refusal(
            "I'm sorry, but I can't help with that request."
        ));
        assert!(looks_like_refusal("I’m unable to help with this."));
        assert!(!looks_like_refusal("The answer is 391."));
    }
}
