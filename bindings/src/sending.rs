//! Sending: queue messages and files, see their local echoes and states, cancel, edit and
//! retry them, and download attachments.

use std::path::PathBuf;

use newt_core::client as core;
use newt_core::store::StuckReason as CoreStuckReason;

use crate::client::{NewtClient, run};
use crate::error::NewtError;
use crate::ids;

/// Something to send to a room. A `target` is an event id, or the transaction id of a
/// message still queued (the message then waits until that one is sent).
#[derive(uniffi::Enum, Clone, Debug, PartialEq, Eq)]
pub enum OutgoingMessage {
    /// `m.text`.
    Text {
        /// The text.
        body: String,
    },
    /// `m.notice` (a bot's message).
    Notice {
        /// The text.
        body: String,
    },
    /// `m.emote` (`/me`).
    Emote {
        /// The text.
        body: String,
    },
    /// A text in reply to `target`.
    Reply {
        /// The event replied to.
        target: String,
        /// The text.
        body: String,
    },
    /// A new text for `target`.
    Edit {
        /// The event edited.
        target: String,
        /// The new text.
        body: String,
    },
    /// A reaction (usually an emoji) to `target`.
    Reaction {
        /// The event reacted to.
        target: String,
        /// The reaction.
        key: String,
    },
    /// Redact `target` (never encrypted).
    Redaction {
        /// The event redacted.
        target: String,
        /// Why, shown to others.
        reason: Option<String>,
    },
}

impl From<OutgoingMessage> for core::OutgoingMessage {
    fn from(m: OutgoingMessage) -> Self {
        match m {
            OutgoingMessage::Text { body } => Self::Text { body },
            OutgoingMessage::Notice { body } => Self::Notice { body },
            OutgoingMessage::Emote { body } => Self::Emote { body },
            OutgoingMessage::Reply { target, body } => Self::Reply { target, body },
            OutgoingMessage::Edit { target, body } => Self::Edit { target, body },
            OutgoingMessage::Reaction { target, key } => Self::Reaction { target, key },
            OutgoingMessage::Redaction { target, reason } => Self::Redaction { target, reason },
        }
    }
}

/// Why a queued message stopped being sent until the app retries or cancels it.
#[derive(uniffi::Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StuckReason {
    /// Devices need a decision (the app asked to be asked), or the question was dismissed.
    UnknownDevices,
    /// Not in the room, or not allowed to send there.
    Forbidden,
    /// The message or file is too large.
    TooLarge,
    /// The room is not known.
    UnknownRoom,
    /// The server refused it for another reason.
    Refused,
    /// The queued content cannot be sent as it is (e.g. its target was cancelled).
    InvalidContent,
    /// The file to send cannot be read.
    FileUnreadable,
}

impl From<CoreStuckReason> for StuckReason {
    fn from(r: CoreStuckReason) -> Self {
        match r {
            CoreStuckReason::UnknownDevices => Self::UnknownDevices,
            CoreStuckReason::Forbidden => Self::Forbidden,
            CoreStuckReason::TooLarge => Self::TooLarge,
            CoreStuckReason::UnknownRoom => Self::UnknownRoom,
            CoreStuckReason::Refused => Self::Refused,
            CoreStuckReason::InvalidContent => Self::InvalidContent,
            CoreStuckReason::FileUnreadable => Self::FileUnreadable,
        }
    }
}

/// Where a queued message is.
#[derive(uniffi::Enum, Clone, Debug, PartialEq, Eq)]
pub enum SendState {
    /// Waiting for its turn (or for the message it relates to).
    Queued,
    /// Being prepared or sent.
    Sending,
    /// Its file is being uploaded.
    Uploading {
        /// Bytes sent so far.
        sent_bytes: u64,
        /// The upload's size.
        total_bytes: u64,
    },
    /// The server has it (`eventId` is null if the server's answer did not say; the
    /// remote echo will).
    Sent {
        /// The event id.
        event_id: Option<String>,
    },
    /// Failed for a reason that may go away; tried again at `nextAttemptMs` (Unix ms) or
    /// when the network is back.
    WaitingToRetry {
        /// When (Unix ms).
        next_attempt_ms: u64,
        /// The failure, in words (for logs).
        error: String,
    },
    /// Not sent until `retrySend` (after fixing the cause) or `cancelSend`.
    Stuck {
        /// Why.
        reason: StuckReason,
    },
    /// Cancelled; it will not be sent.
    Cancelled,
}

