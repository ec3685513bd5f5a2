//! The command line: global options, then one command and its arguments, checked before
//! the store is opened.

use std::path::PathBuf;
use std::time::Duration;

use newt_core::client::MAX_ATTACHMENT_BYTES;
use newt_core::ruma::{OwnedEventId, OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId};

use crate::files::guess_mimetype;

/// Seconds `listen` waits by default.
const LISTEN_TIMEOUT_SECS: u64 = 60;
/// Seconds `send-file` waits by default for the file to be sent.
const SEND_FILE_TIMEOUT_SECS: u64 = 300;

/// The whole command line.
#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) homeserver: String,
    pub(crate) store: PathBuf,
    pub(crate) command: Command,
}

/// One command with its arguments.
#[derive(Debug, PartialEq)]
pub(crate) enum Command {
    Login {
        user: String,
        password: String,
        device_id: Option<String>,
    },
    Whoami,
    CreateRoom {
        name: Option<String>,
        invites: Vec<OwnedUserId>,
    },
    Join {
        room: OwnedRoomOrAliasId,
    },
    Send {
        room: OwnedRoomId,
        texts: Vec<String>,
    },
    SendFile(SendFile),
    Listen(Listen),
    Download(Download),
    Devices {
        user: OwnedUserId,
    },
    ExportKeys(ExportKeys),
    ImportKeys {
        path: PathBuf,
    },
    BackupSetup,
    Recover {
        /// The room whose keys are restored; all rooms if `None`.
        room: Option<OwnedRoomId>,
    },
    BackupStatus,
}

/// `send-file ROOM PATH [--mimetype M] [--name N] [--timeout SECONDS]`.
#[derive(Debug, PartialEq)]
pub(crate) struct SendFile {
    pub(crate) room: OwnedRoomId,
    pub(crate) path: PathBuf,
    /// Given, or guessed from the file's extension.
    pub(crate) mimetype: String,
    /// Given, or the file's name.
    pub(crate) name: String,
    /// How long to wait until the server has the message.
    pub(crate) timeout: Duration,
}

/// `listen ROOM [--count N] [--timeout SECONDS] [--include-own]`.
#[derive(Debug, PartialEq)]
pub(crate) struct Listen {
    pub(crate) room: OwnedRoomId,
    pub(crate) count: usize,
    pub(crate) timeout: Duration,
    pub(crate) include_own: bool,
}

/// `download ROOM EVENT_ID PATH [--max-bytes N]`.
#[derive(Debug, PartialEq)]
pub(crate) struct Download {
    pub(crate) room: OwnedRoomId,
    pub(crate) event_id: OwnedEventId,
    pub(crate) path: PathBuf,
    pub(crate) max_bytes: u64,
}

/// `export-keys FILE [--room ROOM ...] [--force]`.
#[derive(Debug, PartialEq)]
pub(crate) struct ExportKeys {
    pub(crate) path: PathBuf,
    /// The rooms whose keys are exported; all rooms if empty.
    pub(crate) rooms: Vec<OwnedRoomId>,
    /// Replace FILE if it exists.
    pub(crate) force: bool,
}

impl Command {
    /// Whether the command reads the key file passphrase (`NEWT_KEY_PASSPHRASE`).
    pub(crate) fn needs_key_passphrase(&self) -> bool {
        matches!(self, Command::ExportKeys(_) | Command::ImportKeys { .. })
    }

    /// Whether the command reads the recovery key (`NEWT_RECOVERY_KEY`).
    pub(crate) fn needs_recovery_key(&self) -> bool {
        matches!(self, Command::Recover { .. })
    }
}

/// Parse the arguments after the program name.
pub(crate) fn parse_args(mut args: Vec<String>) -> Result<Args, String> {
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
    let name = args.remove(0);
    Ok(Args {
        homeserver: homeserver.ok_or("--homeserver is required")?,
        store: store.ok_or("--store is required")?.into(),
        command: parse_command(&name, &args)?,
    })
}

