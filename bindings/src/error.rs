//! The one public error type, mapped from core errors in one place. Messages carry no
//! secrets and no message content.

use newt_core::client::ClientError;
use newt_core::crypto::CryptoError;
use newt_core::http::HttpError;
use newt_core::store::StoreError;

/// Errors an app sees.
#[derive(Debug, thiserror::Error, uniffi::Error)]
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
    /// Encryption or decryption failed.
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
    /// A bug: a panic or an unexpected failure inside the SDK or a callback.
    #[error("internal error: {message}")]
    Internal {
        /// What happened.
        message: String,
    },
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

impl From<CryptoError> for NewtError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Store(e) => e.into(),
            other => NewtError::Crypto {
                message: other.to_string(),
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
    use super::*;

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
