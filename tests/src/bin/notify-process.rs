//! A push handler as a process of its own, for the end-to-end tests: opens a
//! `NotificationDecryptor` on a client's store and prints the notification as JSON.
//!
//! `notify-process HOMESERVER STORE_DIR ROOM_ID EVENT_ID BUDGET_MS` (store passphrase: the
//! tests' [`STORE_PASSPHRASE`]). Exit code 0 with `{"body": ...}`, 1 with `{"error": ...}`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use newt_core::notification::NotificationDecryptor;
use newt_core::ruma::{OwnedEventId, OwnedRoomId};
use newt_core::store::StoreKey;
use newt_e2e_tests::clients::STORE_PASSPHRASE;
use serde_json::json;

async fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let [homeserver, store, room, event, budget] = args else {
        return Err("usage: notify-process HOMESERVER STORE_DIR ROOM_ID EVENT_ID BUDGET_MS".into());
    };
    let room = OwnedRoomId::try_from(room.as_str()).map_err(|e| e.to_string())?;
    let event = OwnedEventId::try_from(event.as_str()).map_err(|e| e.to_string())?;
    let budget: u64 = budget.parse().map_err(|e| format!("budget: {e}"))?;
    let key = StoreKey::from_passphrase(STORE_PASSPHRASE);
    let decryptor = NotificationDecryptor::open(homeserver, Path::new(store), &key)
        .map_err(|e| e.to_string())?;
    let n = decryptor
        .decrypt(&room, &event, None, Duration::from_millis(budget))
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({"body": n.content["body"], "sender": n.sender, "encrypted": n.encrypted}))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match runtime.block_on(run(&args)) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", json!({"error": e}));
            ExitCode::FAILURE
        }
    }
}
