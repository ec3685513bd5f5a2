//! The crypto machine's outgoing requests (key uploads, queries and claims, to-device
//! messages) sent over HTTP, each alone, with the answers reported back to the machine.

use std::sync::Arc;

use tracing::{debug, warn};

use super::{Client, ClientError};
use crate::crypto::{
    KeysClaimResponse, KeysQueryResponse, KeysUploadResponse, OlmMachine, OutgoingKind,
    OutgoingRequest,
};
use crate::http::{HttpError, MAX_BODY_BYTES, with_retry};

impl Client {
    /// Send one request of the crypto machine and report the answer back to it (on a
    /// blocking thread: the machine writes to the store). Answers are parsed leniently (an
    /// invalid entry is left out, not the whole answer refused).
    pub(crate) async fn send_request(
        &self,
        machine: &Arc<OlmMachine>,
        request: OutgoingRequest,
    ) -> Result<(), ClientError> {
        let m = Arc::clone(machine);
        let id = request.id;
        match request.kind {
            OutgoingKind::KeysUpload(r) => {
                let answer = self.send_raw(r).await.map_err(ClientError::from);
                let response = answer.and_then(|body| {
                    KeysUploadResponse::from_json(&body).map_err(ClientError::from)
                });
                match response {
                    Ok(response) => {
                        self.blocking(move |_| Ok(m.mark_keys_upload_sent(&response)?))
                            .await?
                    }
                    // The same keys go up again (identical keys are accepted again).
                    Err(e) => {
                        machine.mark_upload_failed();
                        return Err(e);
                    }
                }
            }
            OutgoingKind::KeysQuery(r) => match self.send_raw(r).await {
                Ok(body) => {
                    let response = KeysQueryResponse::from_json(&body);
                    let response = match response {
                        Ok(r) => r,
                        Err(e) => {
                            self.blocking(move |_| Ok(m.mark_query_failed(&id, true)?))
                                .await?;
                            return Err(e.into());
                        }
                    };
                    self.blocking(move |c| c.keys_query_answered(&m, &id, &response))
                        .await?;
                }
                Err(e) => {
                    let permanent = e.is_permanent();
                    self.blocking(move |_| Ok(m.mark_query_failed(&id, permanent)?))
                        .await?;
                    return Err(e.into());
                }
            },
            OutgoingKind::KeysClaim(r) => {
                let body = self.send_raw(r).await?;
                let response = KeysClaimResponse::from_json(&body)?;
                let outcome = self
                    .blocking(move |_| Ok(m.mark_keys_claim_sent(&response)?))
                    .await?;
                debug!(
                    created = outcome.sessions_created,
                    failed = outcome.failed.len(),
                    "keys claim"
                );
            }
            OutgoingKind::ToDevice(r) => match self.send_raw(r).await {
                // Same transaction id on every retry: the server delivers it once.
                Ok(_) => {
                    self.blocking(move |_| Ok(m.mark_to_device_sent(&id)?))
                        .await?
                }
                // Refused for good: dropped, so that it does not hold up the others.
                Err(e) if e.is_permanent() => {
                    self.blocking(move |_| Ok(m.mark_to_device_failed(&id)?))
                        .await?
                }
                Err(e) => return Err(e.into()),
            },
        }
        Ok(())
    }

    /// Send with retries on transient failures; the body of the answer.
    async fn send_raw<R>(&self, request: R) -> Result<bytes::Bytes, HttpError>
    where
        R: ruma::api::OutgoingRequest + Clone,
        for<'a> R::Authentication: ruma::api::auth_scheme::AuthScheme<
                Input<'a> = ruma::api::auth_scheme::SendAccessToken<'a>,
            >,
        for<'a> R::PathBuilder: ruma::api::path_builder::PathBuilder<
                Input<'a> = std::borrow::Cow<'a, ruma::api::SupportedVersions>,
            >,
    {
        with_retry(|| self.inner.http.send_raw(request.clone(), MAX_BODY_BYTES)).await
    }

