//! The identity half of a `/keys/query` answer, and the app's decisions about identities:
//! each answered user's cross-signing keys are verified and compared with what we pinned
//! and verified; a change is reported, never silently accepted as verified.

use std::collections::HashMap;

use ruma::{OwnedUserId, UserId};
use serde_json::Value;
use tracing::warn;

use super::context::sub_machine;
use super::cross_signing::OwnCrossSigning;
use super::error::CryptoError;
use super::identity::{AnsweredKeys, identity_from_answer, signed_by_user_signing_key};
use super::outcomes::{IdentityChange, QueryOutcome};
use super::responses::KeysQueryResponse;
use super::state::State;
use crate::store::{Changes, UserIdentityRecord};

sub_machine! {
    /// Users' cross-signing identities: updates from the server, pins and verifications.
    Identities
}

impl Identities<'_> {
    /// Verify the identities of `users` in `response` into `changes`, own user first (the
    /// others' verification by our user-signing key depends on it).
    pub(crate) fn update_identities(
        &self,
        users: &[&UserId],
        response: &KeysQueryResponse,
        changes: &mut Changes,
        outcome: &mut QueryOutcome,
    ) -> Result<(), CryptoError> {
        let mut wanted: Vec<&UserId> = users
            .iter()
            .copied()
            .filter(|u| response.master_keys.contains_key(*u))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_by_key(|u| *u != self.ctx.user_id);
        let mut lookup: Vec<&UserId> = wanted.clone();
        lookup.push(self.ctx.user_id);
        let mut stored: HashMap<OwnedUserId, UserIdentityRecord> = self
            .ctx
            .store
            .user_identities(&lookup)?
            .into_iter()
            .map(|i| (i.user_id.clone(), i))
            .collect();
        let own_keys = self.own_cross_signing()?;
        for user in wanted {
            let keys = AnsweredKeys {
                master: &response.master_keys[user],
                self_signing: response.self_signing_keys.get(user),
                user_signing: response.user_signing_keys.get(user),
            };
            let own = user == self.ctx.user_id;
            let trusted_usk = trusted_user_signing_key(stored.get(self.ctx.user_id));
            let verified_by_us = |master: &Value| match (own, &own_keys, &trusted_usk) {
                (true, Some(keys), _) => master_public(master) == Some(keys.master_public()),
                (false, _, Some(usk)) => signed_by_user_signing_key(master, self.ctx.user_id, usk),
                _ => false,
            };
            let old = stored.get(user);
            let identity = match identity_from_answer(user, &keys, old, own, verified_by_us) {
                Ok(identity) => identity,
                Err(e) => {
                    warn!(%user, error = %e, "refused cross-signing keys");
                    outcome.rejected_identities.push((user.to_owned(), e));
                    continue;
                }
            };
            if old == Some(&identity) {
                continue;
            }
            if let Some(change) = identity_change(old, &identity) {
                outcome.identity_changes.push(change);
            }
            stored.insert(user.to_owned(), identity.clone());
            changes.crypto.user_identities.push(identity);
        }
        Ok(())
    }

    /// The own cross-signing private keys, if this device holds them.
    pub(crate) fn own_cross_signing(&self) -> Result<Option<OwnCrossSigning>, CryptoError> {
        super::cross_signing::stored(self.ctx.store)
    }

    /// A user's identity, if known.
    pub(crate) fn identity(
        &self,
        user: &UserId,
    ) -> Result<Option<UserIdentityRecord>, CryptoError> {
        Ok(self.ctx.store.user_identities(&[user])?.pop())
    }

    /// The app acknowledged a user's changed identity (a pin violation) or withdrew the
    /// verification of an earlier one: the current master key becomes the pinned one and
    /// the old verification is forgotten. Returns whether the user has an identity.
    pub(crate) fn pin_identity(
        &self,
        state: &mut State,
        user: &UserId,
    ) -> Result<bool, CryptoError> {
        self.decide(state, user, |identity| {
            if identity.has_verification_violation() {
                identity.verified_master_key = None;
            }
        })
    }

    /// The user verified `user`'s current identity (e.g. by comparing emoji): it is pinned
    /// and verified. Returns whether the user has an identity.
    pub(crate) fn verify_identity(
        &self,
        state: &mut State,
        user: &UserId,
    ) -> Result<bool, CryptoError> {
        self.decide(state, user, |identity| {
            identity.verified_master_key = Some(identity.master_key.clone());
        })
    }

    /// Pin `user`'s current identity, apply the user's `decision` to it and store it.
    /// Returns whether the user has an identity.
    fn decide(
        &self,
        state: &mut State,
        user: &UserId,
        decision: impl FnOnce(&mut UserIdentityRecord),
    ) -> Result<bool, CryptoError> {
        let Some(mut identity) = self.identity(user)? else {
            return Ok(false);
        };
        identity.pinned_master_key = identity.master_key.clone();
        decision(&mut identity);
        self.save_identity(state, identity)?;
        Ok(true)
    }

    /// Store a changed identity, and improve the sender data it may change.
    fn save_identity(
        &self,
        state: &mut State,
        identity: UserIdentityRecord,
    ) -> Result<(), CryptoError> {
        let user = identity.user_id.clone();
        let mut changes = Changes::default();
        changes.crypto.user_identities.push(identity);
        super::sender_data::SenderDataMachine::new(self.ctx).reevaluate(
            state,
            &[&user],
            false,
            &mut changes,
        )?;
        self.ctx.save(state, changes)
    }
}

/// Our user-signing key, if our own identity is verified (else its signatures prove
/// nothing to us).
fn trusted_user_signing_key(own: Option<&UserIdentityRecord>) -> Option<String> {
    own.filter(|i| i.is_verified())
        .and_then(|i| i.user_signing_key.clone())
}

/// The public key of a master key object (its only Ed25519 key).
fn master_public(master: &Value) -> Option<String> {
    let keys = master.get("keys")?.as_object()?;
    keys.values().next()?.as_str().map(str::to_owned)
}

/// How an identity changed, if its master key did.
fn identity_change(
    old: Option<&UserIdentityRecord>,
    new: &UserIdentityRecord,
) -> Option<IdentityChange> {
    if old?.master_key == new.master_key {
        return None;
    }
    if new.has_verification_violation() {
        Some(IdentityChange::VerificationViolation(new.user_id.clone()))
    } else if new.has_pin_violation() {
        Some(IdentityChange::PinViolation(new.user_id.clone()))
    } else {
        None
    }
}
