//! Server-side key backup: `backup-setup` creates a new backup on the server and prints its
//! recovery key (on stdout only: it is a secret); `recover` restores the room keys of the
//! server's backup with the recovery key in `NEWT_RECOVERY_KEY`; `backup-status` shows the
//! backup as this device and the server see it. Outcomes go to stdout as one JSON line,
//! progress and warnings to stderr. None syncs; `backup-setup` and `recover` upload this
//! device's sessions to the backup before they exit (the process ends right away, and with
//! it the uploads the SDK runs in the background).

use std::collections::BTreeMap;
use std::env::VarError;
use std::io::Write;

use newt_core::backup::{BackupError, RecoveryKeyError};
use newt_core::client::{
    BackupInfo, BackupState, ClientError, KeyImportSummary, KeyTransferProgress, SecretText,
};
use newt_core::ruma::OwnedRoomId;
use serde_json::{Value, json};

use crate::Ctx;

/// The environment variable that holds the recovery key. It is never taken from the
/// command line, where every user of the machine could read it (`ps`).
pub(crate) const RECOVERY_KEY_VAR: &str = "NEWT_RECOVERY_KEY";

/// What a restore that failed half-way may have done.
const PARTIAL: &str = "keys restored before the error were kept (restoring again is harmless)";

/// The recovery key, from [`RECOVERY_KEY_VAR`] (wiped from memory when dropped).
pub(crate) fn recovery_key() -> Result<SecretText, String> {
    recovery_key_from(std::env::var(RECOVERY_KEY_VAR))
}

fn recovery_key_from(value: Result<String, VarError>) -> Result<SecretText, String> {
    match value {
        Ok(key) if !key.trim().is_empty() => Ok(SecretText::new(key.into())),
        Ok(_) => Err(format!(
            "{RECOVERY_KEY_VAR} is empty: set it to the recovery key of the backup"
        )),
        Err(VarError::NotPresent) => Err(not_set()),
        Err(VarError::NotUnicode(_)) => Err(format!("{RECOVERY_KEY_VAR} is not valid UTF-8")),
    }
}

fn not_set() -> String {
    format!(
        "set {RECOVERY_KEY_VAR} to the recovery key of the backup (it is not taken from the command line)"
    )
}

pub(crate) async fn backup_setup(ctx: &Ctx) -> Result<(), String> {
    ctx.restored()?;
    let recovery_key = ctx
        .client
        .enable_backup()
        .await
        .map_err(|e| format!("setting up the key backup failed: {e}; no backup was set up"))?;
    // From here on the backup exists: its recovery key is printed whatever happens next.
    let version = match ctx.client.backup_state().await {
        Ok(BackupState::Enabled { version, .. }) => Some(version),
        Ok(other) => {
            eprintln!("warning: the backup was set up but its state is now {other:?}");
            None
        }
        Err(e) => {
            eprintln!("warning: cannot read the backup's version: {e}");
            None
        }
    };
    let mut out = std::io::stdout().lock();
    write_setup_line(&mut out, &recovery_key, version.as_deref())
        .and_then(|()| out.flush())
        .map_err(|e| {
            format!("cannot print the recovery key: {e}; run backup-setup again for a new backup")
        })?;
    drop(out);
    eprintln!("keep the recovery key safe: it restores the room keys on a new device");
    upload(ctx).await.map_err(|e| {
        format!(
            "the backup was set up (the recovery key printed is valid) but uploading the keys \
             failed: {e}; the next command that syncs uploads them"
        )
    })
}

pub(crate) async fn recover(ctx: &Ctx, room: Option<&OwnedRoomId>) -> Result<(), String> {
    let recovery_key = ctx.recovery_key.as_ref().ok_or_else(not_set)?;
    ctx.restored()?;
    let summary = ctx
        .client
        .restore_backup(recovery_key.expose(), room.map(|r| &**r), |p| {
            eprintln!("{}", restore_progress(p));
        })
        .await
        .map_err(|e| restore_error(&e))?;
    if summary.total == 0 {
        match room {
            Some(room) => eprintln!("warning: the server's backup holds no keys of {room}"),
            None => eprintln!("warning: the server's backup holds no keys"),
        }
    }
    if summary.refused > 0 {
        eprintln!(
            "warning: {} entries of the backup could not be decrypted or used and were left out",
            summary.refused
        );
    }
    println!("{}", summary_json(&summary));
    upload(ctx).await.map_err(|e| {
        format!(
            "the keys were restored, but uploading this device's keys to the backup failed: {e}"
        )
    })
}

pub(crate) async fn backup_status(ctx: &Ctx) -> Result<(), String> {
    ctx.restored()?;
    let state = ctx
        .client
        .backup_state()
        .await
        .map_err(|e| format!("cannot read the backup's state: {e}"))?;
    let server = ctx
        .client
        .backup_info()
        .await
        .map_err(|e| format!("cannot read the server's backup: {e}"))?;
    println!("{}", status_json(&state, server.as_ref().map(info_json)));
    Ok(())
}

