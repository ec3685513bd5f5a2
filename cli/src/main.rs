//! `newt`: a small command-line Matrix client on the Newt SDK.
//!
//! It shows how an app drives the SDK (log in once, restore the session on every start, sync,
//! send, listen) and is what the demo script and end-to-end tests use.
//!
//! ```text
//! NEWT_STORE_KEY=secret newt --homeserver URL --store DIR <command>
//!   login --user U --password P [--device-id D]
//!   create-room [--name N] [--invite @u:server ...]
//!   join ROOM
//!   send ROOM TEXT...
//!   listen ROOM [--count N] [--timeout SECONDS] [--include-own]
//!   devices @user:server
//!   whoami
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use newt_core::client::{Client, ClientConfig, ClientError};
use newt_core::ruma::{OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId};
use newt_core::store::StoreKey;
use serde_json::json;

const USAGE: &str = "usage: NEWT_STORE_KEY=... newt --homeserver URL --store DIR <command>
commands:
  login --user U --password P [--device-id D]
  create-room [--name N] [--invite @u:server ...]
  join ROOM
  send ROOM TEXT...
  listen ROOM [--count N] [--timeout SECONDS] [--include-own]
  devices @user:server
  whoami";

#[derive(Debug)]
struct Args {
    homeserver: String,
    store: String,
    command: String,
    rest: Vec<String>,
}

fn parse_args(mut args: Vec<String>) -> Result<Args, String> {
    let mut homeserver = None;
    let mut store = None;
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let flag = args.remove(0);
        if args.is_empty() {
            return Err(format!("{flag} needs a value"));
        }
        let value = args.remove(0);
        match flag.as_str() {
            "--homeserver" => homeserver = Some(value),
            "--store" => store = Some(value),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.is_empty() {
        return Err("missing command".into());
    }
    let command = args.remove(0);
    Ok(Args {
        homeserver: homeserver.ok_or("--homeserver is required")?,
        store: store.ok_or("--store is required")?,
        command,
        rest: args,
    })
}

/// `--flag value` pairs and positional arguments.
type Parsed = (Vec<(String, String)>, Vec<String>);

/// Split `--flag value` pairs (repeatable) from positional arguments.
fn options(rest: &[String], flags: &[&str], switches: &[&str]) -> Result<Parsed, String> {
    let mut opts = Vec::new();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        if switches.contains(&arg.as_str()) {
            opts.push((arg.clone(), String::new()));
        } else if flags.contains(&arg.as_str()) {
            let value = rest
                .get(i + 1)
                .ok_or_else(|| format!("{arg} needs a value"))?;
            opts.push((arg.clone(), value.clone()));
            i += 1;
        } else if arg.starts_with("--") {
            return Err(format!("unknown option {arg}"));
        } else {
            positional.push(arg.clone());
        }
        i += 1;
    }
    Ok((opts, positional))
}

