//! Configuration: one TOML file (`--config`) plus flags, each flag with an env var
//! `LOG_SHIPPER_<FLAG>`. Precedence: flag or env var > file > default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as ClapParser;
use serde::{Deserialize, Serialize};

use crate::parser::{LineTooLong, ParserConfig};

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid --label {0:?}: expected NAME=VALUE")]
    LabelSyntax(String),
    #[error("{0}")]
    Invalid(String),
    #[error("reading secret file {path}: {source}")]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The whole configuration (the TOML file's schema; flags override its fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Loki base URL (`http://loki:3100`, `/loki/api/v1/push` is appended) or full push URL.
    #[serde(default)]
    pub loki_url: Option<String>,
    /// Files or glob patterns to follow (`*`, `?`, `[..]`); `-` reads standard input.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Positions file (JSON), written atomically after Loki accepted each batch.
    #[serde(default = "default_positions_file")]
    pub positions_file: PathBuf,
    /// Static stream labels. Replaced as a whole by `--label` flags.
    #[serde(default = "default_labels")]
    pub labels: BTreeMap<String, String>,
    /// Top-level JSON fields whose values become stream labels (bounded values only!).
    #[serde(default = "default_label_fields")]
    pub label_fields: Vec<String>,
    /// Top-level JSON fields sent as Loki structured metadata (high-cardinality values).
    #[serde(default = "default_metadata_fields")]
    pub metadata_fields: Vec<String>,
    /// JSON field holding the event time (RFC 3339 or Unix time).
    #[serde(default = "default_timestamp_field")]
    pub timestamp_field: String,
    /// Tenant sent as `X-Scope-OrgID`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Basic-auth user name (the password comes from `basic_auth_password_file`).
    #[serde(default)]
    pub basic_auth_user: Option<String>,
    /// File holding the basic-auth password (trailing newline ignored).
    #[serde(default)]
    pub basic_auth_password_file: Option<PathBuf>,
    /// File holding a bearer token (trailing newline ignored).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) trusted for `https://` Loki URLs.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Flush a batch when its estimated size reaches this many bytes.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Flush a batch when its first line is this old (milliseconds).
    #[serde(default = "default_batch_max_wait_ms")]
    pub batch_max_wait_ms: u64,
    /// Longest line shipped unchanged (Loki's `max_line_size`, default 256 KB).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// What to do with longer lines: `truncate` (with a marker) or `drop`.
    #[serde(default = "default_line_too_long")]
    pub line_too_long: LineTooLong,
    /// Distinct values each label field may give its label before new ones become
    /// `other` (counted), so a client sending made-up model names cannot flood Loki
    /// with streams. `0`: no limit.
    #[serde(default = "default_max_label_values")]
    pub max_label_values: usize,
    /// How often inputs are re-scanned and idle files polled (milliseconds).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How long a rotated or deleted file must be idle at its end before it is closed
    /// (milliseconds).
    #[serde(default = "default_rotate_wait_ms")]
    pub rotate_wait_ms: u64,
    /// Most followed files kept open at once (one file descriptor each). More files are
    /// parked (closed, position kept) and reopened by position when they have new data;
    /// the most recently modified files stay open. Lowered at start-up to the process
    /// limit (`RLIMIT_NOFILE`) minus a reserve of 64, so sockets, the positions file and
    /// `/metrics` always have descriptors.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Timeout of one push request (milliseconds).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// First retry delay (milliseconds); doubles per attempt, with jitter.
    #[serde(default = "default_retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    /// Longest retry delay (milliseconds).
    #[serde(default = "default_retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// On SIGTERM, how long to keep trying to push what was read (milliseconds).
    /// Lines not accepted by then are not committed and are re-read on restart.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Event timestamps older than this are replaced by the read time, since Loki
    /// rejects them (its default limit is 7 days; the default keeps a 1 h margin).
    #[serde(default = "default_max_timestamp_age_secs")]
    pub max_timestamp_age_secs: u64,
    /// Event timestamps further in the future than this are replaced by the read time.
    #[serde(default = "default_max_timestamp_future_secs")]
    pub max_timestamp_future_secs: u64,
    /// Address for `/metrics` and `/healthz` (for example `127.0.0.1:9101`).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Print batches as JSON on stdout instead of pushing (positions are not written).
    #[serde(default)]
    pub dry_run: bool,
    /// Exit once every input has been read to its end and everything was pushed.
    #[serde(default)]
    pub exit_on_eof: bool,
}

