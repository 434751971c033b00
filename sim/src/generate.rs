//! The generation loop of one request: queue → prefill → decode steps → usage → `[DONE]`,
//! written to an SSE channel, an SSE buffer (instant mode) or plain texts (non-stream).
//!
//! A client disconnect ends the loop at the next await (the channel closes, or the
//! handler future is dropped); [`AbortTracker`] then records the abort like vLLM V1 does.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::engine::{Engine, Running};
use crate::metrics::{self, Finish, FinishedRequest, Histogram, ModelMetrics};
use crate::responses::{ResponsesMeta, ResponsesWriter};
use crate::wire::{self, ChunkWriter, Kind, Usage};

/// One choice to generate: its tokens (decided up front) and finish reason.
pub(crate) struct ChoicePlan {
    pub(crate) index: u32,
    pub(crate) tokens: Vec<Cow<'static, str>>,
    /// The engine's finish (metrics).
    pub(crate) finish: Finish,
    /// The API's `finish_reason` (`tool_calls` for a tool call).
    pub(crate) api_finish: &'static str,
    /// A tool call `(id, function name)`: the tokens are its arguments.
    pub(crate) tool: Option<(String, String)>,
    /// The stop string that ended the text.
    pub(crate) stop_reason: Option<String>,
    /// Seed of this choice's logprobs.
    pub(crate) lp_seed: u64,
}

/// Everything decided about a request before generation starts.
pub(crate) struct Plan {
    pub(crate) kind: Kind,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) engine: Arc<Engine>,
    pub(crate) prompt_tokens: u32,
    pub(crate) choices: Vec<ChoicePlan>,
    pub(crate) n: u32,
    pub(crate) include_usage: bool,
    pub(crate) continuous_usage: bool,
    pub(crate) prefill: Duration,
    pub(crate) tokens_per_second: f64,
    /// Prefill compute in uncached prompt tokens per second (0 = only `prefill`).
    pub(crate) prefill_tokens_per_second: f64,
    pub(crate) midstream_error: bool,
    pub(crate) params_max_tokens: u32,
    /// `Some`: a `/v1/responses` request (its events instead of chat chunks).
    pub(crate) responses: Option<ResponsesMeta>,
    /// Chat `logprobs: true`: the number of `top_logprobs`.
    pub(crate) logprobs: Option<u32>,
    /// Approximate token ids of the prompt (a single prompt with prefix caching on).
    pub(crate) prompt_ids: Option<Vec<u64>>,
    /// Hashes of the prompt's full blocks (empty: no prefix-cache lookup).
    pub(crate) prompt_hashes: Arc<[u64]>,
    /// Cache the blocks of prompt + answer when the request finishes (chat text).
    pub(crate) cache_answer: bool,
}

/// Writes a stream: chat / completion chunks, or Responses API events.
enum Writer {
    Chunks(ChunkWriter),
    Responses(ResponsesWriter),
}

pub(crate) fn total_tokens(plan: &Plan) -> u32 {
    plan.choices
        .iter()
        .map(|c| u32::try_from(c.tokens.len()).unwrap_or(u32::MAX))
        .fold(0, u32::saturating_add)
}

/// The client went away.
#[derive(Debug)]
pub(crate) struct Aborted;

/// Where generated output goes: an SSE channel, an SSE buffer, or plain texts.
pub(crate) struct Out {
    pub(crate) tx: Option<mpsc::Sender<Bytes>>,
    pub(crate) buf: Vec<u8>,
    pub(crate) texts: Vec<String>,
    pub(crate) sse: bool,
}

impl Out {
    pub(crate) fn channel(tx: mpsc::Sender<Bytes>) -> Self {
        Self {
            tx: Some(tx),
            buf: Vec::with_capacity(1024),
            texts: Vec::new(),
            sse: true,
        }
    }
    pub(crate) fn buffer() -> Self {
        Self {
            tx: None,
            buf: Vec::with_capacity(8 * 1024),
            texts: Vec::new(),
            sse: true,
        }
    }
    pub(crate) fn collect(n: usize) -> Self {
        Self {
            tx: None,
            buf: Vec::new(),
            texts: vec![String::new(); n],
            sse: false,
        }
    }

    /// Run `f` unless the client disconnects first.
    async fn guard<F: Future>(&self, f: F) -> Result<F::Output, Aborted> {
        match &self.tx {
            Some(tx) => tokio::select! {
                v = f => Ok(v),
                () = tx.closed() => Err(Aborted),
            },
            None => Ok(f.await),
        }
    }

