//! Retrying requests that fail transiently (network, 429, 5xx), with backoff.

use std::time::Duration;

use tracing::warn;

use super::HttpError;

/// Attempts for a request that fails transiently.
const ATTEMPTS: u32 = 4;

/// Run `f` until it succeeds, fails for good, or attempts run out (backoff 0.5 s, 1 s, 2 s;
/// a rate-limit answer's `retry_after_ms` is honoured, up to 30 s).
pub(crate) async fn with_retry<T, F, Fut>(mut f: F) -> Result<T, HttpError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, HttpError>>,
{
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                let wait = match &e {
                    HttpError::Server {
                        retry_after_ms: Some(ms),
                        ..
                    } => Duration::from_millis((*ms).min(30_000)),
                    _ => delay,
                };
                warn!(attempt, error = %e, "transient failure, retrying");
                tokio::time::sleep(wait).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}