/// Default positions file.
pub fn default_positions_file() -> PathBuf {
    PathBuf::from("log-shipper-positions.json")
}
/// Default static labels: `app="llm-gateway"`.
pub fn default_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), "llm-gateway".to_string())])
}
/// Default label fields: `event`, `level`, `model`, `tenant`.
pub fn default_label_fields() -> Vec<String> {
    ["event", "level", "model", "tenant"]
        .map(String::from)
        .to_vec()
}
/// Default structured-metadata fields: `request_id`.
pub fn default_metadata_fields() -> Vec<String> {
    vec!["request_id".to_string()]
}
/// Default timestamp field: `ts`.
pub fn default_timestamp_field() -> String {
    "ts".to_string()
}
/// Default batch size: 1 MiB.
pub fn default_batch_max_bytes() -> usize {
    1024 * 1024
}
/// Default batch age: 1 s.
pub fn default_batch_max_wait_ms() -> u64 {
    1000
}
/// Default maximum line: 256 KB (256,000 bytes, Loki's `max_line_size`).
pub fn default_max_line_bytes() -> usize {
    256_000
}
/// Default for long lines: truncate.
pub fn default_line_too_long() -> LineTooLong {
    LineTooLong::Truncate
}
/// Default limit of distinct values per label field: 200.
pub fn default_max_label_values() -> usize {
    200
}
/// Default poll interval: 250 ms.
pub fn default_poll_interval_ms() -> u64 {
    250
}
/// Default rotate wait: 5 s.
pub fn default_rotate_wait_ms() -> u64 {
    5000
}
/// Default open-files budget: 256 (well under the usual limit of 1,024).
pub fn default_max_open_files() -> usize {
    256
}
/// Descriptors kept free for everything else when the budget is fitted to the limit.
pub const FD_RESERVE: u64 = 64;
/// Default request timeout: 30 s.
pub fn default_request_timeout_ms() -> u64 {
    30_000
}
/// Default first retry delay: 500 ms.
pub fn default_retry_initial_backoff_ms() -> u64 {
    500
}
/// Default longest retry delay: 30 s.
pub fn default_retry_max_backoff_ms() -> u64 {
    30_000
}
/// Default shutdown budget: 10 s.
pub fn default_shutdown_timeout_ms() -> u64 {
    10_000
}
/// Default maximum timestamp age: 167 h (Loki's 168 h minus a margin).
pub fn default_max_timestamp_age_secs() -> u64 {
    167 * 3600
}
/// Default maximum timestamp lead: 5 min (Loki allows 10).
pub fn default_max_timestamp_future_secs() -> u64 {
    300
}

impl Default for Config {
    fn default() -> Self {
        Self {
            loki_url: None,
            inputs: Vec::new(),
            positions_file: default_positions_file(),
            labels: default_labels(),
            label_fields: default_label_fields(),
            metadata_fields: default_metadata_fields(),
            timestamp_field: default_timestamp_field(),
            tenant: None,
            basic_auth_user: None,
            basic_auth_password_file: None,
            bearer_token_file: None,
            tls_ca_file: None,
            batch_max_bytes: default_batch_max_bytes(),
            batch_max_wait_ms: default_batch_max_wait_ms(),
            max_line_bytes: default_max_line_bytes(),
            line_too_long: default_line_too_long(),
            max_label_values: default_max_label_values(),
            poll_interval_ms: default_poll_interval_ms(),
            rotate_wait_ms: default_rotate_wait_ms(),
            max_open_files: default_max_open_files(),
            request_timeout_ms: default_request_timeout_ms(),
            retry_initial_backoff_ms: default_retry_initial_backoff_ms(),
            retry_max_backoff_ms: default_retry_max_backoff_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            max_timestamp_age_secs: default_max_timestamp_age_secs(),
            max_timestamp_future_secs: default_max_timestamp_future_secs(),
            metrics_listen: None,
            dry_run: false,
            exit_on_eof: false,
        }
    }
}

