//! `newt`: a small command-line Matrix client on the Newt SDK.
//!
//! It shows how an app drives the SDK (log in once, restore the session on every start, sync,
//! send messages and files, listen, download) and is what the demo script uses.
//!
//! ```text
//! NEWT_STORE_KEY=secret newt --homeserver URL --store DIR <command>
//!   login --user U --password P [--device-id D]
//!   create-room [--name N] [--invite @u:server ...]
//!   join ROOM
//!   send ROOM TEXT...
//!   send-file ROOM PATH [--mimetype M] [--name N] [--timeout SECONDS]
//!   listen ROOM [--count N] [--timeout SECONDS] [--include-own]
//!   download ROOM EVENT_ID PATH [--max-bytes N]
//!   devices @user:server
//!   whoami
//! NEWT_STORE_KEY=secret NEWT_KEY_PASSPHRASE=other newt --homeserver URL --store DIR <command>
//!   export-keys FILE [--room ROOM ...] [--force]
//!   import-keys FILE
//! NEWT_STORE_KEY=secret newt --homeserver URL --store DIR <command>
//!   backup-setup
//!   backup-status
//! NEWT_STORE_KEY=secret NEWT_RECOVERY_KEY=key newt --homeserver URL --store DIR <command>
//!   recover [--room ROOM]
//! ```
//!
//! - `send` prints the event id of each text once the server has it.
//! - `send-file` queues the file (type guessed from its extension unless `--mimetype`
//!   is given; shown under its file name unless `--name` is given), prints the upload's
//!   progress and any retry on stderr, and the event id on stdout once the message is
//!   sent (default timeout 300 s). A file that cannot be sent (stuck, or not sent in time)
//!   is taken out of the send queue and the command fails naming the reason.
//! - `listen` prints one JSON line per message of ROOM (`event_id`, `room_id`, `sender`,
//!   `sender_device`, `body`, `decrypted`, `error`), others' only unless `--include-own`,
//!   until `--count` (default 1) were printed or `--timeout` (default 60 s) passed.
//! - `download` fetches the event EVENT_ID of ROOM from the server, decrypts it with the
//!   store's keys (waiting up to 10 s for a room key still on its way), downloads its
//!   attachment, checks it against its SHA-256, decrypts it and writes it to PATH (whole,
//!   or nothing on any error); prints a JSON line with the sender, name, type and size.
//! - `export-keys` writes the room keys of the store (of every room, or of the rooms given
//!   with `--room`) to FILE in the Matrix key export format (which Element imports),
//!   encrypted with the passphrase in `NEWT_KEY_PASSPHRASE` (never an argument: `ps` would
//!   show it), readable by the user only. FILE is written whole or left as it was; an
//!   existing FILE is replaced only with `--force`. Prints `{"sessions": N, "path": FILE}`.
//! - `import-keys` imports such a file (from Newt, Element or another client) with the
//!   passphrase in `NEWT_KEY_PASSPHRASE`; a wrong passphrase, or a file changed, cut short
//!   or not an export, is refused before anything is imported. Messages received before
//!   and kept undecryptable for want of those keys are delivered again, decrypted, and kept
//!   in the inbox for `listen`. Prints a JSON line with `total`, `imported`,
//!   `already_known` and `refused`.
//! - Both key commands tell their progress on stderr and work on the store alone (no sync).
//! - `backup-setup` sets up a new key backup on the server (signed by this device; a backup
//!   set up earlier is replaced) and prints `{"recovery_key": ..., "version": ...}`. The
//!   recovery key is what restores the keys on a new device: it is printed on stdout only
//!   (never on stderr or in logs), and the user keeps it safe.
//! - `recover` restores the room keys of the server's backup (of every room, or of ROOM
//!   with `--room`) with the recovery key in `NEWT_RECOVERY_KEY` (never an argument), and
//!   from then on this device uploads its new keys to that backup too. A mistyped key,
//!   the key of another backup, or a server without a backup is refused before anything
//!   is restored. Messages kept undecryptable for want of those keys are delivered again,
//!   decrypted, and kept in the inbox for `listen`. Prints a JSON line with `total`,
//!   `imported`, `already_known` and `refused`; the progress goes to stderr.
//! - Both upload this device's keys that are not in the backup yet before they exit (and
//!   say how many on stderr): the SDK uploads in the background, which a command that
//!   exits at once would cut short. Either fails (non-zero) if that upload fails, after
//!   printing its JSON line.
//! - `backup-status` prints `state` (`disabled`, `enabled` with `version` and `pending`,
//!   the sessions still to upload, or `version_changed` with this device's `version` and
//!   the `server_version`: the backup was replaced or deleted elsewhere and nothing is
//!   uploaded until `backup-setup` or `recover`) and `server_backup`, the server's current
//!   backup (`version`, `algorithm`, `count`, `trusted`, `ours`) or null if it has none.
//! - The backup commands do not sync.
//!
//! The inbox: every command that syncs also receives the messages that arrived since the
//! last sync. Those a command does not print are kept in the store (the last 1,000,
//! encrypted at rest like the rest of the store), and `listen` prints (and removes) those
//! of its room before waiting for new ones: a message that arrived while `send` ran is
//! still listened to.

mod args;
mod backup;
mod commands;
mod files;
mod inbox;
mod keys;
mod listen;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use newt_core::client::{Client, ClientConfig, SecretText};
use newt_core::store::StoreKey;

