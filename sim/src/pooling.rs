//! vLLM's non-generating routes: `/tokenize`, `/detokenize`, `/v1/rerank` (also `/rerank`,
//! `/v2/rerank`), `/v1/score` (also `/score`), `/pooling`, `/classify`, and the audio routes
//! `/v1/audio/transcriptions` and `/v1/audio/translations` (multipart uploads).
//!
//! Shapes follow vLLM's pydantic models (`vllm/entrypoints/openai/protocol.py` and the
//! per-API `protocol.py` files, `model_dump()` field order): `TokenizeResponse` (`count`,
//! `max_model_len`, `tokens`, `token_strs`), `DetokenizeResponse` (`prompt`),
//! `RerankResponse` (`id`, `model`, `usage` {`prompt_tokens`, `total_tokens`}, `results`
//! [{`index`, `document` {`text`, `multi_modal`}, `relevance_score`}]), `ScoreResponse`
//! (`id`, `object`, `created`, `model`, `data` [{`index`, `object: "score"`, `score`}],
//! `usage`), `PoolingResponse` (`data` [{`index`, `object: "pooling"`, `data`}]),
//! `ClassificationResponse` (`data` [{`index`, `label`, `probs`, `num_classes`}]),
//! `TranscriptionResponse` (`text`, `usage` {`type: "duration"`, `seconds`}). The numbers
//! are deterministic functions of the input, not a model's.

use std::io::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;

use crate::server::{Sim, bad_request, json_response, unix_now, vllm_error};
use crate::text;
use crate::wire::{self, Usage};

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(vllm_error(
            StatusCode::BAD_REQUEST,
            &format!("JSON decode error: {e}"),
            "Bad Request",
            None,
        ))
    })
}

/// The served model a request names (none: the first one), or vLLM's 404.
fn served(sim: &Sim, model: Option<&str>) -> Result<String, Box<Response>> {
    let model = match model {
        None | Some("") => sim.cfg.models[0].clone(),
        Some(m) => m.to_owned(),
    };
    match sim.engine(&model) {
        Some(_) => Ok(model),
        None => Err(Box::new(vllm_error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
            "NotFoundError",
            Some("model"),
        ))),
    }
}

/// Strings of a `str | list[str]` field.
fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| match x {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        other => vec![other.to_string()],
    }
}

fn tokens_of(s: &str) -> u32 {
    text::estimate_tokens(s).max(1)
}

fn score_of(seed: u64, a: &str, b: &str) -> f64 {
    let h = text::hash_bytes(seed, format!("{a}\u{0}{b}").as_bytes());
    (text::unit_f64(h) * 1e6).round() / 1e6
}

fn usage_only_prompt(prompt: u32) -> Usage {
    Usage {
        prompt,
        completion: 0,
    }
}

#[derive(Deserialize)]
struct TokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    return_token_strs: Option<bool>,
}

pub(crate) async fn tokenize(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let req: TokenizeRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if let Err(r) = served(&sim, req.model.as_deref()) {
        return *r;
    }
    let mut all = req.prompt.unwrap_or_default();
    for m in req.messages.iter().flatten() {
        if let Some(c) = m.get("content").and_then(|c| c.as_str()) {
            all.push_str(c);
        }
    }
    let n = text::estimate_tokens(&all);
    let mut h = text::hash_bytes(sim.cfg.seed, all.as_bytes());
    let mut out = Vec::with_capacity(64 + 8 * n as usize);
    let _ = write!(
        out,
        "{{\"count\":{n},\"max_model_len\":{},\"tokens\":[",
        sim.cfg.max_model_len
    );
    let mut strs = Vec::new();
    for i in 0..n {
        h = text::mix64(h);
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{}", h % 128_000);
        let chars: String = all.chars().skip(i as usize * 4).take(4).collect();
        strs.push(chars);
    }
    out.extend_from_slice(b"],\"token_strs\":");
    if req.return_token_strs == Some(true) {
        let _ = serde_json::to_writer(&mut out, &strs);
    } else {
        out.extend_from_slice(b"null");
    }
    out.push(b'}');
    json_response(StatusCode::OK, out)
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    tokens: Vec<u64>,
}

