//! # Newt core
//!
//! End-to-end-encrypted Matrix messaging for mobile apps: an Olm/Megolm state machine on
//! [vodozemac], a persistent store on SQLite, and a client that drives both over HTTP.
//!
//! The crate is split by domain:
//! - [`crypto`]: the [`crypto::OlmMachine`], a state machine that does no I/O. Sync data goes
//!   in, typed requests come out, responses are handed back.
//! - [`store`]: the [`store::Store`] trait with SQLite and in-memory implementations.
//! - [`http`]: the homeserver connection (reqwest, ruma request and response types).
//! - [`client`]: login, session restore, the sync loop, rooms and the timeline stream.
//!
//! A minimal program:
//!
//! ```no_run
//! # async fn demo() -> Result<(), newt_core::client::ClientError> {
//! use newt_core::client::{Client, ClientConfig};
//! use newt_core::store::StoreKey;
//!
//! let client = Client::new(ClientConfig {
//!     homeserver: "http://127.0.0.1:8008".into(),
//!     store_dir: "/tmp/alice-store".into(),
//!     store_key: StoreKey::from_passphrase("app-provided secret"),
//! })?;
//! client.login_password("alice", "password", None).await?;
//! let bob = newt_core::ruma::OwnedUserId::try_from("@bob:localhost").expect("a valid user id");
//! let room = client.create_encrypted_room(Some("chat"), &[bob]).await?;
//! client.send_text(&room, "hello").await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The ruma version Newt's API speaks: its ids (`OwnedUserId`, `OwnedRoomId`, …) and event
/// types, so that apps and the bindings use the same types without depending on ruma
/// themselves.
pub use ruma;

pub mod attachment;
pub mod backup;
pub mod client;
pub mod crypto;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod key_export;
mod lenient;
pub mod notification;
pub mod store;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod test_ids;
pub mod time;
