//! Rooms: creating, joining, member lists and sending encrypted messages.

use std::sync::Arc;

use ruma::api::client::membership::{
    get_member_events, invite_user, join_room_by_id_or_alias, leave_room,
};
use ruma::api::client::message::send_message_event;
use ruma::api::client::room::create_room;
use ruma::events::MessageLikeEventType;
use ruma::{OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId, TransactionId};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::hooks::{Prompt, PromptAnswer};
use super::room_state::apply_state;
use super::{Client, ClientError};
use crate::crypto::{OlmMachine, RotationSettings};
use crate::http::{HttpError, MAX_BODY_BYTES, with_retry};
use crate::store::{Changes, LocalTrust, MemberRecord, QueuedSend, RoomRecord, SecretBlob};

fn parse_room_id(room_id: &str) -> Result<OwnedRoomId, ClientError> {
    OwnedRoomId::try_from(room_id).map_err(|e| ClientError::InvalidInput(format!("room id: {e}")))
}

/// Users a room key goes to: joined members, and invited ones unless history is `joined` only.
pub(crate) fn recipients(room: &RoomRecord, members: &[MemberRecord]) -> Vec<String> {
    let include_invited = room.history_visibility.as_deref() != Some("joined");
    members
        .iter()
        .filter(|m| m.membership == "join" || (include_invited && m.membership == "invite"))
        .map(|m| m.user_id.clone())
        .collect()
}

impl Client {
    /// Create a private room with encryption enabled from the start, inviting `invite`.
    /// Room keys rotate after the default week or 100 messages.
    pub async fn create_encrypted_room(
        &self,
        name: Option<&str>,
        invite: &[String],
    ) -> Result<String, ClientError> {
        self.create_room_with_encryption(name, invite, None).await
    }

    /// Like [`Client::create_encrypted_room`], with the room key rotating after
    /// `rotation.period_ms` or `rotation.messages` messages, whichever comes first (the
    /// `m.room.encryption` settings every member's client follows).
    pub async fn create_encrypted_room_with_rotation(
        &self,
        name: Option<&str>,
        invite: &[String],
        rotation: RotationSettings,
    ) -> Result<String, ClientError> {
        if rotation.period_ms == 0 || rotation.messages == 0 {
            return Err(ClientError::InvalidInput(
                "rotation period and message count must be positive".into(),
            ));
        }
        self.create_room_with_encryption(name, invite, Some(rotation))
            .await
    }

    async fn create_room_with_encryption(
        &self,
        name: Option<&str>,
        invite: &[String],
        rotation: Option<RotationSettings>,
    ) -> Result<String, ClientError> {
        let machine = self.machine()?;
        let invite: Vec<OwnedUserId> = invite
            .iter()
            .map(|u| OwnedUserId::try_from(u.as_str()))
            .collect::<Result<_, _>>()
            .map_err(|e| ClientError::InvalidInput(format!("user id: {e}")))?;
        let mut encryption = json!({"algorithm": crate::crypto::MEGOLM_ALGORITHM});
        if let Some(rotation) = rotation {
            encryption["rotation_period_ms"] = rotation.period_ms.into();
            encryption["rotation_period_msgs"] = rotation.messages.into();
        }
        let mut request = create_room::v3::Request::new();
        request.name = name.map(str::to_owned);
        request.invite = invite.clone();
        request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
        request.initial_state = vec![crate::crypto::raw_json(&json!({
            "type": "m.room.encryption", "state_key": "", "content": encryption,
        }))?];
        let response = self.inner.http.send(request).await?;
        let room_id = response.room_id.to_string();
        let mut changes = Changes::default();
        changes.rooms.push(RoomRecord {
            room_id: room_id.clone(),
            encryption: Some(encryption.to_string()),
            history_visibility: Some("shared".into()),
            members_synced: false,
            own_membership: Some("join".into()),
        });
        changes.members.push(MemberRecord {
            room_id: room_id.clone(),
            user_id: machine.user_id().into(),
            membership: "join".into(),
        });
        for user in &invite {
            changes.members.push(MemberRecord {
                room_id: room_id.clone(),
                user_id: user.to_string(),
                membership: "invite".into(),
            });
        }
        self.save_changes(changes).await?;
        info!(room_id, "created encrypted room");
        Ok(room_id)
    }

    /// Join a room by id or alias; returns the room id.
    pub async fn join(&self, room: &str) -> Result<String, ClientError> {
        self.machine()?;
        let target = OwnedRoomOrAliasId::try_from(room)
            .map_err(|e| ClientError::InvalidInput(format!("room id or alias: {e}")))?;
        let response = with_retry(|| {
            self.inner
                .http
                .send(join_room_by_id_or_alias::v3::Request::new(target.clone()))
        })
        .await?;
        let room_id = response.room_id.to_string();
        let id = room_id.clone();
        self.blocking(move |c| {
            let store = c.store()?;
            let mut record = store.room(&id)?.unwrap_or_else(|| RoomRecord {
                room_id: id.clone(),
                ..Default::default()
            });
            if record.own_membership.as_deref() != Some("join") {
                // Member changes while we were not joined were not seen: load them again.
                record.members_synced = false;
            }
            record.own_membership = Some("join".into());
            store.save_changes(Changes {
                rooms: vec![record],
                ..Default::default()
            })?;
            Ok(())
        })
        .await?;
        info!(room_id, "joined");
        Ok(room_id)
    }

