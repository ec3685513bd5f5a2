//! Requests the machine asks its driver to send, and conversions at the ruma edge.

use std::collections::BTreeMap;

use ruma::api::client::keys::{claim_keys, get_keys, upload_keys};
use ruma::api::client::to_device::send_event_to_device;
use ruma::serde::Raw;
use serde_json::Value;

use super::error::CryptoError;

/// A request the driver must send; report the answer with the matching `mark_*_sent`.
#[derive(Clone, Debug)]
pub struct OutgoingRequest {
    /// Identifies the request in `mark_*_sent`. For to-device requests, the transaction id.
    pub id: String,
    /// The request.
    pub kind: OutgoingKind,
}

/// The kinds of requests the machine produces.
///
/// Deliberately exhaustive: whoever drives the machine must send every kind; a kind it
/// does not know would be dropped silently behind a wildcard.
#[derive(Clone, Debug)]
pub enum OutgoingKind {
    /// `POST /keys/upload`.
    KeysUpload(upload_keys::v3::Request),
    /// `POST /keys/query`.
    KeysQuery(get_keys::v3::Request),
    /// `POST /keys/claim`.
    KeysClaim(claim_keys::v3::Request),
    /// `PUT /sendToDevice/{type}/{txn_id}`.
    ToDevice(send_event_to_device::v3::Request),
}

/// Turn a JSON value into a typed ruma `Raw`.
pub fn raw_json<T>(value: &Value) -> Result<Raw<T>, CryptoError> {
    raw(value)
}

/// Turn a JSON value into a typed ruma `Raw` without re-encoding its members.
pub(crate) fn raw<T>(value: &Value) -> Result<Raw<T>, CryptoError> {
    let json = serde_json::value::to_raw_value(value)
        .map_err(|e| CryptoError::CorruptState(format!("serialising request: {e}")))?;
    Ok(Raw::from_json(json))
}

/// Parse a ruma `Raw` into a JSON value for inspection.
pub(crate) fn json_of<T>(raw: &Raw<T>) -> Option<Value> {
    serde_json::from_str(raw.json().get()).ok()
}

/// Build `BTreeMap<K, Raw<T>>` from string keys, skipping keys ruma rejects.
pub(crate) fn raw_map<K: Ord + TryFrom<String>, T>(
    values: BTreeMap<String, Value>,
) -> Result<BTreeMap<K, Raw<T>>, CryptoError> {
    let mut out = BTreeMap::new();
    for (k, v) in values {
        let key = K::try_from(k)
            .map_err(|_| CryptoError::CorruptState("invalid key id generated".into()))?;
        out.insert(key, raw(&v)?);
    }
    Ok(out)
}
