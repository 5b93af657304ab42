//! What a failed registry request means: retry it, authenticate again, or
//! give up with a typed error that names the registry.

use oci_client::Reference;
use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::error::Error;

/// How [`classify`] sorts a failure.
pub(super) enum Failure {
    Retry(Error),
    Reauth(Error),
    Fatal(Error),
}

/// Sorts `err`, an answer of registry `host` (`host[:port]`) to a request about
/// `reference`: connection errors, 5xx and 429 are worth retrying
/// ([`Failure::Retry`]), a 401 a fresh token ([`Failure::Reauth`]), the rest
/// is final.
pub(super) fn classify(host: &str, reference: &Reference, err: OciDistributionError) -> Failure {
    let registry = host.to_string();
    let what = || reference.whole();
    let missing = || manifest_named(reference);
    match err {
        OciDistributionError::AuthenticationFailure(body) => Failure::Fatal(Error::Auth {
            registry,
            reason: summarise(&body),
        }),
        OciDistributionError::UnauthorizedError { .. } => Failure::Reauth(Error::Auth {
            registry,
            reason: "the registry answered 401 Unauthorized".into(),
        }),
        OciDistributionError::RegistryError { envelope, .. } => {
            let message = envelope
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Failure::Fatal(Error::NotFound {
                    registry,
                    what: missing(),
                })
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::Denied)) {
                Failure::Fatal(Error::Denied {
                    registry,
                    repository: reference.repository().to_string(),
                    reason: message,
                })
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized))
            {
                Failure::Reauth(Error::Auth {
                    registry,
                    reason: message,
                })
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                Failure::Retry(Error::Registry {
                    registry,
                    reason: message,
                })
            } else {
                Failure::Fatal(Error::Registry {
                    registry,
                    reason: message,
                })
            }
        }
        OciDistributionError::ServerError { code, message, .. } => {
            let reason = format!("HTTP {code}: {}", summarise(&message));
            match code {
                404 => Failure::Fatal(Error::NotFound {
                    registry,
                    what: missing(),
                }),
                403 => Failure::Fatal(Error::Denied {
                    registry,
                    repository: reference.repository().to_string(),
                    reason,
                }),
                429 | 500..=599 => Failure::Retry(Error::Registry { registry, reason }),
                _ => Failure::Fatal(Error::Registry { registry, reason }),
            }
        }
        // A bare status (e.g. from a HEAD, which has no body to explain itself).
        OciDistributionError::RequestError(e) if e.status().is_some() => {
            let code = e.status().map_or(0, |s| s.as_u16());
            let reason = format!("HTTP {code}");
            match code {
                401 => Failure::Reauth(Error::Auth { registry, reason }),
                403 => Failure::Fatal(Error::Denied {
                    registry,
                    repository: reference.repository().to_string(),
                    reason,
                }),
                404 => Failure::Fatal(Error::NotFound {
                    registry,
                    what: missing(),
                }),
                429 | 500..=599 => Failure::Retry(Error::Registry { registry, reason }),
                _ => Failure::Fatal(Error::Registry { registry, reason }),
            }
        }
        OciDistributionError::RequestError(e) => match transport_error(host, &e) {
            // No retry fixes a certificate.
            tls @ Error::Tls { .. } => Failure::Fatal(tls),
            e2 if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() => {
                Failure::Retry(e2)
            }
            e2 => Failure::Fatal(e2),
        },
        // A body cut short: the connection dropped.
        OciDistributionError::IoError(e) => Failure::Retry(Error::Network {
            registry,
            reason: e.to_string(),
        }),
        OciDistributionError::ManifestParsingError(reason)
        | OciDistributionError::VersionedParsingError(reason) => Failure::Fatal(Error::Manifest {
            what: what(),
            reason,
        }),
        other => Failure::Fatal(Error::Registry {
            registry,
            reason: other.to_string(),
        }),
    }
}

/// What a manifest request for `reference` asked for, for "not found":
/// a tag or a manifest digest, in its repository.
pub(super) fn manifest_named(reference: &Reference) -> String {
    let repository = format!("{}/{}", reference.registry(), reference.repository());
    match (reference.digest(), reference.tag()) {
        (Some(digest), _) => format!("manifest {digest} of {repository}"),
        (None, Some(tag)) => format!("tag {tag} of {repository}"),
        (None, None) => format!("manifest of {repository}"),
    }
}

/// The HTTP status of a failed request, when it got that far.
pub(super) fn status_of(err: &OciDistributionError) -> Option<u16> {
    match err {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::RequestError(e) => e.status().map(|s| s.as_u16()),
        _ => None,
    }
}

/// reqwest hides the useful part (refused, timed out, certificate) in its sources.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A request to registry `host` that got no HTTP answer: [`Error::Tls`] when
/// the TLS handshake refused the certificate (rustls's "invalid peer
/// certificate"), else [`Error::Network`].
pub(super) fn transport_error(host: &str, err: &reqwest::Error) -> Error {
    let reason = error_chain(err);
    if reason.contains("invalid peer certificate") {
        Error::Tls {
            registry: host.to_string(),
            reason,
        }
    } else {
        Error::Network {
            registry: host.to_string(),
            reason,
        }
    }
}

/// Registry error bodies can be HTML pages or JSON envelopes: keep one short line.
pub(super) fn summarise(body: &str) -> String {
    if let Ok(envelope) = serde_json::from_str::<serde_json::Value>(body) {
        let messages: Vec<&str> = envelope["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str())
            .collect();
        if !messages.is_empty() {
            return messages.join("; ");
        }
    }
    let line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None if line.is_empty() => "no reason given".into(),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_prefer_envelope_messages_and_stay_short() {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad token"}]}"#;
        assert_eq!(summarise(body), "bad token");
        assert_eq!(summarise(""), "no reason given");
        let long = "x ".repeat(500);
        assert!(summarise(&long).chars().count() <= 201);
    }

    #[test]
    fn not_found_names_the_tag_or_the_manifest_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases = [
            ("ghcr.io/ns/img:1", "tag 1 of ghcr.io/ns/img".to_string()),
            (
                &format!("ghcr.io/ns/img@{digest}"),
                format!("manifest {digest} of ghcr.io/ns/img"),
            ),
        ];
        for (reference, expected) in cases {
            let reference: Reference = reference.parse().unwrap();
            assert_eq!(manifest_named(&reference), expected);
        }
    }
}
