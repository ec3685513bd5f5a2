//! A push handler as a process of its own, for the end-to-end tests: opens a
//! `NotificationDecryptor` on a client's store and prints each notification as a JSON line.
//!
//! `notify-process HOMESERVER STORE_DIR BUDGET_MS [ROOM_ID EVENT_ID]` (store passphrase: the
//! tests' [`STORE_PASSPHRASE`]). With a room and an event: that one notification, exit code
//! 0 with `{"event_id": ..., "body": ...}`, 1 with `{"error": ...}`. Without: one
//! notification per `ROOM_ID EVENT_ID` line read from stdin until it closes, one JSON line
//! each (an app's push handler staying alive between pushes).

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use newt_core::notification::NotificationDecryptor;
use newt_core::ruma::{OwnedEventId, OwnedRoomId};
use newt_core::store::StoreKey;
use newt_e2e_tests::clients::STORE_PASSPHRASE;
use serde_json::{Value, json};

const USAGE: &str = "usage: notify-process HOMESERVER STORE_DIR BUDGET_MS [ROOM_ID EVENT_ID]";

async fn notify(
    decryptor: &NotificationDecryptor,
    room: &str,
    event: &str,
    budget: Duration,
) -> Result<Value, String> {
    let room = OwnedRoomId::try_from(room).map_err(|e| e.to_string())?;
    let event = OwnedEventId::try_from(event).map_err(|e| e.to_string())?;
    let n = decryptor
        .decrypt(&room, &event, None, budget)
        .await
        .map_err(|e| e.to_string())?;
    Ok(
        json!({"event_id": event, "body": n.content["body"], "sender": n.sender,
        "encrypted": n.encrypted}),
    )
}

fn line(outcome: Result<Value, String>, event: &str) -> Value {
    outcome.unwrap_or_else(|e| json!({"event_id": event, "error": e}))
}

async fn run(args: &[String]) -> Result<bool, String> {
    let (homeserver, store, budget, one) = match args {
        [hs, store, budget] => (hs, store, budget, None),
        [hs, store, budget, room, event] => (hs, store, budget, Some((room, event))),
        _ => return Err(USAGE.into()),
    };
    let budget = Duration::from_millis(budget.parse().map_err(|e| format!("budget: {e}"))?);
    let key = StoreKey::from_passphrase(STORE_PASSPHRASE);
    let decryptor = NotificationDecryptor::open(homeserver, Path::new(store), &key)
        .map_err(|e| e.to_string())?;
    if let Some((room, event)) = one {
        let outcome = notify(&decryptor, room, event, budget).await;
        let ok = outcome.is_ok();
        println!("{}", line(outcome, event));
        return Ok(ok);
    }
    for input in std::io::stdin().lock().lines() {
        let input = input.map_err(|e| e.to_string())?;
        let Some((room, event)) = input.split_once(' ') else {
            return Err(format!("not `ROOM_ID EVENT_ID`: {input}"));
        };
        println!(
            "{}",
            line(notify(&decryptor, room, event, budget).await, event)
        );
    }
    Ok(true)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match runtime.block_on(run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("{}", json!({"error": e}));
            ExitCode::FAILURE
        }
    }
}
