//! Attachments: `send-file` queues a file and waits until its message is sent (upload
//! progress on stderr); `download` fetches one event by id, decrypts it and saves its
//! attachment (checked against its SHA-256, decrypted, written whole or not at all).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use newt_core::client::{
    Attachment, Client, ClientConfig, ClientError, SendState, SendUpdate, TrustPolicy,
};
use newt_core::http::HttpError;
use newt_core::notification::{Notification, NotificationDecryptor};
use newt_core::ruma::OwnedEventId;
use newt_core::store::StuckReason;
use serde_json::{Value, json};
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};

use crate::Ctx;
use crate::args::{Download, SendFile};

/// How long `download` waits for the event's room key if it is not in the store yet.
const KEY_WAIT: Duration = Duration::from_secs(10);
/// How long a failed `send-file` waits to take its message out of the queue (and, if it is
/// being uploaded, for the client to stop).
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// The MIME type of a few common file types, from the file's extension.
pub(crate) fn guess_mimetype(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("mp4") => "video/mp4",
        Some("mp3") => "audio/mpeg",
        Some("ogg") => "audio/ogg",
        Some("pdf") => "application/pdf",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Why a queued file did not get sent.
#[derive(Debug, PartialEq)]
enum Failure {
    Stuck(StuckReason),
    Cancelled,
    /// The server has the message but did not say its event id.
    NoEventId,
    Timeout,
    /// The client stopped publishing send states.
    Closed,
}

pub(crate) async fn send_file(ctx: &Ctx, a: &SendFile) -> Result<(), String> {
    ctx.restored()?;
    // The queue keeps the path: a later process that sends it may run elsewhere.
    let path = std::path::absolute(&a.path)
        .map_err(|e| format!("cannot resolve {}: {e}", a.path.display()))?;
    // The room must be known (as encrypted) before its messages are sent.
    ctx.client
        .sync_once(Duration::ZERO)
        .await
        .map_err(|e| e.to_string())?;
    let mut updates = ctx.client.subscribe_sends();
    let attachment = Attachment {
        path,
        mimetype: a.mimetype.clone(),
        name: a.name.clone(),
    };
    let txn_id = ctx
        .client
        .queue_attachment(&a.room, attachment)
        .await
        .map_err(|e| format!("cannot send {}: {e}", a.path.display()))?;
    let deadline = Instant::now() + a.timeout;
    match wait_until_sent(&mut updates, &txn_id, deadline).await {
        Ok(event_id) => {
            println!("{event_id}");
            Ok(())
        }
        Err(Failure::Timeout) => {
            let event_id = timed_out(ctx, &mut updates, &txn_id, a.timeout).await?;
            println!("{event_id}");
            Ok(())
        }
        Err(failure) => Err(give_up(ctx, &txn_id, failure).await),
    }
}

/// Follow `txn_id`'s states until it is sent (its event id), fails, or `deadline` passes.
async fn wait_until_sent(
    updates: &mut broadcast::Receiver<SendUpdate>,
    txn_id: &str,
    deadline: Instant,
) -> Result<OwnedEventId, Failure> {
    loop {
        let update = match tokio::time::timeout_at(deadline.into(), updates.recv()).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(RecvError::Closed)) => return Err(Failure::Closed),
            Ok(Err(RecvError::Lagged(missed))) => {
                eprintln!("warning: {missed} send states were missed");
                continue;
            }
            Ok(Ok(update)) => update,
        };
        if update.txn_id != txn_id {
            continue;
        }
        if let Some(line) = progress_line(&update.state, now_ms()) {
            eprintln!("{line}");
        }
        if let Some(outcome) = outcome_of(update.state) {
            return outcome;
        }
    }
}

/// What a state means for `send-file`: sent, failed, or (`None`) keep waiting.
fn outcome_of(state: SendState) -> Option<Result<OwnedEventId, Failure>> {
    match state {
        SendState::Sent {
            event_id: Some(event_id),
        } => Some(Ok(event_id)),
        SendState::Sent { event_id: None } => Some(Err(Failure::NoEventId)),
        SendState::Stuck { reason } => Some(Err(Failure::Stuck(reason))),
        SendState::Cancelled => Some(Err(Failure::Cancelled)),
        SendState::Queued
        | SendState::Sending
        | SendState::Uploading { .. }
        | SendState::WaitingToRetry { .. } => None,
    }
}

