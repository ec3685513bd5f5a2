//! Whom a backup's `auth_data` signatures make it trusted by: this device, an own verified
//! device, the own master key of an identity this device trusts; no one else.

use ruma::UserId;

use super::*;

/// `auth_data` with only the signature named `key_id` left.
fn only_signature(auth_data: &Value, user: &UserId, key_id: &str) -> Value {
    let mut kept = auth_data.clone();
    let signature = auth_data["signatures"][user.as_str()][key_id].clone();
    assert!(signature.is_string(), "{key_id} signed: {auth_data}");
    kept["signatures"] = json!({ user.as_str(): { key_id: signature } });
    kept
}

#[test]
fn a_backup_signed_by_the_own_master_key_is_trusted_by_devices_that_trust_the_identity() {
    let (mut server, alice, _bob) = setup_pair();
    server.publish_cross_signing(&alice);
    server.drive(&alice);
    let master = alice
        .machine
        .identity(&alice.user())
        .unwrap()
        .unwrap()
        .master_key;
    let auth_data = alice
        .machine
        .signed_backup_auth_data("a-public-key")
        .unwrap();
    assert!(alice.machine.backup_is_trusted(&auth_data).unwrap());
    let by_master = only_signature(&auth_data, &alice.user(), &format!("ed25519:{master}"));
    let by_device = only_signature(&auth_data, &alice.user(), "ed25519:ALICE");
    assert!(alice.machine.backup_is_trusted(&by_master).unwrap());

    // A new device of alice knows her identity but has not verified it yet.
    let laptop = new_own_device(&mut server, &alice, "LAPTOP");
    assert!(!laptop.machine.backup_is_trusted(&by_master).unwrap());
    assert!(!laptop.machine.backup_is_trusted(&by_device).unwrap());
    // It takes the cross-signing keys (from secret storage): it trusts the identity now.
    let secrets = alice.machine.cross_signing_secrets().unwrap().unwrap();
    let signature = laptop
        .machine
        .import_cross_signing_secrets(&secrets[0].1, &secrets[1].1, &secrets[2].1)
        .unwrap();
    server.upload_signatures(&signature);
    laptop.machine.mark_cross_signing_uploaded().unwrap();
    server.drive(&laptop);
    assert!(laptop.machine.backup_is_trusted(&by_master).unwrap());

    // A forged signature, or another key's, is not.
    let mut forged = by_master.clone();
    let key_id = format!("ed25519:{master}");
    forged["public_key"] = json!("another-public-key");
    assert!(!laptop.machine.backup_is_trusted(&forged).unwrap());
    let mut renamed = by_master.clone();
    let signature = renamed["signatures"][alice.user().as_str()][&key_id].take();
    renamed["signatures"] = json!({ alice.user().as_str(): { "ed25519:LAPTOP": signature } });
    assert!(!laptop.machine.backup_is_trusted(&renamed).unwrap());
}
