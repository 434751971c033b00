//! `POST /v1/embeddings`: vLLM's embedding response with deterministic unit vectors.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use crate::server::{Sim, bad_request, completion_prompts, json_response, unix_now, vllm_error};
use crate::text;
use crate::wire::{self, Usage};

#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    #[serde(default)]
    model: Option<String>,
    input: serde_json::Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

/// Default embedding width.
const EMBEDDING_DIM: usize = 384;

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [
            c[0],
            c.get(1).copied().unwrap_or(0),
            c.get(2).copied().unwrap_or(0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(char::from(T[(v >> 18) as usize & 63]));
        out.push(char::from(T[(v >> 12) as usize & 63]));
        out.push(if c.len() > 1 {
            char::from(T[(v >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            char::from(T[v as usize & 63])
        } else {
            '='
        });
    }
    out
}

/// A deterministic unit vector for `h`.
fn embedding_vector(h: u64, dim: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(dim);
    let mut s = h;
    for _ in 0..dim {
        s = text::mix64(s);
        v.push((text::unit_f64(s) * 2.0 - 1.0) as f32);
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

pub(crate) async fn embeddings(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let req: EmbeddingRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return vllm_error(
                StatusCode::BAD_REQUEST,
                &format!("JSON decode error: {e}"),
                "Bad Request",
                None,
            );
        }
    };
    let model = req.model.unwrap_or_else(|| sim.cfg.models[0].clone());
    let Some(engine) = sim.engine(&model) else {
        let msg = format!("The model `{model}` does not exist.");
        return vllm_error(StatusCode::NOT_FOUND, &msg, "NotFoundError", Some("model"));
    };
    let prompts = match completion_prompts(&req.input, sim.cfg.seed) {
        Ok(p) => p,
        Err(msg) => return bad_request(msg),
    };
    let dim = req.dimensions.unwrap_or(EMBEDDING_DIM).clamp(1, 8192);
    let b64 = req.encoding_format.as_deref() == Some("base64");
    let prompt_tokens: u32 = prompts
        .iter()
        .map(|p| p.tokens)
        .fold(0, u32::saturating_add);
    engine.metrics.add_prompt_tokens(prompt_tokens);
    let mut out = Vec::with_capacity(64 + prompts.len() * dim * 12);
    out.extend_from_slice(b"{\"id\":");
    wire::json_str(&mut out, &format!("embd-{}", uuid::Uuid::new_v4().simple()));
    out.extend_from_slice(
        format!(",\"object\":\"list\",\"created\":{},\"model\":", unix_now()).as_bytes(),
    );
    wire::json_str(&mut out, &model);
    out.extend_from_slice(b",\"data\":[");
    for (i, p) in prompts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(
            format!("{{\"index\":{i},\"object\":\"embedding\",\"embedding\":").as_bytes(),
        );
        let v = embedding_vector(p.hash, dim);
        if b64 {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            wire::json_str(&mut out, &base64(&bytes));
        } else {
            let wide: Vec<f64> = v.iter().map(|x| f64::from(*x)).collect();
            let _ = serde_json::to_writer(&mut out, &wide);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"usage\":");
    Usage {
        prompt: prompt_tokens,
        completion: 0,
    }
    .write_full(&mut out);
    out.push(b'}');
    json_response(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_table() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn embedding_is_unit_and_deterministic() {
        let a = embedding_vector(5, 16);
        assert_eq!(a, embedding_vector(5, 16));
        let n: f32 = a.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4);
    }
}