/// The stderr line for a state worth telling while waiting (`now_ms`: Unix ms).
fn progress_line(state: &SendState, now_ms: u64) -> Option<String> {
    match state {
        SendState::Uploading {
            sent_bytes,
            total_bytes,
        } => {
            let percent = sent_bytes.saturating_mul(100) / (*total_bytes).max(1);
            Some(format!(
                "uploading {percent}/100% ({sent_bytes} of {total_bytes} bytes)"
            ))
        }
        SendState::WaitingToRetry {
            next_attempt_ms,
            error,
        } => {
            let wait = next_attempt_ms.saturating_sub(now_ms).div_ceil(1000);
            Some(format!("sending failed, retrying in {wait} s: {error}"))
        }
        _ => None,
    }
}

/// The error of a file that was not sent. A stuck message is taken out of the queue, so
/// that it does not linger there (this client has no command to retry it).
async fn give_up(ctx: &Ctx, txn_id: &str, failure: Failure) -> String {
    match failure {
        Failure::Stuck(reason) => {
            let cancel = tokio::time::timeout(CANCEL_WAIT, ctx.client.cancel_send(txn_id));
            let removed = match cancel.await {
                Ok(Ok(())) => "it was taken out of the send queue",
                _ => "it stays in the send queue, stuck",
            };
            format!(
                "the file was not sent: {} ({}); {removed}",
                stuck_reason_text(reason),
                reason.as_str()
            )
        }
        Failure::Cancelled => "the file's message was cancelled".into(),
        Failure::NoEventId => format!(
            "the server has the file's message but did not return its event id (transaction {txn_id})"
        ),
        Failure::Timeout => "timeout: the file was not sent in time".into(),
        Failure::Closed => "the client stopped before the file was sent".into(),
    }
}

/// The wait timed out: the message is cancelled, so that no later command sends it
/// unexpectedly; but one sent while it was being cancelled is a success after all.
async fn timed_out(
    ctx: &Ctx,
    updates: &mut broadcast::Receiver<SendUpdate>,
    txn_id: &str,
    timeout: Duration,
) -> Result<OwnedEventId, String> {
    let what = match tokio::time::timeout(CANCEL_WAIT, ctx.client.cancel_send(txn_id)).await {
        Ok(result) => cancel_outcome(result, "it was cancelled"),
        // It is being uploaded (cancelling waits for the upload to end).
        Err(_) => cancel_in_flight(ctx, txn_id).await,
    };
    if let Some(event_id) = sent_meanwhile(updates, txn_id) {
        eprintln!("sent after the timeout, while it was being cancelled");
        return Ok(event_id);
    }
    Err(format!(
        "timeout: the file was not sent within {} s; {what}",
        timeout.as_secs()
    ))
}

