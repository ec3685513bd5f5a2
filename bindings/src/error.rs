//! The one public error type, mapped from core errors in one place. Messages carry no
//! secrets and no message content.

use newt_core::attachment::AttachmentError;
use newt_core::backup::BackupError;
use newt_core::client::ClientError;
use newt_core::crypto::{CryptoError, MegolmError};
use newt_core::http::HttpError;
use newt_core::key_export::KeyExportError;
use newt_core::store::StoreError;

/// Errors an app sees. New variants may be added in any release: keep a fallback branch
/// (`else` in Kotlin, `default` in Swift).
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum NewtError {
    /// The homeserver could not be reached; retry later.
    #[error("network error: {message}")]
    Network {
        /// What failed.
        message: String,
    },
    /// The homeserver answered with an error.
    #[error("server error {status} {errcode}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Matrix error code, e.g. `M_FORBIDDEN`.
        errcode: String,
        /// The server's message.
        message: String,
    },
    /// The homeserver's answer could not be used (malformed, or larger than Newt reads).
    #[error("unusable server answer: {message}")]
    InvalidResponse {
        /// What is wrong with it.
        message: String,
    },
    /// The local store failed.
    #[error("store error: {message}")]
    Store {
        /// What failed.
        message: String,
    },
    /// The store key does not open this store; nothing was changed.
    #[error("the store key does not open this store")]
    WrongStoreKey,
    /// A room event cannot be decrypted; `failure` says why and whether it may still work.
    #[error("cannot decrypt the event: {message}")]
    Undecryptable {
        /// Why, for the app to act on.
        failure: DecryptionFailure,
        /// The same in words, for logs.
        message: String,
    },
    /// The encrypted channel to a device (Olm) could not be set up or used: a to-device
    /// message from it was rejected, or its claimed one-time key was refused.
    #[error("olm error: {message}")]
    Olm {
        /// What failed.
        message: String,
    },
    /// A device's published keys were refused (malformed, a self-signature that does not
    /// verify, or ids and keys that contradict what is known of the device). Newt does not
    /// use such a device.
    #[error("invalid device keys: {message}")]
    InvalidDeviceKeys {
        /// What is wrong with them.
        message: String,
    },
    /// The store holds the encryption account of another user or device; nothing was
    /// written. Log in as the stored account, or use another store directory.
    #[error(
        "the store holds the account of {stored_user_id}/{stored_device_id}, not {user_id}/{device_id}"
    )]
    AccountMismatch {
        /// The user that logged in.
        user_id: String,
        /// The device that logged in.
        device_id: String,
        /// The user whose account is in the store.
        stored_user_id: String,
        /// The device whose account is in the store.
        stored_device_id: String,
    },
    /// Another failure of the encryption layer (e.g. stored crypto state that cannot be
    /// read, or a server answer about keys that is not usable at all).
    #[error("crypto error: {message}")]
    Crypto {
        /// What failed.
        message: String,
    },
    /// An argument is invalid.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What is wrong.
        message: String,
    },
    /// The call needs a logged-in session.
    #[error("not logged in")]
    NotLoggedIn,
    /// Devices need a decision before room keys are shared (see `setAskAboutNewDevices`).
    #[error("devices need a decision")]
    UnknownDevices {
        /// `user/device` of each undecided device.
        devices: Vec<String>,
    },
    /// A prompt the operation needed was dismissed.
    #[error("the user dismissed the prompt")]
    PromptDismissed,
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The message is not queued (any more): it was sent or cancelled.
    #[error("message {transaction_id} is not queued")]
    NotQueued {
        /// The message's transaction id.
        transaction_id: String,
    },
    /// The message is already encrypted for sending: send an edit once it is sent.
    #[error("message {transaction_id} is already encrypted for sending")]
    AlreadyPrepared {
        /// The message's transaction id.
        transaction_id: String,
    },
    /// A file could not be read or written.
    #[error("file: {message}")]
    File {
        /// What failed.
        message: String,
    },
    /// A file is larger than Newt uploads or downloads.
    #[error("the file has {size} bytes, more than the {limit} allowed")]
    FileTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A downloaded attachment was refused: changed on the way (`tampered`) or not in a
    /// form Newt decrypts.
    #[error("attachment refused: {message}")]
    AttachmentRefused {
        /// The ciphertext does not match the hash in its event.
        tampered: bool,
        /// Why, in words.
        message: String,
    },
    /// A key export file was refused or could not be written. Nothing was imported, except
    /// for `ChangedWhileReading` and a list found malformed further on: the batches stored
    /// before stay (they were authenticated).
    #[error("key file refused: {message}")]
    KeyFileRefused {
        /// Why, for the app to act on (ask for the passphrase again, say).
        reason: KeyFileProblem,
        /// The same in words, for logs.
        message: String,
    },
    /// A key backup operation was refused.
    #[error("key backup: {message}")]
    Backup {
        /// Why, for the app to act on (ask for the recovery key again, say).
        reason: BackupProblem,
        /// The same in words, for logs.
        message: String,
    },
    /// A bug: a panic or an unexpected failure inside the SDK or a callback.
    #[error("internal error: {message}")]
    Internal {
        /// What happened.
        message: String,
    },
}

