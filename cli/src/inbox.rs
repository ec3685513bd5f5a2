//! The inbox: timeline items a command received but did not print, kept for `listen`.
//!
//! Every command that syncs receives the timeline items of that sync; `listen` prints those
//! of its room, and everything else (other rooms, other commands' syncs, own messages it
//! skips, items past its `--count`) is kept in the store as a secret value (encrypted at
//! rest with the store key, like everything else that holds message text), one JSON object
//! per item in the form `listen` prints. A later `listen` prints the stored items of its
//! room first and removes them. The last [`MAX_ITEMS`] items are kept; the value is read
//! and rewritten under a lock file (`<store dir>/cli-inbox.lock`), so that two `newt`
//! processes on one store do not lose each other's items.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use newt_core::client::TimelineEvent;
use newt_core::store::{Changes, ClientChanges, SecretBlob, Store};
use serde_json::{Value, json};
use tokio::sync::broadcast::{self, error::TryRecvError};

/// The store's secret value holding the inbox.
pub(crate) const INBOX_KEY: &str = "cli.inbox";
/// The lock file's name in the store directory.
const LOCK_FILE: &str = "cli-inbox.lock";
/// Items kept at most (the oldest go first).
pub(crate) const MAX_ITEMS: usize = 1000;
/// How long to wait for another `newt` on the same store to release the inbox.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// A lock file older than this was left by a `newt` that died while holding it.
const STALE_LOCK: Duration = Duration::from_secs(30);

/// The line `listen` prints for an item (and the inbox stores).
pub(crate) fn line_of(event: &TimelineEvent) -> Value {
    json!({
        "event_id": event.event_id, "room_id": event.room_id, "sender": event.sender,
        "sender_device": event.sender_device, "body": event.body,
        "decrypted": event.decrypted, "error": event.error,
    })
}

/// Which items `listen` prints: those of its room, without the user's own unless asked.
#[derive(Clone, Debug)]
pub(crate) struct RoomFilter {
    pub(crate) room_id: String,
    /// Items from this sender are skipped (the user's own).
    pub(crate) skip_sender: Option<String>,
}

impl RoomFilter {
    pub(crate) fn matches(&self, line: &Value) -> bool {
        let field = |name: &str| line.get(name).and_then(Value::as_str);
        field("room_id") == Some(self.room_id.as_str())
            && self
                .skip_sender
                .as_deref()
                .is_none_or(|own| field("sender") != Some(own))
    }
}

/// Add `line` to `lines`: an update (`is_update`) replaces the item with the same event id,
/// an item already there is not added twice, anything else goes at the end.
pub(crate) fn merge(lines: &mut Vec<Value>, line: Value, is_update: bool) {
    let event_id = line.get("event_id").cloned();
    let earlier = lines
        .iter_mut()
        .find(|l| event_id.is_some() && l.get("event_id") == event_id.as_ref());
    match earlier {
        Some(earlier) if is_update => *earlier = line,
        Some(_) => {}
        None => lines.push(line),
    }
}

/// Keep the last `max` lines.
pub(crate) fn bound(lines: &mut Vec<Value>, max: usize) {
    let excess = lines.len().saturating_sub(max);
    lines.drain(..excess);
}

/// Remove and return the first `max` lines `filter` matches, in order.
pub(crate) fn take_matching(lines: &mut Vec<Value>, filter: &RoomFilter, max: usize) -> Vec<Value> {
    let mut taken = Vec::new();
    lines.retain(|line| {
        if taken.len() < max && filter.matches(line) {
            taken.push(line.clone());
            false
        } else {
            true
        }
    });
    taken
}

/// The inbox of one store.
#[derive(Clone)]
pub(crate) struct Inbox {
    store: Arc<dyn Store>,
    lock: PathBuf,
}

impl Inbox {
    pub(crate) fn in_store(store: Arc<dyn Store>, store_dir: &Path) -> Self {
        Self {
            store,
            lock: store_dir.join(LOCK_FILE),
        }
    }

