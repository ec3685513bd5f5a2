//! Room keys: making sure every current recipient device of a room has its key before a
//! message is encrypted (members, device lists, Olm sessions, the share itself), new
//! devices, and the app's decisions about them.

use std::sync::Arc;

use ruma::events::room::member::MembershipState;
use ruma::{OwnedDeviceId, OwnedUserId, RoomId};
use tracing::{debug, warn};

use super::hooks::{Prompt, PromptAnswer};
use super::rooms::recipients;
use super::{Client, ClientError};
use crate::crypto::{OlmMachine, RotationSettings, SharingPolicy};
use crate::store::LocalTrust;

impl Client {
    /// Start a new Megolm session for the room's next message (e.g. after a security
    /// concern); the old one is never used again.
    pub fn discard_room_key(&self, room_id: &RoomId) -> Result<(), ClientError> {
        Ok(self.machine()?.discard_room_key(room_id)?)
    }

    /// Devices of the room that got `m.no_olm` instead of the current room key (they had
    /// no one-time or fallback key left) and did not receive it since: `(user, device)`.
    /// They are retried on the next send and by [`Client::run_due_work`].
    pub fn devices_without_olm(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<(OwnedUserId, OwnedDeviceId)>, ClientError> {
        Ok(self.machine()?.devices_without_olm(room_id)?)
    }

    /// Make sure every current recipient device of the room has the room key.
    pub async fn prepare_room_key(&self, room_id: &RoomId) -> Result<(), ClientError> {
        let machine = self.machine()?;
        let id = room_id.to_owned();
        let room = self
            .blocking(move |c| Ok(c.store()?.room(&id)?))
            .await?
            .ok_or_else(|| ClientError::RoomNotEncrypted(room_id.to_owned()))?;
        let Some(encryption) = room.encryption.clone() else {
            return Err(ClientError::RoomNotEncrypted(room_id.to_owned()));
        };
        self.ensure_members(&room).await?;
        let (m, id) = (Arc::clone(&machine), room_id.to_owned());
        let users = self
            .blocking(move |c| {
                let store = c.store()?;
                let room = store.room(&id)?.unwrap_or(room);
                let users = recipients(&room, &store.members(&id)?);
                m.update_tracked_users(&users)?;
                Ok(users)
            })
            .await?;
        // A request the server refuses for good must not stop the message: the devices it
        // concerns get `m.no_olm` (or keep what we knew of them); network failures do.
        if let Err(e) = self.send_outgoing().await {
            transient_or_logged(e)?;
        }
        if self.asks_about_new_devices(&machine, room_id)? {
            self.decide_new_devices(&machine, &users).await?;
        }
        let (m, recipients) = (Arc::clone(&machine), users.clone());
        let claim = self
            .blocking(move |_| Ok(m.missing_sessions(&recipients)?))
            .await?;
        if let Some(claim) = claim
            && let Err(e) = self.send_request(&machine, claim).await
        {
            transient_or_logged(e)?;
        }
        let settings = RotationSettings::from(&encryption);
        let (m, id) = (Arc::clone(&machine), room_id.to_owned());
        let requests = self
            .blocking(move |_| Ok(m.share_room_key(&id, &users, settings)?))
            .await?;
        {
            let _guard = self.inner.outgoing.lock().await;
            for request in requests {
                if let Err(e) = self.send_request(&machine, request).await {
                    transient_or_logged(e)?;
                }
            }
        }
        if self.count_without_olm(&machine, room_id).await? > 0 {
            self.schedule_no_olm_retry(true);
        }
        Ok(())
    }

    /// Give new devices of room members the current room key of the rooms they are in
    /// (found through the store's room index when their device list was downloaded), so
    /// they can decrypt the next message even before it is sent. Rooms without an outbound
    /// session have nothing to share; the next send shares a new one. When the app decides
    /// about new devices itself, the next send asks it instead.
    pub(crate) async fn share_with_new_devices(&self) {
        let rooms = std::mem::take(
            &mut *self
                .inner
                .rooms_with_new_devices
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for room_id in rooms {
            // The app decides about new devices of this room: the next send asks it.
            let asks = self
                .machine()
                .and_then(|m| self.asks_about_new_devices(&m, &room_id));
            if !matches!(asks, Ok(false)) {
                continue;
            }
            let id = room_id.clone();
            let shared = self.blocking(move |c| {
                let store = c.store()?;
                match store.room(&id) {
                    Ok(Some(room)) if room.own_membership == Some(MembershipState::Join) => {}
                    _ => return Ok(false),
                }
                Ok(store.outbound_group_session(&id)?.is_some())
            });
            match shared.await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!(%room_id, error = %e, "reading the outbound session failed");
                    continue;
                }
            }
            if let Err(e) = self.prepare_room_key(&room_id).await {
                warn!(%room_id, error = %e, "sharing the room key with new devices failed");
                if matches!(&e, ClientError::Http(h) if h.is_transient()) {
                    self.inner
                        .rooms_with_new_devices
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(room_id);
                }
            } else {
                debug!(%room_id, "room key shared with new devices");
            }
        }
    }

    /// Whether sending in `room_id` asks the app about devices nobody decided about yet:
    /// globally ([`Client::set_ask_about_new_devices`]) or by the room's sharing policy
    /// ([`SharingPolicy::AskMe`]).
    fn asks_about_new_devices(
        &self,
        machine: &OlmMachine,
        room_id: &RoomId,
    ) -> Result<bool, ClientError> {
        Ok(self.hooks().ask_about_new_devices
            || machine.sharing_policy_for(room_id)? == SharingPolicy::AskMe)
    }

    /// Ask the prompt handler about devices of `users` nobody decided about yet.
    async fn decide_new_devices(
        &self,
        machine: &Arc<OlmMachine>,
        users: &[OwnedUserId],
    ) -> Result<(), ClientError> {
        let (m, all) = (Arc::clone(machine), users.to_vec());
        let devices = self.blocking(move |_| undecided(&m, &all)).await?;
        if devices.is_empty() {
            return Ok(());
        }
        let answer = self.prompt(Prompt::NewDevices { devices }).await;
        let (m, all) = (Arc::clone(machine), users.to_vec());
        let still: Vec<String> = self
            .blocking(move |_| {
                if let PromptAnswer::DeviceDecisions(decisions) = answer {
                    for (user, device, trust) in decisions {
                        if trust != LocalTrust::Unset {
                            m.set_local_trust(&user, &device, trust)?;
                        }
                    }
                }
                undecided(&m, &all)
            })
            .await?
            .iter()
            .map(|d| format!("{}/{}", d.user_id, d.device_id))
            .collect();
        if still.is_empty() {
            Ok(())
        } else {
            Err(ClientError::UnknownDevices(still))
        }
    }
}

/// Devices of `users` nobody decided about yet (not deleted, not our own).
fn undecided(
    machine: &OlmMachine,
    users: &[OwnedUserId],
) -> Result<Vec<crate::crypto::Device>, ClientError> {
    let mut out = Vec::new();
    for user in users {
        out.extend(machine.devices(user)?.into_iter().filter(|d| {
            d.local_trust == LocalTrust::Unset
                && !d.deleted
                && !(d.user_id == machine.user_id() && d.device_id == machine.device_id())
        }));
    }
    Ok(out)
}

/// A transient failure is returned (the operation is retried later); any other is logged and
/// the operation goes on without what failed.
pub(super) fn transient_or_logged(e: ClientError) -> Result<(), ClientError> {
    if e.is_permanent() {
        warn!(error = %e, "a crypto request failed for good; going on without it");
        Ok(())
    } else {
        Err(e)
    }
}