/// Why a key export file was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// The passphrase is wrong, or the file was changed since it was written (the two
    /// cannot be told apart): ask for the passphrase again.
    WrongPassphrase,
    /// Not a key export, or one cut short.
    NotAKeyFile,
    /// A key export of a version or with settings Newt does not read.
    Unsupported,
    /// The file changed while it was imported.
    ChangedWhileReading,
    /// The file could not be read or written.
    Io,
}

impl From<&KeyExportError> for KeyFileProblem {
    fn from(e: &KeyExportError) -> Self {
        match e {
            KeyExportError::WrongPassphraseOrTampered => Self::WrongPassphrase,
            KeyExportError::NotAnExport(_)
            | KeyExportError::Truncated
            | KeyExportError::InvalidContent(_) => Self::NotAKeyFile,
            KeyExportError::UnsupportedVersion(_) | KeyExportError::InvalidRounds(_) => {
                Self::Unsupported
            }
            KeyExportError::ChangedWhileReading => Self::ChangedWhileReading,
            // `KeyExportError` is non-exhaustive; I/O and what may be added.
            _ => Self::Io,
        }
    }
}

/// Why a key backup operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
#[non_exhaustive]
pub enum BackupProblem {
    /// What was typed is not a recovery key (a typo: ask again).
    InvalidRecoveryKey,
    /// A recovery key, but not the key of the server's backup.
    WrongRecoveryKey,
    /// The server holds no backup.
    NoBackup,
    /// The server's backup uses an algorithm Newt does not read.
    Unsupported,
    /// The secret storage holding the backup's key cannot be read (damaged, or an
    /// algorithm Newt does not read).
    SecretStorage,
}

impl From<&BackupError> for BackupProblem {
    fn from(e: &BackupError) -> Self {
        match e {
            BackupError::InvalidRecoveryKey(_) => Self::InvalidRecoveryKey,
            BackupError::WrongRecoveryKey => Self::WrongRecoveryKey,
            BackupError::NoBackup => Self::NoBackup,
            BackupError::SecretStorage(_) => Self::SecretStorage,
            // `BackupError` is non-exhaustive; an algorithm, and what may be added.
            _ => Self::Unsupported,
        }
    }
}

impl From<HttpError> for NewtError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Network(message) => NewtError::Network { message },
            HttpError::Server {
                status,
                errcode,
                message,
                ..
            } => NewtError::Server {
                status,
                errcode,
                message,
            },
            HttpError::AuthRequired { .. } => NewtError::Server {
                status: 401,
                errcode: "M_FORBIDDEN".into(),
                message: "authentication required".into(),
            },
            HttpError::Request(message) => NewtError::InvalidInput { message },
            HttpError::Response(message) => NewtError::InvalidResponse { message },
            too_large @ HttpError::TooLarge { .. } => NewtError::InvalidResponse {
                message: too_large.to_string(),
            },
            // `HttpError` is non-exhaustive: a failure added to the core later.
            other => NewtError::Internal {
                message: other.to_string(),
            },
        }
    }
}

