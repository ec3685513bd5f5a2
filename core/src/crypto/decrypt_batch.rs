//! Room events decrypted outside a sync response (kept events retried when a late key
//! arrives, a single event for a push notification). Their replay records are committed
//! together, in one transaction with whatever the caller adds, not one transaction per event.

use serde_json::Value;

use super::error::CryptoError;
use super::machine::OlmMachine;
use super::outcomes::DecryptedRoomEvent;
use crate::store::Changes;

/// Decryptions whose replay records wait for [`DecryptBatch::commit`]. Dropped without a
/// commit, it stores nothing: the events stay undecrypted as far as replay detection knows,
/// so the caller must not show them. Do not hold it across an `.await`.
pub struct DecryptBatch<'m> {
    machine: &'m OlmMachine,
    changes: Changes,
}

impl std::fmt::Debug for DecryptBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptBatch")
            .field("events", &self.changes.crypto.megolm_indices.len())
            .finish_non_exhaustive()
    }
}

impl<'m> DecryptBatch<'m> {
    pub(crate) fn new(machine: &'m OlmMachine) -> Self {
        Self {
            machine,
            changes: Changes::default(),
        }
    }
}

impl DecryptBatch<'_> {
    /// Decrypt an `m.room.encrypted` event received in `room_id`. A message index used by
    /// an earlier event of this batch is a replay, as one stored already is.
    pub fn decrypt_room_event(
        &mut self,
        room_id: &ruma::RoomId,
        event: &Value,
    ) -> Result<DecryptedRoomEvent, CryptoError> {
        self.machine
            .decryptor()
            .decrypt_recording(room_id, event, &mut self.changes)
    }

    /// Store the replay records of the events decrypted, with the caller's `extra` records,
    /// in one transaction. Only then may the plaintexts be shown.
    pub fn commit(self, extra: Changes) -> Result<(), CryptoError> {
        let mut changes = extra;
        changes
            .crypto
            .megolm_indices
            .extend(self.changes.crypto.megolm_indices);
        if changes.is_empty() {
            // Only events seen before: nothing to write, no need for the machine's lock.
            return Ok(());
        }
        let mut state = self.machine.lock()?;
        self.machine.save(&mut state, changes)
    }
}
