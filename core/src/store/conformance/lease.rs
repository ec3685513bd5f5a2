//! Conformance: the cross-process lease on the crypto state.

use super::*;

fn fenced(holder: &str, token: u64, renew_until_ms: u64) -> Changes {
    let mut changes = Changes::from(ClientChanges {
        values: [("k".to_owned(), holder.to_owned())].into(),
        ..Default::default()
    });
    changes.lease = Some(LeaseFence {
        holder: holder.to_owned(),
        token,
        renew_until_ms,
    });
    changes
}

pub(crate) fn lease_is_exclusive_until_given_back_or_expired<S: Store>(s: &S) {
    let a = s.acquire_lease("a", 1_000, 2_000).unwrap();
    let LeaseAttempt::Acquired { token: first } = a else {
        panic!("a free lease is taken: {a:?}");
    };
    // Kept by its holder with the same token; refused to others until it expires.
    assert_eq!(
        s.acquire_lease("a", 1_500, 2_500).unwrap(),
        LeaseAttempt::Acquired { token: first }
    );
    assert_eq!(
        s.acquire_lease("b", 1_600, 2_600).unwrap(),
        LeaseAttempt::HeldByOther { until_ms: 2_500 }
    );
    // Given back: the next holder gets it at once, with a new token.
    s.release_lease("b").unwrap();
    s.release_lease("a").unwrap();
    let LeaseAttempt::Acquired { token: second } = s.acquire_lease("b", 1_700, 2_700).unwrap()
    else {
        panic!("a lease given back is free");
    };
    assert!(second > first);
    // Expired: taken over without being given back.
    let LeaseAttempt::Acquired { token: third } = s.acquire_lease("a", 2_701, 3_000).unwrap()
    else {
        panic!("an expired lease is free");
    };
    assert!(third > second);
}

pub(crate) fn writes_of_a_holder_that_lost_the_lease_are_refused<S: Store>(s: &S) {
    let LeaseAttempt::Acquired { token: old } = s.acquire_lease("paused", 0, 100).unwrap() else {
        panic!("free lease");
    };
    // Its write renews the lease.
    s.save_changes(fenced("paused", old, 500)).unwrap();
    assert_eq!(
        s.acquire_lease("other", 400, 1_000).unwrap(),
        LeaseAttempt::HeldByOther { until_ms: 500 }
    );
    // Paused past the expiry, another process takes over and writes.
    let LeaseAttempt::Acquired { token: new } = s.acquire_lease("other", 501, 1_000).unwrap()
    else {
        panic!("expired lease");
    };
    s.save_changes(fenced("other", new, 1_000)).unwrap();
    let generation = s.generation().unwrap();
    // The paused one wakes up and writes what it computed before: refused, nothing stored.
    let late = s.save_changes(fenced("paused", old, 2_000));
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    assert_eq!(s.generation().unwrap(), generation);
    assert_eq!(s.value("k").unwrap().as_deref(), Some("other"));
    // Unfenced writes (the client's own records) do not need the lease.
    s.save_changes(Changes::from(ClientChanges {
        values: [("k2".to_owned(), "v".to_owned())].into(),
        ..Default::default()
    }))
    .unwrap();
}