impl From<core::SendState> for SendState {
    fn from(s: core::SendState) -> Self {
        match s {
            core::SendState::Queued => Self::Queued,
            core::SendState::Sending => Self::Sending,
            core::SendState::Uploading {
                sent_bytes,
                total_bytes,
            } => Self::Uploading {
                sent_bytes,
                total_bytes,
            },
            core::SendState::Sent { event_id } => Self::Sent {
                event_id: event_id.map(|e| e.to_string()),
            },
            core::SendState::WaitingToRetry {
                next_attempt_ms,
                error,
            } => Self::WaitingToRetry {
                next_attempt_ms,
                error,
            },
            core::SendState::Stuck { reason } => Self::Stuck {
                reason: reason.into(),
            },
            core::SendState::Cancelled => Self::Cancelled,
        }
    }
}

/// A queued message as shown before the server has it.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct LocalEcho {
    /// Its id until sent; the remote event carries it back (`EchoReplaced`).
    pub transaction_id: String,
    /// Room.
    pub room_id: String,
    /// Event type as queued (`m.room.message`, `m.reaction`, `m.room.redaction`).
    pub event_type: String,
    /// `content.body`, if any.
    pub body: Option<String>,
    /// The content as queued, as JSON (an attachment names its local file).
    pub content_json: String,
    /// Where it is.
    pub state: SendState,
}

impl From<core::LocalEcho> for LocalEcho {
    fn from(e: core::LocalEcho) -> Self {
        Self {
            transaction_id: e.txn_id,
            room_id: e.room_id.to_string(),
            event_type: e.event_type,
            body: e
                .content
                .get("body")
                .and_then(|b| b.as_str())
                .map(str::to_owned),
            content_json: e.content.to_string(),
            state: e.state.into(),
        }
    }
}

#[uniffi::export]
impl NewtClient {
    /// Queue a message; returns its transaction id (its local echo's id) at once. It is
    /// sent in the background, in order; its states arrive through the timeline
    /// subscription. Offline, it waits and goes when the network is back.
    pub async fn queue_message(
        &self,
        room_id: String,
        message: OutgoingMessage,
    ) -> Result<String, NewtError> {
        let client = self.client()?;
        let room_id = ids::room_id(&room_id)?;
        run(async move { Ok(client.queue_message(&room_id, message.into()).await?) }).await
    }

    /// Queue the file at `path` (encrypted in an encrypted room, uploaded with progress
    /// reported as `Uploading`); returns its transaction id. The file must stay there until
    /// it is sent.
    pub async fn queue_attachment(
        &self,
        room_id: String,
        path: String,
        mimetype: String,
        name: String,
    ) -> Result<String, NewtError> {
        let client = self.client()?;
        let room_id = ids::room_id(&room_id)?;
        let file = core::Attachment {
            path: PathBuf::from(path),
            mimetype,
            name,
        };
        run(async move { Ok(client.queue_attachment(&room_id, file).await?) }).await
    }

    /// The local echoes of a room's queued messages, oldest first.
    pub async fn local_echoes(&self, room_id: String) -> Result<Vec<LocalEcho>, NewtError> {
        let client = self.client()?;
        let room_id = ids::room_id(&room_id)?;
        run(async move {
            let echoes = client.local_echoes(&room_id).await?;
            Ok(echoes.into_iter().map(LocalEcho::from).collect())
        })
        .await
    }

    /// Cancel a queued message (and the queued messages relating to it).
    pub async fn cancel_send(&self, transaction_id: String) -> Result<(), NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.cancel_send(&transaction_id).await?) }).await
    }

    /// Replace a queued message not yet encrypted by another of the same kind.
    pub async fn edit_queued(
        &self,
        transaction_id: String,
        message: OutgoingMessage,
    ) -> Result<(), NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.edit_queued(&transaction_id, message.into()).await?) }).await
    }

    /// Send a stuck message again (after fixing the cause), or a waiting one now.
    pub async fn retry_send(&self, transaction_id: String) -> Result<(), NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.retry_send(&transaction_id).await?) }).await
    }

    /// Download the attachment of a message (`contentJson`: the item's content) into the
    /// file at `path`, checked against its hash and decrypted; refused (nothing written)
    /// if larger than `maxBytes` or changed on the way. Returns its size.
    pub async fn download_attachment(
        &self,
        content_json: String,
        path: String,
        max_bytes: u64,
    ) -> Result<u64, NewtError> {
        let client = self.client()?;
        let content: serde_json::Value =
            serde_json::from_str(&content_json).map_err(|e| NewtError::InvalidInput {
                message: format!("content: {e}"),
            })?;
        run(async move {
            let path = PathBuf::from(path);
            Ok(client
                .download_attachment_to(&content, &path, max_bytes)
                .await?)
        })
        .await
    }
}