    /// Leave a room.
    pub async fn leave(&self, room_id: &str) -> Result<(), ClientError> {
        self.machine()?;
        let room = parse_room_id(room_id)?;
        with_retry(|| {
            self.inner
                .http
                .send(leave_room::v3::Request::new(room.clone()))
        })
        .await?;
        let room_id = room_id.to_owned();
        self.blocking(move |c| {
            let store = c.store()?;
            if let Some(mut record) = store.room(&room_id)? {
                record.own_membership = Some("leave".into());
                record.members_synced = false;
                store.save_changes(Changes {
                    rooms: vec![record],
                    ..Default::default()
                })?;
            }
            Ok(())
        })
        .await
    }

    /// Start a new Megolm session for the room's next message (e.g. after a security
    /// concern); the old one is never used again.
    pub fn discard_room_key(&self, room_id: &str) -> Result<(), ClientError> {
        Ok(self.machine()?.discard_room_key(room_id)?)
    }

    /// Devices of the room that got `m.no_olm` instead of the current room key (they had
    /// no one-time or fallback key left) and did not receive it since: `(user, device)`.
    /// They are retried on the next send and by [`Client::run_due_work`].
    pub fn devices_without_olm(&self, room_id: &str) -> Result<Vec<(String, String)>, ClientError> {
        Ok(self.machine()?.devices_without_olm(room_id)?)
    }

    /// Invite a user to a room. The invitee receives room keys from the next message on
    /// (unless the room's history visibility is `joined`).
    pub async fn invite(&self, room_id: &str, user_id: &str) -> Result<(), ClientError> {
        self.machine()?;
        let room = parse_room_id(room_id)?;
        let user = OwnedUserId::try_from(user_id)
            .map_err(|e| ClientError::InvalidInput(format!("user id: {e}")))?;
        let recipient =
            invite_user::v3::InvitationRecipient::UserId(invite_user::v3::InviteUserId::new(user));
        with_retry(|| {
            self.inner.http.send(invite_user::v3::Request::new(
                room.clone(),
                recipient.clone(),
            ))
        })
        .await?;
        self.save_changes(Changes {
            members: vec![MemberRecord {
                room_id: room_id.into(),
                user_id: user_id.into(),
                membership: "invite".into(),
            }],
            ..Default::default()
        })
        .await
    }

    /// Load the full member list (`/members`) once per room (again after each join), then
    /// sync keeps it current. The answer replaces every member record of the room, so
    /// nothing learned earlier (e.g. from an invite) outlives it.
    async fn ensure_members(&self, room: &RoomRecord) -> Result<(), ClientError> {
        if room.members_synced {
            return Ok(());
        }
        let room_id = parse_room_id(&room.room_id)?;
        let response = with_retry(|| {
            self.inner
                .http
                .send(get_member_events::v3::Request::new(room_id.clone()))
        })
        .await?;
        let mut changes = Changes {
            replaced_member_lists: vec![room.room_id.clone()],
            ..Default::default()
        };
        let mut record = RoomRecord {
            members_synced: true,
            ..room.clone()
        };
        let own_membership = record.own_membership.clone();
        for event in &response.chunk {
            let Ok(event) = serde_json::from_str::<Value>(event.json().get()) else {
                continue;
            };
            if event.get("type").and_then(Value::as_str) == Some("m.room.member") {
                apply_state(&mut record, &mut changes.members, &event, "");
            }
        }
        record.own_membership = own_membership;
        changes.rooms.push(record);
        self.save_changes(changes).await
    }