pub(crate) async fn detokenize(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let req: DetokenizeRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if let Err(r) = served(&sim, req.model.as_deref()) {
        return *r;
    }
    let mut words = Vec::new();
    let h = req
        .tokens
        .iter()
        .fold(sim.cfg.seed, |h, t| text::mix64(h ^ t));
    text::word_tokens(h, req.tokens.len(), &mut words);
    let mut out = b"{\"prompt\":".to_vec();
    wire::json_str(&mut out, words.concat().trim_start());
    out.push(b'}');
    json_response(StatusCode::OK, out)
}

#[derive(Deserialize)]
struct RerankRequest {
    #[serde(default)]
    model: Option<String>,
    query: serde_json::Value,
    documents: serde_json::Value,
    #[serde(default)]
    top_n: Option<usize>,
}

pub(crate) async fn rerank(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let req: RerankRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let model = match served(&sim, req.model.as_deref()) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let query = strings(&req.query).concat();
    let docs = strings(&req.documents);
    if docs.is_empty() {
        return bad_request("documents must not be empty");
    }
    let mut scored: Vec<(usize, f64)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (i, score_of(sim.cfg.seed, &query, d)))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top = match req.top_n {
        Some(n) if n > 0 => n.min(scored.len()),
        _ => scored.len(),
    };
    let prompt: u32 = docs
        .iter()
        .map(|d| tokens_of(&query) + tokens_of(d))
        .fold(0, u32::saturating_add);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"id\":");
    wire::json_str(
        &mut out,
        &format!("rerank-{}", uuid::Uuid::new_v4().simple()),
    );
    out.extend_from_slice(b",\"model\":");
    wire::json_str(&mut out, &model);
    let _ = write!(
        out,
        ",\"usage\":{{\"prompt_tokens\":{prompt},\"total_tokens\":{prompt}}},\"results\":["
    );
    for (k, (i, s)) in scored.iter().take(top).enumerate() {
        if k > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{{\"index\":{i},\"document\":{{\"text\":");
        wire::json_str(&mut out, &docs[*i]);
        let _ = write!(out, ",\"multi_modal\":null}},\"relevance_score\":{s:?}}}");
    }
    out.extend_from_slice(b"]}");
    json_response(StatusCode::OK, out)
}

/// `{"id":..,"object":"list","created":..,"model":..,"data":[` of the list responses.
fn list_head(out: &mut Vec<u8>, prefix: &str, model: &str) {
    out.extend_from_slice(b"{\"id\":");
    wire::json_str(out, &format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    let _ = write!(
        out,
        ",\"object\":\"list\",\"created\":{},\"model\":",
        unix_now()
    );
    wire::json_str(out, model);
    out.extend_from_slice(b",\"data\":[");
}

fn list_tail(out: &mut Vec<u8>, prompt: u32) {
    out.extend_from_slice(b"],\"usage\":");
    usage_only_prompt(prompt).write_full(out);
    out.push(b'}');
}

#[derive(Deserialize)]
struct ScoreRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default, alias = "queries")]
    text_1: Option<serde_json::Value>,
    #[serde(default, alias = "documents", alias = "items")]
    text_2: Option<serde_json::Value>,
}

pub(crate) async fn score(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let req: ScoreRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let model = match served(&sim, req.model.as_deref()) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let (Some(a), Some(b)) = (req.text_1.as_ref(), req.text_2.as_ref()) else {
        return bad_request("text_1 and text_2 are required");
    };
    let a = strings(a);
    let b = strings(b);
    // One text_1 against many text_2, or pairwise.
    let pairs: Vec<(&str, &str)> = if a.len() == 1 {
        b.iter().map(|y| (a[0].as_str(), y.as_str())).collect()
    } else if a.len() == b.len() {
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x.as_str(), y.as_str()))
            .collect()
    } else {
        return bad_request("text_1 and text_2 must have the same length, or text_1 one item");
    };
    let mut out = Vec::with_capacity(256);
    list_head(&mut out, "score", &model);
    let mut prompt = 0u32;
    for (i, (x, y)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        prompt = prompt.saturating_add(tokens_of(x) + tokens_of(y));
        let _ = write!(
            out,
            "{{\"index\":{i},\"object\":\"score\",\"score\":{:?}}}",
            score_of(sim.cfg.seed, x, y)
        );
    }
    list_tail(&mut out, prompt);
    json_response(StatusCode::OK, out)
}