use crate::args::{Args, Command, parse_args};
use crate::inbox::{Inbox, Recorder};

const USAGE: &str = "usage: NEWT_STORE_KEY=... newt --homeserver URL --store DIR <command>
commands:
  login --user U --password P [--device-id D]
  create-room [--name N] [--invite @u:server ...]
  join ROOM
  send ROOM TEXT...
  send-file ROOM PATH [--mimetype M] [--name N] [--timeout SECONDS]
      queue a file, wait until it is sent (default 300 s), print its event id
  listen ROOM [--count N] [--timeout SECONDS] [--include-own]
      print messages as JSON lines, first those kept in the inbox
  download ROOM EVENT_ID PATH [--max-bytes N]
      fetch and decrypt the event, save its attachment (hash checked) to PATH
  devices @user:server
  whoami
  export-keys FILE [--room ROOM ...] [--force]
      write the room keys (of all rooms, or of those given) to FILE, encrypted with
      the passphrase in NEWT_KEY_PASSPHRASE; an existing FILE needs --force
  import-keys FILE
      import a key export file (e.g. from Element) with NEWT_KEY_PASSPHRASE
  backup-setup
      set up a new key backup on the server; print its recovery key (keep it safe)
  recover [--room ROOM]
      restore the room keys (of all rooms, or of ROOM) from the server's backup with
      the recovery key in NEWT_RECOVERY_KEY
  backup-status
      show the key backup of this device and of the server
Messages a command receives but does not print are kept in the store (encrypted,
the last 1000) until `listen ROOM` prints them.";

/// What every command works with.
pub(crate) struct Ctx {
    pub(crate) client: Arc<Client>,
    pub(crate) homeserver: String,
    pub(crate) store: PathBuf,
    pub(crate) key: StoreKey,
    /// The key file passphrase (`NEWT_KEY_PASSPHRASE`), read for the commands that use it.
    pub(crate) key_passphrase: Option<String>,
    /// The recovery key (`NEWT_RECOVERY_KEY`), read for `recover`.
    pub(crate) recovery_key: Option<SecretText>,
}

impl Ctx {
    /// Restore the stored session, or say how to get one.
    pub(crate) fn restored(&self) -> Result<(), String> {
        match self.client.restore_session() {
            Ok(true) => Ok(()),
            Ok(false) => Err("not logged in: run `newt login` first".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let passphrase = std::env::var("NEWT_STORE_KEY")
        .map_err(|_| "set NEWT_STORE_KEY to the store passphrase")?;
    let key = StoreKey::from_passphrase(&passphrase);
    // Read before the store is opened: without it a key command does nothing.
    let key_passphrase = if args.command.needs_key_passphrase() {
        Some(keys::passphrase()?)
    } else {
        None
    };
    let recovery_key = if args.command.needs_recovery_key() {
        Some(backup::recovery_key()?)
    } else {
        None
    };
    let client = Client::new(ClientConfig {
        homeserver: args.homeserver.clone(),
        store_dir: args.store.clone(),
        store_key: key.clone(),
    })
    .map_err(|e| e.to_string())?;
    // Subscribed before any sync: every item a sync brings is printed or kept.
    let inbox = Inbox::in_store(client.store().map_err(|e| e.to_string())?, &args.store);
    let mut recorder = Recorder::new(client.subscribe_timeline(), inbox);
    let ctx = Ctx {
        client: Arc::new(client),
        homeserver: args.homeserver,
        store: args.store,
        key,
        key_passphrase,
        recovery_key,
    };
    let result = dispatch(&ctx, &mut recorder, &args.command).await;
    recorder.keep_rest().await;
    result
}

async fn dispatch(ctx: &Ctx, recorder: &mut Recorder, command: &Command) -> Result<(), String> {
    match command {
        Command::Login {
            user,
            password,
            device_id,
        } => commands::login(ctx, user, password, device_id.as_deref()).await,
        Command::Whoami => commands::whoami(ctx),
        Command::CreateRoom { name, invites } => {
            commands::create_room(ctx, name.as_deref(), invites).await
        }
        Command::Join { room } => commands::join(ctx, room).await,
        Command::Send { room, texts } => commands::send(ctx, room, texts).await,
        Command::SendFile(a) => files::send_file(ctx, a).await,
        Command::Listen(a) => listen::listen(ctx, recorder, a).await,
        Command::Download(a) => files::download(ctx, a).await,
        Command::Devices { user } => commands::devices(ctx, user).await,
        Command::ExportKeys(a) => keys::export_keys(ctx, a).await,
        Command::ImportKeys { path } => keys::import_keys(ctx, path).await,
        Command::BackupSetup => backup::backup_setup(ctx).await,
        Command::Recover { room } => backup::recover(ctx, room.as_ref()).await,
        Command::BackupStatus => backup::backup_status(ctx).await,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_names_every_command_and_the_inbox() {
        for command in [
            "login",
            "create-room",
            "join",
            "send ROOM",
            "send-file",
            "listen",
            "download",
            "devices",
            "whoami",
            "export-keys",
            "import-keys",
            "backup-setup",
            "recover",
            "backup-status",
        ] {
            assert!(USAGE.contains(&format!("  {command}")), "{command}");
        }
        assert!(USAGE.contains(&format!("the last {}", inbox::MAX_ITEMS)));
    }
}
