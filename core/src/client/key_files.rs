//! Key export files (the spec's format, which Element reads and writes): the room keys
//! written to a file the user keeps, and such a file imported. Memory stays bounded
//! whatever the number of keys: the export is written page by page, the import read in
//! two passes and stored in batches (see [`crate::key_export`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use ruma::{OwnedRoomId, RoomId};
use tracing::{debug, info};
use zeroize::Zeroizing;

use super::late_keys::Retry;
use super::{Client, ClientError};
use crate::crypto::{KeySource, OlmMachine};
use crate::key_export::{DEFAULT_ROUNDS, Entry, ExportWriter, ExportedRoomKey, read_export};
use crate::time::Clock;

/// Sessions read from the store per page of an export, and keys stored per transaction of
/// an import.
const BATCH: usize = 200;

/// How far an export (sessions written of all) or an import (bytes read of all: the file is
/// read twice, once to check it and once to import it) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyTransferProgress {
    /// Done so far.
    pub done: u64,
    /// In all.
    pub total: u64,
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyImportSummary {
    /// Entries in the file.
    pub total: u64,
    /// Sessions stored: new ones, and known ones the file completed (an earlier index).
    pub imported: u64,
    /// Known already from the same index or an earlier one: left as they were.
    pub already_known: u64,
    /// Entries that are not usable room keys (logged, left out).
    pub refused: u64,
}

impl Client {
    /// Write the room keys of `rooms` (all rooms if `None`) to `path` in the key export
    /// format, encrypted with `passphrase`; returns the number of sessions written. The file
    /// is written beside `path` and moved into place at the end: `path` is either the whole
    /// export or left as it was.
    pub async fn export_room_keys(
        &self,
        path: impl Into<PathBuf>,
        passphrase: &str,
        rooms: Option<Vec<OwnedRoomId>>,
        progress: impl FnMut(KeyTransferProgress) + Send + 'static,
    ) -> Result<u64, ClientError> {
        self.export_room_keys_with_rounds(path, passphrase, rooms, DEFAULT_ROUNDS, progress)
            .await
    }

    /// [`Client::export_room_keys`] with `rounds` of PBKDF2 (tests use few).
    #[doc(hidden)]
    pub async fn export_room_keys_with_rounds(
        &self,
        path: impl Into<PathBuf>,
        passphrase: &str,
        rooms: Option<Vec<OwnedRoomId>>,
        rounds: u32,
        mut progress: impl FnMut(KeyTransferProgress) + Send + 'static,
    ) -> Result<u64, ClientError> {
        let (path, passphrase) = (path.into(), Zeroizing::new(passphrase.to_owned()));
        let machine = self.machine()?;
        self.blocking(move |client| {
            let part = part_path(&path);
            let written =
                client.write_export(&machine, &part, &passphrase, rooms, rounds, &mut progress);
            let moved = written.and_then(|count| {
                std::fs::rename(&part, &path).map_err(|e| file_error("moving", &path, e))?;
                Ok(count)
            });
            if moved.is_err() {
                let _ = std::fs::remove_file(&part);
            }
            moved
        })
        .await
    }

    /// Import the key export file at `path` with `passphrase`. A wrong passphrase, a file
    /// cut short or changed is refused before anything is stored (the whole file is
    /// authenticated first). Keys are stored in batches as the file is read again: a file
    /// changed between the two readings (`ChangedWhileReading`) or a list that turns out
    /// malformed further on stops the import, and the batches stored before stay (they
    /// were authenticated). Imported sessions are
    /// legacy sessions (seed 003), never replace a copy known from an earlier index, and
    /// the events kept undecryptable for them are delivered again, decrypted.
    pub async fn import_room_keys(
        &self,
        path: impl Into<PathBuf>,
        passphrase: &str,
        mut progress: impl FnMut(KeyTransferProgress) + Send + 'static,
    ) -> Result<KeyImportSummary, ClientError> {
        let (path, passphrase) = (path.into(), Zeroizing::new(passphrase.to_owned()));
        let machine = self.machine()?;
        self.blocking(move |client| client.read_import(&machine, &path, &passphrase, &mut progress))
            .await
    }

