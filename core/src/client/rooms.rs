//! Rooms: creating, joining, leaving, inviting, and loading member lists.

use ruma::api::client::membership::{
    get_member_events, invite_user, join_room_by_id_or_alias, leave_room,
};
use ruma::api::client::room::create_room;
use ruma::events::room::history_visibility::HistoryVisibility;
use ruma::events::room::member::MembershipState;
use ruma::{EventEncryptionAlgorithm, OwnedRoomId, OwnedUserId, RoomId, RoomOrAliasId, UserId};
use serde_json::{Value, json};
use tracing::info;

use super::room_state::{apply_state, with_membership};
use super::{Client, ClientError};
use crate::crypto::RotationSettings;
use crate::http::with_retry;
use crate::store::{Changes, ClientChanges, MemberRecord, RoomEncryption, RoomRecord};

/// Users a room key goes to: joined members, and invited ones unless history is `joined` only.
pub(crate) fn recipients(room: &RoomRecord, members: &[MemberRecord]) -> Vec<OwnedUserId> {
    let include_invited = room.history_visibility != Some(HistoryVisibility::Joined);
    members
        .iter()
        .filter(|m| match m.membership {
            MembershipState::Join => true,
            MembershipState::Invite => include_invited,
            _ => false,
        })
        .map(|m| m.user_id.clone())
        .collect()
}

impl Client {
    /// Create a private room with encryption enabled from the start, inviting `invite`.
    /// Room keys rotate after the default week or 100 messages.
    pub async fn create_encrypted_room(
        &self,
        name: Option<&str>,
        invite: &[OwnedUserId],
    ) -> Result<OwnedRoomId, ClientError> {
        self.create_room_with_encryption(name, invite, None).await
    }

    /// Like [`Client::create_encrypted_room`], with the room key rotating after
    /// `rotation.period_ms` or `rotation.messages` messages, whichever comes first (the
    /// `m.room.encryption` settings every member's client follows).
    pub async fn create_encrypted_room_with_rotation(
        &self,
        name: Option<&str>,
        invite: &[OwnedUserId],
        rotation: RotationSettings,
    ) -> Result<OwnedRoomId, ClientError> {
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
        invite: &[OwnedUserId],
        rotation: Option<RotationSettings>,
    ) -> Result<OwnedRoomId, ClientError> {
        let machine = self.machine()?;
        let encryption = RoomEncryption {
            algorithm: EventEncryptionAlgorithm::MegolmV1AesSha2,
            rotation_period_ms: rotation.map(|r| r.period_ms),
            rotation_period_msgs: rotation.map(|r| r.messages),
        };
        let mut request = create_room::v3::Request::new();
        request.name = name.map(str::to_owned);
        request.invite = invite.to_vec();
        request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
        request.initial_state = vec![crate::crypto::raw_json(&json!({
            "type": "m.room.encryption", "state_key": "", "content": encryption.to_content(),
        }))?];
        let room_id = self.inner.http.send(request).await?.room_id;
        let mut changes = Changes::default();
        changes.client.rooms.push(RoomRecord {
            encryption: Some(encryption),
            history_visibility: Some(HistoryVisibility::Shared),
            own_membership: Some(MembershipState::Join),
            ..RoomRecord::new(room_id.clone())
        });
        let own = std::iter::once((machine.user_id().to_owned(), MembershipState::Join));
        let invited = invite.iter().map(|u| (u.clone(), MembershipState::Invite));
        for (user_id, membership) in own.chain(invited) {
            changes.client.members.push(MemberRecord {
                room_id: room_id.clone(),
                user_id,
                membership,
            });
        }
        self.save_changes(changes).await?;
        info!(%room_id, "created encrypted room");
        Ok(room_id)
    }

    /// Join a room by id or alias; returns the room id.
    pub async fn join(&self, room: &RoomOrAliasId) -> Result<OwnedRoomId, ClientError> {
        self.machine()?;
        let response = with_retry(|| {
            self.inner
                .http
                .send(join_room_by_id_or_alias::v3::Request::new(room.to_owned()))
        })
        .await?;
        let room_id = response.room_id;
        let id = room_id.clone();
        self.blocking(move |c| {
            let store = c.store()?;
            // Member changes while we were not joined were not seen: loaded again.
            let record = with_membership(&*store, &id, MembershipState::Join)?;
            store.save_changes(Changes::from(ClientChanges {
                rooms: vec![record],
                ..Default::default()
            }))?;
            Ok(())
        })
        .await?;
        info!(%room_id, "joined");
        Ok(room_id)
    }

    /// Leave a room.
    pub async fn leave(&self, room_id: &RoomId) -> Result<(), ClientError> {
        self.machine()?;
        with_retry(|| {
            self.inner
                .http
                .send(leave_room::v3::Request::new(room_id.to_owned()))
        })
        .await?;
        let room_id = room_id.to_owned();
        self.blocking(move |c| {
            let store = c.store()?;
            if let Some(mut record) = store.room(&room_id)? {
                record.own_membership = Some(MembershipState::Leave);
                record.members_synced = false;
                store.save_changes(Changes::from(ClientChanges {
                    rooms: vec![record],
                    ..Default::default()
                }))?;
            }
            Ok(())
        })
        .await
    }

    /// Invite a user to a room. The invitee receives room keys from the next message on
    /// (unless the room's history visibility is `joined`).
    pub async fn invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<(), ClientError> {
        self.machine()?;
        let recipient = invite_user::v3::InvitationRecipient::UserId(
            invite_user::v3::InviteUserId::new(user_id.to_owned()),
        );
        with_retry(|| {
            self.inner.http.send(invite_user::v3::Request::new(
                room_id.to_owned(),
                recipient.clone(),
            ))
        })
        .await?;
        self.save_changes(Changes::from(ClientChanges {
            members: vec![MemberRecord {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
                membership: MembershipState::Invite,
            }],
            ..Default::default()
        }))
        .await
    }

    /// Load the full member list (`/members`) once per room (again after each join), then
    /// sync keeps it current. The answer replaces every member record of the room, so
    /// nothing learned earlier (e.g. from an invite) outlives it.
    pub(super) async fn ensure_members(&self, room: &RoomRecord) -> Result<(), ClientError> {
        if room.members_synced {
            return Ok(());
        }
        let own = self.machine()?;
        let own_user = own.user_id();
        let response = with_retry(|| {
            self.inner
                .http
                .send(get_member_events::v3::Request::new(room.room_id.clone()))
        })
        .await?;
        let mut changes = Changes::from(ClientChanges {
            replaced_member_lists: vec![room.room_id.clone()],
            ..Default::default()
        });
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
                apply_state(&mut record, &mut changes.client.members, &event, own_user);
            }
        }
        record.own_membership = own_membership;
        changes.client.rooms.push(record);
        self.save_changes(changes).await
    }
}
