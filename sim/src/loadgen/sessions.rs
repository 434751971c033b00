//! The `sessions` scenario: multi-turn chat conversations that resend their history.
//!
//! Each conversation has a system prompt shared by *all* conversations, then a number of
//! turns; every turn sends the system prompt, the whole history of user and assistant
//! messages so far and a new user message, streams the answer, keeps the answer text as
//! the next assistant message, waits a "think time" and goes on. Conversations start open
//! loop at a fixed rate (`--rate`, conversations per second); inside one conversation the
//! turns are sequential, like a user waiting for the answer.
//!
//! The prefix-cache hit rate is read from the servers' own `/metrics`
//! (`--metrics-url`, repeatable: `vllm:prefix_cache_queries_total` and
//! `vllm:prefix_cache_hits_total`, or the pre-0.12 `vllm:gpu_prefix_cache_*` names), as
//! the difference between a scrape before and after the run; the per-replica request
//! counts come from `vllm:request_success_total` the same way.

use serde::Serialize;

use crate::text;

/// Shape of the conversations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionShape {
    /// Turns per conversation.
    pub turns: u32,
    /// Approximate tokens of the shared system prompt.
    pub system_tokens: u32,
    /// Tokens of a user message: uniform in this range.
    pub user_tokens: (u32, u32),
    /// Tokens of an answer (`max_tokens`, and `x-sim-output-tokens` for vllm-sim).
    pub answer_tokens: (u32, u32),
    /// Pause between an answer and the next turn, ms: uniform in this range.
    pub think_ms: (u64, u64),
}

impl Default for SessionShape {
    fn default() -> Self {
        Self {
            turns: 6,
            system_tokens: 1500,
            user_tokens: (50, 200),
            answer_tokens: (100, 300),
            think_ms: (500, 1500),
        }
    }
}

/// Uniform integer in `[lo, hi]` from a hash.
fn pick(h: u64, (lo, hi): (u64, u64)) -> u64 {
    if hi <= lo {
        return lo;
    }
    lo + text::mix64(h) % (hi - lo + 1)
}

/// Deterministic prose of about `tokens` tokens (the 4-characters-per-token estimate).
#[must_use]
pub fn prose(seed: u64, lead: &str, tokens: u32) -> String {
    let mut s = String::from(lead);
    let mut words = Vec::new();
    let mut state = seed;
    while text::estimate_tokens(&s) < tokens {
        words.clear();
        state = text::mix64(state);
        text::word_tokens(state, 16, &mut words);
        for w in &words {
            s.push_str(w);
            if text::estimate_tokens(&s) >= tokens {
                break;
            }
        }
    }
    s
}

/// The system prompt every conversation shares.
#[must_use]
pub fn system_prompt(tokens: u32) -> String {
    prose(
        0x5359_5354_454d,
        "You are the support assistant of a cloud inference service. Answer precisely, cite the relevant setting, keep a friendly tone. Reference notes:",
        tokens,
    )
}

/// One conversation: its messages so far and what the next turn asks for.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// Conversation number (0, 1, ...).
    pub id: u64,
    /// `(role, content)` of every message so far, system prompt first.
    pub messages: Vec<(&'static str, String)>,
    /// Turns sent so far.
    pub turn: u32,
    shape: SessionShape,
}

/// What one turn sends.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The chat request body.
    pub body: serde_json::Value,
    /// Requested answer length.
    pub answer_tokens: u32,
}

impl Conversation {
    /// A new conversation number `id` that starts with the shared `system` prompt.
    #[must_use]
    pub fn new(id: u64, system: &str, shape: SessionShape) -> Self {
        Self {
            id,
            messages: vec![("system", system.to_owned())],
            turn: 0,
            shape,
        }
    }

    /// Whether every turn was sent.
    #[must_use]
    pub fn done(&self) -> bool {
        self.turn >= self.shape.turns
    }