/// Upload this device's sessions that are not in the backup yet, and say how many.
async fn upload(ctx: &Ctx) -> Result<(), ClientError> {
    let uploaded = ctx.client.upload_backup().await?;
    let pending = match ctx.client.backup_state().await? {
        BackupState::Enabled { pending, .. } => pending,
        _ => 0,
    };
    eprintln!("{}", upload_line(uploaded, pending));
    Ok(())
}

/// `{"recovery_key": ..., "version": ...}`, written straight to `out`: the key is copied
/// into no other string (a `serde_json::Value` would keep a copy that is not wiped).
fn write_setup_line(
    out: &mut impl Write,
    recovery_key: &str,
    version: Option<&str>,
) -> std::io::Result<()> {
    let line = BTreeMap::from([("recovery_key", Some(recovery_key)), ("version", version)]);
    serde_json::to_writer(&mut *out, &line)?;
    writeln!(out)
}

/// The stderr line after the upload.
fn upload_line(uploaded: u64, pending: u64) -> String {
    let rest = if pending == 0 {
        "every session of this device is in it".to_owned()
    } else {
        format!("{pending} still to upload (the next command that syncs uploads them)")
    };
    format!("uploaded {uploaded} session(s) to the backup; {rest}")
}

/// The stderr line for a restore's progress.
fn restore_progress(p: KeyTransferProgress) -> String {
    format!("restored {}/{} sessions", p.done, p.total)
}

fn summary_json(s: &KeyImportSummary) -> Value {
    json!({
        "total": s.total, "imported": s.imported,
        "already_known": s.already_known, "refused": s.refused,
    })
}

/// The server's backup.
fn info_json(b: &BackupInfo) -> Value {
    json!({
        "version": b.version, "algorithm": b.algorithm, "count": b.count,
        "trusted": b.trusted, "ours": b.ours,
    })
}

/// The backup's state on this device and, if any, the server's backup ([`info_json`]).
fn status_json(state: &BackupState, server: Option<Value>) -> Value {
    let mut line = match state {
        BackupState::Disabled => json!({"state": "disabled"}),
        BackupState::Enabled { version, pending } => {
            json!({"state": "enabled", "version": version, "pending": pending})
        }
        BackupState::VersionChanged { ours, server } => {
            json!({"state": "version_changed", "version": ours, "server_version": server})
        }
        other => json!({"state": format!("{other:?}")}),
    };
    line["server_backup"] = server.unwrap_or(Value::Null);
    line
}

/// A failed restore in words, saying whether anything was restored.
fn restore_error(error: &ClientError) -> String {
    let e = match error {
        ClientError::Backup(e) => e,
        // The server is asked before anything is imported.
        ClientError::Http(e) => {
            return format!("the restore failed: {e}; nothing was restored");
        }
        other => return format!("the restore failed: {other}; {PARTIAL}"),
    };
    match e {
        BackupError::InvalidRecoveryKey(why) => invalid_key(why),
        BackupError::WrongRecoveryKey => "this recovery key is not the key of the server's \
             backup (a key of an older or another backup?): nothing was restored"
            .into(),
        BackupError::NoBackup => "the server has no key backup (set one up with `newt \
             backup-setup` on a device that has the keys): nothing was restored"
            .into(),
        BackupError::UnsupportedAlgorithm(algorithm) => format!(
            "the server's backup uses the algorithm {algorithm:?}, which this client cannot read: nothing was restored"
        ),
        BackupError::SecretStorage(e) => {
            format!(
                "the secret storage holding the backup key cannot be read ({e}): nothing was restored"
            )
        }
        other => format!("the restore was refused: {other}; nothing was restored"),
    }
}