    /// Append items (`(line, is_update)`), keeping the last [`MAX_ITEMS`].
    pub(crate) fn add(&self, items: Vec<(Value, bool)>) -> io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let _lock = Lock::acquire(self.lock.clone())?;
        let mut lines = self.load()?;
        for (line, is_update) in items {
            merge(&mut lines, line, is_update);
        }
        bound(&mut lines, MAX_ITEMS);
        self.save(&lines)
    }

    /// Remove and return the first `max` stored items `filter` matches.
    pub(crate) fn take(&self, filter: &RoomFilter, max: usize) -> io::Result<Vec<Value>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let _lock = Lock::acquire(self.lock.clone())?;
        let mut lines = self.load()?;
        let taken = take_matching(&mut lines, filter, max);
        if !taken.is_empty() {
            self.save(&lines)?;
        }
        Ok(taken)
    }

    /// The stored items (none yet: empty); a value that is not a JSON list is dropped.
    fn load(&self) -> io::Result<Vec<Value>> {
        let Some(blob) = self
            .store
            .secret_value(INBOX_KEY)
            .map_err(io::Error::other)?
        else {
            return Ok(Vec::new());
        };
        match serde_json::from_slice(blob.as_bytes()) {
            Ok(lines) => Ok(lines),
            Err(e) => {
                eprintln!("warning: dropping an inbox that is not a JSON list: {e}");
                Ok(Vec::new())
            }
        }
    }

    /// Replace the stored items by `lines` (one transaction).
    fn save(&self, lines: &[Value]) -> io::Result<()> {
        let bytes = serde_json::to_vec(lines).map_err(io::Error::other)?;
        let mut changes = ClientChanges::default();
        changes
            .secret_values
            .insert(INBOX_KEY.to_owned(), SecretBlob::new(bytes));
        self.store
            .save_changes(Changes::from(changes))
            .map(drop)
            .map_err(io::Error::other)
    }
}

