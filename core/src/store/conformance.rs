//! The conformance suite every [`Store`] implementation must pass.
//!
//! Each check is a generic function over `S: Store`; `store_conformance_tests!` instantiates
//! all of them as `#[test]`s for one implementation (see the bottom of this file).

// Also built (without its tests) for the fuzzing harnesses, which use its helpers.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]
// Test code (also in the fuzzing build): a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batches;
mod bounded;
mod fixtures;
mod handoff;
mod kept_for_repair;
mod lease;
mod records;
mod send_queue;
mod sessions;
mod trust;

pub(crate) use batches::*;
pub(crate) use bounded::*;
pub(crate) use fixtures::*;
pub(crate) use handoff::*;
pub(crate) use kept_for_repair::*;
pub(crate) use lease::*;
pub(crate) use records::*;
pub(crate) use send_queue::*;
pub(crate) use sessions::*;
pub(crate) use trust::*;

use super::*;

// ---- instantiation ----

macro_rules! conformance_tests {
    ($make:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                // (store, guard): the store is dropped before whatever keeps it alive.
                let instance = ($make)();
                super::$name(&instance.0);
            }
        )*
    };
}

macro_rules! store_conformance_tests {
    ($module:ident, $make:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            conformance_tests!($make;
                empty_store,
                account_insert_replace,
                olm_sessions_grouped_and_replaced,
                olm_sessions_many_keys,
                inbound_group_sessions,
                inbound_group_sessions_paged_in_order,
                backup_marks,
                undecryptable_sessions_without_key,
                outbound_sessions_replace_and_discard,
                devices_batch_and_deleted,
                tracked_users,
                megolm_indices_first_event_wins,
                rooms_and_members,
                encrypted_rooms_of_users,
                undecryptable_events_by_session,
                send_queue_in_order,
                send_queue_stages,
                send_queue_stuck,
                sent_events_bounded,
                withheld_notices_by_sender,
                key_requests_one_per_session,
                no_olm_room_keys_by_index,
                no_olm_room_keys_go_with_their_outbound_session,
                unwedge_records_by_device,
                unwedge_records_expire_and_are_bounded,
                member_lists_replaced_by_a_full_answer,
                quotas_forget_the_oldest_first,
                sessions_of_non_members_are_bounded,
                invites_are_bounded,
                olm_sessions_are_bounded,
                a_flooding_room_evicts_its_own_records_first,
                sessions_per_sender_and_room_are_bounded,
                sessions_we_asked_for_are_not_counted_as_strangers,
                imported_sessions_are_outside_the_quotas,
                pending_to_device_queue,
                values_and_secret_values,
                sharing_policies,
                sync_token,
                generation_counts_nonempty_saves,
                tricky_ids_stored_exactly,
                failed_save_applies_nothing,
                everything_in_one_save,
                concurrent_saves,
                usable_as_dyn,
                user_identities_by_user,
                sender_data_updated_in_place,
                sessions_to_reevaluate_by_sender_and_level,
                sender_data_retries_due_in_order,
                cross_signing_keys_are_a_reserved_secret,
                lease_is_exclusive_until_given_back_or_expired,
                writes_of_a_holder_that_lost_the_lease_are_refused,
                consumed_to_device_digests_recorded_and_forgotten,
                deferred_to_device_events_kept_in_order_until_taken,
            );
        }
    };
}

store_conformance_tests!(memory, || (MemoryStore::new(), ()));

store_conformance_tests!(sqlite, || {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), &StoreKey::from_bytes([42; 32])).unwrap();
    (store, dir)
});

#[test]
fn changes_is_empty_and_extend() {
    assert!(Changes::default().is_empty());
    let mut a = full_changes("a");
    assert!(!a.is_empty());
    a.extend(full_changes("b"));
    assert_eq!(a.crypto.devices.len(), 2);
    assert_eq!(a.sync_token.as_deref(), Some("token-b"));
    assert_eq!(
        a.crypto.account.as_ref().map(|x| x.user_id.as_str()),
        Some("@me-b:x")
    );
    assert!(full_changes("v").validate().is_ok());
    for (what, invalidate) in invalidators() {
        let mut c = Changes::default();
        invalidate(&mut c);
        assert!(!c.is_empty(), "{what}");
        assert!(
            matches!(c.validate(), Err(StoreError::InvalidRecord(_))),
            "{what}"
        );
        let mut valid_too = full_changes("keep");
        invalidate(&mut valid_too);
        assert_eq!(valid_too.drop_invalid(), 1, "{what}");
        assert!(valid_too.validate().is_ok(), "{what}");
    }
}
