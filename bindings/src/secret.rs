//! A secret handed between the app and the SDK (a password, a recovery key) inside a
//! prompt or its answer. Generated Kotlin data classes and Swift enums print their fields;
//! this object prints `<redacted>` there, and gives the text only when asked.

use std::sync::Arc;

use zeroize::Zeroizing;

/// A secret text: `expose()` gives it; printing it (`toString()`, `description`) does not.
#[derive(uniffi::Object, PartialEq, Eq)]
#[uniffi::export(Eq, Hash, Display)]
pub struct SecretText {
    text: Zeroizing<String>,
}

#[uniffi::export]
impl SecretText {
    /// Wrap `text` (a password or recovery key the user typed).
    #[uniffi::constructor]
    pub fn new(text: String) -> Arc<Self> {
        Arc::new(Self::from(Zeroizing::new(text)))
    }

    /// The text itself, to show the user (a new recovery key) or to pass on.
    pub fn expose(&self) -> String {
        self.text.as_str().to_owned()
    }
}

impl SecretText {
    /// The text, for the core (kept zeroized).
    pub(crate) fn to_zeroizing(&self) -> Zeroizing<String> {
        self.text.clone()
    }
}

impl From<Zeroizing<String>> for SecretText {
    fn from(text: Zeroizing<String>) -> Self {
        Self { text }
    }
}

impl std::hash::Hash for SecretText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.as_str().hash(state);
    }
}

impl std::fmt::Display for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(<redacted>)")
    }
}