    /// Make sure every current recipient device of the room has the room key.
    pub async fn prepare_room_key(&self, room_id: &str) -> Result<(), ClientError> {
        let machine = self.machine()?;
        let id = room_id.to_owned();
        let room = self
            .blocking(move |c| Ok(c.store()?.room(&id)?))
            .await?
            .ok_or_else(|| ClientError::RoomNotEncrypted(room_id.into()))?;
        let Some(encryption) = room.encryption.clone() else {
            return Err(ClientError::RoomNotEncrypted(room_id.into()));
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
        if self.hooks().ask_about_new_devices {
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
        let settings = serde_json::from_str::<Value>(&encryption)
            .map(|c| RotationSettings::from_encryption_content(&c))
            .unwrap_or_default();
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
        if self.hooks().ask_about_new_devices {
            return;
        }
        let rooms = std::mem::take(
            &mut *self
                .inner
                .rooms_with_new_devices
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for room_id in rooms {
            let id = room_id.clone();
            let shared = self.blocking(move |c| {
                let store = c.store()?;
                match store.room(&id) {
                    Ok(Some(room)) if room.own_membership.as_deref() == Some("join") => {}
                    _ => return Ok(false),
                }
                Ok(store.outbound_group_session(&id)?.is_some())
            });
            match shared.await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!(room_id, error = %e, "reading the outbound session failed");
                    continue;
                }
            }
            if let Err(e) = self.prepare_room_key(&room_id).await {
                warn!(room_id, error = %e, "sharing the room key with new devices failed");
                if matches!(&e, ClientError::Http(h) if h.is_transient()) {
                    self.inner
                        .rooms_with_new_devices
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(room_id);
                }
            } else {
                debug!(room_id, "room key shared with new devices");
            }
        }
    }

    /// Ask the prompt handler about devices of `users` nobody decided about yet.
    async fn decide_new_devices(
        &self,
        machine: &Arc<OlmMachine>,
        users: &[String],
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

    /// Send an encrypted `m.text` message; returns the event id.
    pub async fn send_text(&self, room_id: &str, body: &str) -> Result<String, ClientError> {
        self.send_message(room_id, &json!({"msgtype": "m.text", "body": body}))
            .await
    }

    /// Send an encrypted `m.room.message` with the given content; returns the event id.
    ///
    /// The message goes into the store's send queue (content encrypted at rest) before
    /// anything is sent, and leaves it once the server has it or it failed for good. A
    /// transient failure (or the process dying) leaves it queued: [`Client::run_due_work`]
    /// sends it (the app's background scheduler is asked for a wake-up), as does the first
    /// sync of the next process. Every attempt reuses the transaction id, so the server
    /// stores the message once.
    pub async fn send_message(
        &self,
        room_id: &str,
        content: &Value,
    ) -> Result<String, ClientError> {
        parse_room_id(room_id)?;
        self.machine()?;
        let queued = QueuedSend {
            txn_id: TransactionId::new().to_string(),
            room_id: room_id.to_owned(),
            content: SecretBlob::new(
                serde_json::to_vec(content)
                    .map_err(|e| ClientError::InvalidInput(format!("message content: {e}")))?,
            ),
        };
        let txn_id = queued.txn_id.clone();
        self.save_changes(Changes {
            queued_sends: vec![queued],
            ..Default::default()
        })
        .await?;
        let result = self.send_message_once(room_id, content, &txn_id).await;
        match &result {
            // Not over: the message stays queued and is sent later (same transaction id).
            Err(e) if !e.is_permanent() => self.schedule_retry(e, "message send failed"),
            _ => {
                self.save_changes(Changes {
                    finished_sends: vec![txn_id],
                    ..Default::default()
                })
                .await?;
            }
        }
        result
    }

    pub(crate) async fn send_message_once(
        &self,
        room_id: &str,
        content: &Value,
        txn_id: &str,
    ) -> Result<String, ClientError> {
        let machine = self.machine()?;
        let room = parse_room_id(room_id)?;
        self.prepare_room_key(room_id)
            .await
            .map_err(unusable_answer_is_not_delivery)?;
        let (id, content) = (room_id.to_owned(), content.clone());
        let encrypted = self
            .blocking(move |_| Ok(machine.encrypt_room_event(&id, "m.room.message", &content)?))
            .await?;
        let body = crate::crypto::raw_json(&encrypted)?;
        let request = send_message_event::v3::Request::new_raw(
            room,
            txn_id.into(),
            MessageLikeEventType::RoomEncrypted,
            body,
        );
        let body = with_retry(|| self.inner.http.send_raw(request.clone(), MAX_BODY_BYTES)).await?;
        debug!(room_id, "sent encrypted message");
        // The server has the event now; an answer without a valid event id is its problem.
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("event_id")?.as_str().map(str::to_owned))
            .filter(|id| ruma::EventId::parse(id).is_ok())
            .ok_or_else(|| HttpError::Response("no valid event_id in the answer".into()).into())
    }
}

/// Devices of `users` nobody decided about yet (not deleted, not our own).
fn undecided(
    machine: &OlmMachine,
    users: &[String],
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

/// An unreadable answer before the message itself was sent (e.g. to `/members`) does not
/// mean the message was delivered, as it does for the send itself: it stays queued.
fn unusable_answer_is_not_delivery(e: ClientError) -> ClientError {
    match e {
        ClientError::Http(HttpError::Response(m)) => ClientError::InvalidResponse(m),
        ClientError::Http(e @ HttpError::TooLarge { .. }) => {
            ClientError::InvalidResponse(e.to_string())
        }
        other => other,
    }
}

/// A transient failure is returned (the operation is retried later); any other is logged and
/// the operation goes on without what failed.
fn transient_or_logged(e: ClientError) -> Result<(), ClientError> {
    if e.is_permanent() {
        warn!(error = %e, "a crypto request failed for good; going on without it");
        Ok(())
    } else {
        Err(e)
    }
}
