//! Credentials that must never reach a log, a terminal or a file others can read.

use std::fmt;

/// A token or password. `Debug` and `Display` print a placeholder; the value is
/// only reachable through [`Secret::expose`], which makes every use greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user name with its token, as registries take them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: Secret,
    pub kind: SecretKind,
}

/// What a [`Credentials`]' secret is, which decides how it is presented to
/// the registry's token service (distribution's `docs/spec/auth/token.md` and
/// `oauth.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// A password or personal access token, sent with HTTP Basic auth.
    Password,
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged for an
    /// access token with `grant_type=refresh_token`.
    IdentityToken,
}

impl Credentials {
    /// A user name and password (or personal access token).
    pub fn password(username: impl Into<String>, secret: Secret) -> Credentials {
        Credentials {
            username: username.into(),
            secret,
            kind: SecretKind::Password,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let creds = Credentials::password("alice", Secret::new("ghp_topsecret"));
        let shown = format!("{creds:?} {} {:?}", creds.secret, creds.secret);
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("alice"));
        assert_eq!(creds.secret.expose(), "ghp_topsecret");
    }
}