/// Command line (every flag also reads `LOG_SHIPPER_<FLAG>`).
#[derive(Debug, Clone, Default, ClapParser)]
#[command(
    name = "log-shipper",
    version,
    about = "Tails JSON event lines and pushes them to Grafana Loki, at least once"
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "LOG_SHIPPER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Loki base URL or full push URL.
    #[arg(long, env = "LOG_SHIPPER_LOKI_URL")]
    pub loki_url: Option<String>,
    /// File, glob, or `-` for stdin (repeatable; env: comma separated).
    #[arg(long = "input", env = "LOG_SHIPPER_INPUT", num_args = 1.., value_delimiter = ',')]
    pub inputs: Vec<String>,
    /// Positions file.
    #[arg(long = "positions", env = "LOG_SHIPPER_POSITIONS")]
    pub positions_file: Option<PathBuf>,
    /// Static label NAME=VALUE (repeatable; replaces the default `app=llm-gateway`).
    #[arg(long = "label", env = "LOG_SHIPPER_LABEL", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// JSON field to use as a stream label (repeatable; replaces the defaults).
    #[arg(
        long = "label-field",
        env = "LOG_SHIPPER_LABEL_FIELD",
        value_delimiter = ','
    )]
    pub label_fields: Vec<String>,
    /// JSON field to send as structured metadata (repeatable; replaces `request_id`).
    #[arg(
        long = "metadata-field",
        env = "LOG_SHIPPER_METADATA_FIELD",
        value_delimiter = ','
    )]
    pub metadata_fields: Vec<String>,
    /// JSON field holding the event time.
    #[arg(long, env = "LOG_SHIPPER_TIMESTAMP_FIELD")]
    pub timestamp_field: Option<String>,
    /// Tenant (`X-Scope-OrgID`).
    #[arg(long, env = "LOG_SHIPPER_TENANT")]
    pub tenant: Option<String>,
    /// Basic-auth user.
    #[arg(long, env = "LOG_SHIPPER_BASIC_AUTH_USER")]
    pub basic_auth_user: Option<String>,
    /// File holding the basic-auth password.
    #[arg(long, env = "LOG_SHIPPER_BASIC_AUTH_PASSWORD_FILE")]
    pub basic_auth_password_file: Option<PathBuf>,
    /// File holding a bearer token.
    #[arg(long, env = "LOG_SHIPPER_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) for TLS.
    #[arg(long, env = "LOG_SHIPPER_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Batch size limit in bytes.
    #[arg(long, env = "LOG_SHIPPER_BATCH_MAX_BYTES")]
    pub batch_max_bytes: Option<usize>,
    /// Batch age limit in milliseconds.
    #[arg(long, env = "LOG_SHIPPER_BATCH_MAX_WAIT_MS")]
    pub batch_max_wait_ms: Option<u64>,
    /// Longest line shipped unchanged, in bytes.
    #[arg(long, env = "LOG_SHIPPER_MAX_LINE_BYTES")]
    pub max_line_bytes: Option<usize>,
    /// `truncate` or `drop` lines longer than --max-line-bytes.
    #[arg(long, env = "LOG_SHIPPER_LINE_TOO_LONG", value_enum)]
    pub line_too_long: Option<LineTooLong>,
    /// Distinct values per label field before new ones become `other` (0: no limit;
    /// default 200).
    #[arg(long, env = "LOG_SHIPPER_MAX_LABEL_VALUES")]
    pub max_label_values: Option<usize>,
    /// Poll / re-scan interval in milliseconds.
    #[arg(long, env = "LOG_SHIPPER_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,
    /// Idle time before a rotated file is closed, in milliseconds.
    #[arg(long, env = "LOG_SHIPPER_ROTATE_WAIT_MS")]
    pub rotate_wait_ms: Option<u64>,
    /// Most input files open at once (default 256, and at most the process's file
    /// limit minus 64); more files are parked and reopened by position.
    #[arg(long, env = "LOG_SHIPPER_MAX_OPEN_FILES")]
    pub max_open_files: Option<usize>,
    /// Push request timeout in milliseconds.
    #[arg(long, env = "LOG_SHIPPER_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// First retry delay in milliseconds.
    #[arg(long, env = "LOG_SHIPPER_RETRY_INITIAL_BACKOFF_MS")]
    pub retry_initial_backoff_ms: Option<u64>,
    /// Longest retry delay in milliseconds.
    #[arg(long, env = "LOG_SHIPPER_RETRY_MAX_BACKOFF_MS")]
    pub retry_max_backoff_ms: Option<u64>,
    /// Time allowed to flush on SIGTERM, in milliseconds.
    #[arg(long, env = "LOG_SHIPPER_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Replace event timestamps older than this (seconds) by the read time.
    #[arg(long, env = "LOG_SHIPPER_MAX_TIMESTAMP_AGE_SECS")]
    pub max_timestamp_age_secs: Option<u64>,
    /// Replace event timestamps further in the future than this (seconds).
    #[arg(long, env = "LOG_SHIPPER_MAX_TIMESTAMP_FUTURE_SECS")]
    pub max_timestamp_future_secs: Option<u64>,
    /// Address for /metrics and /healthz (port 0 picks one; the address is printed).
    #[arg(long, env = "LOG_SHIPPER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Print batches as JSON instead of pushing.
    #[arg(long, env = "LOG_SHIPPER_DRY_RUN")]
    pub dry_run: bool,
    /// Exit when all inputs are read to their end and pushed.
    #[arg(long, env = "LOG_SHIPPER_EXIT_ON_EOF")]
    pub exit_on_eof: bool,
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Reads the file named by `--config` (if any) and applies the flags over it.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let mut cfg = match &cli.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                Self::from_toml(&text, p)?
            }
            None => Self::default(),
        };
        cfg.apply_cli(cli)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies flags (and env vars) over the file values.
    pub fn apply_cli(&mut self, cli: &Cli) -> Result<(), ConfigError> {
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        fn set_opt<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        set_opt(&mut self.loki_url, &cli.loki_url);
        if !cli.inputs.is_empty() {
            self.inputs = cli.inputs.clone();
        }
        set(&mut self.positions_file, &cli.positions_file);
        if !cli.labels.is_empty() {
            let mut labels = BTreeMap::new();
            for l in &cli.labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| ConfigError::LabelSyntax(l.clone()))?;
                labels.insert(k.trim().to_string(), v.to_string());
            }
            self.labels = labels;
        }
        if !cli.label_fields.is_empty() {
            self.label_fields = cli.label_fields.clone();
        }
        if !cli.metadata_fields.is_empty() {
            self.metadata_fields = cli.metadata_fields.clone();
        }
        set(&mut self.timestamp_field, &cli.timestamp_field);
        set_opt(&mut self.tenant, &cli.tenant);
        set_opt(&mut self.basic_auth_user, &cli.basic_auth_user);
        set_opt(
            &mut self.basic_auth_password_file,
            &cli.basic_auth_password_file,
        );
        set_opt(&mut self.bearer_token_file, &cli.bearer_token_file);
        set_opt(&mut self.tls_ca_file, &cli.tls_ca_file);
        set(&mut self.batch_max_bytes, &cli.batch_max_bytes);
        set(&mut self.batch_max_wait_ms, &cli.batch_max_wait_ms);
        set(&mut self.max_line_bytes, &cli.max_line_bytes);
        set(&mut self.line_too_long, &cli.line_too_long);
        set(&mut self.max_label_values, &cli.max_label_values);
        set(&mut self.poll_interval_ms, &cli.poll_interval_ms);
        set(&mut self.rotate_wait_ms, &cli.rotate_wait_ms);
        set(&mut self.max_open_files, &cli.max_open_files);
        set(&mut self.request_timeout_ms, &cli.request_timeout_ms);
        set(
            &mut self.retry_initial_backoff_ms,
            &cli.retry_initial_backoff_ms,
        );
        set(&mut self.retry_max_backoff_ms, &cli.retry_max_backoff_ms);
        set(&mut self.shutdown_timeout_ms, &cli.shutdown_timeout_ms);
        set(
            &mut self.max_timestamp_age_secs,
            &cli.max_timestamp_age_secs,
        );
        set(
            &mut self.max_timestamp_future_secs,
            &cli.max_timestamp_future_secs,
        );
        set_opt(&mut self.metrics_listen, &cli.metrics_listen);
        self.dry_run |= cli.dry_run;
        self.exit_on_eof |= cli.exit_on_eof;
        Ok(())
    }

    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.inputs.is_empty() {
            return bad("at least one --input is required");
        }
        if self.loki_url.is_none() && !self.dry_run {
            return bad("--loki-url is required (or use --dry-run)");
        }
        if let Some(u) = &self.loki_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return bad("--loki-url must start with http:// or https://");
        }
        if self.basic_auth_user.is_some() != self.basic_auth_password_file.is_some() {
            return bad("--basic-auth-user and --basic-auth-password-file go together");
        }
        if self.basic_auth_user.is_some() && self.bearer_token_file.is_some() {
            return bad("use either basic auth or a bearer token, not both");
        }
        if self.batch_max_bytes < 1024 {
            return bad("--batch-max-bytes must be at least 1024");
        }
        if self.max_line_bytes < 128 {
            return bad("--max-line-bytes must be at least 128");
        }
        if self.max_open_files == 0 {
            return bad("--max-open-files must be at least 1");
        }
        if self.poll_interval_ms == 0 || self.batch_max_wait_ms == 0 {
            return bad("--poll-interval-ms and --batch-max-wait-ms must be positive");
        }
        if self.retry_initial_backoff_ms == 0
            || self.retry_max_backoff_ms < self.retry_initial_backoff_ms
        {
            return bad("retry backoff: initial must be positive and not above the maximum");
        }
        crate::parser::Parser::new(self.parser_config())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// The open-files budget actually used: `max_open_files`, lowered to the process's
    /// soft `RLIMIT_NOFILE` minus [`FD_RESERVE`] (at least 8).
    pub fn effective_max_open_files(&self) -> usize {
        let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(u64::MAX);
        let fitted = limit.saturating_sub(FD_RESERVE).max(8);
        self.max_open_files
            .min(usize::try_from(fitted).unwrap_or(usize::MAX))
    }

    /// The parser part.
    pub fn parser_config(&self) -> ParserConfig {
        ParserConfig {
            static_labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            label_fields: self.label_fields.clone(),
            metadata_fields: self.metadata_fields.clone(),
            timestamp_field: self.timestamp_field.clone(),
            max_line_bytes: self.max_line_bytes,
            line_too_long: self.line_too_long,
            max_label_values: self.max_label_values,
            max_timestamp_age_ns: (self.max_timestamp_age_secs as i64)
                .saturating_mul(1_000_000_000),
            max_timestamp_future_ns: (self.max_timestamp_future_secs as i64)
                .saturating_mul(1_000_000_000),
        }
    }

    /// Poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