fn opt<'a>(opts: &'a [(String, String)], name: &str) -> Option<&'a str> {
    opts.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn restored(client: &Client) -> Result<(), String> {
    match client.restore_session() {
        Ok(true) => Ok(()),
        Ok(false) => Err("not logged in: run `newt login` first".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn run(args: Args) -> Result<(), String> {
    let key = std::env::var("NEWT_STORE_KEY")
        .map_err(|_| "set NEWT_STORE_KEY to the store passphrase")?;
    let client = Arc::new(
        Client::new(ClientConfig {
            homeserver: args.homeserver.clone(),
            store_dir: args.store.clone().into(),
            store_key: StoreKey::from_passphrase(&key),
        })
        .map_err(|e| e.to_string())?,
    );
    let err = |e: ClientError| e.to_string();
    let quick = Duration::from_millis(0);
    match args.command.as_str() {
        "login" => {
            let (opts, _) = options(&args.rest, &["--user", "--password", "--device-id"], &[])?;
            let user = opt(&opts, "--user").ok_or("--user is required")?;
            let password = opt(&opts, "--password").ok_or("--password is required")?;
            let session = client
                .login_password(user, password, opt(&opts, "--device-id"))
                .await
                .map_err(err)?;
            client.sync_once(quick).await.map_err(err)?;
            println!(
                "{}",
                json!({"user_id": session.user_id, "device_id": session.device_id, "fingerprint": client.fingerprint().map_err(err)?})
            );
        }
        "whoami" => {
            restored(&client)?;
            let session = client.session().ok_or("not logged in")?;
            println!(
                "{}",
                json!({"user_id": session.user_id, "device_id": session.device_id, "fingerprint": client.fingerprint().map_err(err)?})
            );
        }
        "create-room" => {
            restored(&client)?;
            let (opts, _) = options(&args.rest, &["--name", "--invite"], &[])?;
            let invites: Vec<OwnedUserId> = opts
                .iter()
                .filter(|(k, _)| k == "--invite")
                .map(|(_, v)| parse_id::<OwnedUserId>(v, "--invite"))
                .collect::<Result<_, _>>()?;
            client.sync_once(quick).await.map_err(err)?;
            let room = client
                .create_encrypted_room(opt(&opts, "--name"), &invites)
                .await
                .map_err(err)?;
            println!("{room}");
        }
        "join" => {
            restored(&client)?;
            let room = args.rest.first().ok_or("join needs a room")?;
            let room: OwnedRoomOrAliasId = parse_id(room, "room id or alias")?;
            let room_id = client.join(&room).await.map_err(err)?;
            client.sync_once(quick).await.map_err(err)?;
            println!("{room_id}");
        }
        "send" => {
            restored(&client)?;
            let (room, texts) = args
                .rest
                .split_first()
                .ok_or("send needs a room and text")?;
            if texts.is_empty() {
                return Err("send needs at least one text".into());
            }
            let room: OwnedRoomId = parse_id(room, "room id")?;
            client.sync_once(quick).await.map_err(err)?;
            for text in texts {
                println!("{}", client.send_text(&room, text).await.map_err(err)?);
            }
        }
        "listen" => {
            restored(&client)?;
            let (opts, positional) =
                options(&args.rest, &["--count", "--timeout"], &["--include-own"])?;
            let room: OwnedRoomId =
                parse_id(positional.first().ok_or("listen needs a room")?, "room id")?;
            let count: usize = opt(&opts, "--count")
                .unwrap_or("1")
                .parse()
                .map_err(|_| "--count must be a number")?;
            let timeout: u64 = opt(&opts, "--timeout")
                .unwrap_or("60")
                .parse()
                .map_err(|_| "--timeout must be seconds")?;
            let include_own = opt(&opts, "--include-own").is_some();
            let own = client.session().ok_or("not logged in")?.user_id;
            let mut events = client.subscribe_timeline();
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let mut seen = 0;
            while seen < count {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!("timeout: received {seen} of {count} messages"));
                }
                let poll = left.min(Duration::from_secs(5));
                match tokio::time::timeout(left, client.sync_once(poll)).await {
                    Ok(result) => result.map_err(err)?,
                    Err(_) => return Err(format!("timeout: received {seen} of {count} messages")),
                }
                while let Ok(event) = events.try_recv() {
                    if event.room_id != room
                        || (!include_own && event.sender == own)
                        || seen >= count
                    {
                        continue;
                    }
                    seen += 1;
                    println!(
                        "{}",
                        json!({
                            "event_id": event.event_id, "room_id": event.room_id, "sender": event.sender,
                            "sender_device": event.sender_device, "body": event.body,
                            "decrypted": event.decrypted, "error": event.error,
                        })
                    );
                }
            }
        }
        "devices" => {
            restored(&client)?;
            let user = args.rest.first().ok_or("devices needs a user id")?;
            let user: OwnedUserId = parse_id(user, "user id")?;
            for device in client.devices(&user).await.map_err(err)? {
                println!(
                    "{}",
                    json!({
                        "user_id": device.user_id, "device_id": device.device_id,
                        "display_name": device.display_name, "ed25519": device.ed25519,
                        "curve25519": device.curve25519, "trust": device.local_trust.as_str(),
                        "deleted": device.deleted,
                    })
                );
            }
        }
        other => return Err(format!("unknown command {other}\n{USAGE}")),
    }
    Ok(())
}

/// An id from the command line, or a message naming what was expected.
fn parse_id<T>(value: &str, what: &str) -> Result<T, String>
where
    T: for<'a> TryFrom<&'a str>,
    for<'a> <T as TryFrom<&'a str>>::Error: std::fmt::Display,
{
    T::try_from(value).map_err(|e| format!("invalid {what} {value:?}: {e}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
