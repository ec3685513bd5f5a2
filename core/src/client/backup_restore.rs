//! Restoring the backup's keys: each entry decrypted with the backup key and imported in
//! batches. A whole backup or a room's is read from the server's answer as it arrives
//! (never held whole), so a backup of any size restores at once in bounded memory.

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufReader, Read};
use std::rc::Rc;
use std::time::Duration;

use ruma::api::client::backup::{KeyBackupData, get_backup_keys, get_backup_keys_for_room};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, RoomId};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use tracing::debug;

use super::key_files::{KeyImportSummary, KeyTransferProgress};
use super::{Client, ClientError};
use crate::backup::{BackupKey, decrypt_session};
use crate::crypto::{KeySource, OlmMachine};
use crate::key_export::ExportedRoomKey;

/// Entries read per transaction (and per progress report) when restoring.
const RESTORE_BATCH: usize = 200;
/// The most a restore reads from the server: about half a million sessions. The server
/// can forge entries (it knows the backup's public key) and restored sessions are kept
/// whatever the quotas, so this bounds what it can make us store.
pub(super) const MAX_RESTORE_BYTES: usize = 512 * 1024 * 1024;
/// The most one entry of the answer may take (with its session id): a real one takes
/// 1–2 KiB. What the parser holds at a time is bounded by it, not by the whole answer.
const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// The time a restore may take in all (the answer is read as fast as it is imported; a
/// server that stops sending fails it within a minute).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Imports backup entries in batches, counting what happened.
pub(super) struct Restorer<'a> {
    client: &'a Client,
    machine: &'a OlmMachine,
    key: &'a BackupKey,
    source: KeySource,
    progress: &'a mut dyn FnMut(KeyTransferProgress),
    pending: Vec<ExportedRoomKey>,
    summary: KeyImportSummary,
    /// What the server said the backup holds (progress only: the entries are counted); 0
    /// when not known.
    expected: u64,
    /// Entries handled at the last progress report.
    reported: Option<u64>,
}

impl<'a> Restorer<'a> {
    pub(super) fn new(
        client: &'a Client,
        machine: &'a OlmMachine,
        key: &'a BackupKey,
        source: KeySource,
        expected: u64,
        progress: &'a mut dyn FnMut(KeyTransferProgress),
    ) -> Self {
        Self {
            client,
            machine,
            key,
            source,
            progress,
            pending: Vec::with_capacity(RESTORE_BATCH),
            summary: KeyImportSummary::default(),
            expected,
            reported: None,
        }
    }

    /// One entry of the backup; an entry that does not decrypt is counted as refused.
    pub(super) fn entry(
        &mut self,
        room_id: &RoomId,
        session_id: &str,
        data: &Raw<KeyBackupData>,
    ) -> Result<(), ClientError> {
        self.summary.total += 1;
        let key = data.deserialize().map_err(|e| e.to_string()).and_then(|d| {
            decrypt_session(self.key, room_id, session_id, &d.session_data)
                .map_err(|e| e.to_string())
        });
        match key {
            Ok(k) => self.pending.push(k),
            Err(why) => {
                debug!(%room_id, %session_id, %why, "backup entry left out");
                self.summary.refused += 1;
            }
        }
        // Every batch of entries (refused ones too: a progress for each).
        if self.summary.total.is_multiple_of(RESTORE_BATCH as u64) {
            self.import_pending()?;
        }
        Ok(())
    }

    /// Import what is left; the summary of all entries. The last report says done ==
    /// total.
    pub(super) fn finish(mut self) -> Result<KeyImportSummary, ClientError> {
        self.expected = self.summary.total;
        if self.reported != Some(self.summary.total) {
            self.import_pending()?;
        }
        Ok(self.summary)
    }

    fn import_pending(&mut self) -> Result<(), ClientError> {
        // Closing does not wait for the rest of a large restore.
        if self.client.inner.lifecycle.is_closed() {
            return Err(ClientError::Closed);
        }
        self.client.import_batch(
            self.machine,
            &mut self.pending,
            &mut self.summary,
            self.source,
        )?;
        let done = self.summary.total;
        (self.progress)(KeyTransferProgress {
            done,
            total: self.expected.max(done),
        });
        self.reported = Some(done);
        Ok(())
    }
}

impl Sink for Restorer<'_> {
    fn entry(
        &mut self,
        room_id: &RoomId,
        session_id: &str,
        data: &Raw<KeyBackupData>,
    ) -> Result<(), ClientError> {
        Restorer::entry(self, room_id, session_id, data)
    }
}