/// A lock file held while the inbox is read and rewritten, so that two `newt` processes on
/// one store do not lose each other's items. Removed when dropped.
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn acquire(path: PathBuf) -> io::Result<Self> {
        let start = Instant::now();
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => return Ok(Self { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if is_stale(&path) {
                let _ = fs::remove_file(&path);
            } else if start.elapsed() > LOCK_WAIT {
                return Err(io::Error::other(format!(
                    "{} is held by another newt (remove it if none is running)",
                    path.display()
                )));
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn is_stale(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_LOCK)
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Receives every timeline item of the command's syncs (subscribed before the first one),
/// and keeps in the inbox those the command did not print.
pub(crate) struct Recorder {
    events: broadcast::Receiver<TimelineEvent>,
    inbox: Inbox,
}

impl Recorder {
    pub(crate) fn new(events: broadcast::Receiver<TimelineEvent>, inbox: Inbox) -> Self {
        Self { events, inbox }
    }

    /// The items received since the last call.
    pub(crate) fn received(&mut self) -> Vec<TimelineEvent> {
        let mut items = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(item) => items.push(item),
                Err(TryRecvError::Lagged(missed)) => {
                    eprintln!("warning: {missed} received timeline items were missed");
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return items,
            }
        }
    }

    /// Remove and return the stored items `filter` matches (at most `max`).
    pub(crate) async fn take(&self, filter: &RoomFilter, max: usize) -> Result<Vec<Value>, String> {
        let (inbox, filter) = (self.inbox.clone(), filter.clone());
        tokio::task::spawn_blocking(move || inbox.take(&filter, max))
            .await
            .map_err(|e| format!("reading the inbox: {e}"))?
            .map_err(|e| format!("reading the inbox: {e}"))
    }

    /// Keep `items` in the inbox; a failure is reported on stderr (the command goes on).
    pub(crate) async fn keep(&self, items: Vec<TimelineEvent>) {
        let lines: Vec<(Value, bool)> = items.iter().map(|e| (line_of(e), e.is_update)).collect();
        let inbox = self.inbox.clone();
        let outcome = tokio::task::spawn_blocking(move || inbox.add(lines))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r);
        if let Err(e) = outcome {
            eprintln!("warning: received messages could not be kept in the inbox: {e}");
        }
    }

    /// Keep everything received and not yet handled.
    pub(crate) async fn keep_rest(&mut self) {
        let rest = self.received();
        self.keep(rest).await;
    }
}

#[cfg(test)]
mod tests {
    use newt_core::store::{ClientStore, MemoryStore};

    use super::*;

    fn item(event_id: &str, room: &str, sender: &str, body: &str) -> Value {
        json!({
            "event_id": event_id, "room_id": room, "sender": sender, "sender_device": null,
            "body": body, "decrypted": true, "error": null,
        })
    }

    fn bodies(lines: &[Value]) -> Vec<&str> {
        lines.iter().map(|l| l["body"].as_str().unwrap()).collect()
    }

    fn room(room_id: &str, skip_sender: Option<&str>) -> RoomFilter {
        RoomFilter {
            room_id: room_id.into(),
            skip_sender: skip_sender.map(str::to_owned),
        }
    }

    #[test]
    fn an_update_replaces_the_item_with_its_event_id_in_place() {
        let mut lines = vec![item("$1", "!a", "@b", "one")];
        merge(&mut lines, item("$2", "!a", "@b", "two"), false);
        merge(&mut lines, item("$1", "!a", "@b", "one, again"), false);
        assert_eq!(bodies(&lines), ["one", "two"], "a repeat is not added");
        merge(
            &mut lines,
            item("$1", "!a", "@b", "one, decrypted late"),
            true,
        );
        assert_eq!(bodies(&lines), ["one, decrypted late", "two"]);
        merge(&mut lines, item("$3", "!a", "@b", "three"), true);
        assert_eq!(
            bodies(&lines),
            ["one, decrypted late", "two", "three"],
            "an update of an item no longer kept is added"
        );
    }

    #[test]
    fn the_inbox_keeps_the_last_items() {
        let mut lines: Vec<Value> = (0..5)
            .map(|i| item(&format!("${i}"), "!a", "@b", &i.to_string()))
            .collect();
        bound(&mut lines, 3);
        assert_eq!(bodies(&lines), ["2", "3", "4"]);
        bound(&mut lines, 10);
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn take_removes_the_first_items_of_the_room_only() {
        let mut lines = vec![
            item("$1", "!a", "@bob", "a1"),
            item("$2", "!b", "@bob", "b1"),
            item("$3", "!a", "@me", "own"),
            item("$4", "!a", "@bob", "a2"),
            item("$5", "!a", "@bob", "a3"),
        ];
        let taken = take_matching(&mut lines, &room("!a", Some("@me")), 2);
        assert_eq!(bodies(&taken), ["a1", "a2"]);
        assert_eq!(bodies(&lines), ["b1", "own", "a3"]);
        let with_own = take_matching(&mut lines, &room("!a", None), 10);
        assert_eq!(bodies(&with_own), ["own", "a3"]);
        assert_eq!(bodies(&lines), ["b1"]);
        assert!(take_matching(&mut lines, &room("!a", None), 10).is_empty());
    }

    fn memory_inbox(dir: &Path) -> (Arc<MemoryStore>, Inbox) {
        let store = Arc::new(MemoryStore::new());
        (store.clone(), Inbox::in_store(store, dir))
    }

    #[test]
    fn the_inbox_is_bounded_kept_encrypted_and_taken_from() {
        let dir = tempfile::tempdir().unwrap();
        let (store, inbox) = memory_inbox(dir.path());
        let filter = room("!a", None);
        assert!(inbox.take(&filter, 5).unwrap().is_empty(), "nothing yet");
        let items = (0..MAX_ITEMS + 10)
            .map(|i| (item(&format!("${i}"), "!a", "@b", &i.to_string()), false))
            .collect();
        inbox.add(items).unwrap();
        inbox
            .add(vec![(item("$12", "!a", "@b", "twelve, updated"), true)])
            .unwrap();
        let taken = inbox.take(&filter, 3).unwrap();
        assert_eq!(bodies(&taken), ["10", "11", "twelve, updated"]);
        let kept: Vec<Value> =
            serde_json::from_slice(store.secret_value(INBOX_KEY).unwrap().unwrap().as_bytes())
                .unwrap();
        assert_eq!(kept.len(), MAX_ITEMS - 3);
        assert!(!dir.path().join(LOCK_FILE).exists(), "lock released");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(names.is_empty(), "no file holds message text: {names:?}");
    }

    #[test]
    fn an_unreadable_inbox_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, inbox) = memory_inbox(dir.path());
        let mut changes = ClientChanges::default();
        changes
            .secret_values
            .insert(INBOX_KEY.to_owned(), SecretBlob::new(b"{broken".to_vec()));
        store.save_changes(Changes::from(changes)).unwrap();
        assert!(inbox.take(&room("!a", None), 5).unwrap().is_empty());
        inbox
            .add(vec![(item("$1", "!a", "@b", "kept"), false)])
            .unwrap();
        assert_eq!(bodies(&inbox.take(&room("!a", None), 5).unwrap()), ["kept"]);
    }

    #[test]
    fn a_stale_lock_is_broken_and_a_live_one_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cli-inbox.lock");
        let held = Lock::acquire(path.clone()).unwrap();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || Lock::acquire(path).map(drop))
        };
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        waiter.join().unwrap().unwrap();
        let file = fs::File::create(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() - 2 * STALE_LOCK)
            .unwrap();
        drop(Lock::acquire(path.clone()).unwrap());
        assert!(!path.exists());
    }
}
