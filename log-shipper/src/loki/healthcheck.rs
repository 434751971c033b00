//! Start-up health check: `GET /ready` on Loki. A failure is only logged: the shipper
//! keeps reading and retries pushes, so a Loki that comes up later loses nothing.

use super::client::LokiClient;

/// Checks Loki's readiness and logs the result. Returns whether it answered 2xx.
pub async fn check(client: &LokiClient) -> bool {
    match client.ready().await {
        Ok(s) if (200..300).contains(&s) => {
            tracing::info!(url = %client.config().ready_url, "Loki is ready");
            true
        }
        Ok(s) => {
            tracing::warn!(url = %client.config().ready_url, status = s, "Loki is not ready yet; pushes will be retried");
            false
        }
        Err(e) => {
            tracing::warn!(url = %client.config().ready_url, error = %e, "Loki is unreachable; pushes will be retried");
            false
        }
    }
}