impl From<StoreError> for NewtError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongKey => NewtError::WrongStoreKey,
            other => NewtError::Store {
                message: other.to_string(),
            },
        }
    }
}

/// Why a room event cannot be decrypted. New reasons may be added in any release: keep a
/// fallback branch.
#[derive(uniffi::Enum, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecryptionFailure {
    /// The room key was not received (yet). It may still arrive: from the sender, or
    /// forwarded by one of the user's own devices.
    MissingRoomKey,
    /// The sender did not give this device the room key on purpose.
    Withheld {
        /// The `m.room_key.withheld` code, e.g. `m.unverified` (verify this device to get
        /// the next keys), `m.blacklisted`, `m.unauthorised`, `m.unavailable`, `m.no_olm`.
        code: String,
        /// The sender's explanation, as its client wrote it (not translated).
        reason: Option<String>,
    },
    /// The room key is known only from a later message on (e.g. it was received after this
    /// message was sent, or forwarded from a later point).
    UnknownMessageIndex {
        /// The first message index this device can decrypt.
        first_known_index: u32,
        /// The index of this message.
        index: u32,
    },
    /// The device that created the room key is not known yet, so who sent the event cannot
    /// be confirmed; it may resolve when that device's keys are downloaded.
    UnknownSenderDevice,
    /// Another event already used this message index: a replay. It will never decrypt.
    Replayed {
        /// The reused index.
        index: u32,
        /// The event that used it first.
        first_event_id: String,
    },
    /// The event claims a sender (user or device key) other than the owner of its room key:
    /// forged. It will never decrypt.
    SenderMismatch,
    /// The event was encrypted for another room than the one it arrived in: forged. It will
    /// never decrypt.
    RoomMismatch,
    /// A malformed event, an unsupported algorithm, a ciphertext that does not authenticate,
    /// or a reason this version does not name: see the error's message.
    Other,
}

impl From<&MegolmError> for DecryptionFailure {
    fn from(e: &MegolmError) -> Self {
        match e {
            MegolmError::MissingSession { .. } => DecryptionFailure::MissingRoomKey,
            MegolmError::Withheld { code, reason } => DecryptionFailure::Withheld {
                code: code.to_string(),
                reason: reason.clone(),
            },
            MegolmError::UnknownIndex { first_known, index } => {
                DecryptionFailure::UnknownMessageIndex {
                    first_known_index: *first_known,
                    index: *index,
                }
            }
            MegolmError::UnknownSenderDevice { .. } => DecryptionFailure::UnknownSenderDevice,
            MegolmError::Replay {
                index,
                first_event_id,
            } => DecryptionFailure::Replayed {
                index: *index,
                first_event_id: first_event_id.to_string(),
            },
            MegolmError::SenderMismatch { .. } | MegolmError::SenderKeyMismatch { .. } => {
                DecryptionFailure::SenderMismatch
            }
            MegolmError::RoomMismatch { .. } => DecryptionFailure::RoomMismatch,
            MegolmError::Malformed(_)
            | MegolmError::UnsupportedAlgorithm(_)
            | MegolmError::Decryption(_) => DecryptionFailure::Other,
            // `MegolmError` is non-exhaustive: a reason added to the core later.
            _ => DecryptionFailure::Other,
        }
    }
}