/// A recovery key that is not one, in words.
fn invalid_key(why: &RecoveryKeyError) -> String {
    let why = match why {
        RecoveryKeyError::Typo => {
            return format!(
                "{RECOVERY_KEY_VAR} has a typo (its check byte does not match): compare it \
                 with the recovery key, character by character; nothing was restored"
            );
        }
        RecoveryKeyError::WrongFormat => "wrong length or prefix".to_owned(),
        RecoveryKeyError::NotBase58(why) => why.clone(),
        other => other.to_string(),
    };
    format!(
        "{RECOVERY_KEY_VAR} is not a recovery key ({why}): check it for a typo or a missing part; \
         nothing was restored"
    )
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    #[test]
    fn the_recovery_key_must_be_set_and_not_empty() {
        let key = recovery_key_from(Ok("EsTc abcd".into())).unwrap();
        assert_eq!(key.expose(), "EsTc abcd");
        assert_eq!(format!("{key:?}"), "<redacted>");
        for empty in ["", "  \n"] {
            let error = recovery_key_from(Ok(empty.into())).unwrap_err();
            assert!(error.contains("NEWT_RECOVERY_KEY is empty"), "{error}");
        }
        let missing = recovery_key_from(Err(VarError::NotPresent)).unwrap_err();
        assert!(missing.contains("set NEWT_RECOVERY_KEY"), "{missing}");
        assert!(
            missing.contains("not taken from the command line"),
            "{missing}"
        );
        let binary = recovery_key_from(Err(VarError::NotUnicode(OsString::new()))).unwrap_err();
        assert!(binary.contains("not valid UTF-8"), "{binary}");
    }

    #[test]
    fn the_setup_line_holds_the_key_and_version() {
        let mut out = Vec::new();
        write_setup_line(&mut out, "EsTc \"x\\", Some("7")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with('\n') && text.lines().count() == 1,
            "{text:?}"
        );
        let line: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(line, json!({"recovery_key": "EsTc \"x\\", "version": "7"}));
        let mut out = Vec::new();
        write_setup_line(&mut out, "k", None).unwrap();
        assert_eq!(out, b"{\"recovery_key\":\"k\",\"version\":null}\n");
    }

    #[test]
    fn progress_and_uploads_are_told_in_sessions() {
        let p = KeyTransferProgress {
            done: 200,
            total: 450,
        };
        assert_eq!(restore_progress(p), "restored 200/450 sessions");
        assert_eq!(
            upload_line(3, 0),
            "uploaded 3 session(s) to the backup; every session of this device is in it"
        );
        let pending = upload_line(0, 2);
        assert!(pending.starts_with("uploaded 0 session(s)"), "{pending}");
        assert!(pending.contains("2 still to upload"), "{pending}");
    }

    #[test]
    fn the_summary_is_one_json_object() {
        let summary = KeyImportSummary {
            total: 4,
            imported: 2,
            already_known: 1,
            refused: 1,
        };
        assert_eq!(
            summary_json(&summary),
            json!({"total": 4, "imported": 2, "already_known": 1, "refused": 1})
        );
    }

    #[test]
    fn the_status_shows_each_state_and_the_server_backup() {
        assert_eq!(
            status_json(&BackupState::Disabled, None),
            json!({"state": "disabled", "server_backup": null})
        );
        let enabled = BackupState::Enabled {
            version: "3".into(),
            pending: 5,
        };
        assert_eq!(
            status_json(&enabled, None),
            json!({"state": "enabled", "version": "3", "pending": 5, "server_backup": null})
        );
        let changed = BackupState::VersionChanged {
            ours: "3".into(),
            server: Some("4".into()),
        };
        assert_eq!(
            status_json(&changed, None),
            json!({"state": "version_changed", "version": "3", "server_version": "4",
                   "server_backup": null})
        );
        let deleted = BackupState::VersionChanged {
            ours: "3".into(),
            server: None,
        };
        assert_eq!(status_json(&deleted, None)["server_version"], Value::Null);
        let server = json!({"version": "3", "count": 2});
        let both = status_json(&enabled, Some(server.clone()));
        assert_eq!(both["server_backup"], server);
        assert_eq!(both["state"], "enabled");
    }

    #[test]
    fn a_refused_restore_says_why_and_that_nothing_was_restored() {
        let refused = |e| restore_error(&ClientError::Backup(e));
        let invalid = |e| refused(BackupError::InvalidRecoveryKey(e));
        let typo = invalid(RecoveryKeyError::Typo);
        assert!(typo.starts_with("NEWT_RECOVERY_KEY has a typo"), "{typo}");
        assert_eq!(
            invalid(RecoveryKeyError::WrongFormat),
            "NEWT_RECOVERY_KEY is not a recovery key (wrong length or prefix): check it for a \
             typo or a missing part; nothing was restored"
        );
        let base58 = invalid(RecoveryKeyError::NotBase58("invalid character 'O'".into()));
        assert!(
            base58.starts_with("NEWT_RECOVERY_KEY is not a recovery key (invalid character 'O')"),
            "{base58}"
        );
        let wrong = refused(BackupError::WrongRecoveryKey);
        assert!(
            wrong.starts_with("this recovery key is not the key of the server's backup"),
            "{wrong}"
        );
        let none = refused(BackupError::NoBackup);
        assert!(none.starts_with("the server has no key backup"), "{none}");
        let algorithm = refused(BackupError::UnsupportedAlgorithm("m.other".into()));
        assert!(algorithm.contains("\"m.other\""), "{algorithm}");
        for message in [
            &typo,
            &wrong,
            &none,
            &algorithm,
            &refused(BackupError::SecretStorage(
                newt_core::backup::SecretStorageError::Malformed("iv".into()),
            )),
        ] {
            assert!(message.ends_with("nothing was restored"), "{message}");
        }
        let closed = restore_error(&ClientError::Closed);
        assert!(closed.contains("restoring again is harmless"), "{closed}");
    }
}
