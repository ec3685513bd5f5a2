//! Key files: `export-keys` writes the store's room keys to a file in the Matrix key export
//! format (which Element and other clients import), encrypted with the passphrase in
//! `NEWT_KEY_PASSPHRASE`; `import-keys` imports such a file. Progress goes to stderr, the
//! outcome to stdout as one JSON line. Neither syncs: both work on the store alone.

use std::env::VarError;
use std::io::ErrorKind;
use std::path::Path;

use newt_core::client::{ClientError, KeyImportSummary, KeyTransferProgress};
use newt_core::key_export::KeyExportError;
use serde_json::{Value, json};

use crate::Ctx;
use crate::args::ExportKeys;

/// The environment variable that holds the key file passphrase. It is never taken from the
/// command line, where every user of the machine could read it (`ps`).
pub(crate) const PASSPHRASE_VAR: &str = "NEWT_KEY_PASSPHRASE";

/// What an import that failed half-way may have done.
const PARTIAL: &str =
    "keys read before the error may have been imported (importing the file again is harmless)";

/// The key file passphrase, from [`PASSPHRASE_VAR`].
pub(crate) fn passphrase() -> Result<String, String> {
    passphrase_from(std::env::var(PASSPHRASE_VAR))
}

fn passphrase_from(value: Result<String, VarError>) -> Result<String, String> {
    match value {
        Ok(passphrase) if !passphrase.is_empty() => Ok(passphrase),
        Ok(_) => Err(format!(
            "{PASSPHRASE_VAR} is empty: set it to the key file's passphrase"
        )),
        Err(VarError::NotPresent) => Err(not_set()),
        Err(VarError::NotUnicode(_)) => Err(format!("{PASSPHRASE_VAR} is not valid UTF-8")),
    }
}

fn not_set() -> String {
    format!(
        "set {PASSPHRASE_VAR} to the key file's passphrase (it is not taken from the command line)"
    )
}

/// The passphrase `run` read before the store was opened.
fn ctx_passphrase(ctx: &Ctx) -> Result<&str, String> {
    ctx.key_passphrase.as_deref().ok_or_else(not_set)
}

pub(crate) async fn export_keys(ctx: &Ctx, a: &ExportKeys) -> Result<(), String> {
    let passphrase = ctx_passphrase(ctx)?;
    ctx.restored()?;
    // The export is written beside FILE and then moved over it: check first.
    check_target(&a.path, a.force)?;
    let rooms = (!a.rooms.is_empty()).then(|| a.rooms.clone());
    let sessions = ctx
        .client
        .export_room_keys(&a.path, passphrase, rooms, |p| {
            eprintln!("{}", export_progress(p));
        })
        .await
        .map_err(|e| export_error(&e, &a.path))?;
    if sessions == 0 {
        eprintln!("warning: there were no room keys to export: the file holds none");
    }
    println!(
        "{}",
        json!({"sessions": sessions, "path": a.path.display().to_string()})
    );
    Ok(())
}

pub(crate) async fn import_keys(ctx: &Ctx, path: &Path) -> Result<(), String> {
    let passphrase = ctx_passphrase(ctx)?;
    ctx.restored()?;
    let mut shown = None;
    let summary = ctx
        .client
        .import_room_keys(path, passphrase, move |p| {
            // One line per percent, however often the reader reports.
            let percent = percent(p);
            if shown != Some(percent) {
                shown = Some(percent);
                eprintln!("importing {percent}%");
            }
        })
        .await
        .map_err(|e| import_error(&e, path))?;
    if summary.refused > 0 {
        eprintln!(
            "warning: {} entries of the file are not usable room keys and were left out",
            summary.refused
        );
    }
    println!("{}", summary_json(&summary));
    Ok(())
}

/// Refuse to replace an existing `path` unless `force`.
fn check_target(path: &Path, force: bool) -> Result<(), String> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot check {shown}: {e}")),
        Ok(meta) if meta.is_dir() => Err(format!("{shown} is a directory")),
        Ok(_) if force => Ok(()),
        Ok(_) => Err(format!(
            "{shown} exists and was left as it was (give --force to replace it)"
        )),
    }
}

/// The stderr line for an export's progress.
fn export_progress(p: KeyTransferProgress) -> String {
    format!("exported {}/{} sessions", p.done, p.total)
}

/// How far an import is, in percent of the bytes to read (at most 100).
fn percent(p: KeyTransferProgress) -> u64 {
    (p.done.saturating_mul(100) / p.total.max(1)).min(100)
}

fn summary_json(s: &KeyImportSummary) -> Value {
    json!({
        "total": s.total, "imported": s.imported,
        "already_known": s.already_known, "refused": s.refused,
    })
}

/// A failed export in words; `path` is left as it was in any case.
fn export_error(error: &ClientError, path: &Path) -> String {
    let path = path.display();
    match error {
        ClientError::FileUnreadable(e) => {
            format!("cannot write the key file: {e}; nothing was written to {path}")
        }
        ClientError::KeyExport(KeyExportError::Io(e)) => {
            format!("writing the key file failed: {e}; nothing was written to {path}")
        }
        other => format!("the export failed: {other}; nothing was written to {path}"),
    }
}