/// Parse one command's arguments.
pub(crate) fn parse_command(name: &str, rest: &[String]) -> Result<Command, String> {
    Ok(match name {
        "login" => login(rest)?,
        "whoami" => Command::Whoami,
        "create-room" => create_room(rest)?,
        "join" => {
            let (_, positional) = options(rest, &[], &[])?;
            let [room] = exactly(positional, "join ROOM")?;
            Command::Join {
                room: parse_id(&room, "room id or alias")?,
            }
        }
        "send" => send(rest)?,
        "send-file" => Command::SendFile(send_file(rest)?),
        "listen" => Command::Listen(listen(rest)?),
        "download" => Command::Download(download(rest)?),
        "devices" => {
            let (_, positional) = options(rest, &[], &[])?;
            let [user] = exactly(positional, "devices @user:server")?;
            Command::Devices {
                user: parse_id(&user, "user id")?,
            }
        }
        "export-keys" => Command::ExportKeys(export_keys(rest)?),
        "import-keys" => {
            let (_, positional) = options(rest, &[], &[])?;
            let [path] = exactly(positional, "import-keys FILE")?;
            Command::ImportKeys { path: path.into() }
        }
        "backup-setup" => {
            let (_, positional) = options(rest, &[], &[])?;
            let [] = exactly(positional, "backup-setup")?;
            Command::BackupSetup
        }
        "recover" => {
            let (opts, positional) = options(rest, &["--room"], &[])?;
            let [] = exactly(positional, "recover [--room ROOM]")?;
            Command::Recover {
                room: opt(&opts, "--room")
                    .map(|r| parse_id(r, "room id"))
                    .transpose()?,
            }
        }
        "backup-status" => {
            let (_, positional) = options(rest, &[], &[])?;
            let [] = exactly(positional, "backup-status")?;
            Command::BackupStatus
        }
        other => return Err(format!("unknown command {other}")),
    })
}

fn login(rest: &[String]) -> Result<Command, String> {
    let (opts, _) = options(rest, &["--user", "--password", "--device-id"], &[])?;
    Ok(Command::Login {
        user: opt(&opts, "--user").ok_or("--user is required")?.into(),
        password: opt(&opts, "--password")
            .ok_or("--password is required")?
            .into(),
        device_id: opt(&opts, "--device-id").map(str::to_owned),
    })
}

fn create_room(rest: &[String]) -> Result<Command, String> {
    let (opts, _) = options(rest, &["--name", "--invite"], &[])?;
    let invites = opts
        .iter()
        .filter(|(k, _)| k == "--invite")
        .map(|(_, v)| parse_id::<OwnedUserId>(v, "--invite"))
        .collect::<Result<_, _>>()?;
    Ok(Command::CreateRoom {
        name: opt(&opts, "--name").map(str::to_owned),
        invites,
    })
}

/// `send ROOM TEXT...`: every argument after the room is a text, even one that starts
/// with `--`.
fn send(rest: &[String]) -> Result<Command, String> {
    let (room, texts) = rest.split_first().ok_or("send needs a room and text")?;
    if texts.is_empty() {
        return Err("send needs at least one text".into());
    }
    Ok(Command::Send {
        room: parse_id(room, "room id")?,
        texts: texts.to_vec(),
    })
}

fn send_file(rest: &[String]) -> Result<SendFile, String> {
    let (opts, positional) = options(rest, &["--mimetype", "--name", "--timeout"], &[])?;
    let [room, path] = exactly(positional, "send-file ROOM PATH")?;
    let path = PathBuf::from(path);
    let name = match opt(&opts, "--name") {
        Some(name) => name.to_owned(),
        None => path
            .file_name()
            .ok_or_else(|| format!("{} names no file", path.display()))?
            .to_string_lossy()
            .into_owned(),
    };
    let mimetype =
        opt(&opts, "--mimetype").map_or_else(|| guess_mimetype(&path).into(), str::to_owned);
    if !mimetype.contains('/') {
        return Err(format!(
            "--mimetype {mimetype:?} is not a MIME type (e.g. image/png)"
        ));
    }
    Ok(SendFile {
        room: parse_id(&room, "room id")?,
        mimetype,
        name,
        path,
        timeout: seconds(&opts, SEND_FILE_TIMEOUT_SECS)?,
    })
}

