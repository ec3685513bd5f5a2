//! What the app sees of its queued messages: a local echo per message and its state
//! (queued, sending, sent, waiting to retry, stuck, cancelled), published as it changes;
//! and the retry timing of messages that failed for a reason that may go away (exponential
//! backoff with jitter, the server's `retry_after_ms` honoured).

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::Value;

use super::ClientError;
use crate::http::HttpError;
use crate::store::{QueuedSend, StuckReason};
use crate::time::{Clock, SystemClock};

/// First retry delay of a message; doubled per failure up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Longest retry delay (also the cap on the server's `retry_after_ms`).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Where a queued message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendState {
    /// Stored; waiting for its turn (or for the message it relates to).
    Queued,
    /// Being prepared or sent now.
    Sending,
    /// An attachment is being uploaded: `sent_bytes` of `total_bytes` handed to the
    /// connection (published at most once per percent).
    Uploading {
        /// Bytes sent so far.
        sent_bytes: u64,
        /// The upload's size (of the ciphertext, in an encrypted room).
        total_bytes: u64,
    },
    /// The server has it. `event_id` is `None` when the server's answer did not say (the
    /// remote echo will).
    Sent {
        /// The event id.
        event_id: Option<OwnedEventId>,
    },
    /// Failed for a reason that may go away (network, 5xx, 429); tried again at
    /// `next_attempt_ms` (Unix ms), or as soon as the network is back.
    WaitingToRetry {
        /// When the next attempt is due (Unix ms).
        next_attempt_ms: u64,
        /// The failure, in words (for logs).
        error: String,
    },
    /// Not sent until the app retries it (after fixing the cause) or cancels it.
    Stuck {
        /// Why.
        reason: StuckReason,
    },
    /// Cancelled by the app (or its target was): it will not be sent.
    Cancelled,
}

/// A queued message's state changed.
#[derive(Clone, Debug, PartialEq)]
pub struct SendUpdate {
    /// Room.
    pub room_id: OwnedRoomId,
    /// The message's transaction id (its local echo's id).
    pub txn_id: String,
    /// The new state.
    pub state: SendState,
    /// The message's echo when it is new or its content changed (queued, edited).
    pub echo: Option<LocalEcho>,
}

/// A queued message as the app shows it before the server has it.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalEcho {
    /// Transaction id: the remote event carries it back (`TimelineEvent::transaction_id`).
    pub txn_id: String,
    /// Room.
    pub room_id: OwnedRoomId,
    /// Event type as queued (`m.room.message`, `m.reaction`, `m.room.redaction`).
    pub event_type: String,
    /// Content as queued (plaintext).
    pub content: Value,
    /// Current state.
    pub state: SendState,
}

impl LocalEcho {
    /// The echo of a stored message, in `state`; `None` if its content is unreadable.
    pub(crate) fn of(q: &QueuedSend, state: SendState) -> Option<Self> {
        let content = serde_json::from_slice(q.app_content().as_bytes()).ok()?;
        let event_type = match &q.echo {
            // The type is the ready one (`m.room.encrypted`); the echo keeps the app's.
            Some(_) => echo_type(&content),
            None => q.event_type.clone(),
        };
        Some(Self {
            txn_id: q.txn_id.clone(),
            room_id: q.room_id.clone(),
            event_type,
            content: echo_content(content),
            state,
        })
    }
}

/// The kept echo of an encrypted message: `{"type": .., "content": ..}`.
pub(crate) fn kept_echo(event_type: &str, content: &Value) -> Value {
    serde_json::json!({"type": event_type, "content": content})
}

