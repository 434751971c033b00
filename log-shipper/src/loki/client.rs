//! HTTP client for Loki's push endpoint.

use std::time::Duration;

use bytes::Bytes;

/// Authentication sent with every request.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Basic { user, .. } => write!(f, "Basic({user}, ***)"),
            Self::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub push_url: String,
    pub ready_url: String,
    pub tenant: Option<String>,
    pub auth: Auth,
    pub timeout: Duration,
    /// Extra CA certificate (PEM) to trust.
    pub ca_pem: Option<Vec<u8>>,
}

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("building the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// Result of one push attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushResult {
    /// HTTP status; `None` for transport errors and timeouts.
    pub status: Option<u16>,
    /// Response body or transport error text (shortened).
    pub message: String,
    /// The `Retry-After` header (delay-seconds or an HTTP date), as a delay from now.
    pub retry_after: Option<Duration>,
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): a number of seconds, or an HTTP
/// date (a date in the past means "now").
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The Loki push client.
#[derive(Debug, Clone)]
pub struct LokiClient {
    http: reqwest::Client,
    cfg: ClientConfig,
}

fn shorten(mut s: String) -> String {
    if s.len() > 1024 {
        let cut = crate::parser::truncate_at_char_boundary(&s, 1024).len();
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl LokiClient {
    /// Builds the client (install a rustls crypto provider first).
    pub fn new(cfg: ClientConfig) -> Result<Self, ClientError> {
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("log-shipper/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &cfg.ca_pem {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
        }
        Ok(Self {
            http: b.build()?,
            cfg,
        })
    }

    /// Settings.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    fn decorate(&self, mut rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(t) = &self.cfg.tenant {
            rb = rb.header("X-Scope-OrgID", t);
        }
        match &self.cfg.auth {
            Auth::None => rb,
            Auth::Basic { user, password } => rb.basic_auth(user, Some(password)),
            Auth::Bearer(token) => rb.bearer_auth(token),
        }
    }

    /// Sends one raw-snappy protobuf body.
    pub async fn push(&self, body: Bytes) -> PushResult {
        let rb = self
            .http
            .post(&self.cfg.push_url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body);
        match self.decorate(rb).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                let message = resp.text().await.unwrap_or_default();
                PushResult {
                    status: Some(status),
                    message: shorten(message),
                    retry_after,
                }
            }
            Err(e) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                PushResult {
                    status: None,
                    message: shorten(msg),
                    retry_after: None,
                }
            }
        }
    }

    /// `GET /ready`: whether Loki says it is ready (see [`super::healthcheck`]).
    pub async fn ready(&self) -> Result<u16, String> {
        let rb = self.http.get(&self.cfg.ready_url);
        match self.decorate(rb).send().await {
            Ok(r) => Ok(r.status().as_u16()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let cases: &[(&str, Option<Duration>)] = &[
            ("5", Some(Duration::from_secs(5))),
            (" 120 ", Some(Duration::from_secs(120))),
            ("0", Some(Duration::ZERO)),
            (
                "Sun, 06 Nov 1994 08:49:47 GMT",
                Some(Duration::from_secs(10)),
            ),
            (
                "Sunday, 06-Nov-94 08:49:57 GMT",
                Some(Duration::from_secs(20)),
            ),
            ("Sun Nov  6 08:50:37 1994", Some(Duration::from_secs(60))),
            ("Sun, 06 Nov 1994 08:00:00 GMT", Some(Duration::ZERO)),
            ("-3", None),
            ("soon", None),
            ("", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_retry_after(v, now), *want, "{v:?}");
        }
    }
}
