//! log-shipper: follows JSON event files (or stdin) and pushes every line to Grafana
//! Loki, at least once.
//!
//! Main types, in pipeline order:
//! - [`tailer::Tailer`]: discovers files (paths or globs) and follows them through
//!   rotation (rename-and-create, copytruncate), deletion and restarts, with one file
//!   descriptor per open file and at most `max_open_files` open (others parked); a
//!   failed listing is never taken as a deletion.
//! - [`parser::Parser`]: line → [`parser::Record`] (labels, structured metadata,
//!   timestamp), reading only the configured fields; label values are bounded per field
//!   by [`cardinality`].
//! - [`batcher::Batcher`]: groups records by stream, sorts them by time, and tracks the
//!   input positions each batch covers.
//! - [`loki`]: protobuf types generated from the vendored `push.proto`, raw-snappy
//!   encoder, HTTP client (with `Retry-After`), health check, and
//!   [`loki::rejection`]: how many entries a Loki 400 rejected, read from its body.
//! - [`retry`]: which answers are retried and how long to wait.
//! - [`checkpoint::Checkpointer`]: the positions file, written atomically after Loki
//!   accepted a batch.
//! - [`pipeline::run`]: wires it together with bounded channels.
//! - [`metrics`]: `log_shipper_*` metrics.
//! - [`receiver`]: a Loki-faithful *test peer* (not a Loki) used by the tests and the
//!   benchmark.

pub mod batcher;
pub mod cardinality;
pub mod checkpoint;
pub mod config;
pub mod glob;
pub mod loki;
pub mod metrics;
pub mod parser;
pub mod pipeline;
pub mod receiver;
pub mod retry;
pub mod server;
pub mod tailer;
