//! Work that waits for a wake-up from the app's background scheduler: crypto requests and
//! messages whose sending failed, and room keys withheld from devices without one-time keys
//! (`m.no_olm`).

use super::BackupState;
use std::sync::Arc;
use std::time::Duration;

use ruma::events::room::member::MembershipState;

use super::hooks::{DueWorkReport, WakeupRequest};
use super::{Client, ClientError, is_transient};
use crate::crypto::OlmMachine;

/// First wake-up delay for devices that got `m.no_olm`.
const NO_OLM_FIRST_DELAY: Duration = Duration::from_secs(300);
/// Wake-ups in a row for devices that got `m.no_olm`.
const NO_OLM_MAX_RETRIES: u32 = 4;

/// Wake-ups asked for devices that got `m.no_olm`.
#[derive(Default)]
pub(super) struct NoOlmRetry {
    /// One was asked for and has not run yet.
    wakeup_pending: bool,
    /// Retries in a row that left devices without a key.
    attempts: u32,
}

impl Client {
    /// Run the work that was waiting for a wake-up: crypto requests that failed to go out and
    /// messages whose send failed. Asks for another wake-up if something is still left.
    pub async fn run_due_work(&self) -> Result<DueWorkReport, ClientError> {
        self.machine()?;
        let mut report = DueWorkReport::default();
        let before = self.pending_to_device().await?;
        let mut last_error = None;
        if let Err(e) = self.send_outgoing().await {
            last_error = Some(e);
        }
        let after = self.pending_to_device().await?;
        report.completed += before.saturating_sub(after) as u32;
        let (sent, queued_left, error) = self.send_queued(true).await?;
        report.completed += sent;
        last_error = last_error.or(error);
        let mut without_olm = 0;
        if !last_error.as_ref().is_some_and(is_transient) {
            match self.retry_devices_without_olm().await {
                Ok((done, left)) => {
                    report.completed += done;
                    without_olm = left;
                }
                Err(e) => last_error = Some(e),
            }
        }
        match self.retry_sender_data(true).await {
            Ok(improved) => report.completed += improved,
            Err(e) => last_error = last_error.or(Some(e)),
        }
        // Room keys for the server-side backup, if one is set up here.
        let mut backup_left = 0;
        match self.upload_backup().await {
            Ok(uploaded) => report.completed += u32::try_from(uploaded).unwrap_or(u32::MAX),
            Err(e) => {
                if let BackupState::Enabled { pending, .. } = self.backup_state().await? {
                    backup_left = u32::try_from(pending).unwrap_or(u32::MAX);
                }
                last_error = last_error.or(Some(e));
            }
        }
        report.remaining =
            queued_left + self.pending_to_device().await? as u32 + without_olm + backup_left;
        if report.remaining > 0
            && let Some(e) = &last_error
        {
            self.schedule_retry(e, "retry of pending work");
        } else if without_olm > 0 {
            self.schedule_no_olm_retry(false);
        }
        Ok(report)
    }

    /// How many to-device messages wait to be sent.
    async fn pending_to_device(&self) -> Result<usize, ClientError> {
        self.blocking(|c| Ok(c.store()?.pending_to_device()?.len()))
            .await
    }

    /// Ask the app for a wake-up if `error` is worth retrying later.
    pub(crate) fn schedule_retry(&self, error: &ClientError, reason: &str) {
        if is_transient(error) {
            self.schedule_wakeup(Duration::from_secs(30), reason);
        } else if !error.is_permanent() {
            // Our own store or crypto failing, or an answer we could not use: later.
            self.schedule_wakeup(Duration::from_secs(300), reason);
        }
    }

    pub(crate) fn schedule_wakeup(&self, delay: Duration, reason: &str) {
        if let Some(scheduler) = self.hooks().scheduler {
            scheduler.schedule_wakeup(WakeupRequest {
                delay,
                reason: reason.to_owned(),
                requires_network: true,
            });
        }
    }

    /// Some devices got `m.no_olm` instead of a room key: ask for a wake-up (unless one is
    /// pending) to retry them once they may have uploaded new one-time keys. The delay
    /// grows with each retry that left devices without a key (5 min, 20 min, 80 min,
    /// 5 h 20 min); after [`NO_OLM_MAX_RETRIES`] none is asked for, so that an abandoned
    /// device does not wake the app forever. The next send retries such devices anyway.
    ///
    /// `after_send`: a message was just withheld from such devices, which starts the delays
    /// over (the app is in use; the devices may be new).
    pub(crate) fn schedule_no_olm_retry(&self, after_send: bool) {
        if self.hooks().scheduler.is_none() {
            return;
        }
        let mut retry = self
            .inner
            .no_olm_retry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // (A retry in progress also counts as pending: its own sends do not start over.)
        if after_send && !retry.wakeup_pending {
            retry.attempts = 0;
        }
        if retry.wakeup_pending || retry.attempts >= NO_OLM_MAX_RETRIES {
            return;
        }
        let delay = NO_OLM_FIRST_DELAY * 4u32.pow(retry.attempts);
        retry.wakeup_pending = true;
        drop(retry);
        self.schedule_wakeup(delay, "devices without one-time keys");
    }

    /// Share again the room keys withheld with `m.no_olm`, in every encrypted room we are
    /// in. Returns `(devices that got their key, devices still without)`.
    async fn retry_devices_without_olm(&self) -> Result<(u32, u32), ClientError> {
        // No wake-up from inside the retry; the caller asks for one with the new delay.
        self.inner
            .no_olm_retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wakeup_pending = true;
        let result = self.share_with_devices_without_olm().await;
        let mut retry = self
            .inner
            .no_olm_retry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        retry.wakeup_pending = false;
        if let Ok((_, left)) = result {
            retry.attempts = if left == 0 { 0 } else { retry.attempts + 1 };
        }
        result
    }

    async fn share_with_devices_without_olm(&self) -> Result<(u32, u32), ClientError> {
        let machine = self.machine()?;
        let (mut done, mut left) = (0, 0);
        let rooms = self.blocking(|c| Ok(c.store()?.rooms()?)).await?;
        for room in rooms {
            let joined = room.own_membership == Some(MembershipState::Join);
            if room.encryption.is_none() || !joined {
                continue;
            }
            let before = self.count_without_olm(&machine, &room.room_id).await?;
            if before == 0 {
                continue;
            }
            self.prepare_room_key(&room.room_id).await?;
            let after = self.count_without_olm(&machine, &room.room_id).await?;
            done += before.saturating_sub(after);
            left += after;
        }
        Ok((done, left))
    }

    /// How many devices of the room got `m.no_olm` and still lack the room key.
    pub(crate) async fn count_without_olm(
        &self,
        machine: &Arc<OlmMachine>,
        room_id: &ruma::RoomId,
    ) -> Result<u32, ClientError> {
        let (machine, room_id) = (Arc::clone(machine), room_id.to_owned());
        self.blocking(move |_| Ok(machine.devices_without_olm(&room_id)?.len() as u32))
            .await
    }
}
