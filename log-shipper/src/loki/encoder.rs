//! Batch → `logproto.PushRequest` → raw (block) snappy, and the JSON form used by
//! `--dry-run` (Loki's JSON push format).

use prost::Message;

use super::proto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter};
use crate::batcher::Batch;

/// Alias used by the pipeline.
pub type PushRequestAlias = PushRequest;

/// Converts a batch's streams into the protobuf request (moves the lines, no copies).
pub fn to_push_request(streams: Vec<crate::batcher::Stream>) -> PushRequest {
    PushRequest {
        streams: streams
            .into_iter()
            .map(|s| StreamAdapter {
                labels: s.labels,
                entries: s
                    .entries
                    .into_iter()
                    .map(|e| EntryAdapter {
                        timestamp: Some(prost_types::Timestamp {
                            seconds: e.ts_ns.div_euclid(1_000_000_000),
                            nanos: e.ts_ns.rem_euclid(1_000_000_000) as i32,
                        }),
                        line: e.line,
                        structured_metadata: e
                            .metadata
                            .into_iter()
                            .map(|(n, v)| LabelPairAdapter {
                                name: n.to_string(),
                                value: v,
                            })
                            .collect(),
                        parsed: Vec::new(),
                    })
                    .collect(),
                hash: 0,
            })
            .collect(),
        format: String::new(),
    }
}

/// Protobuf-encodes and raw-snappy-compresses a request (the body Loki expects with
/// `Content-Type: application/x-protobuf`).
pub fn encode(req: &PushRequest) -> Result<Vec<u8>, snap::Error> {
    let raw = req.encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw)
}

/// Decodes a raw-snappy protobuf body.
pub fn decode(body: &[u8]) -> Result<PushRequest, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    PushRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))
}

/// Number of entries and line bytes in a request.
pub fn count(req: &PushRequest) -> (usize, usize) {
    req.streams.iter().fold((0, 0), |(n, b), s| {
        (
            n + s.entries.len(),
            b + s.entries.iter().map(|e| e.line.len()).sum::<usize>(),
        )
    })
}

/// Splits a request into two with about half the entries each (for 413 answers).
/// Returns `None` when it holds a single entry.
pub fn split(req: PushRequest) -> Option<(PushRequest, PushRequest)> {
    let (total, _) = count(&req);
    if total < 2 {
        return None;
    }
    let half = total / 2;
    let mut a = PushRequest::default();
    let mut b = PushRequest::default();
    let mut seen = 0;
    for mut s in req.streams {
        if seen >= half {
            b.streams.push(s);
        } else if seen + s.entries.len() <= half {
            seen += s.entries.len();
            a.streams.push(s);
        } else {
            let rest = s.entries.split_off(half - seen);
            seen = half;
            b.streams.push(StreamAdapter {
                labels: s.labels.clone(),
                entries: rest,
                hash: 0,
            });
            a.streams.push(s);
        }
    }
    Some((a, b))
}

/// Parses a stream label string `{a="b",c="d"}` into pairs (for the JSON form).
pub fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or("labels must be enclosed in {}")?;
    let mut out = Vec::new();
    let b = inner.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] as char).is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let name = &inner[start..i];
        if name.is_empty() {
            return Err(format!("expected a label name at byte {start}"));
        }
        skip_ws(&mut i);
        if b.get(i) != Some(&b'=') {
            return Err(format!("expected = after {name}"));
        }
        i += 1;
        skip_ws(&mut i);
        if b.get(i) != Some(&b'"') {
            return Err(format!("expected a quoted value for {name}"));
        }
        i += 1;
        let mut value = String::new();
        let mut chars = inner[i..].char_indices();
        let mut closed = false;
        while let Some((off, c)) = chars.next() {
            match c {
                '"' => {
                    i += off + 1;
                    closed = true;
                    break;
                }
                '\\' => {
                    let Some((_, e)) = chars.next() else {
                        return Err("dangling escape".into());
                    };
                    match e {
                        'n' => value.push('\n'),
                        't' => value.push('\t'),
                        'r' => value.push('\r'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        '\'' => value.push('\''),
                        'u' => {
                            let hex: String = (0..4)
                                .filter_map(|_| chars.next().map(|(_, h)| h))
                                .collect();
                            let cp = u32::from_str_radix(&hex, 16)
                                .map_err(|_| format!("bad \\u escape {hex}"))?;
                            value.push(char::from_u32(cp).ok_or("bad code point")?);
                        }
                        other => return Err(format!("unknown escape \\{other}")),
                    }
                }
                '\n' => return Err("newline in label value".into()),
                c => value.push(c),
            }
        }
        if !closed {
            return Err(format!("unterminated value for {name}"));
        }
        out.push((name.to_string(), value));
        skip_ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            None => break,
            Some(_) => return Err(format!("expected , or }} after {name}")),
        }
    }
    Ok(out)
}

