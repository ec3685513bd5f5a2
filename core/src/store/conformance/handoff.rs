//! Conformance: what a notification extension hands over to the app.

use super::*;

fn crypto(c: CryptoChanges) -> Changes {
    Changes::from(c)
}

pub(crate) fn consumed_to_device_digests_recorded_and_forgotten<S: Store>(s: &S) {
    s.save_changes(crypto(CryptoChanges {
        consumed_to_device: vec!["d1".into(), "d2".into()],
        ..Default::default()
    }))
    .unwrap();
    let mut found = s.consumed_to_device(&["d2", "d3", "d1"]).unwrap();
    found.sort();
    assert_eq!(found, vec!["d1", "d2"]);
    s.save_changes(crypto(CryptoChanges {
        forgotten_to_device: vec!["d1".into()],
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(s.consumed_to_device(&["d1", "d2"]).unwrap(), vec!["d2"]);
    // Bounded: the oldest go first.
    let many: Vec<String> = (0..quota::MAX_CONSUMED_TO_DEVICE + 5)
        .map(|i| format!("x{i}"))
        .collect();
    s.save_changes(crypto(CryptoChanges {
        consumed_to_device: many,
        ..Default::default()
    }))
    .unwrap();
    assert!(s.consumed_to_device(&["d2", "x0"]).unwrap().is_empty());
    let newest = format!("x{}", quota::MAX_CONSUMED_TO_DEVICE + 4);
    assert_eq!(
        s.consumed_to_device(&[&newest]).unwrap(),
        vec![newest.clone()]
    );
}

pub(crate) fn deferred_to_device_events_kept_in_order_until_taken<S: Store>(s: &S) {
    for batch in [vec!["e1", "e2"], vec!["e3"]] {
        s.save_changes(crypto(CryptoChanges {
            deferred_to_device: batch.into_iter().map(str::to_owned).collect(),
            ..Default::default()
        }))
        .unwrap();
    }
    assert_eq!(s.deferred_to_device().unwrap(), vec!["e1", "e2", "e3"]);
    // Taken and new ones added in one write: only the new ones remain.
    s.save_changes(crypto(CryptoChanges {
        take_deferred_to_device: true,
        deferred_to_device: vec!["e4".into()],
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(s.deferred_to_device().unwrap(), vec!["e4"]);
    let many: Vec<String> = (0..quota::MAX_DEFERRED_TO_DEVICE + 3)
        .map(|i| format!("m{i}"))
        .collect();
    s.save_changes(crypto(CryptoChanges {
        deferred_to_device: many,
        ..Default::default()
    }))
    .unwrap();
    let kept = s.deferred_to_device().unwrap();
    assert_eq!(kept.len() as u64, quota::MAX_DEFERRED_TO_DEVICE);
    assert_eq!(kept[0], "m3", "e4 and the three oldest went");
}
