//! Loki push: generated wire types, encoder, HTTP client and health check.
//!
//! The types come from the vendored `proto/push.proto` (package `logproto`), generated
//! at build time by `prost-build` with `protox` (no `protoc`).

pub mod client;
pub mod encoder;
pub mod healthcheck;
pub mod rejection;

/// Generated `logproto` types (`PushRequest`, `StreamAdapter`, `EntryAdapter`, ...).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/logproto.rs"));
}

/// Path of Loki's push endpoint.
pub const PUSH_PATH: &str = "/loki/api/v1/push";

/// Splits `--loki-url` (a base URL or a full push URL) into (push URL, ready URL).
pub fn endpoints(url: &str) -> (String, String) {
    let trimmed = url.trim_end_matches('/');
    if let Some(base) = trimmed.strip_suffix(PUSH_PATH) {
        (trimmed.to_string(), format!("{base}/ready"))
    } else {
        (format!("{trimmed}{PUSH_PATH}"), format!("{trimmed}/ready"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        assert_eq!(
            endpoints("http://l:3100"),
            (
                "http://l:3100/loki/api/v1/push".into(),
                "http://l:3100/ready".into()
            )
        );
        assert_eq!(
            endpoints("http://l:3100/"),
            (
                "http://l:3100/loki/api/v1/push".into(),
                "http://l:3100/ready".into()
            )
        );
        assert_eq!(
            endpoints("https://l/prefix/loki/api/v1/push"),
            (
                "https://l/prefix/loki/api/v1/push".into(),
                "https://l/prefix/ready".into()
            )
        );
    }
}