/// The batch in Loki's JSON push format (`{"streams":[{"stream":{..},"values":[..]}]}`).
pub fn to_json(batch: &Batch) -> serde_json::Value {
    let streams: Vec<serde_json::Value> = batch
        .streams
        .iter()
        .map(|s| {
            let labels: serde_json::Map<String, serde_json::Value> = parse_labels(&s.labels)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            let values: Vec<serde_json::Value> = s
                .entries
                .iter()
                .map(|e| {
                    let mut v = vec![
                        serde_json::Value::String(e.ts_ns.to_string()),
                        serde_json::Value::String(e.line.clone()),
                    ];
                    if !e.metadata.is_empty() {
                        let m: serde_json::Map<String, serde_json::Value> = e
                            .metadata
                            .iter()
                            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                            .collect();
                        v.push(serde_json::Value::Object(m));
                    }
                    serde_json::Value::Array(v)
                })
                .collect();
            serde_json::json!({ "stream": labels, "values": values })
        })
        .collect();
    serde_json::json!({ "streams": streams })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::{Entry, Stream};
    use std::sync::Arc;

    fn sample() -> Vec<Stream> {
        vec![
            Stream {
                labels: r#"{app="gw",level="info"}"#.into(),
                entries: vec![
                    Entry {
                        ts_ns: 1_500_000_001,
                        line: "a".into(),
                        metadata: vec![(Arc::from("request_id"), "r1".into())],
                    },
                    Entry {
                        ts_ns: 2_000_000_000,
                        line: "b".into(),
                        metadata: vec![],
                    },
                ],
            },
            Stream {
                labels: r#"{app="gw",x="q\"\\"}"#.into(),
                entries: vec![Entry {
                    ts_ns: 3,
                    line: "c".into(),
                    metadata: vec![],
                }],
            },
        ]
    }

    #[test]
    fn roundtrip_snappy_protobuf() {
        let req = to_push_request(sample());
        let body = encode(&req).unwrap();
        // Raw (block) snappy, not the framed format (which starts with 0xff 0x06).
        assert_ne!(body[0], 0xff);
        let back = decode(&body).unwrap();
        assert_eq!(back, req);
        let e = &back.streams[0].entries[0];
        assert_eq!(
            e.timestamp,
            Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_001
            })
        );
        assert_eq!(e.structured_metadata[0].name, "request_id");
        assert_eq!(count(&back), (3, 3));
    }

    #[test]
    fn split_halves() {
        let req = to_push_request(sample());
        let (a, b) = split(req).unwrap();
        assert_eq!(count(&a).0, 1);
        assert_eq!(count(&b).0, 2);
        let (a1, _) = split(b).unwrap();
        assert!(split(a1).is_none());
    }

    #[test]
    fn labels_parse_and_json() {
        assert_eq!(
            parse_labels(r#"{app="gw",x="q\"\\\n"}"#).unwrap(),
            vec![("app".into(), "gw".into()), ("x".into(), "q\"\\\n".into())]
        );
        assert!(parse_labels("app=\"x\"").is_err());
        assert!(parse_labels("{app=x}").is_err());
        assert!(parse_labels("{app=\"x\" y=\"z\"}").is_err());
        assert_eq!(parse_labels("{}").unwrap(), vec![]);
        let batch = Batch {
            streams: sample(),
            entries: 3,
            ..Default::default()
        };
        let j = to_json(&batch);
        assert_eq!(j["streams"][0]["stream"]["level"], "info");
        assert_eq!(j["streams"][0]["values"][0][0], "1500000001");
        assert_eq!(j["streams"][0]["values"][0][2]["request_id"], "r1");
        assert_eq!(j["streams"][1]["stream"]["x"], "q\"\\");
    }
}
