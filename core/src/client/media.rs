//! Attachments: queued like any message (the file's path in the queued content), uploaded
//! when their turn comes (encrypted first in an encrypted room, `attachment.rs`), with
//! progress published as a send state; the uploaded file's `file` (or `url`) then replaces
//! the path in the queue before the event is encrypted and sent. Downloads check the hash
//! before decrypting.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ruma::events::room::EncryptedFile;
use ruma::{OwnedMxcUri, RoomId};
use serde_json::{Value, json};

use super::send_kinds::MESSAGE;
use super::send_state::{SendState, kept_echo};
use super::{Client, ClientError};
use crate::attachment;
use crate::http::{UploadProgress, with_retry};
use crate::store::{Changes, ClientChanges, QueuedSend, SecretBlob};
use crate::time::Clock;

/// Largest file Newt uploads or downloads, in bytes (it is held in memory while encrypted).
pub const MAX_ATTACHMENT_BYTES: u64 = 100 * 1024 * 1024;

/// The queued content's key for the local file still to upload (never sent).
pub(crate) const LOCAL_FILE: &str = "org.newt.local_file";

/// A file to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Where the file is; it must stay there until the message is sent (or cancelled).
    pub path: std::path::PathBuf,
    /// Its MIME type, e.g. `image/jpeg` (`m.image`, `m.video`, `m.audio`, else `m.file`).
    pub mimetype: String,
    /// The name shown (the message's `body`).
    pub name: String,
}

impl Attachment {
    fn msgtype(&self) -> &'static str {
        match self.mimetype.split('/').next() {
            Some("image") => "m.image",
            Some("video") => "m.video",
            Some("audio") => "m.audio",
            _ => "m.file",
        }
    }
}

impl Client {
    /// Queue a file for `room_id` (see [`Client::queue_message`]); returns the transaction
    /// id of its local echo. When its turn comes it is read, encrypted in an encrypted room
    /// (a fresh key per file), uploaded with its progress published
    /// ([`SendState::Uploading`]), and its event sent. A file that cannot be read or is too
    /// large leaves the message stuck.
    pub async fn queue_attachment(
        &self,
        room_id: &RoomId,
        file: Attachment,
    ) -> Result<String, ClientError> {
        let size = size_within_limit(&file.path).await?;
        let path = file.path.to_str().ok_or_else(|| {
            ClientError::InvalidInput("the file's path is not valid UTF-8".into())
        })?;
        let content = json!({
            "msgtype": file.msgtype(),
            "body": file.name,
            "info": {"mimetype": file.mimetype, "size": size},
            LOCAL_FILE: path,
        });
        self.queue_content(room_id, MESSAGE, content).await
    }

    /// If `content` names a local file, upload it and store the content that names the
    /// upload instead (the echo keeps the local file); returns the message and content.
    pub(crate) async fn upload_if_local(
        &self,
        q: QueuedSend,
        content: Value,
        encrypted: bool,
    ) -> Result<(QueuedSend, Value), ClientError> {
        let Some(path) = content.get(LOCAL_FILE).and_then(Value::as_str) else {
            return Ok((q, content));
        };
        let mut data = read_file(Path::new(path)).await?;
        let (uri_key, keys) = if encrypted {
            ("file", Some(attachment::encrypt(&mut data)))
        } else {
            ("url", None)
        };
        let mimetype = match (&keys, content["info"]["mimetype"].as_str()) {
            (None, Some(m)) => m.to_owned(),
            _ => "application/octet-stream".to_owned(),
        };
        let uri = self.upload(&q, Bytes::from(data), &mimetype).await?;
        let mut uploaded = content.clone();
        if let Some(object) = uploaded.as_object_mut() {
            object.remove(LOCAL_FILE);
            let source = match keys {
                Some(keys) => serde_json::to_value(keys.into_file(uri))
                    .map_err(|e| ClientError::InvalidInput(format!("encrypted file: {e}")))?,
                None => Value::String(uri.to_string()),
            };
            object.insert(uri_key.to_owned(), source);
        }
        let next = QueuedSend {
            content: SecretBlob::new(uploaded.to_string().into_bytes()),
            echo: Some(SecretBlob::new(
                kept_echo(&q.event_type, &content).to_string().into_bytes(),
            )),
            ..q
        };
        self.save_changes(Changes::from(ClientChanges {
            advanced_sends: vec![next.clone()],
            ..Default::default()
        }))
        .await?;
        Ok((next, uploaded))
    }