fn echo_type(kept: &Value) -> String {
    kept.get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn echo_content(kept: Value) -> Value {
    match kept {
        Value::Object(mut o) if o.contains_key("type") && o.contains_key("content") => {
            o.remove("content").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// Why a message that failed for good is stuck (`None`: the failure may go away, or the
/// server has the message).
pub(crate) fn stuck_reason(error: &ClientError) -> Option<StuckReason> {
    Some(match error {
        ClientError::UnknownDevices(_) | ClientError::PromptDismissed => {
            StuckReason::UnknownDevices
        }
        ClientError::RoomNotEncrypted(_) => StuckReason::UnknownRoom,
        ClientError::InvalidInput(_) => StuckReason::InvalidContent,
        ClientError::FileUnreadable(_) => StuckReason::FileUnreadable,
        ClientError::FileTooLarge { .. } => StuckReason::TooLarge,
        ClientError::Http(
            e @ HttpError::Server {
                status, errcode, ..
            },
        ) => {
            if !e.is_permanent() {
                return None;
            }
            match (*status, errcode.as_str()) {
                (413, _) | (_, "M_TOO_LARGE") => StuckReason::TooLarge,
                (403, _) | (_, "M_FORBIDDEN") => StuckReason::Forbidden,
                (404, _) | (_, "M_NOT_FOUND") => StuckReason::UnknownRoom,
                _ => StuckReason::Refused,
            }
        }
        ClientError::Http(HttpError::Request(_)) => StuckReason::InvalidContent,
        ClientError::Http(HttpError::AuthRequired { .. }) => StuckReason::Forbidden,
        _ => return None,
    })
}

/// Retry timing of the messages waiting to be retried (in memory: a new process tries
/// them at its first sync).
#[derive(Debug, Default)]
pub(crate) struct Retries {
    by_txn: HashMap<String, Retry>,
}

#[derive(Debug)]
struct Retry {
    failures: u32,
    next_attempt_ms: u64,
    /// The last failure was the network's: the message is due as soon as it is back.
    network: bool,
    /// The last failure, in words.
    error: String,
}

impl Retries {
    /// Record a failure of `txn_id`; returns when to try again (Unix ms).
    pub(crate) fn failed(&mut self, txn_id: &str, error: &ClientError) -> u64 {
        let retry = self.by_txn.entry(txn_id.to_owned()).or_insert(Retry {
            failures: 0,
            next_attempt_ms: 0,
            network: false,
            error: String::new(),
        });
        retry.failures += 1;
        let delay = delay_after(retry.failures, error);
        retry.next_attempt_ms = now_ms().saturating_add(delay.as_millis() as u64);
        retry.network = matches!(error, ClientError::Http(HttpError::Network(_)));
        retry.error = error.to_string();
        retry.next_attempt_ms
    }

    /// The state of a queued message that is not being sent now.
    pub(crate) fn state_of(&self, q: &QueuedSend) -> SendState {
        if let Some(reason) = q.stuck {
            return SendState::Stuck { reason };
        }
        match self.by_txn.get(&q.txn_id) {
            Some(r) => SendState::WaitingToRetry {
                next_attempt_ms: r.next_attempt_ms,
                error: r.error.clone(),
            },
            None => SendState::Queued,
        }
    }

    /// `txn_id` left the queue or was sent: forget its failures.
    pub(crate) fn forget(&mut self, txn_id: &str) {
        self.by_txn.remove(txn_id);
    }

    /// Whether `txn_id` may be tried now.
    pub(crate) fn is_due(&self, txn_id: &str) -> bool {
        self.by_txn
            .get(txn_id)
            .is_none_or(|r| r.next_attempt_ms <= now_ms())
    }

    /// The network is back (a request succeeded): messages that failed on it are due.
    /// Returns whether any message waits.
    pub(crate) fn network_is_back(&mut self) -> bool {
        for retry in self.by_txn.values_mut().filter(|r| r.network) {
            retry.next_attempt_ms = 0;
        }
        !self.by_txn.is_empty()
    }

    /// When the earliest waiting message is due (Unix ms), if one waits.
    pub(crate) fn earliest_due_ms(&self) -> Option<u64> {
        self.by_txn.values().map(|r| r.next_attempt_ms).min()
    }

    /// Whether a waiting message is due now.
    pub(crate) fn any_due(&self) -> bool {
        let now = now_ms();
        self.by_txn.values().any(|r| r.next_attempt_ms <= now)
    }
}

/// Exponential backoff with jitter (a random 50–100 % of the doubled delay), at least the
/// server's `retry_after_ms`, at most [`MAX_RETRY_DELAY`].
fn delay_after(failures: u32, error: &ClientError) -> Duration {
    let doubled = FIRST_RETRY_DELAY.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = doubled.min(MAX_RETRY_DELAY);
    let jittered = capped.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
    let asked = match error {
        ClientError::Http(HttpError::Server {
            retry_after_ms: Some(ms),
            ..
        }) => Duration::from_millis(*ms).min(MAX_RETRY_DELAY),
        _ => Duration::ZERO,
    };
    jittered.max(asked)
}

pub(crate) fn now_ms() -> u64 {
    SystemClock.now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: u16, errcode: &str, retry_after_ms: Option<u64>) -> ClientError {
        ClientError::Http(HttpError::Server {
            status,
            errcode: errcode.into(),
            message: String::new(),
            retry_after_ms,
        })
    }

    #[test]
    fn failures_that_retrying_cannot_fix_are_stuck_with_their_reason() {
        let cases = [
            (
                server(413, "M_TOO_LARGE", None),
                Some(StuckReason::TooLarge),
            ),
            (
                server(403, "M_FORBIDDEN", None),
                Some(StuckReason::Forbidden),
            ),
            (server(400, "M_BAD_JSON", None), Some(StuckReason::Refused)),
            (
                ClientError::UnknownDevices(vec!["D".into()]),
                Some(StuckReason::UnknownDevices),
            ),
            (server(429, "M_LIMIT_EXCEEDED", Some(10)), None),
            (server(502, "M_UNKNOWN", None), None),
            (server(401, "M_UNKNOWN_TOKEN", None), None),
            (ClientError::Http(HttpError::Network("reset".into())), None),
            (ClientError::Closed, None),
        ];
        for (error, reason) in cases {
            assert_eq!(stuck_reason(&error), reason, "{error}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        let network = ClientError::Http(HttpError::Network("down".into()));
        for failures in 1..=12 {
            let d = delay_after(failures, &network);
            let full = FIRST_RETRY_DELAY
                .saturating_mul(1 << (failures - 1))
                .min(MAX_RETRY_DELAY);
            assert!(d <= full && d >= full / 2, "{failures}: {d:?}");
        }
        let limited = server(429, "M_LIMIT_EXCEEDED", Some(45_000));
        assert!(delay_after(1, &limited) >= Duration::from_secs(45));
        let absurd = server(429, "M_LIMIT_EXCEEDED", Some(u64::MAX));
        assert_eq!(delay_after(1, &absurd), MAX_RETRY_DELAY);
    }

    #[test]
    fn a_message_that_failed_on_the_network_is_due_when_it_is_back() {
        let mut retries = Retries::default();
        retries.failed("net", &ClientError::Http(HttpError::Network("down".into())));
        retries.failed("busy", &server(503, "M_UNKNOWN", None));
        assert!(!retries.is_due("net") && !retries.is_due("busy"));
        assert!(retries.is_due("other"));
        assert!(retries.network_is_back());
        assert!(retries.is_due("net"), "due once the network is back");
        assert!(!retries.is_due("busy"), "a busy server keeps its backoff");
        assert_eq!(retries.earliest_due_ms(), Some(0), "the one due now");
        retries.forget("net");
        assert!(retries.earliest_due_ms().is_some_and(|due| due > now_ms()));
        retries.forget("busy");
        assert!(!retries.network_is_back());
        assert_eq!(retries.earliest_due_ms(), None);
    }
}