/// Takes the entries of a backup answer, one by one.
trait Sink {
    fn entry(
        &mut self,
        room_id: &RoomId,
        session_id: &str,
        data: &Raw<KeyBackupData>,
    ) -> Result<(), ClientError>;
}

/// Read the answer to a backup request (`room`'s, or the whole backup's) entry by entry,
/// handing each to `sink` as it is read. Entries of an invalid room id are left out;
/// fields other than the spec's are ignored.
fn read_answer(
    body: &mut dyn Read,
    room: Option<&RoomId>,
    sink: &mut dyn Sink,
) -> Result<(), ClientError> {
    let taken = Rc::new(Cell::new(0));
    let mut reader = Reader {
        sink,
        failure: None,
        taken: Rc::clone(&taken),
    };
    let bounded = Bounded {
        inner: BufReader::new(body),
        taken,
    };
    let mut de = serde_json::Deserializer::from_reader(bounded);
    let parsed = match room {
        None => Whole(&mut reader).deserialize(&mut de),
        Some(room) => Room(&mut reader, room).deserialize(&mut de),
    }
    .and_then(|()| de.end());
    match (parsed, reader.failure) {
        (_, Some(failure)) => Err(failure),
        (Err(e), None) => Err(ClientError::InvalidResponse(format!("backup keys: {e}"))),
        (Ok(()), None) => Ok(()),
    }
}

/// The sink, and what stopped it: the parser's own error only says that it stopped.
struct Reader<'s> {
    sink: &'s mut dyn Sink,
    failure: Option<ClientError>,
    /// Bytes the parser took since the current key began (see [`Bounded`]).
    taken: Rc<Cell<usize>>,
}

impl Reader<'_> {
    /// A new key of an object begins: what it and its value take is counted from here.
    fn next_key(&self) {
        self.taken.set(0);
    }
}

/// The answer as the parser reads it: no more than [`MAX_ENTRY_BYTES`] per key and value,
/// counted from the last [`Reader::next_key`] (the parser holds a key or a value whole).
struct Bounded<R> {
    inner: R,
    taken: Rc<Cell<usize>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let taken = self.taken.get() + n;
        self.taken.set(taken);
        if taken > MAX_ENTRY_BYTES {
            return Err(io::Error::other(format!(
                "an entry of the answer is over {MAX_ENTRY_BYTES} bytes"
            )));
        }
        Ok(n)
    }
}

impl Client {
    /// Restore the keys of backup `version` (`room`'s, or all), read as the answer arrives.
    /// `expected` is the server's count of entries, for the progress (0: not known). Closing
    /// the client ends it at once (what was imported stays).
    pub(super) async fn stream_restore(
        &self,
        machine: std::sync::Arc<OlmMachine>,
        key: BackupKey,
        version: &str,
        room: Option<&RoomId>,
        expected: u64,
        progress: impl FnMut(KeyTransferProgress) + Send + 'static,
    ) -> Result<KeyImportSummary, ClientError> {
        let tracked = self.track()?;
        let client = self.handle();
        let owned_room: Option<OwnedRoomId> = room.map(ToOwned::to_owned);
        let read = move |body: &mut dyn Read| {
            // Dropped last: closing waits for the batch in progress, and what the work holds
            // (the machine, the client) is released first.
            let _tracked = tracked;
            let (client, machine, key, mut progress) = (client, machine, key, progress);
            let source = KeySource::Backup;
            let mut restorer =
                Restorer::new(&client, &machine, &key, source, expected, &mut progress);
            read_answer(body, owned_room.as_deref(), &mut restorer)?;
            restorer.finish()
        };
        let http = &self.inner.http;
        let (version, timeout) = (version.to_owned(), Some(RESTORE_TIMEOUT));
        let exchange = async {
            match room {
                None => {
                    let request = get_backup_keys::v3::Request::new(version);
                    http.send_streaming(request, MAX_RESTORE_BYTES, timeout, read)
                        .await
                }
                Some(room) => {
                    let request =
                        get_backup_keys_for_room::v3::Request::new(version, room.to_owned());
                    http.send_streaming(request, MAX_RESTORE_BYTES, timeout, read)
                        .await
                }
            }
        };
        let mut closing = self.closing();
        tokio::select! {
            outcome = exchange => outcome?,
            // The answer stops coming: the reader sees its end and lets closing go on.
            _ = closing.wait_for(|closing| *closing) => Err(ClientError::Closed),
        }
    }
}