    /// Add the next user message and build the request of this turn (history + it).
    pub fn next_turn(&mut self, model: &str, stream: bool) -> Turn {
        let h = text::mix64(self.id.wrapping_mul(0x1_0000) ^ u64::from(self.turn));
        let (ulo, uhi) = self.shape.user_tokens;
        let user_tokens = pick(h, (u64::from(ulo), u64::from(uhi))) as u32;
        let lead = format!(
            "[conversation {} turn {}] My question about my deployment:",
            self.id,
            self.turn + 1
        );
        let user = prose(h ^ 0x5553_4552, &lead, user_tokens);
        self.messages.push(("user", user));
        let (alo, ahi) = self.shape.answer_tokens;
        let answer_tokens = pick(h ^ 0x414e_5357, (u64::from(alo), u64::from(ahi))) as u32;
        let messages: Vec<serde_json::Value> = self
            .messages
            .iter()
            .map(|(r, c)| serde_json::json!({"role": r, "content": c}))
            .collect();
        let mut body = serde_json::json!({
            "model": model,
            "messages": messages,
            "max_tokens": answer_tokens,
            "stream": stream,
            "user": format!("loadgen-session-{}", self.id),
        });
        if stream {
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
        self.turn += 1;
        Turn {
            body,
            answer_tokens,
        }
    }

    /// The answer of the last turn: it becomes part of the history.
    pub fn record_answer(&mut self, text: String) {
        self.messages.push(("assistant", text));
    }

    /// Think time before the next turn, ms.
    #[must_use]
    pub fn think_ms(&self) -> u64 {
        pick(
            text::mix64(self.id ^ (u64::from(self.turn) << 40) ^ 0x0054_4849_4e4b),
            self.shape.think_ms,
        )
    }
}

/// Counters of one server's `/metrics` (summed over its models).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerCounters {
    /// `vllm:prefix_cache_queries_total` (tokens).
    pub prefix_queries: f64,
    /// `vllm:prefix_cache_hits_total` (tokens).
    pub prefix_hits: f64,
    /// `vllm:request_success_total` over all finish reasons.
    pub requests: f64,
    /// `vllm:prompt_tokens_total`.
    pub prompt_tokens: f64,
}

/// Sum every sample of the family `name` (any labels) in a Prometheus text page.
fn sum_family(page: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

/// Read the counters from a `/metrics` page (current names first, then the pre-0.12
/// `vllm:gpu_prefix_cache_*` ones; missing series count as 0).
#[must_use]
pub fn parse_counters(page: &str) -> ServerCounters {
    let first = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| sum_family(page, n))
            .unwrap_or(0.0)
    };
    ServerCounters {
        prefix_queries: first(&[
            "vllm:prefix_cache_queries_total",
            "vllm:gpu_prefix_cache_queries_total",
        ]),
        prefix_hits: first(&[
            "vllm:prefix_cache_hits_total",
            "vllm:gpu_prefix_cache_hits_total",
        ]),
        requests: first(&["vllm:request_success_total"]),
        prompt_tokens: first(&["vllm:prompt_tokens_total"]),
    }
}

/// One server's share of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplicaStats {
    /// The `/metrics` URL.
    pub url: String,
    /// Requests finished there during the run.
    pub requests: f64,
    /// Prefix-cache queries there (tokens).
    pub prefix_queries: f64,
    /// Prefix-cache hits there (tokens).
    pub prefix_hits: f64,
    /// Prompt tokens there.
    pub prompt_tokens: f64,
}

/// What the `sessions` scenario adds to the summary.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct SessionStats {
    /// Conversations started.
    pub started: u64,
    /// Conversations that sent all their turns with success.
    pub completed: u64,
    /// Conversations ended early by a failed turn.
    pub failed: u64,
    /// Conversations started but not finished when the run ended.
    pub unfinished: u64,
    /// Turns per conversation.
    pub turns: u32,
    /// Prefix-cache hits / queries over all servers (None without `--metrics-url`).
    pub prefix_cache_hit_rate: Option<f64>,
    /// Per-server numbers (`--metrics-url` order).
    pub replicas: Vec<ReplicaStats>,
    /// Largest per-replica request count / mean (1.0 = perfectly even).
    pub load_max_over_mean: Option<f64>,
    /// `--metrics-url` scrapes that failed (their replica counts 0).
    pub scrape_errors: u64,
}

impl SessionStats {
    /// Fill the metric-derived fields from before/after scrapes.
    pub fn from_scrapes(
        &mut self,
        urls: &[String],
        before: &[ServerCounters],
        after: &[ServerCounters],
    ) {
        self.replicas = urls
            .iter()
            .zip(before.iter().zip(after))
            .map(|(u, (b, a))| ReplicaStats {
                url: u.clone(),
                requests: (a.requests - b.requests).max(0.0),
                prefix_queries: (a.prefix_queries - b.prefix_queries).max(0.0),
                prefix_hits: (a.prefix_hits - b.prefix_hits).max(0.0),
                prompt_tokens: (a.prompt_tokens - b.prompt_tokens).max(0.0),
            })
            .collect();
        let q: f64 = self.replicas.iter().map(|r| r.prefix_queries).sum();
        let h: f64 = self.replicas.iter().map(|r| r.prefix_hits).sum();
        self.prefix_cache_hit_rate = (q > 0.0).then(|| round4(h / q));
        let n = self.replicas.len() as f64;
        let total: f64 = self.replicas.iter().map(|r| r.requests).sum();
        self.load_max_over_mean = (total > 0.0 && n > 0.0).then(|| {
            let max = self.replicas.iter().map(|r| r.requests).fold(0.0, f64::max);
            round4(max / (total / n))
        });
    }
}

fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(body: &serde_json::Value) -> Vec<(String, String)> {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_owned(),
                    m["content"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn conversation_resends_history_and_grows() {
        let shape = SessionShape {
            turns: 3,
            ..SessionShape::default()
        };
        let sys = system_prompt(shape.system_tokens);
        let est = text::estimate_tokens(&sys);
        assert!((1500..1510).contains(&est), "{est}");
        let mut c = Conversation::new(7, &sys, shape);
        let t1 = c.next_turn("m", true);
        let m1 = contents(&t1.body);
        assert_eq!(m1.len(), 2);
        assert_eq!(m1[0], ("system".to_owned(), sys.clone()));
        assert_eq!(m1[1].0, "user");
        let u = text::estimate_tokens(&m1[1].1);
        assert!((50..=205).contains(&u), "user message of {u} tokens");
        assert!((100..=300).contains(&t1.answer_tokens));
        assert_eq!(t1.body["max_tokens"], t1.answer_tokens);
        assert_eq!(t1.body["stream"], true);
        assert_eq!(t1.body["stream_options"]["include_usage"], true);
        assert_eq!(t1.body["user"], "loadgen-session-7");
        c.record_answer("first answer".into());
        let t2 = c.next_turn("m", true);
        let m2 = contents(&t2.body);
        // The history is resent unchanged, then the new user message.
        assert_eq!(m2.len(), 4);
        assert_eq!(m2[..2], m1[..]);
        assert_eq!(m2[2], ("assistant".to_owned(), "first answer".to_owned()));
        assert_eq!(m2[3].0, "user");
        assert_ne!(m2[3].1, m1[1].1);
        c.record_answer("second".into());
        assert!(!c.done());
        c.next_turn("m", false);
        assert!(c.done());
        // Deterministic: the same conversation number gives the same messages.
        let mut again = Conversation::new(7, &sys, shape);
        assert_eq!(contents(&again.next_turn("m", true).body), m1);
        // Another conversation shares the system prompt, not the user message.
        let mut other = Conversation::new(8, &sys, shape);
        let o = contents(&other.next_turn("m", true).body);
        assert_eq!(o[0], m1[0]);
        assert_ne!(o[1], m1[1]);
        assert!((500..=1500).contains(&c.think_ms()));
    }

    #[test]
    fn counters_from_metrics_pages() {
        let page = "# HELP vllm:prefix_cache_queries_total x\n\
            vllm:prefix_cache_queries_total{model_name=\"a\",engine=\"0\"} 100.0\n\
            vllm:prefix_cache_queries_total{model_name=\"b\",engine=\"0\"} 50.0\n\
            vllm:prefix_cache_queries_created{model_name=\"a\",engine=\"0\"} 1.7e+09\n\
            vllm:prefix_cache_hits_total{model_name=\"a\",engine=\"0\"} 60.0\n\
            vllm:request_success_total{model_name=\"a\",engine=\"0\",finished_reason=\"stop\"} 3.0\n\
            vllm:request_success_total{model_name=\"a\",engine=\"0\",finished_reason=\"length\"} 2.0\n";
        let c = parse_counters(page);
        assert_eq!(
            c,
            ServerCounters {
                prefix_queries: 150.0,
                prefix_hits: 60.0,
                requests: 5.0,
                prompt_tokens: 0.0
            }
        );
        let old = "vllm:gpu_prefix_cache_queries_total{model_name=\"a\"} 10.0\nvllm:gpu_prefix_cache_hits_total{model_name=\"a\"} 4.0\n";
        let c = parse_counters(old);
        assert_eq!((c.prefix_queries, c.prefix_hits), (10.0, 4.0));
    }

    #[test]
    fn stats_from_scrapes() {
        let urls = vec!["a".to_owned(), "b".to_owned()];
        let before = [
            ServerCounters::default(),
            ServerCounters {
                requests: 10.0,
                ..Default::default()
            },
        ];
        let after = [
            ServerCounters {
                prefix_queries: 1000.0,
                prefix_hits: 600.0,
                requests: 30.0,
                prompt_tokens: 1000.0,
            },
            ServerCounters {
                prefix_queries: 1000.0,
                prefix_hits: 200.0,
                requests: 20.0,
                prompt_tokens: 1000.0,
            },
        ];
        let mut s = SessionStats::default();
        s.from_scrapes(&urls, &before, &after);
        assert_eq!(s.prefix_cache_hit_rate, Some(0.4));
        assert_eq!(s.replicas[1].requests, 10.0);
        // 30 and 10 requests: mean 20, max 30.
        assert_eq!(s.load_max_over_mean, Some(1.5));
    }
}
