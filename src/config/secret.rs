//! Secrets (API key, header values, MQTT password, webhook token): never shown by `Debug`,
//! logs or `check-config`.

use std::fmt;

/// A secret string (API key, header value, MQTT password, webhook token): never printed by
/// `Debug`, logs or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