/// The top of `GET /room_keys/keys`: `{"rooms": {room_id: {"sessions": {...}}}}`.
struct Whole<'r, 's>(&'r mut Reader<'s>);
/// `{room_id: {"sessions": {...}}}`.
struct Rooms<'r, 's>(&'r mut Reader<'s>);
/// One room's keys: `{"sessions": {session_id: KeyBackupData}}`.
struct Room<'r, 's, 'id>(&'r mut Reader<'s>, &'id RoomId);
/// `{session_id: KeyBackupData}`.
struct Sessions<'r, 's, 'id>(&'r mut Reader<'s>, &'id RoomId);

/// `DeserializeSeed` for a seed that reads a JSON object with its `Visitor`.
macro_rules! map_seed {
    ($($seed:ident $(<$($l:lifetime),*>)?),*) => {$(
        impl<'de $($(, $l)*)?> DeserializeSeed<'de> for $seed $(<$($l),*>)? {
            type Value = ();
            fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_map(self)
            }
        }
    )*};
}
map_seed!(
    Whole<'r, 'a>,
    Rooms<'r, 'a>,
    Room<'r, 'a, 'id>,
    Sessions<'r, 'a, 'id>
);

/// Each key of an object, handed with the map to `on` (which reads its value); what a key
/// and its value take is counted from the key on ([`Reader::next_key`]).
fn each_key<'de, 's, A: MapAccess<'de>>(
    reader: &mut Reader<'s>,
    map: &mut A,
    mut on: impl FnMut(&mut Reader<'s>, String, &mut A) -> Result<(), A::Error>,
) -> Result<(), A::Error> {
    loop {
        reader.next_key();
        let Some(key) = map.next_key::<String>()? else {
            return Ok(());
        };
        on(reader, key, map)?;
    }
}

impl<'de> Visitor<'de> for Whole<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the backup's keys")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        each_key(self.0, &mut map, |reader, field, map| {
            if field == "rooms" {
                map.next_value_seed(Rooms(reader))
            } else {
                map.next_value::<IgnoredAny>().map(drop)
            }
        })
    }
}

impl<'de> Visitor<'de> for Rooms<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rooms")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        each_key(self.0, &mut map, |reader, room, map| {
            match RoomId::parse(&room) {
                Ok(room_id) => map.next_value_seed(Room(reader, &room_id)),
                Err(e) => {
                    debug!(error = %e, "backup entries of an invalid room id left out");
                    map.next_value::<IgnoredAny>().map(drop)
                }
            }
        })
    }
}

impl<'de> Visitor<'de> for Room<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a room's keys")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let room = self.1;
        each_key(self.0, &mut map, |reader, field, map| {
            if field == "sessions" {
                map.next_value_seed(Sessions(reader, room))
            } else {
                map.next_value::<IgnoredAny>().map(drop)
            }
        })
    }
}