fn listen(rest: &[String]) -> Result<Listen, String> {
    let (opts, positional) = options(rest, &["--count", "--timeout"], &["--include-own"])?;
    let [room] = exactly(positional, "listen ROOM")?;
    Ok(Listen {
        room: parse_id(&room, "room id")?,
        count: number(&opts, "--count", 1)?,
        timeout: seconds(&opts, LISTEN_TIMEOUT_SECS)?,
        include_own: opt(&opts, "--include-own").is_some(),
    })
}

fn download(rest: &[String]) -> Result<Download, String> {
    let (opts, positional) = options(rest, &["--max-bytes"], &[])?;
    let [room, event_id, path] = exactly(positional, "download ROOM EVENT_ID PATH")?;
    Ok(Download {
        room: parse_id(&room, "room id")?,
        event_id: parse_id(&event_id, "event id")?,
        path: path.into(),
        max_bytes: number(&opts, "--max-bytes", MAX_ATTACHMENT_BYTES)?,
    })
}

fn export_keys(rest: &[String]) -> Result<ExportKeys, String> {
    let (opts, positional) = options(rest, &["--room"], &["--force"])?;
    let [path] = exactly(positional, "export-keys FILE")?;
    let rooms = opts
        .iter()
        .filter(|(k, _)| k == "--room")
        .map(|(_, v)| parse_id::<OwnedRoomId>(v, "room id"))
        .collect::<Result<_, _>>()?;
    Ok(ExportKeys {
        path: path.into(),
        rooms,
        force: opt(&opts, "--force").is_some(),
    })
}

/// `--flag value` pairs and positional arguments.
type Parsed = (Vec<(String, String)>, Vec<String>);

/// Split `--flag value` pairs (repeatable) and `--switch`es from positional arguments.
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

/// The last value given for `name`.
fn opt<'a>(opts: &'a [(String, String)], name: &str) -> Option<&'a str> {
    opts.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Exactly `N` positional arguments, or the expected form.
fn exactly<const N: usize>(positional: Vec<String>, form: &str) -> Result<[String; N], String> {
    let given = positional.len();
    positional
        .try_into()
        .map_err(|_| format!("expected `{form}` ({N} argument(s), got {given})"))
}

/// A non-negative number given with `name`, or `default`.
fn number<T: std::str::FromStr>(
    opts: &[(String, String)],
    name: &str,
    default: T,
) -> Result<T, String> {
    match opt(opts, name) {
        Some(v) => v
            .parse()
            .map_err(|_| format!("{name} must be a number, not {v:?}")),
        None => Ok(default),
    }
}

/// `--timeout SECONDS`, or `default` seconds.
fn seconds(opts: &[(String, String)], default: u64) -> Result<Duration, String> {
    number(opts, "--timeout", default).map(Duration::from_secs)
}

