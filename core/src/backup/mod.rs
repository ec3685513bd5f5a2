//! Server-side key backup, `m.megolm_backup.v1.curve25519-aes-sha2` (what every Matrix
//! client uses): the backup key and its recovery-key form, and the backup data of one
//! session, encrypted to the backup's public key and decrypted with its private key. No
//! I/O: the client talks to the server (`client/backup.rs`), the machine picks and marks
//! the sessions (`crypto/backup.rs`).
//!
//! The algorithm authenticates nothing (its MAC is computed over an empty string, as
//! libolm did): anyone who knows the public key, the homeserver included, can add entries.
//! Keys restored from a backup are therefore legacy sessions, as imported files are (seed
//! 003), and a session is never replaced by a backed-up copy that starts later.

mod key;
mod secret_storage;
mod session_data;

pub use key::{BackupKey, RecoveryKeyError};
pub use secret_storage::{
    BACKUP_SECRET, EncryptedSecret, KeyDescription, SECRET_STORAGE_ALGORITHM, SecretStorageError,
    SecretStorageKey,
};
pub use session_data::{BackupDataError, decrypt_session, encrypt_session};

/// The bytes of a secret storage key, to keep it on this device.
pub fn storage_key_bytes(key: &SecretStorageKey) -> zeroize::Zeroizing<[u8; 32]> {
    zeroize::Zeroizing::new(*key.bytes())
}

/// The backup algorithm Newt reads and writes.
pub const BACKUP_ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

/// Why a backup operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The recovery key as typed is not one.
    #[error(transparent)]
    InvalidRecoveryKey(#[from] RecoveryKeyError),
    /// The server holds no backup.
    #[error("the server holds no key backup")]
    NoBackup,
    /// The server's backup belongs to another recovery key.
    #[error("this recovery key is not the key of the server's backup")]
    WrongRecoveryKey,
    /// The server's backup uses an algorithm Newt does not read.
    #[error("unsupported backup algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The secret storage holding the backup key cannot be read (damaged, or another
    /// algorithm).
    #[error("secret storage: {0}")]
    SecretStorage(SecretStorageError),
}