    /// Send what was written so far (channel mode).
    async fn flush(&mut self) -> Result<(), Aborted> {
        if let Some(tx) = &self.tx
            && !self.buf.is_empty()
        {
            let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(1024)));
            tx.send(chunk).await.map_err(|_| Aborted)?;
        }
        Ok(())
    }
}

/// Counts the abort when a request ends without finishing (client gone).
struct AbortTracker<'a> {
    metrics: &'a ModelMetrics,
    done: bool,
}

impl Drop for AbortTracker<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Like vLLM V1: no request_success{abort}, no histograms; prompt tokens already counted.
            self.metrics.add_abort();
        }
    }
}

/// Tokens emitted per engine step: one, or a batch above 1000 tokens/s (timers tick in ms).
fn tokens_per_step(tps: f64) -> usize {
    if tps <= 0.0 {
        return 1;
    }
    let k = (tps / 1000.0).ceil();
    if k < 1.0 {
        1
    } else if k > 1024.0 {
        1024
    } else {
        k as usize
    }
}

/// The generation loop: queue → prefill → decode steps → usage → `[DONE]`.
pub(crate) async fn run(plan: &Plan, out: &mut Out, arrival: Instant) -> Result<(), Aborted> {
    let engine = &plan.engine;
    let mut tracker = AbortTracker {
        metrics: &engine.metrics,
        done: false,
    };
    let mut running: Running = out
        .guard(engine.admit_prompt(
            u64::from(plan.prompt_tokens),
            Arc::clone(&plan.prompt_hashes),
        ))
        .await?;
    let scheduled = Instant::now();
    engine.metrics.add_prompt_tokens(plan.prompt_tokens);
    // Only the uncached tokens are computed (and scheduled in the prefill step).
    let uncached = u64::from(plan.prompt_tokens).saturating_sub(running.hit_tokens());
    engine
        .metrics
        .observe_iteration_tokens(u32::try_from(uncached).unwrap_or(u32::MAX));
    let mut prefill_done = scheduled;
    if plan.prefill_tokens_per_second > 0.0 && uncached > 0 {
        let work = Duration::from_secs_f64(uncached as f64 / plan.prefill_tokens_per_second);
        prefill_done = engine.prefill_lane(work);
    }
    let first_at = prefill_done + plan.prefill;
    if first_at > Instant::now() {
        out.guard(tokio::time::sleep_until(first_at)).await?;
    }
    // The prompt's blocks are computed: they enter the prefix cache.
    running.cache_blocks(&plan.prompt_hashes);
    let first = Instant::now();
    let mut writer = out.sse.then(|| match &plan.responses {
        Some(meta) => Writer::Responses(ResponsesWriter::new(meta.clone())),
        None => Writer::Chunks(ChunkWriter::new(
            plan.kind,
            &plan.id,
            plan.created,
            &plan.model,
        )),
    });
    let k = tokens_per_step(plan.tokens_per_second);
    let interval = if plan.tokens_per_second > 0.0 {
        Duration::from_secs_f64(k as f64 / plan.tokens_per_second)
    } else {
        Duration::ZERO
    };
    let longest = plan
        .choices
        .iter()
        .map(|c| c.tokens.len())
        .max()
        .unwrap_or(0);
    let steps = longest.div_ceil(k).max(1);
    let error_step = plan.midstream_error.then(|| steps.saturating_sub(1).min(3));
    let mut done_tokens = vec![0u32; plan.choices.len()];
    let mut itl = Histogram::new(metrics::ITL_BUCKETS);
    let mut last_step = first;
    let mut text = String::new();

    if let Some(Writer::Responses(w)) = &mut writer {
        w.start(&mut out.buf);
    }
    if let Some(Writer::Chunks(w)) = &writer
        && plan.kind == Kind::Chat
    {
        for c in &plan.choices {
            let usage = plan.continuous_usage.then_some(Usage {
                prompt: plan.prompt_tokens,
                completion: 0,
            });
            w.role(&mut out.buf, c.index, usage);
        }
    }
    for step in 0..steps {
        if step > 0 && !interval.is_zero() {
            let deadline = first + interval.saturating_mul(u32::try_from(step).unwrap_or(u32::MAX));
            out.guard(tokio::time::sleep_until(deadline)).await?;
        }
        if step > 0 {
            let now = Instant::now();
            itl.observe(now.duration_since(last_step).as_secs_f64());
            last_step = now;
        }
        if error_step == Some(step) {
            match &mut writer {
                Some(Writer::Responses(w)) => {
                    w.error(&mut out.buf);
                    out.flush().await?;
                }
                Some(Writer::Chunks(_)) => {
                    out.buf.extend_from_slice(wire::MIDSTREAM_ERROR);
                    out.buf.extend_from_slice(wire::DONE);
                    out.flush().await?;
                }
                None => {}
            }
            engine.metrics.add_error();
            tracker.done = true;
            return Ok(());
        }
        let start = step * k;
        let emitting: usize = plan
            .choices
            .iter()
            .map(|c| c.tokens.len().min(start + k).saturating_sub(start))
            .sum();
        if !running.grow(emitting as u64) {
            running = out.guard(running.preempt(emitting as u64)).await?;
        }
        for (ci, c) in plan.choices.iter().enumerate() {
            let len = c.tokens.len();
            if start >= len && !(start == 0 && len == 0) {
                continue;
            }
            let end = len.min(start + k);
            text.clear();
            for t in &c.tokens[start..end] {
                text.push_str(t);
            }
            done_tokens[ci] += u32::try_from(end - start).unwrap_or(0);
            let finish = (end == len).then_some(c.api_finish);
            match &mut writer {
                Some(Writer::Chunks(w)) => {
                    let usage = plan.continuous_usage.then_some(Usage {
                        prompt: plan.prompt_tokens,
                        completion: done_tokens[ci],
                    });
                    let lp = plan
                        .logprobs
                        .map(|top| wire::chat_logprobs(&c.tokens[start..end], top, c.lp_seed));
                    let extra = wire::Extra {
                        logprobs: lp.as_deref(),
                        stop_reason: c.stop_reason.as_deref(),
                        tool: c.tool.as_ref().map(|(id, n)| (id.as_str(), n.as_str())),
                        first: start == 0,
                    };
                    w.content_ex(&mut out.buf, c.index, &text, finish, usage, extra);
                }
                Some(Writer::Responses(w)) => w.delta(&mut out.buf, &text, finish),
                None => out.texts[ci].push_str(&text),
            }
        }
        let emitted = u32::try_from(emitting).unwrap_or(u32::MAX);
        engine.metrics.add_generation_tokens(emitted);
        // The first step also carries the prefill, observed above.
        if step > 0 {
            engine.metrics.observe_iteration_tokens(emitted);
        }
        out.flush().await?;
    }
    let completion = total_tokens(plan);
    let usage = Usage {
        prompt: plan.prompt_tokens,
        completion,
    };
    match &mut writer {
        Some(Writer::Chunks(w)) => {
            if plan.include_usage {
                w.usage(&mut out.buf, usage);
            }
            out.buf.extend_from_slice(wire::DONE);
            out.flush().await?;
        }
        Some(Writer::Responses(w)) => {
            // The Responses API always reports usage and ends without [DONE].
            w.completed(&mut out.buf, usage);
            out.flush().await?;
        }
        None => {}
    }
    let end = Instant::now();
    if plan.cache_answer
        && let (Some(ids), Some(c)) = (&plan.prompt_ids, plan.choices.first())
    {
        // The answer as the next turn resends it: the same approximate tokens.
        let mut seq = ids.clone();
        let answer: String = c.tokens.concat();
        crate::prefix::push_text(&mut seq, &answer);
        let bs = usize::try_from(engine.block_size()).unwrap_or(16);
        running.cache_blocks(&crate::prefix::block_hashes(&seq, bs));
    }
    drop(running);
    let finished = FinishedRequest {
        finish: plan.choices.first().map_or(Finish::Stop, |c| c.finish),
        ttft_s: first.duration_since(arrival).as_secs_f64(),
        e2e_s: end.duration_since(arrival).as_secs_f64(),
        queue_s: scheduled.duration_since(arrival).as_secs_f64(),
        prefill_s: first.duration_since(scheduled).as_secs_f64(),
        decode_s: end.duration_since(first).as_secs_f64(),
        prompt_tokens: plan.prompt_tokens,
        generation_tokens: completion,
        max_choice_tokens: done_tokens.iter().copied().max().unwrap_or(0),
        params_max_tokens: plan.params_max_tokens,
        n: plan.n,
    };
    engine.metrics.finish(&finished, &itl);
    tracker.done = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_per_step_table() {
        for (tps, k) in [
            (0.0, 1),
            (50.0, 1),
            (1000.0, 1),
            (1001.0, 2),
            (5000.0, 5),
            (1e9, 1024),
        ] {
            assert_eq!(tokens_per_step(tps), k, "{tps}");
        }
    }
}