impl<'de> Visitor<'de> for Sessions<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sessions")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let room = self.1;
        each_key(self.0, &mut map, |reader, session_id, map| {
            let data: Raw<KeyBackupData> = map.next_value()?;
            reader.sink.entry(room, &session_id, &data).map_err(|e| {
                reader.failure = Some(e);
                de::Error::custom("restoring stopped")
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::room_id;

    /// Collects `(room, session, first_message_index)`; fails at `fail_at` entries.
    #[derive(Default)]
    struct Collect {
        got: Vec<(String, String, u64)>,
        fail_at: Option<usize>,
    }

    impl Sink for Collect {
        fn entry(
            &mut self,
            room_id: &RoomId,
            session_id: &str,
            data: &Raw<KeyBackupData>,
        ) -> Result<(), ClientError> {
            if self.fail_at == Some(self.got.len()) {
                return Err(ClientError::Closed);
            }
            let index = data
                .get_field::<u64>("first_message_index")
                .ok()
                .flatten()
                .unwrap_or(u64::MAX);
            self.got
                .push((room_id.to_string(), session_id.to_owned(), index));
            Ok(())
        }
    }

    fn entry(index: u64) -> serde_json::Value {
        serde_json::json!({
            "first_message_index": index,
            "forwarded_count": 0,
            "is_verified": false,
            "session_data": {"ephemeral": "e", "ciphertext": "c", "mac": "m"},
        })
    }

    fn read(body: &str, room: Option<&RoomId>, sink: &mut Collect) -> Result<(), ClientError> {
        read_answer(&mut body.as_bytes(), room, sink)
    }

    #[test]
    fn entries_are_handed_over_in_order_and_strangers_left_out() {
        let body = serde_json::json!({
            "extra": {"rooms": {"!x:h": {"sessions": {"no": entry(9)}}}},
            "rooms": {
                "!a:h": {"sessions": {"s1": entry(1), "s2": entry(2)}, "other": [1, 2]},
                "not a room id": {"sessions": {"s3": entry(3)}},
                "!b:h": {"sessions": {"s4": {"anything": true}}},
            },
        });
        let mut sink = Collect::default();
        read(&body.to_string(), None, &mut sink).unwrap();
        let got: Vec<_> = sink.got.iter().map(|(r, s, i)| (&**r, &**s, *i)).collect();
        // An entry that is not backup data is still handed over (and refused there).
        assert_eq!(
            got,
            [
                ("!a:h", "s1", 1),
                ("!a:h", "s2", 2),
                ("!b:h", "s4", u64::MAX)
            ]
        );
    }

    #[test]
    fn a_room_answer_names_its_room() {
        let body = serde_json::json!({"sessions": {"s1": entry(5)}});
        let mut sink = Collect::default();
        read(&body.to_string(), Some(room_id!("!r:h")), &mut sink).unwrap();
        assert_eq!(sink.got, [("!r:h".into(), "s1".into(), 5)]);
    }

    #[test]
    fn a_cut_or_broken_answer_is_an_invalid_response_after_what_came_before() {
        let body =
            serde_json::json!({"rooms": {"!a:h": {"sessions": {"s1": entry(1), "s2": entry(2)}}}})
                .to_string();
        for broken in [
            &body[..body.len() - 40],
            "{\"rooms\": [1]}",
            "{} trailing",
            "",
        ] {
            let mut sink = Collect::default();
            let err = read(broken, None, &mut sink).unwrap_err();
            assert!(
                matches!(err, ClientError::InvalidResponse(_)),
                "{broken}: {err:?}"
            );
        }
        let mut sink = Collect::default();
        let _ = read(&body[..body.len() - 40], None, &mut sink);
        assert_eq!(
            sink.got.len(),
            1,
            "the entry read before the cut was handed over"
        );
    }

    #[test]
    fn an_entry_over_the_bound_stops_the_reading_however_small_the_others() {
        let with_ciphertext = |index: u64, len: usize| {
            let mut e = entry(index);
            e["session_data"]["ciphertext"] = serde_json::json!("A".repeat(len));
            e
        };
        let body = serde_json::json!({"rooms": {"!a:h": {"sessions": {
            "s1": entry(1), "s2": with_ciphertext(2, MAX_ENTRY_BYTES), "s3": entry(3),
        }}}});
        let mut sink = Collect::default();
        let err = read(&body.to_string(), None, &mut sink).unwrap_err();
        assert!(
            matches!(&err, ClientError::InvalidResponse(m) if m.contains("over")),
            "{err:?}"
        );
        assert_eq!(sink.got.len(), 1, "what came before is handed over");
        // A session id as large.
        let id = "s".repeat(MAX_ENTRY_BYTES + 1);
        let body = serde_json::json!({"rooms": {"!a:h": {"sessions": {id: entry(1)}}}});
        assert!(read(&body.to_string(), None, &mut Collect::default()).is_err());
        // Many entries under the bound, far more than it in all, are read.
        let sessions: serde_json::Map<String, serde_json::Value> = (0..40)
            .map(|i| (format!("s{i}"), with_ciphertext(i, MAX_ENTRY_BYTES / 4)))
            .collect();
        let body = serde_json::json!({"rooms": {"!a:h": {"sessions": sessions}}});
        let mut sink = Collect::default();
        read(&body.to_string(), None, &mut sink).unwrap();
        assert_eq!(sink.got.len(), 40);
    }

    #[test]
    fn an_error_of_the_sink_stops_the_reading_and_is_returned_as_it_is() {
        let body =
            serde_json::json!({"rooms": {"!a:h": {"sessions": {"s1": entry(1), "s2": entry(2)}}}});
        let mut sink = Collect {
            fail_at: Some(1),
            ..Default::default()
        };
        let err = read(&body.to_string(), None, &mut sink).unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{err:?}");
        assert_eq!(sink.got.len(), 1);
    }
}