#[derive(Deserialize)]
struct InputRequest {
    #[serde(default)]
    model: Option<String>,
    input: serde_json::Value,
}

pub(crate) async fn pooling(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    pooled(sim, body, false)
}

pub(crate) async fn classify(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    pooled(sim, body, true)
}

fn pooled(sim: Arc<Sim>, body: Bytes, classify: bool) -> Response {
    let req: InputRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let model = match served(&sim, req.model.as_deref()) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let inputs = strings(&req.input);
    let mut out = Vec::with_capacity(256);
    list_head(&mut out, if classify { "classify" } else { "pool" }, &model);
    let mut prompt = 0u32;
    for (i, s) in inputs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        prompt = prompt.saturating_add(tokens_of(s));
        let p = score_of(sim.cfg.seed, "classify", s);
        if classify {
            let label = if p >= 0.5 { "LABEL_1" } else { "LABEL_0" };
            let _ = write!(
                out,
                "{{\"index\":{i},\"label\":\"{label}\",\"probs\":[{:?},{:?}],\"num_classes\":2}}",
                ((1.0 - p) * 1e6).round() / 1e6,
                p
            );
        } else {
            let _ = write!(
                out,
                "{{\"index\":{i},\"object\":\"pooling\",\"data\":[{p:?},{:?}]}}",
                ((1.0 - p) * 1e6).round() / 1e6
            );
        }
    }
    list_tail(&mut out, prompt);
    json_response(StatusCode::OK, out)
}

/// A form field of a multipart body (the whole body is read here, as FastAPI's
/// `UploadFile` handling does before the handler runs).
fn form_field<'a>(body: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let needle = format!("name=\"{name}\"");
    let at = memchr::memmem::find(body, needle.as_bytes())?;
    let rest = &body[at + needle.len()..];
    let start = memchr::memmem::find(rest, b"\r\n\r\n")? + 4;
    let value = &rest[start..];
    let end = memchr::memmem::find(value, b"\r\n--")?;
    Some(&value[..end])
}

/// `POST /v1/audio/transcriptions` and `/v1/audio/translations` (multipart: `file`,
/// `model`, `response_format` json or text). The "audio" is not decoded: its length
/// gives the duration (16 kB per second, 16 kHz 8-bit mono) and the text is deterministic.
pub(crate) async fn transcription(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        return vllm_error(
            StatusCode::BAD_REQUEST,
            "Expected multipart/form-data",
            "Bad Request",
            None,
        );
    }
    let Some(file) = form_field(&body, "file") else {
        return bad_request("Field required: file");
    };
    let model = form_field(&body, "model").and_then(|m| std::str::from_utf8(m).ok());
    let model = match served(&sim, model) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let _ = model;
    let seconds = (file.len() as u64).div_ceil(16_000).max(1);
    let mut words = Vec::new();
    text::word_tokens(
        text::hash_bytes(sim.cfg.seed, file),
        usize::try_from(seconds * 2).unwrap_or(2),
        &mut words,
    );
    let text = words.concat().trim_start().to_owned();
    let format = form_field(&body, "response_format").unwrap_or(b"json");
    if format == b"text" {
        let mut r = Response::new(axum::body::Body::from(text));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    }
    let mut out = b"{\"text\":".to_vec();
    wire::json_str(&mut out, &text);
    let _ = write!(
        out,
        ",\"usage\":{{\"type\":\"duration\",\"seconds\":{seconds}}}}}"
    );
    json_response(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--b--\r\n";
        assert_eq!(form_field(body, "model"), Some(&b"whisper"[..]));
        assert_eq!(form_field(body, "file"), Some(&b"RIFF"[..]));
        assert_eq!(form_field(body, "language"), None);
    }
}