impl From<CryptoError> for NewtError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Store(e) => e.into(),
            CryptoError::Megolm(e) => NewtError::Undecryptable {
                failure: DecryptionFailure::from(&e),
                message: e.to_string(),
            },
            CryptoError::Olm(e) => NewtError::Olm {
                message: e.to_string(),
            },
            CryptoError::OneTimeKey(e) => NewtError::Olm {
                message: e.to_string(),
            },
            CryptoError::DeviceKeys(e) => NewtError::InvalidDeviceKeys {
                message: e.to_string(),
            },
            CryptoError::AccountMismatch {
                user,
                device,
                stored_user,
                stored_device,
            } => NewtError::AccountMismatch {
                user_id: user.to_string(),
                device_id: device.to_string(),
                stored_user_id: stored_user.to_string(),
                stored_device_id: stored_device.to_string(),
            },
            // Kept together on purpose: none needs a different reaction from the app, and
            // `InvalidResponse` / `InvalidInput` of their own would promise what
            // `sendText` documents for those (the message left the queue), which is not so
            // for crypto failures (the message stays queued).
            e @ (CryptoError::Signing(_)
            | CryptoError::CorruptState(_)
            | CryptoError::UnknownRequest(_)
            | CryptoError::RoomNotEncrypted(_)
            | CryptoError::InvalidResponse(_)
            | CryptoError::InvalidInput(_)) => NewtError::Crypto {
                message: e.to_string(),
            },
            // `CryptoError` is non-exhaustive: a failure added to the core later.
            e => NewtError::Crypto {
                message: e.to_string(),
            },
        }
    }
}

