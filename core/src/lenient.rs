//! Taking JSON apart leniently, level by level: each part is parsed on its own, so that a
//! part of the wrong shape (or nested too deep for the parser) is left out, logged, and the
//! rest is kept. Used where answers from the network enter (`/sync`, the key endpoints).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tracing::warn;

pub(crate) type Object<'a> = BTreeMap<String, &'a RawValue>;

/// `raw` as an object of raw members, or `None` (logged) if it is something else.
pub(crate) fn object<'a>(raw: Option<&'a RawValue>, what: &str) -> Option<Object<'a>> {
    let raw = raw?;
    match serde_json::from_str::<Object<'a>>(raw.get()) {
        Ok(map) => Some(map),
        Err(_) if raw.get() == "null" => None,
        Err(e) => {
            warn!(field = what, error = %e, "ignoring a malformed part of the sync answer");
            None
        }
    }
}

/// `raw` parsed as `T`, or `None` (logged).
pub(crate) fn value<T: DeserializeOwned>(raw: Option<&RawValue>, what: &str) -> Option<T> {
    let raw = raw?;
    match serde_json::from_str(raw.get()) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(field = what, error = %e, "ignoring a malformed part of the sync answer");
            None
        }
    }
}

/// The top-level object of an answer: `None` if the body is not a JSON object.
pub(crate) fn top(body: &[u8]) -> Option<Object<'_>> {
    let text = std::str::from_utf8(body).ok()?;
    serde_json::from_str(text).ok()
}
