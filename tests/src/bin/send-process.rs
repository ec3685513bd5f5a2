//! The example client's `send` as a process of its own, for the end-to-end crash tests:
//! restores the session stored in a client's store, syncs once and sends each text,
//! printing it once the server has it. Without texts it sends what the queue holds
//! (`run_due_work`) and prints `{"completed": N, "remaining": M}`.
//!
//! `send-process [--new-session] HOMESERVER STORE_DIR ROOM_ID [TEXT...]` (store passphrase:
//! the tests' [`STORE_PASSPHRASE`]). `--new-session` discards the room key first, so that
//! sending shares a new one (claiming one-time keys for devices without an Olm session).
//! `synced` is printed once the first sync is done.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use newt_core::ruma::OwnedRoomId;
use newt_e2e_tests::clients::open;

async fn run(mut args: &[String]) -> Result<(), String> {
    let new_session = args.first().is_some_and(|a| a == "--new-session");
    if new_session {
        args = &args[1..];
    }
    let [homeserver, store, room, texts @ ..] = args else {
        return Err("usage: send-process HOMESERVER STORE_DIR ROOM_ID [TEXT...]".into());
    };
    let room = OwnedRoomId::try_from(room.as_str()).map_err(|e| e.to_string())?;
    let client = open(homeserver, Path::new(store));
    if !client.restore_session().map_err(|e| e.to_string())? {
        return Err("no session in this store".into());
    }
    if new_session {
        client.discard_room_key(&room).map_err(|e| e.to_string())?;
    }
    client
        .sync_once(Duration::ZERO)
        .await
        .map_err(|e| e.to_string())?;
    println!("synced");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    if texts.is_empty() {
        let report = client.run_due_work().await.map_err(|e| e.to_string())?;
        println!(
            "{}",
            serde_json::json!({"completed": report.completed, "remaining": report.remaining})
        );
    }
    for text in texts {
        client
            .send_text(&room, text)
            .await
            .map_err(|e| e.to_string())?;
        println!("{text}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("send-process: {e}");
            ExitCode::FAILURE
        }
    }
}
