//! Docker credential helpers: `docker-credential-NAME get`, as the
//! docker-credential-helpers protocol defines it (its `client` package).
//!
//! The registry host goes to the helper's standard input; it answers on
//! standard output with `{"ServerURL": …, "Username": …, "Secret": …}`, or
//! fails with the message `credentials not found in native keychain` when it
//! has none. A `Username` of `<token>` marks the secret as an identity token.
//! The secret travels only through the pipe: never in arguments, in the
//! environment, or in what is logged.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret::{Credentials, Secret, SecretKind};

/// The prefix of every helper's executable name.
const PROGRAM_PREFIX: &str = "docker-credential-";
/// What a helper prints when it has nothing for the host (docker-credential-helpers'
/// `credentials.errCredentialsNotFoundMessage`).
const NOT_FOUND: &str = "credentials not found in native keychain";
/// The `Username` that marks `Secret` as an identity token (docker's `tokenUsername`).
const TOKEN_USERNAME: &str = "<token>";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    username: String,
    secret: String,
}

/// Asks helper `name` (`docker-credential-NAME` on `PATH`) for the
/// credentials of registry `host` (`host[:port]`). `Ok(None)` when it has none.
///
/// # Errors
/// [`Error::CredentialHelper`] when it cannot be run, fails otherwise, or
/// answers something that is not its JSON.
pub fn get(name: &str, host: &str) -> Result<Option<Credentials>> {
    let program = format!("{PROGRAM_PREFIX}{name}");
    let failed = |reason: String| Error::CredentialHelper {
        program: program.clone(),
        registry: host.to_string(),
        reason,
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    let written = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(host.as_bytes());
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    written.map_err(|e| failed(format!("cannot write to it: {e}")))?;
    if !output.status.success() {
        // On failure the protocol puts its message on stdout; a helper that
        // printed an answer (its secret) and failed anyway is not quoted.
        let answered = serde_json::from_slice::<serde_json::Value>(&output.stdout).is_ok();
        let message = match answered {
            true => Default::default(),
            false => String::from_utf8_lossy(&output.stdout),
        };
        let message = message.trim();
        if message.contains(NOT_FOUND) {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = [message, stderr.trim()]
            .into_iter()
            .find(|m| !m.is_empty())
            .and_then(|m| m.lines().next())
            .unwrap_or("no message");
        return Err(failed(format!("{}: {said}", output.status)));
    }
    // The answer holds the secret: its parse error must not quote it.
    let answer: Answer = serde_json::from_slice(&output.stdout).map_err(|e| {
        failed(format!(
            "its answer is not the helper protocol's JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if answer.username == TOKEN_USERNAME {
        Credentials {
            username: String::new(),
            secret: Secret::new(answer.secret),
            kind: SecretKind::IdentityToken,
        }
    } else {
        Credentials::password(answer.username, Secret::new(answer.secret))
    }))
}