    fn write_export(
        &self,
        machine: &OlmMachine,
        part: &Path,
        passphrase: &str,
        rooms: Option<Vec<OwnedRoomId>>,
        rounds: u32,
        progress: &mut dyn FnMut(KeyTransferProgress),
    ) -> Result<u64, ClientError> {
        let store = self.store()?;
        let scopes: Vec<Option<OwnedRoomId>> = match rooms {
            None => vec![None],
            Some(mut rooms) => {
                rooms.sort_unstable();
                rooms.dedup();
                rooms.into_iter().map(Some).collect()
            }
        };
        let mut total = 0;
        for scope in &scopes {
            total += match scope {
                None => store.inbound_group_session_count()?,
                Some(room) => store.room_inbound_group_session_count(room)?,
            };
        }
        let file = create_private(part)?;
        let mut writer = ExportWriter::new(BufWriter::new(file), passphrase, rounds)?;
        for scope in &scopes {
            let closing = || self.inner.lifecycle.is_closed();
            write_room(
                machine,
                &mut writer,
                scope.as_deref(),
                total,
                progress,
                &closing,
            )?;
        }
        let count = writer.keys();
        // Sessions may have come or gone since they were counted: the last report is whole.
        progress(KeyTransferProgress {
            done: count,
            total: count,
        });
        let file = (writer.finish()?.into_inner())
            .map_err(|e| file_error("writing", part, e.into_error()))?;
        file.sync_all()
            .map_err(|e| file_error("writing", part, e))?;
        info!(sessions = count, "room keys exported");
        Ok(count)
    }

    fn read_import(
        &self,
        machine: &OlmMachine,
        path: &Path,
        passphrase: &str,
        progress: &mut dyn FnMut(KeyTransferProgress),
    ) -> Result<KeyImportSummary, ClientError> {
        let file = File::open(path).map_err(|e| file_error("opening", path, e))?;
        let mut summary = KeyImportSummary::default();
        let mut pending: Vec<ExportedRoomKey> = Vec::with_capacity(BATCH);
        read_export(
            BufReader::new(file),
            passphrase,
            |entry| {
                summary.total += 1;
                match entry {
                    Entry::Key(key) => pending.push(key),
                    Entry::Invalid(why) => {
                        debug!(%why, "key export entry left out");
                        summary.refused += 1;
                    }
                }
                if pending.len() >= BATCH {
                    // Closing does not wait for the rest of a large file.
                    if self.inner.lifecycle.is_closed() {
                        return Err(ClientError::Closed);
                    }
                    self.import_batch(machine, &mut pending, &mut summary, KeySource::File)?;
                }
                Ok::<_, ClientError>(())
            },
            |p| {
                progress(KeyTransferProgress {
                    done: p.read_bytes,
                    total: p.total_bytes,
                })
            },
        )?;
        self.import_batch(machine, &mut pending, &mut summary, KeySource::File)?;
        info!(?summary, "room keys imported");
        Ok(summary)
    }

    /// Store one batch from `source`, then deliver again the kept events it makes
    /// decryptable.
    pub(super) fn import_batch(
        &self,
        machine: &OlmMachine,
        pending: &mut Vec<ExportedRoomKey>,
        summary: &mut KeyImportSummary,
        source: KeySource,
    ) -> Result<(), ClientError> {
        if pending.is_empty() {
            return Ok(());
        }
        let outcome = machine.import_room_keys_from(pending, source)?;
        pending.clear();
        summary.imported += outcome.imported.len() as u64;
        summary.already_known += outcome.already_known;
        summary.refused += outcome.refused;
        let retry = Retry {
            sessions: outcome.imported,
            only_if_decrypted: false,
        };
        self.retry_kept_events(machine, retry, &HashSet::new())
    }
}

/// Write the sessions of `room` (all if `None`) page by page.
fn write_room<W: Write>(
    machine: &OlmMachine,
    writer: &mut ExportWriter<W>,
    room: Option<&RoomId>,
    total: u64,
    progress: &mut dyn FnMut(KeyTransferProgress),
    closing: &dyn Fn() -> bool,
) -> Result<(), ClientError> {
    let mut after: Option<(OwnedRoomId, String)> = None;
    loop {
        // Closing does not wait for the rest of a large export (the part file is removed).
        if closing() {
            return Err(ClientError::Closed);
        }
        let cursor = after.as_ref().map(|(r, s)| (&**r, s.as_str()));
        let page = machine.export_room_keys_page(room, cursor, BATCH as u32)?;
        for key in &page {
            writer.push(key)?;
        }
        progress(KeyTransferProgress {
            done: writer.keys(),
            total: total.max(writer.keys()),
        });
        match page.last() {
            Some(last) if page.len() == BATCH => {
                after = Some((last.room_id.clone(), last.session_id.clone()));
            }
            _ => return Ok(()),
        }
    }
}

/// A name of our own beside `path` for the file being written.
fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{}.newt-part", crate::time::SystemClock.now_ms()));
    path.with_file_name(name)
}

/// A new file only the user can read (it holds keys, if encrypted).
fn create_private(path: &Path) -> Result<File, ClientError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map_err(|e| file_error("creating", path, e))
}

fn file_error(what: &str, path: &Path, e: std::io::Error) -> ClientError {
    ClientError::FileUnreadable(format!("{what} {}: {e}", path.display()))
}