/// Cancel `txn_id` while the client is sending it: close the client (which stops the
/// upload), then cancel it with a fresh client on the same store. Returns what became of
/// the message.
async fn cancel_in_flight(ctx: &Ctx, txn_id: &str) -> String {
    if tokio::time::timeout(CANCEL_WAIT, ctx.client.close())
        .await
        .is_err()
    {
        return "it is still being sent and stays queued: a later sync may send it".into();
    }
    let fresh = Client::new(ClientConfig {
        homeserver: ctx.homeserver.clone(),
        store_dir: ctx.store.clone(),
        store_key: ctx.key.clone(),
    });
    let result = match fresh {
        Ok(fresh) => match fresh.restore_session() {
            Ok(_) => fresh.cancel_send(txn_id).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    cancel_outcome(result, "its upload was stopped and it was cancelled")
}

/// What a cancel did, in words (`done`: it was cancelled).
fn cancel_outcome(result: Result<(), ClientError>, done: &str) -> String {
    match result {
        Ok(()) => done.to_owned(),
        Err(ClientError::NotQueued(_)) => "it left the send queue meanwhile".to_owned(),
        Err(e) => format!("cancelling it failed ({e}); a later sync may send it"),
    }
}

/// The event id of `txn_id` if a state already received says it was sent.
fn sent_meanwhile(
    updates: &mut broadcast::Receiver<SendUpdate>,
    txn_id: &str,
) -> Option<OwnedEventId> {
    loop {
        match updates.try_recv() {
            Ok(SendUpdate {
                txn_id: id,
                state:
                    SendState::Sent {
                        event_id: Some(event_id),
                    },
                ..
            }) if id == txn_id => return Some(event_id),
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
        }
    }
}

fn stuck_reason_text(reason: StuckReason) -> &'static str {
    match reason {
        StuckReason::UnknownDevices => "the room has devices nobody decided about",
        StuckReason::Forbidden => "the server refused: not in the room, or not allowed to send",
        StuckReason::TooLarge => "the server refused the file as too large",
        StuckReason::UnknownRoom => "the room is not known (joined and synced?)",
        StuckReason::Refused => "the server refused the message",
        StuckReason::InvalidContent => "the message cannot be sent as it is",
        StuckReason::FileUnreadable => "the file could not be read",
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) async fn download(ctx: &Ctx, a: &Download) -> Result<(), String> {
    ctx.restored()?;
    let event = fetch_event(ctx, a).await?;
    check_attachment(&event)?;
    let size = ctx
        .client
        .download_attachment_to(&event.content, &a.path, a.max_bytes)
        .await
        .map_err(|e| download_error(&e, &a.path))?;
    println!("{}", download_report(&event, size, &a.path));
    Ok(())
}

/// What `download` prints: the event's attachment and where it was written (a path that
/// is not UTF-8 is shown with replacement characters).
fn download_report(event: &Notification, size: u64, path: &Path) -> serde_json::Value {
    let info = |key: &str| event.content["info"].get(key).cloned();
    json!({
        "event_id": event.event_id, "sender": event.sender,
        "sender_device": event.sender_device, "name": event.content.get("body"),
        "mimetype": info("mimetype"), "size": size, "path": path.to_string_lossy(),
    })
}

/// The event, fetched from the server by id and decrypted (waiting up to [`KEY_WAIT`] for
/// its room key), with the store's keys: the same way a push notification is decrypted.
async fn fetch_event(ctx: &Ctx, a: &Download) -> Result<Notification, String> {
    let decryptor = NotificationDecryptor::open(&ctx.homeserver, &ctx.store, &ctx.key)
        .map_err(|e| format!("cannot open the store to fetch the event: {e}"))?;
    decryptor
        .decrypt(&a.room, &a.event_id, None, KEY_WAIT)
        .await
        .map_err(|e| format!("cannot fetch and decrypt {}: {e}", a.event_id))
}

/// The event is a message with an attachment from a sender whose device is not forged.
fn check_attachment(event: &Notification) -> Result<(), String> {
    if let Some(trust) = event.sender_trust
        && !TrustPolicy::default().allows(trust, false)
    {
        return Err(format!(
            "refusing {}: its sender's device is not trusted ({})",
            event.event_id,
            trust.as_str()
        ));
    }
    if event.content.get("file").is_none() && event.content.get("url").is_none() {
        let msgtype = event.content.get("msgtype").and_then(Value::as_str);
        return Err(format!(
            "{} has no attachment (a {}{})",
            event.event_id,
            event.event_type,
            msgtype.map(|m| format!(" {m}")).unwrap_or_default()
        ));
    }
    Ok(())
}

/// A failed download in words; nothing was written to `path` in any case.
fn download_error(error: &ClientError, path: &Path) -> String {
    let path = path.display();
    match error {
        ClientError::Attachment(e) => {
            format!("the download was refused: {e}; nothing was written to {path}")
        }
        ClientError::Http(HttpError::TooLarge { limit }) => format!(
            "the attachment is larger than {limit} bytes (see --max-bytes); nothing was written to {path}"
        ),
        ClientError::FileTooLarge { size, limit } => format!(
            "the attachment has {size} bytes, more than the {limit} allowed; nothing was written to {path}"
        ),
        ClientError::FileUnreadable(e) => format!("cannot save the download: {e}"),
        other => format!("the download failed: {other}; nothing was written to {path}"),
    }
}

#[cfg(test)]
mod tests {
    use newt_core::attachment::AttachmentError;

    use super::*;

    #[test]
    fn common_types_are_guessed_from_the_extension() {
        let cases = [
            ("a.png", "image/png"),
            ("a.JPG", "image/jpeg"),
            ("dir.d/a.jpeg", "image/jpeg"),
            ("a.gif", "image/gif"),
            ("a.webp", "image/webp"),
            ("a.mp4", "video/mp4"),
            ("a.mp3", "audio/mpeg"),
            ("a.ogg", "audio/ogg"),
            ("a.pdf", "application/pdf"),
            ("notes.txt", "text/plain"),
            ("archive.tar.gz", "application/octet-stream"),
            ("README", "application/octet-stream"),
            (".png", "application/octet-stream"),
        ];
        for (path, mimetype) in cases {
            assert_eq!(guess_mimetype(Path::new(path)), mimetype, "{path}");
        }
    }

    #[test]
    fn progress_and_retries_are_told_and_the_end_states_end_the_wait() {
        let uploading = SendState::Uploading {
            sent_bytes: 12,
            total_bytes: 100,
        };
        assert_eq!(
            progress_line(&uploading, 0).unwrap(),
            "uploading 12/100% (12 of 100 bytes)"
        );
        let waiting = SendState::WaitingToRetry {
            next_attempt_ms: 10_500,
            error: "network down".into(),
        };
        assert_eq!(
            progress_line(&waiting, 8_000).unwrap(),
            "sending failed, retrying in 3 s: network down"
        );
        assert_eq!(progress_line(&SendState::Sending, 0), None);
        assert_eq!(outcome_of(uploading), None);
        assert_eq!(outcome_of(waiting), None);
        let event_id = OwnedEventId::try_from("$sent").unwrap();
        let sent = SendState::Sent {
            event_id: Some(event_id.clone()),
        };
        assert_eq!(outcome_of(sent), Some(Ok(event_id)));
        let stuck = SendState::Stuck {
            reason: StuckReason::FileUnreadable,
        };
        assert_eq!(
            outcome_of(stuck),
            Some(Err(Failure::Stuck(StuckReason::FileUnreadable)))
        );
        assert_eq!(
            outcome_of(SendState::Sent { event_id: None }),
            Some(Err(Failure::NoEventId))
        );
    }

    #[test]
    fn a_message_sent_while_being_cancelled_is_found_among_the_states() {
        let (tx, mut rx) = broadcast::channel(8);
        let update = |txn_id: &str, state| SendUpdate {
            room_id: "!r:localhost".try_into().unwrap(),
            txn_id: txn_id.into(),
            state,
            echo: None,
        };
        let sent = |id: &str| SendState::Sent {
            event_id: Some(id.try_into().unwrap()),
        };
        tx.send(update("other", sent("$other"))).unwrap();
        tx.send(update("mine", SendState::Sending)).unwrap();
        assert_eq!(sent_meanwhile(&mut rx, "mine"), None);
        tx.send(update("mine", sent("$mine"))).unwrap();
        assert_eq!(sent_meanwhile(&mut rx, "mine").unwrap().as_str(), "$mine");
    }

    #[test]
    fn a_refused_download_says_why_and_that_nothing_was_written() {
        let hash = download_error(
            &ClientError::Attachment(AttachmentError::HashMismatch),
            Path::new("out.png"),
        );
        assert_eq!(
            hash,
            "the download was refused: the attachment does not match its hash; nothing was written to out.png"
        );
        let large = download_error(
            &ClientError::Http(HttpError::TooLarge { limit: 10 }),
            Path::new("out"),
        );
        assert!(
            large.contains("larger than 10 bytes (see --max-bytes)"),
            "{large}"
        );
    }

    /// A decrypted `m.room.message` with `content`.
    fn message(content: serde_json::Value) -> Notification {
        Notification {
            room_id: "!r:localhost".try_into().unwrap(),
            event_id: "$e".try_into().unwrap(),
            sender: "@a:localhost".try_into().unwrap(),
            sender_device: None,
            sender_trust: None,
            event_type: "m.room.message".into(),
            content,
            encrypted: true,
        }
    }

    #[test]
    fn only_messages_with_an_attachment_are_downloaded() {
        let mut event = message(json!({"msgtype": "m.text", "body": "hi"}));
        let error = check_attachment(&event).unwrap_err();
        assert_eq!(error, "$e has no attachment (a m.room.message m.text)");
        event.content = json!({"msgtype": "m.file", "body": "f", "file": {}});
        check_attachment(&event).unwrap();
        event.sender_trust = Some(newt_core::store::SenderTrust::Tampered);
        assert!(
            check_attachment(&event)
                .unwrap_err()
                .contains("not trusted")
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_path_that_is_not_utf8_is_reported_without_a_panic() {
        use std::os::unix::ffi::OsStrExt;
        let event = message(json!({"msgtype": "m.file", "body": "f", "info": {"mimetype": "a/b"}}));
        let path = Path::new(std::ffi::OsStr::from_bytes(b"out-\xff.bin"));
        let report = download_report(&event, 7, path);
        assert_eq!(report["path"], "out-\u{fffd}.bin");
        assert_eq!(
            (report["size"].as_u64(), &report["mimetype"]),
            (Some(7), &json!("a/b"))
        );
    }
}