/// Reads a secret file, dropping one trailing newline.
pub fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let s = std::fs::read_to_string(path).map_err(|source| ConfigError::Secret {
        path: path.to_owned(),
        source,
    })?;
    Ok(s.strip_suffix('\n')
        .map(|x| x.strip_suffix('\r').unwrap_or(x))
        .unwrap_or(&s)
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["log-shipper"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn flags_only() {
        let c = Config::load(&cli(&[
            "--loki-url",
            "http://l:3100",
            "--input",
            "/var/log/a.log",
            "/var/log/b*.log",
        ]))
        .unwrap();
        assert_eq!(c.inputs, vec!["/var/log/a.log", "/var/log/b*.log"]);
        assert_eq!(c.labels, default_labels());
        assert_eq!(c.label_fields, default_label_fields());
        assert_eq!(c.batch_max_bytes, 1 << 20);
        assert_eq!(c.line_too_long, LineTooLong::Truncate);
    }

    #[test]
    fn file_then_flags() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(
            &p,
            r#"
loki_url = "http://file:3100"
inputs = ["/x.log"]
labels = { app = "gw", env = "prod" }
batch_max_bytes = 5000
line_too_long = "drop"
"#,
        )
        .unwrap();
        let ps = p.display().to_string();
        let c = Config::load(&cli(&[
            "--config",
            &ps,
            "--batch-max-bytes",
            "9000",
            "--label",
            "team=x",
        ]))
        .unwrap();
        assert_eq!(c.loki_url.as_deref(), Some("http://file:3100"));
        assert_eq!(c.batch_max_bytes, 9000);
        assert_eq!(c.line_too_long, LineTooLong::Drop);
        assert_eq!(
            c.labels,
            BTreeMap::from([("team".to_string(), "x".to_string())])
        );
        std::fs::write(&p, "loki_url = \"http://x\"\nbogus = 1\n").unwrap();
        assert!(matches!(
            Config::load(&cli(&["--config", &ps])),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn invalid_combinations() {
        for args in [
            vec!["--input", "x"],
            vec!["--loki-url", "http://l"],
            vec!["--loki-url", "ftp://l", "--input", "x"],
            vec![
                "--loki-url",
                "http://l",
                "--input",
                "x",
                "--label",
                "bad-name=1",
            ],
            vec![
                "--loki-url",
                "http://l",
                "--input",
                "x",
                "--label",
                "novalue",
            ],
            vec![
                "--loki-url",
                "http://l",
                "--input",
                "x",
                "--basic-auth-user",
                "u",
            ],
            vec![
                "--loki-url",
                "http://l",
                "--input",
                "x",
                "--batch-max-bytes",
                "10",
            ],
        ] {
            assert!(Config::load(&cli(&args)).is_err(), "{args:?}");
        }
        assert!(Config::load(&cli(&["--dry-run", "--input", "-"])).is_ok());
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../log-shipper.example.toml");
        let c = Config::from_toml(text, Path::new("log-shipper.example.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9101".parse().unwrap()));
    }

    #[test]
    fn secrets() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, "hunter2\n").unwrap();
        assert_eq!(read_secret(&p).unwrap(), "hunter2");
    }
}