    fn keys_query_answered(
        &self,
        machine: &OlmMachine,
        request_id: &str,
        response: &KeysQueryResponse,
    ) -> Result<(), ClientError> {
        let outcome = machine.mark_keys_query_sent(request_id, response)?;
        debug!(
            updated = outcome.updated_devices,
            new = outcome.new_devices.len(),
            removed = outcome.removed_devices.len(),
            rejected = outcome.rejected.len(),
            "keys query"
        );
        if !outcome.improved_sessions.is_empty() {
            self.recheck_kept_events(machine, Some(outcome.improved_sessions))?;
        }
        self.report_identity_changes(outcome.identity_changes);
        if !outcome.new_devices.is_empty() {
            self.inner
                .new_devices_learned
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.inner
                .rooms_with_new_devices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(outcome.affected_rooms);
        }
        Ok(())
    }

    /// Send everything the crypto machine is waiting to send. Each request succeeds or fails
    /// alone: one that fails does not keep the others from going out (a to-device message
    /// the server refuses for good is dropped). Returns the first failure, after trying all.
    pub async fn send_outgoing(&self) -> Result<(), ClientError> {
        let _guard = self.inner.outgoing.lock().await;
        let machine = self.machine()?;
        let mut first_error = None;
        // Answers may produce more requests (e.g. more one-time keys): a few rounds.
        for _ in 0..4 {
            let m = Arc::clone(&machine);
            // The guard is made with the requests, so that they are returned to the machine
            // even if this future is dropped while the blocking job runs.
            let (requests, mut unreported) = self
                .blocking(move |_| {
                    let requests = m.outgoing_requests()?;
                    let unreported = Unreported::new(m, &requests);
                    Ok((requests, unreported))
                })
                .await?;
            if requests.is_empty() {
                break;
            }
            let mut failed = false;
            let mut verification_failed = false;
            for request in requests {
                let id = request.id.clone();
                let verification = is_verification_message(&request);
                if verification && verification_failed {
                    // Verification messages go in order (a `done` before its `mac` ends the
                    // other side's flow): the rest wait for the next round, still stored.
                    continue;
                }
                if let Err(e) = self.send_request(&machine, request).await {
                    warn!(error = %e, "a crypto request failed");
                    failed = true;
                    verification_failed |= verification;
                    first_error.get_or_insert(e);
                }
                unreported.done(&id);
            }
            if failed {
                break;
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A stored `m.key.verification.*` to-device message.
fn is_verification_message(request: &OutgoingRequest) -> bool {
    matches!(&request.kind, OutgoingKind::ToDevice(r)
        if r.event_type.to_string().starts_with("m.key.verification."))
}

/// Key uploads and queries the machine handed out and that were not reported back yet. If
/// sending stops early (an error, or the future is dropped, e.g. the sync loop stopped),
/// they are reported as failed on drop, so the machine offers them again instead of
/// treating them as in flight forever.
struct Unreported {
    machine: Arc<OlmMachine>,
    /// Request id and whether it is the key upload.
    ids: Vec<(String, bool)>,
}

impl Unreported {
    fn new(machine: Arc<OlmMachine>, requests: &[OutgoingRequest]) -> Self {
        let ids = requests
            .iter()
            .filter_map(|r| match r.kind {
                OutgoingKind::KeysUpload(_) => Some((r.id.clone(), true)),
                OutgoingKind::KeysQuery(_) => Some((r.id.clone(), false)),
                _ => None,
            })
            .collect();
        Self { machine, ids }
    }

    fn done(&mut self, id: &str) {
        self.ids.retain(|(i, _)| i != id);
    }
}

impl Drop for Unreported {
    fn drop(&mut self) {
        for (id, upload) in self.ids.drain(..) {
            if upload {
                self.machine.mark_upload_failed();
            } else if let Err(e) = self.machine.mark_query_failed(&id, false) {
                warn!(error = %e, "could not return an unsent key query");
            }
        }
    }
}