impl From<ClientError> for NewtError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Http(e) => e.into(),
            ClientError::Store(e) => e.into(),
            ClientError::Crypto(e) => e.into(),
            ClientError::NotLoggedIn => NewtError::NotLoggedIn,
            ClientError::InvalidInput(message) => NewtError::InvalidInput { message },
            ClientError::RoomNotEncrypted(room) => NewtError::InvalidInput {
                message: format!("room {room} is not encrypted"),
            },
            ClientError::UnknownDevices(devices) => NewtError::UnknownDevices { devices },
            ClientError::PromptDismissed => NewtError::PromptDismissed,
            ClientError::InvalidResponse(message) => NewtError::InvalidResponse { message },
            ClientError::Closed => NewtError::Closed,
            ClientError::NotQueued(transaction_id) => NewtError::NotQueued { transaction_id },
            ClientError::AlreadyPrepared(transaction_id) => {
                NewtError::AlreadyPrepared { transaction_id }
            }
            ClientError::FileUnreadable(message) => NewtError::File { message },
            ClientError::FileTooLarge { size, limit } => NewtError::FileTooLarge { size, limit },
            ClientError::Attachment(e) => NewtError::AttachmentRefused {
                tampered: e == AttachmentError::HashMismatch,
                message: e.to_string(),
            },
            ClientError::Backup(e) => NewtError::Backup {
                reason: BackupProblem::from(&e),
                message: e.to_string(),
            },
            ClientError::KeyExport(e) => NewtError::KeyFileRefused {
                reason: KeyFileProblem::from(&e),
                message: e.to_string(),
            },
            // `ClientError` is non-exhaustive: a failure added to the core later.
            other => NewtError::Internal {
                message: other.to_string(),
            },
        }
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for NewtError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        NewtError::Internal {
            message: format!("callback failed: {}", e.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use newt_core::crypto::signing::SigningError;
    use newt_core::crypto::{DeviceKeyError, OlmError, OneTimeKeyError};

    use super::*;

    /// A ruma id from a literal.
    fn id<T>(value: &'static str) -> T
    where
        T: TryFrom<&'static str>,
        T::Error: std::fmt::Debug,
    {
        T::try_from(value).unwrap()
    }

    fn failure_of(e: MegolmError) -> DecryptionFailure {
        match NewtError::from(CryptoError::Megolm(e)) {
            NewtError::Undecryptable { failure, .. } => failure,
            other => panic!("expected Undecryptable, got {other:?}"),
        }
    }

    #[test]
    fn an_undecryptable_event_says_why() {
        let cases = [
            (
                MegolmError::MissingSession {
                    session_id: "s".into(),
                },
                DecryptionFailure::MissingRoomKey,
            ),
            (
                MegolmError::UnknownIndex {
                    first_known: 7,
                    index: 3,
                },
                DecryptionFailure::UnknownMessageIndex {
                    first_known_index: 7,
                    index: 3,
                },
            ),
            (
                MegolmError::UnknownSenderDevice {
                    sender_key: "curve".into(),
                },
                DecryptionFailure::UnknownSenderDevice,
            ),
            (
                MegolmError::Replay {
                    index: 4,
                    first_event_id: id("$first"),
                },
                DecryptionFailure::Replayed {
                    index: 4,
                    first_event_id: "$first".into(),
                },
            ),
            (
                MegolmError::SenderMismatch {
                    expected: id("@a:x"),
                    got: id("@m:x"),
                },
                DecryptionFailure::SenderMismatch,
            ),
            (
                MegolmError::SenderKeyMismatch {
                    expected: "k1".into(),
                    got: "k2".into(),
                },
                DecryptionFailure::SenderMismatch,
            ),
            (
                MegolmError::RoomMismatch {
                    expected: "!a:x".into(),
                    got: "!b:x".into(),
                },
                DecryptionFailure::RoomMismatch,
            ),
            (
                MegolmError::Malformed("missing ciphertext".into()),
                DecryptionFailure::Other,
            ),
            (
                MegolmError::UnsupportedAlgorithm("m.other".into()),
                DecryptionFailure::Other,
            ),
            (
                MegolmError::Decryption("bad MAC".into()),
                DecryptionFailure::Other,
            ),
        ];
        for (core, expected) in cases {
            let text = core.to_string();
            match NewtError::from(CryptoError::Megolm(core)) {
                NewtError::Undecryptable { failure, message } => {
                    assert_eq!(failure, expected);
                    assert_eq!(message, text, "the core's explanation is kept for logs");
                }
                other => panic!("expected Undecryptable({expected:?}), got {other:?}"),
            }
        }
    }

    #[test]
    fn a_withheld_key_keeps_its_code_and_reason() {
        let failure = failure_of(MegolmError::Withheld {
            code: "m.unverified".into(),
            reason: Some("Device not verified".into()),
        });
        assert_eq!(
            failure,
            DecryptionFailure::Withheld {
                code: "m.unverified".into(),
                reason: Some("Device not verified".into()),
            }
        );
        let failure = failure_of(MegolmError::Withheld {
            code: "m.no_olm".into(),
            reason: None,
        });
        assert_eq!(
            failure,
            DecryptionFailure::Withheld {
                code: "m.no_olm".into(),
                reason: None,
            }
        );
    }

    #[test]
    fn olm_and_one_time_key_failures_are_olm_errors() {
        let cases: Vec<CryptoError> = vec![
            OlmError::Malformed("no ciphertext".into()).into(),
            OlmError::UnsupportedAlgorithm("m.other".into()).into(),
            OlmError::NotForThisDevice.into(),
            OlmError::NoMatchingSession {
                sender_key: "curve".into(),
            }
            .into(),
            OlmError::SessionCreation("unknown one-time key".into()).into(),
            OlmError::PayloadMismatch {
                field: "sender",
                expected: "@a:x".into(),
                got: "@m:x".into(),
            }
            .into(),
            OlmError::RoomKeyNotOverOlm("m.room_key".into()).into(),
            OlmError::InvalidRoomKey("no session key".into()).into(),
            OlmError::Encryption("no session".into()).into(),
            OlmError::UnauthenticatedNotice.into(),
            OneTimeKeyError::Malformed("not base64".into()).into(),
            OneTimeKeyError::BadSignature("does not verify".into()).into(),
            OneTimeKeyError::UnknownDevice.into(),
            OneTimeKeyError::SessionCreation("bad key".into()).into(),
        ];
        for core in cases {
            let text = core.to_string();
            match NewtError::from(core) {
                NewtError::Olm { message } => assert_eq!(message, text),
                other => panic!("expected Olm, got {other:?}"),
            }
        }
    }

    #[test]
    fn refused_device_keys_are_invalid_device_keys() {
        let cases: Vec<CryptoError> = vec![
            DeviceKeyError::Malformed("no keys".into()).into(),
            DeviceKeyError::UserIdMismatch {
                expected: "@a:x".into(),
                got: "@m:x".into(),
            }
            .into(),
            DeviceKeyError::DeviceIdMismatch {
                expected: "D".into(),
                got: "E".into(),
            }
            .into(),
            DeviceKeyError::InvalidDeviceId("*".into()).into(),
            DeviceKeyError::Signature("does not verify".into()).into(),
            DeviceKeyError::Ed25519Changed {
                user_id: id("@a:x"),
                device_id: "D".into(),
            }
            .into(),
            DeviceKeyError::Curve25519Taken {
                user_id: id("@a:x"),
                device_id: "E".into(),
            }
            .into(),
            DeviceKeyError::Curve25519Contested.into(),
            DeviceKeyError::TooManyDevices(1000).into(),
        ];
        for core in cases {
            let text = core.to_string();
            match NewtError::from(core) {
                NewtError::InvalidDeviceKeys { message } => assert_eq!(message, text),
                other => panic!("expected InvalidDeviceKeys, got {other:?}"),
            }
        }
    }

    #[test]
    fn another_account_in_the_store_names_both_accounts() {
        let e = NewtError::from(CryptoError::AccountMismatch {
            user: id("@bob:x"),
            device: "BOBDEV".into(),
            stored_user: id("@alice:x"),
            stored_device: "ALICEDEV".into(),
        });
        let NewtError::AccountMismatch {
            user_id,
            device_id,
            stored_user_id,
            stored_device_id,
        } = &e
        else {
            panic!("expected AccountMismatch, got {e:?}");
        };
        assert_eq!((user_id.as_str(), device_id.as_str()), ("@bob:x", "BOBDEV"));
        assert_eq!(
            (stored_user_id.as_str(), stored_device_id.as_str()),
            ("@alice:x", "ALICEDEV")
        );
        assert_eq!(
            e.to_string(),
            "the store holds the account of @alice:x/ALICEDEV, not @bob:x/BOBDEV"
        );
        // The same through the client layer, as the bindings' calls see it.
        let through_client = NewtError::from(ClientError::Crypto(CryptoError::AccountMismatch {
            user: id("@bob:x"),
            device: "BOBDEV".into(),
            stored_user: id("@alice:x"),
            stored_device: "ALICEDEV".into(),
        }));
        assert!(
            matches!(through_client, NewtError::AccountMismatch { .. }),
            "{through_client:?}"
        );
    }

    #[test]
    fn other_crypto_failures_stay_crypto_errors() {
        let cases: Vec<CryptoError> = vec![
            SigningError::InvalidSignature.into(),
            CryptoError::CorruptState("account pickle: bad".into()),
            CryptoError::UnknownRequest("r1".into()),
            CryptoError::RoomNotEncrypted(id("!r:x")),
            CryptoError::InvalidResponse("keys/claim: not a JSON object".into()),
            CryptoError::InvalidInput("empty session id".into()),
        ];
        for core in cases {
            let text = core.to_string();
            match NewtError::from(core) {
                NewtError::Crypto { message } => assert_eq!(message, text),
                other => panic!("expected Crypto, got {other:?}"),
            }
        }
    }

    #[test]
    fn store_failures_inside_crypto_are_store_errors() {
        let e = NewtError::from(CryptoError::Store(StoreError::WrongKey));
        assert!(matches!(e, NewtError::WrongStoreKey), "{e:?}");
        let e = NewtError::from(CryptoError::Store(StoreError::Database("busy".into())));
        assert!(matches!(e, NewtError::Store { .. }), "{e:?}");
    }

    #[test]
    fn unusable_server_answers_are_their_own_error() {
        let cases: Vec<NewtError> = vec![
            HttpError::Response("no event id".into()).into(),
            HttpError::TooLarge { limit: 8 }.into(),
            ClientError::InvalidResponse("sync: no next_batch".into()).into(),
        ];
        for e in cases {
            assert!(matches!(e, NewtError::InvalidResponse { .. }), "{e:?}");
        }
    }
}