    /// Upload with progress published for `q` (at most once per percent).
    async fn upload(
        &self,
        q: &QueuedSend,
        data: Bytes,
        mimetype: &str,
    ) -> Result<OwnedMxcUri, ClientError> {
        let client = self.handle();
        let (room_id, txn_id) = (q.room_id.clone(), q.txn_id.clone());
        let last_percent = Arc::new(AtomicU64::new(u64::MAX));
        let progress: UploadProgress = Arc::new(move |sent, total| {
            let percent = sent * 100 / total.max(1);
            if last_percent.swap(percent, Ordering::Relaxed) != percent {
                let state = SendState::Uploading {
                    sent_bytes: sent,
                    total_bytes: total,
                };
                client.publish_send(&room_id, &txn_id, state, None);
            }
        });
        let http = &self.inner.http;
        let uri = with_retry(|| http.upload(data.clone(), mimetype, Arc::clone(&progress))).await?;
        Ok(uri)
    }

    /// Download the attachment of a message's `content` (its `file`, checked against its
    /// hash and decrypted, or its plain `url`), refused if larger than `max_bytes`.
    pub async fn download_attachment(
        &self,
        content: &Value,
        max_bytes: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let limit = usize::try_from(max_bytes.min(MAX_ATTACHMENT_BYTES)).unwrap_or(usize::MAX);
        if let Some(file) = content.get("file") {
            let file: EncryptedFile = serde_json::from_value(file.clone())
                .map_err(|e| ClientError::InvalidInput(format!("encrypted file: {e}")))?;
            let mut data = self.inner.http.download(&file.url, limit).await?.to_vec();
            attachment::decrypt(&mut data, &file)?;
            return Ok(data);
        }
        let uri = content
            .get("url")
            .and_then(Value::as_str)
            .map(OwnedMxcUri::from)
            .filter(|uri| uri.is_valid())
            .ok_or_else(|| ClientError::InvalidInput("no attachment in the content".into()))?;
        Ok(self.inner.http.download(&uri, limit).await?.to_vec())
    }

    /// [`Client::download_attachment`] into the file at `path` (written whole or not at
    /// all: a refused download leaves no file); returns its size.
    pub async fn download_attachment_to(
        &self,
        content: &Value,
        path: &Path,
        max_bytes: u64,
    ) -> Result<u64, ClientError> {
        let data = self.download_attachment(content, max_bytes).await?;
        // A name of our own beside it, removed if anything fails.
        let partial =
            path.with_extension(format!("{}.newt-part", crate::time::SystemClock.now_ms()));
        let write = async {
            tokio::fs::write(&partial, &data).await?;
            tokio::fs::rename(&partial, path).await
        };
        if let Err(e) = write.await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(ClientError::FileUnreadable(format!(
                "writing {}: {e}",
                path.display()
            )));
        }
        Ok(data.len() as u64)
    }
}

/// The file's size, refused if it is gone or larger than [`MAX_ATTACHMENT_BYTES`].
async fn size_within_limit(path: &Path) -> Result<u64, ClientError> {
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| ClientError::FileUnreadable(e.to_string()))?
        .len();
    if size > MAX_ATTACHMENT_BYTES {
        return Err(ClientError::FileTooLarge {
            size,
            limit: MAX_ATTACHMENT_BYTES,
        });
    }
    Ok(size)
}

/// The file's bytes, refused if it is gone or too large.
async fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    size_within_limit(path).await?;
    tokio::fs::read(path)
        .await
        .map_err(|e| ClientError::FileUnreadable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::client::tests::offline_client;
    use crate::store::{ClientStore, MemoryStore};
    use crate::test_ids::rid;

    /// Content that does not come from `queue_attachment` (an event the app forwards, say)
    /// cannot make the queue read and upload a local file.
    #[tokio::test]
    async fn app_content_naming_a_local_file_is_refused() {
        let store = Arc::new(MemoryStore::new());
        let client = offline_client(store.clone(), "@alice:localhost", "ALICE");
        let content = json!({"msgtype": "m.file", "body": "x", LOCAL_FILE: "/etc/passwd"});
        let err = client
            .send_message(&rid("!r:x"), &content)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidInput(_)), "{err}");
        assert!(store.queued_sends().unwrap().is_empty(), "nothing queued");
    }
}