/// A failed import in words, saying whether anything was imported.
fn import_error(error: &ClientError, path: &Path) -> String {
    let path = path.display();
    let e = match error {
        ClientError::KeyExport(e) => e,
        ClientError::FileUnreadable(e) => return format!("cannot read the key file: {e}"),
        other => return format!("the import failed: {other}; {PARTIAL}"),
    };
    match e {
        KeyExportError::WrongPassphraseOrTampered => {
            "wrong passphrase, or the file was changed: nothing was imported".into()
        }
        KeyExportError::NotAnExport(why) => {
            format!("{path} is not a key export file ({why}): nothing was imported")
        }
        KeyExportError::Truncated => {
            format!("{path} is cut short (truncated): nothing was imported")
        }
        KeyExportError::UnsupportedVersion(v) => format!(
            "{path} is a key export of version {v}, which this client cannot read: nothing was imported"
        ),
        KeyExportError::InvalidRounds(rounds) => format!(
            "{path} asks for {rounds} rounds of key derivation, which is refused: nothing was imported"
        ),
        KeyExportError::InvalidContent(why) => {
            format!("{path} was decrypted but is not a list of room keys ({why}); {PARTIAL}")
        }
        KeyExportError::ChangedWhileReading => {
            format!("{path} changed while it was imported; {PARTIAL}")
        }
        KeyExportError::Io(e) => format!("reading {path} failed: {e}; {PARTIAL}"),
        other => format!("{path} was refused: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    #[test]
    fn the_passphrase_must_be_set_and_not_empty() {
        assert_eq!(passphrase_from(Ok("secret".into())).unwrap(), "secret");
        let empty = passphrase_from(Ok(String::new())).unwrap_err();
        assert!(empty.contains("NEWT_KEY_PASSPHRASE is empty"), "{empty}");
        let missing = passphrase_from(Err(VarError::NotPresent)).unwrap_err();
        assert!(missing.contains("set NEWT_KEY_PASSPHRASE"), "{missing}");
        let binary = passphrase_from(Err(VarError::NotUnicode(OsString::new()))).unwrap_err();
        assert!(binary.contains("not valid UTF-8"), "{binary}");
    }

    #[test]
    fn an_existing_file_is_replaced_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.txt");
        check_target(&file, false).unwrap();
        std::fs::write(&file, "kept").unwrap();
        let refused = check_target(&file, false).unwrap_err();
        assert!(refused.contains("exists"), "{refused}");
        assert!(refused.contains("--force"), "{refused}");
        check_target(&file, true).unwrap();
        let directory = check_target(dir.path(), true).unwrap_err();
        assert!(directory.contains("is a directory"), "{directory}");
    }

    #[test]
    fn progress_is_told_in_sessions_and_percent() {
        let p = |done, total| KeyTransferProgress { done, total };
        assert_eq!(export_progress(p(200, 1000)), "exported 200/1000 sessions");
        assert_eq!(percent(p(0, 0)), 0);
        assert_eq!(percent(p(1, 3)), 33);
        assert_eq!(percent(p(10, 10)), 100);
        assert_eq!(percent(p(u64::MAX, 10)), 100);
    }

    #[test]
    fn the_summary_is_one_json_object() {
        let summary = KeyImportSummary {
            total: 5,
            imported: 3,
            already_known: 1,
            refused: 1,
        };
        assert_eq!(
            summary_json(&summary),
            json!({"total": 5, "imported": 3, "already_known": 1, "refused": 1})
        );
    }

    #[test]
    fn a_refused_import_says_why_and_whether_anything_was_imported() {
        let path = Path::new("keys.txt");
        let refused = |e| import_error(&ClientError::KeyExport(e), path);
        assert_eq!(
            refused(KeyExportError::WrongPassphraseOrTampered),
            "wrong passphrase, or the file was changed: nothing was imported"
        );
        assert_eq!(
            refused(KeyExportError::Truncated),
            "keys.txt is cut short (truncated): nothing was imported"
        );
        let not_export = refused(KeyExportError::NotAnExport("no header".into()));
        assert_eq!(
            not_export,
            "keys.txt is not a key export file (no header): nothing was imported"
        );
        let changed = refused(KeyExportError::ChangedWhileReading);
        assert!(changed.contains("may have been imported"), "{changed}");
        let unreadable = import_error(
            &ClientError::FileUnreadable("opening keys.txt: not found".into()),
            path,
        );
        assert_eq!(
            unreadable,
            "cannot read the key file: opening keys.txt: not found"
        );
        let failed = export_error(
            &ClientError::FileUnreadable("creating x: denied".into()),
            path,
        );
        assert_eq!(
            failed,
            "cannot write the key file: creating x: denied; nothing was written to keys.txt"
        );
    }
}
