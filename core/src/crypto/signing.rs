//! Canonical JSON and ed25519 JSON signatures (Matrix spec, appendix "Signing JSON").
//!
//! Canonical form comes from ruma's canonical JSON; signatures from vodozemac.

use ruma::canonical_json::{CanonicalJsonValue, to_canonical_value};
use serde_json::Value;
use vodozemac::{Ed25519PublicKey, Ed25519SecretKey, Ed25519Signature};

/// Why a JSON object could not be canonicalised, signed or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// The value is not a JSON object.
    #[error("expected a JSON object, got another JSON type")]
    NotAnObject,
    /// The value contains something canonical JSON forbids (a fraction, an out-of-range integer).
    #[error("value cannot be expressed as canonical JSON: {0}")]
    NotCanonical(String),
    /// `signatures[entity][key_id]` is absent.
    #[error("no signature by {entity} with key {key_id}")]
    MissingSignature {
        /// The signing entity (user id or server name).
        entity: String,
        /// The key id, e.g. `ed25519:DEVICEID`.
        key_id: String,
    },
    /// The signature is not valid base64 of 64 bytes.
    #[error("the signature is malformed")]
    MalformedSignature,
    /// The signature does not verify with the given key.
    #[error("the signature does not match the signed content and key")]
    InvalidSignature,
}

const MAX_SAFE_INT: f64 = 9_007_199_254_740_991.0;

/// Integral floats within the safe range (e.g. `1e10`, `-0`) are integers in canonical JSON.
fn normalise_numbers(value: &Value) -> Result<Value, SigningError> {
    Ok(match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() != 0.0 || !f.is_finite() || f.abs() > MAX_SAFE_INT {
                return Err(SigningError::NotCanonical(format!(
                    "number {n} is not a safe integer"
                )));
            }
            // Exact: `f` is integral and within +-2^53.
            Value::from(f as i64)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(normalise_numbers)
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), normalise_numbers(v)?)))
                .collect::<Result<_, SigningError>>()?,
        ),
        other => other.clone(),
    })
}

/// The canonical JSON string of `value`.
pub fn canonical_json(value: &Value) -> Result<String, SigningError> {
    let value = normalise_numbers(value)?;
    let canonical: CanonicalJsonValue =
        to_canonical_value(&value).map_err(|e| SigningError::NotCanonical(e.to_string()))?;
    Ok(canonical.to_string())
}

/// The canonical form of an object without its `signatures` and `unsigned` members: the bytes
/// a signature covers.
pub fn signable_json(value: &Value) -> Result<String, SigningError> {
    let mut object = value.as_object().ok_or(SigningError::NotAnObject)?.clone();
    object.remove("signatures");
    object.remove("unsigned");
    canonical_json(&Value::Object(object))
}

/// Verify the ed25519 signature `signatures[entity][key_id]` of `value` with `key`.
pub fn verify_json(
    value: &Value,
    entity: &str,
    key_id: &str,
    key: &Ed25519PublicKey,
) -> Result<(), SigningError> {
    let signature = value
        .get("signatures")
        .and_then(|s| s.get(entity))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
        .ok_or_else(|| SigningError::MissingSignature {
            entity: entity.to_owned(),
            key_id: key_id.to_owned(),
        })?;
    let signature =
        Ed25519Signature::from_base64(signature).map_err(|_| SigningError::MalformedSignature)?;
    let signed = signable_json(value)?;
    key.verify(signed.as_bytes(), &signature)
        .map_err(|_| SigningError::InvalidSignature)
}

/// Add `signatures[entity][key_id]` to the object `value`, signed with `sign`.
pub fn sign_json_with(
    value: &mut Value,
    entity: &str,
    key_id: &str,
    sign: impl FnOnce(&[u8]) -> Ed25519Signature,
) -> Result<(), SigningError> {
    let signed = signable_json(value)?;
    let signature = sign(signed.as_bytes()).to_base64();
    let object = value.as_object_mut().ok_or(SigningError::NotAnObject)?;
    let signatures = object
        .entry("signatures")
        .or_insert_with(|| Value::Object(Default::default()));
    if !signatures.is_object() {
        *signatures = Value::Object(Default::default());
    }
    let by_entity = signatures
        .as_object_mut()
        .ok_or(SigningError::NotAnObject)?
        .entry(entity)
        .or_insert_with(|| Value::Object(Default::default()));
    if !by_entity.is_object() {
        *by_entity = Value::Object(Default::default());
    }
    by_entity
        .as_object_mut()
        .ok_or(SigningError::NotAnObject)?
        .insert(key_id.to_owned(), Value::String(signature));
    Ok(())
}

/// Add `signatures[entity][key_id]` to the object `value`, signed with `secret`.
pub fn sign_json(
    value: &mut Value,
    entity: &str,
    key_id: &str,
    secret: &Ed25519SecretKey,
) -> Result<(), SigningError> {
    sign_json_with(value, entity, key_id, |bytes| secret.sign(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signature_over_unsigned_and_signatures_is_ignored() {
        let secret = Ed25519SecretKey::new();
        let mut value = json!({"a": 1, "unsigned": {"x": 1}});
        sign_json(&mut value, "@u:x", "ed25519:D", &secret).unwrap();
        value["unsigned"] = json!({"changed": true});
        verify_json(&value, "@u:x", "ed25519:D", &secret.public_key()).unwrap();
        value["a"] = json!(2);
        assert!(matches!(
            verify_json(&value, "@u:x", "ed25519:D", &secret.public_key()),
            Err(SigningError::InvalidSignature)
        ));
    }

    #[test]
    fn missing_or_malformed_signature_is_a_typed_error() {
        let key = Ed25519SecretKey::new().public_key();
        let value = json!({"a": 1});
        assert!(matches!(
            verify_json(&value, "@u:x", "ed25519:D", &key),
            Err(SigningError::MissingSignature { .. })
        ));
        let value = json!({"a": 1, "signatures": {"@u:x": {"ed25519:D": "not base64!"}}});
        assert!(matches!(
            verify_json(&value, "@u:x", "ed25519:D", &key),
            Err(SigningError::MalformedSignature)
        ));
        assert!(matches!(
            signable_json(&json!([1])),
            Err(SigningError::NotAnObject)
        ));
    }
}
