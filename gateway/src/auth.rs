//! API keys → tenants. Keys are configured as SHA-256 hashes and compared in
//! constant time. The client's key is never forwarded upstream nor logged.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio::sync::Semaphore;

use crate::config::TenantConfig;
use crate::metrics::Label;

/// Tenant name used when no keys are configured.
pub const ANONYMOUS: &str = "anonymous";

/// SHA-256 of a key, as lowercase hex (what `llm-gateway hash-key` prints).
pub fn hash_key_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A resolved tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: Label,
    pub limit: Option<Arc<Semaphore>>,
}

/// The key table.
#[derive(Debug)]
pub struct Auth {
    keys: Vec<[u8; 32]>,
    /// Index into `tenants` for each key.
    owners: Vec<u32>,
    tenants: Vec<Tenant>,
    anonymous: Tenant,
    names: HashMap<String, Label>,
}

/// The bearer token of a request: `Authorization: Bearer <key>` (or `api-key`).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION)
        && let Ok(s) = v.to_str()
    {
        let s = s.trim();
        if s.len() > 7 && s[..7].eq_ignore_ascii_case("bearer ") {
            return Some(s[7..].trim());
        }
        return None;
    }
    headers
        .get("api-key")
        .or_else(|| headers.get("x-api-key"))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

impl Auth {
    pub fn new(tenants: &[TenantConfig]) -> Self {
        let mut keys = Vec::new();
        let mut owners = Vec::new();
        let mut list = Vec::new();
        let mut names = HashMap::new();
        for (i, t) in tenants.iter().enumerate() {
            let name: Label = Arc::new(t.name.clone());
            names.insert(t.name.clone(), name.clone());
            list.push(Tenant {
                name,
                limit: t
                    .max_concurrent_requests
                    .map(|n| Arc::new(Semaphore::new(n))),
            });
            for k in &t.key_hashes {
                keys.push(*k);
                owners.push(i as u32);
            }
        }
        Self {
            keys,
            owners,
            tenants: list,
            anonymous: Tenant {
                name: Arc::new(ANONYMOUS.to_owned()),
                limit: None,
            },
            names,
        }
    }

    /// True when keys are configured (requests must present one).
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Label for requests whose key was not accepted.
    pub fn unauthenticated_label(&self) -> Label {
        if self.enabled() {
            Arc::new("other".to_owned())
        } else {
            self.anonymous.name.clone()
        }
    }

    /// The tenant label for a tenant name (bounded).
    pub fn tenant_label(&self, name: &str) -> Option<Label> {
        self.names.get(name).cloned()
    }

    /// The tenant of a request, or `None` (→ 401) when keys are configured
    /// and the request has no valid key.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Tenant> {
        if !self.enabled() {
            return Some(self.anonymous.clone());
        }
        let key = presented_key(headers)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare against every key without early exit.
        let mut found = subtle::Choice::from(0u8);
        let mut owner = 0u32;
        for (k, o) in self.keys.iter().zip(&self.owners) {
            let eq = k.ct_eq(&digest);
            owner.conditional_assign(o, eq);
            found |= eq;
        }
        if bool::from(found) {
            self.tenants.get(owner as usize).cloned()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    fn table() -> Auth {
        let k = |s: &str| -> [u8; 32] { Sha256::digest(s.as_bytes()).into() };
        Auth::new(&[
            TenantConfig {
                name: "acme".into(),
                key_hashes: vec![k("sk-acme-1"), k("sk-acme-2")],
                max_concurrent_requests: Some(2),
            },
            TenantConfig {
                name: "beta".into(),
                key_hashes: vec![k("sk-beta")],
                max_concurrent_requests: None,
            },
        ])
    }

    #[test]
    fn hash_matches_sha256_hex() {
        assert_eq!(
            hash_key_hex("foo"),
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
    }

    #[test]
    fn keys_map_to_tenants() {
        let a = table();
        let cases = [
            ("Bearer sk-acme-1", Some("acme")),
            ("bearer sk-acme-2", Some("acme")),
            ("Bearer sk-beta", Some("beta")),
            ("Bearer sk-nope", None),
            ("Basic abc", None),
            ("Bearer ", None),
        ];
        for (h, want) in cases {
            let got = a.authenticate(&headers(h)).map(|t| t.name.to_string());
            assert_eq!(got.as_deref(), want, "{h}");
        }
        assert!(a.authenticate(&HeaderMap::new()).is_none());
        assert!(
            a.authenticate(&headers("Bearer sk-acme-1"))
                .unwrap()
                .limit
                .is_some()
        );
    }

    #[test]
    fn without_keys_everyone_is_anonymous() {
        let a = Auth::new(&[]);
        assert_eq!(
            a.authenticate(&HeaderMap::new()).unwrap().name.as_str(),
            "anonymous"
        );
    }
}