/// An id from the command line, or a message naming what was expected.
fn parse_id<T>(value: &str, what: &str) -> Result<T, String>
where
    T: for<'a> TryFrom<&'a str>,
    for<'a> <T as TryFrom<&'a str>>::Error: std::fmt::Display,
{
    T::try_from(value).map_err(|e| format!("invalid {what} {value:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: &str = "!room:localhost";

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn command(args: &[&str]) -> Result<Command, String> {
        let args = strings(args);
        parse_command(&args[0], &args[1..])
    }

    #[test]
    fn global_options_come_before_the_command() {
        let args = parse_args(strings(&[
            "--homeserver",
            "http://hs",
            "--store",
            "/tmp/s",
            "whoami",
        ]))
        .unwrap();
        assert_eq!(args.homeserver, "http://hs");
        assert_eq!(args.store, PathBuf::from("/tmp/s"));
        assert_eq!(args.command, Command::Whoami);
        let missing = parse_args(strings(&["--store", "/tmp/s", "whoami"]));
        assert_eq!(missing.unwrap_err(), "--homeserver is required");
        let unknown = parse_args(strings(&["--homeserver", "h", "--store", "s", "fly"]));
        assert_eq!(unknown.unwrap_err(), "unknown command fly");
    }

    #[test]
    fn send_file_defaults_to_the_file_name_and_a_guessed_type() {
        let Command::SendFile(a) = command(&["send-file", ROOM, "dir/Cat.JPG"]).unwrap() else {
            panic!("not send-file");
        };
        assert_eq!(a.room.as_str(), ROOM);
        assert_eq!(a.path, PathBuf::from("dir/Cat.JPG"));
        assert_eq!(a.mimetype, "image/jpeg");
        assert_eq!(a.name, "Cat.JPG");
        assert_eq!(a.timeout, Duration::from_secs(300));
    }

    #[test]
    fn send_file_takes_a_type_name_and_timeout() {
        let parsed = command(&[
            "send-file",
            "--mimetype",
            "text/csv",
            ROOM,
            "data",
            "--name",
            "numbers.csv",
            "--timeout",
            "7",
        ]);
        let Command::SendFile(a) = parsed.unwrap() else {
            panic!("not send-file");
        };
        assert_eq!(
            (a.mimetype.as_str(), a.name.as_str(), a.timeout),
            ("text/csv", "numbers.csv", Duration::from_secs(7))
        );
    }

    #[test]
    fn send_file_refuses_what_it_cannot_use() {
        let cases: &[(&[&str], &str)] = &[
            (&["send-file", ROOM], "expected `send-file ROOM PATH`"),
            (
                &["send-file", ROOM, "a", "b"],
                "expected `send-file ROOM PATH`",
            ),
            (&["send-file", "room", "a"], "invalid room id"),
            (&["send-file", ROOM, "/"], "names no file"),
            (
                &["send-file", ROOM, "a", "--mimetype", "png"],
                "not a MIME type",
            ),
            (
                &["send-file", ROOM, "a", "--timeout", "soon"],
                "--timeout must be a number",
            ),
            (&["send-file", ROOM, "a", "--name"], "--name needs a value"),
            (
                &["send-file", ROOM, "a", "--size", "1"],
                "unknown option --size",
            ),
        ];
        for (args, expected) in cases {
            let error = command(args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn download_takes_a_room_event_and_path() {
        let parsed = command(&["download", ROOM, "$event", "out.png"]).unwrap();
        assert_eq!(
            parsed,
            Command::Download(Download {
                room: parse_id(ROOM, "").unwrap(),
                event_id: parse_id("$event", "").unwrap(),
                path: "out.png".into(),
                max_bytes: MAX_ATTACHMENT_BYTES,
            })
        );
        let Command::Download(limited) =
            command(&["download", ROOM, "$event", "out", "--max-bytes", "1024"]).unwrap()
        else {
            panic!("not download");
        };
        assert_eq!(limited.max_bytes, 1024);
    }

    #[test]
    fn download_refuses_what_it_cannot_use() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["download", ROOM, "$e"],
                "expected `download ROOM EVENT_ID PATH`",
            ),
            (&["download", ROOM, "event", "out"], "invalid event id"),
            (
                &["download", ROOM, "$e", "out", "--max-bytes", "-1"],
                "--max-bytes must be a number",
            ),
        ];
        for (args, expected) in cases {
            let error = command(args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn export_keys_takes_a_file_repeated_rooms_and_force() {
        let parsed = command(&["export-keys", "keys.txt"]).unwrap();
        assert_eq!(
            parsed,
            Command::ExportKeys(ExportKeys {
                path: "keys.txt".into(),
                rooms: vec![],
                force: false,
            })
        );
        let parsed = command(&[
            "export-keys",
            "--room",
            ROOM,
            "out/keys.txt",
            "--force",
            "--room",
            "!other:localhost",
        ]);
        let Command::ExportKeys(a) = parsed.unwrap() else {
            panic!("not export-keys");
        };
        assert_eq!(a.path, PathBuf::from("out/keys.txt"));
        let rooms: Vec<&str> = a.rooms.iter().map(|r| r.as_str()).collect();
        assert_eq!(rooms, [ROOM, "!other:localhost"]);
        assert!(a.force);
        assert!(Command::ExportKeys(a).needs_key_passphrase());
    }

    #[test]
    fn import_keys_takes_a_file() {
        let parsed = command(&["import-keys", "keys.txt"]).unwrap();
        assert_eq!(
            parsed,
            Command::ImportKeys {
                path: "keys.txt".into()
            }
        );
        assert!(parsed.needs_key_passphrase());
        assert!(!Command::Whoami.needs_key_passphrase());
    }

    #[test]
    fn key_commands_refuse_what_they_cannot_use() {
        let cases: &[(&[&str], &str)] = &[
            (&["export-keys"], "expected `export-keys FILE`"),
            (
                &["export-keys", "--room", ROOM],
                "expected `export-keys FILE`",
            ),
            (&["export-keys", "a", "b"], "expected `export-keys FILE`"),
            (
                &["export-keys", "keys.txt", "--room", "room"],
                "invalid room id \"room\"",
            ),
            (
                &["export-keys", "keys.txt", "--room", "#alias:localhost"],
                "invalid room id",
            ),
            (
                &["export-keys", "keys.txt", "--room"],
                "--room needs a value",
            ),
            (
                &["export-keys", "keys.txt", "--passphrase", "p"],
                "unknown option --passphrase",
            ),
            (&["import-keys"], "expected `import-keys FILE`"),
            (&["import-keys", "a", "b"], "expected `import-keys FILE`"),
            (&["import-keys", "a", "--force"], "unknown option --force"),
        ];
        for (args, expected) in cases {
            let error = command(args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn backup_commands_take_at_most_a_room() {
        assert_eq!(command(&["backup-setup"]).unwrap(), Command::BackupSetup);
        assert_eq!(command(&["backup-status"]).unwrap(), Command::BackupStatus);
        let all = command(&["recover"]).unwrap();
        assert_eq!(all, Command::Recover { room: None });
        assert!(all.needs_recovery_key());
        assert!(!all.needs_key_passphrase());
        let one = command(&["recover", "--room", ROOM]).unwrap();
        assert_eq!(
            one,
            Command::Recover {
                room: Some(parse_id(ROOM, "").unwrap())
            }
        );
        for other in [
            Command::BackupSetup,
            Command::BackupStatus,
            Command::ImportKeys { path: "k".into() },
        ] {
            assert!(!other.needs_recovery_key(), "{other:?}");
        }
    }

    #[test]
    fn backup_commands_refuse_what_they_cannot_use() {
        let cases: &[(&[&str], &str)] = &[
            (&["backup-setup", "now"], "expected `backup-setup`"),
            (&["backup-status", "--verbose"], "unknown option --verbose"),
            // the recovery key is never an argument
            (
                &["recover", "EsTc abcd"],
                "expected `recover [--room ROOM]`",
            ),
            (
                &["recover", "--recovery-key", "EsTc"],
                "unknown option --recovery-key",
            ),
            (&["recover", "--room"], "--room needs a value"),
            (&["recover", "--room", "room"], "invalid room id \"room\""),
            (
                &["recover", "--room", "#alias:localhost"],
                "invalid room id",
            ),
        ];
        for (args, expected) in cases {
            let error = command(args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn listen_and_send_parse_as_before() {
        let parsed = command(&["listen", ROOM, "--count", "2", "--include-own"]).unwrap();
        assert_eq!(
            parsed,
            Command::Listen(Listen {
                room: parse_id(ROOM, "").unwrap(),
                count: 2,
                timeout: Duration::from_secs(60),
                include_own: true,
            })
        );
        let Command::Send { texts, .. } = command(&["send", ROOM, "hi", "--there"]).unwrap() else {
            panic!("not send");
        };
        assert_eq!(texts, ["hi", "--there"]);
        assert!(command(&["send", ROOM]).is_err());
    }
}
