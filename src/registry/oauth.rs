//! Identity tokens: an auth file's `identitytoken` is an OAuth2 refresh
//! token, exchanged at the registry's token service for an access token
//! (distribution `docs/spec/auth/oauth.md`, as docker and containers/image do).
//!
//! oci-client only knows Basic credentials and ready access tokens
//! (`RegistryAuth::Bearer`): this module does the exchange, and the client
//! is then handed the access token.

use oci_client::{Reference, RegistryOperation};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// Sent as `client_id`, which the spec requires to name the client.
const CLIENT_ID: &str = "lazyimg";

/// The parts of a `WWW-Authenticate: Bearer …` challenge the exchange needs.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    /// Older token services answer with `token` only.
    token: Option<String>,
}

/// An access token for `operation` on `reference`'s repository at
/// `base_url` (`https://host[:port]`), from identity token `refresh`:
/// `GET /v2/` for the challenge, then `POST realm` with
/// `grant_type=refresh_token`. `None` when the registry asks for no token.
///
/// # Errors
/// [`Error::Network`] (or [`Error::Tls`]) when the registry or its token
/// service cannot be reached; [`Error::Auth`] when the token service refuses the token or the
/// challenge is not a Bearer one.
pub(super) async fn access_token(
    http: &reqwest::Client,
    base_url: &str,
    host: &str,
    reference: &Reference,
    operation: RegistryOperation,
    refresh: &Secret,
) -> Result<Option<Secret>> {
    let network = |e: reqwest::Error| super::classify::transport_error(host, &e);
    let auth = |reason: String| Error::Auth {
        registry: host.to_string(),
        reason,
    };
    let ping = http
        .get(format!("{base_url}/v2/"))
        .send()
        .await
        .map_err(network)?;
    let Some(header) = ping.headers().get(reqwest::header::WWW_AUTHENTICATE) else {
        return Ok(None);
    };
    let challenge = header
        .to_str()
        .ok()
        .and_then(parse_challenge)
        .ok_or_else(|| auth("an identity token needs a Bearer challenge from /v2/".into()))?;
    let actions = match operation {
        RegistryOperation::Pull => "pull",
        RegistryOperation::Push => "pull,push",
    };
    let scope = format!("repository:{}:{actions}", reference.repository());
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("refresh_token", refresh.expose()),
        ("scope", scope.as_str()),
    ];
    if let Some(service) = &challenge.service {
        form.push(("service", service));
    }
    let answer = http
        .post(&challenge.realm)
        .form(&form)
        .send()
        .await
        .map_err(network)?;
    let status = answer.status();
    let body = answer.bytes().await.map_err(network)?;
    if !status.is_success() {
        return Err(auth(format!(
            "the token service refused the identity token (HTTP {}: {})",
            status.as_u16(),
            super::classify::summarise(&String::from_utf8_lossy(&body))
        )));
    }
    let answer: TokenAnswer = serde_json::from_slice(&body)
        .map_err(|_| auth("the token service's answer is not a token".into()))?;
    answer
        .access_token
        .or(answer.token)
        .filter(|t| !t.is_empty())
        .map(|t| Some(Secret::new(t)))
        .ok_or_else(|| auth("the token service's answer holds no access token".into()))
}

/// `Bearer realm="…",service="…",scope="…"` (RFC 6750 section 3; quoted
/// values may hold commas). `None` for another scheme or without a realm.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, mut rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service) = (None, None);
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_at(after.find(',').unwrap_or(after.len())),
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            _ => {}
        }
        rest = after;
    }
    Some(Challenge {
        realm: realm?,
        service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_rfc_6750_writes_them() {
        let parsed = parse_challenge(
            r#"Bearer realm="https://t.example/token",service="reg, main",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            parsed,
            Some(Challenge {
                realm: "https://t.example/token".into(),
                service: Some("reg, main".into()),
            })
        );
        assert_eq!(
            parse_challenge("bearer realm=https://t/token, service=s"),
            Some(Challenge {
                realm: "https://t/token".into(),
                service: Some("s".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer service="s""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }
}
