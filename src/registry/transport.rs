//! The HTTP client under a [`RegistryClient`](super::RegistryClient): TLS
//! trust and timeouts, and plain HTTP for `insecure` registries.
//!
//! Trusted for a registry, besides the system's CA store: its `ca_file` (a
//! lazyimg extension) and the `*.crt` files of its containers-certs.d(5)
//! directory, `DIR/HOST[:PORT]/` in the first of the certs.d directories that
//! has one (containers/image's `dockerCertDir`).

use std::path::{Path, PathBuf};

use oci_client::Client;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use super::ClientOptions;
use crate::error::{Error, Result};
use crate::reference::Endpoint;

/// What an endpoint is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Https,
    Http,
}

impl Scheme {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// The scheme to speak to `endpoint`: HTTPS; for an `insecure` one (where
/// TLS is not verified), plain HTTP when `GET https://HOST/v2/` gets no HTTP
/// answer at all, as containers/image's `detectProperties` falls back.
///
/// # Errors
/// As [`http_client`].
pub(super) async fn scheme(endpoint: &Endpoint, options: &ClientOptions) -> Result<Scheme> {
    if !endpoint.insecure {
        return Ok(Scheme::Https);
    }
    let probe = http_client(endpoint, options)?;
    match probe
        .get(format!("https://{}/v2/", endpoint.host))
        .send()
        .await
    {
        Ok(_) => Ok(Scheme::Https),
        Err(e) => {
            tracing::debug!(
                "{}: no HTTPS ({}); plain HTTP",
                endpoint.host,
                super::classify::error_chain(&e)
            );
            Ok(Scheme::Http)
        }
    }
}

/// The oci-client for `endpoint`, speaking `scheme`: loads the system CA
/// store (oci-client builds two reqwest clients, so it is read twice) plus
/// the endpoint's own CAs ([`extra_roots`]).
pub(super) fn make_client(
    endpoint: &Endpoint,
    scheme: Scheme,
    options: &ClientOptions,
) -> Result<Client> {
    install_crypto_provider();
    let started = std::time::Instant::now();
    let extra_root_certificates = extra_roots(endpoint, &options.certs_d)?
        .into_iter()
        .map(|data| Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        })
        .collect();
    let protocol = match scheme {
        Scheme::Http => ClientProtocol::HttpsExcept(vec![endpoint.host.clone()]),
        Scheme::Https => ClientProtocol::Https,
    };
    let config = ClientConfig {
        protocol,
        extra_root_certificates,
        accept_invalid_certificates: endpoint.insecure,
        // lazyimg resolves indexes itself so it can report what it chose.
        platform_resolver: None,
        connect_timeout: Some(options.connect_timeout),
        read_timeout: Some(options.read_timeout),
        user_agent: USER_AGENT,
        // Uploads are one streamed PUT per blob (seeding): a single request to
        // finish or retry, rather than one PATCH per chunk.
        use_monolithic_push: true,
        ..Default::default()
    };
    let client = Client::try_from(config).map_err(|e| Error::Registry {
        registry: endpoint.host.clone(),
        reason: format!("cannot set up the HTTP client: {e}"),
    })?;
    tracing::debug!(
        "{}: HTTP client ready (CA store loaded) in {:.1} ms",
        endpoint.host,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(client)
}

/// A plain HTTP client that trusts what [`make_client`]'s does, for the
/// requests oci-client cannot make (the scheme probe, the identity-token
/// exchange).
///
/// # Errors
/// As [`make_client`].
pub(super) fn http_client(endpoint: &Endpoint, options: &ClientOptions) -> Result<reqwest::Client> {
    install_crypto_provider();
    let cannot = |e: reqwest::Error| Error::Registry {
        registry: endpoint.host.clone(),
        reason: format!("cannot set up the HTTP client: {e}"),
    };
    let roots = extra_roots(endpoint, &options.certs_d)?
        .iter()
        .map(|pem| reqwest::Certificate::from_pem(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(cannot)?;
    reqwest::Client::builder()
        .tls_certs_merge(roots)
        .danger_accept_invalid_certs(endpoint.insecure)
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
        .user_agent(USER_AGENT)
        .build()
        .map_err(cannot)
}

/// The PEM certificates trusted for `endpoint` besides the system's: its
/// `ca_file`, then the `*.crt` files of [`certs_d_dir`] in name order.
///
/// # Errors
/// [`Error::Io`] when one of them cannot be read.
fn extra_roots(endpoint: &Endpoint, certs_d: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> = endpoint.ca_file.iter().cloned().collect();
    if let Some(dir) = certs_d_dir(certs_d, &endpoint.host) {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut crts: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "crt"))
            .collect();
        crts.sort();
        tracing::debug!("{}: trusting {crts:?}", endpoint.host);
        files.extend(crts);
    }
    files
        .iter()
        .map(|file| std::fs::read(file).map_err(|e| Error::io(file, e)))
        .collect()
}

/// `DIR/HOST` (`host[:port]`, as contacted) for the first `DIR` of `certs_d`
/// where that is a directory: one directory per registry, never merged.
fn certs_d_dir(certs_d: &[PathBuf], host: &str) -> Option<PathBuf> {
    certs_d
        .iter()
        .map(|dir| dir.join(host))
        .find(|dir| dir.is_dir())
}

/// containers-certs.d(5)'s directories, in containers/image's order:
/// `~/.config/containers/certs.d` (with `home`), `/etc/containers/certs.d`,
/// then docker's `/etc/docker/certs.d`.
pub(super) fn default_certs_d(home: Option<&Path>) -> Vec<PathBuf> {
    home.map(|h| h.join(".config/containers/certs.d"))
        .into_iter()
        .chain(["/etc/containers/certs.d", "/etc/docker/certs.d"].map(PathBuf::from))
        .collect()
}

const USER_AGENT: &str = concat!("lazyimg/", env!("CARGO_PKG_VERSION"));

/// reqwest is built without a default rustls provider (ring keeps the build light);
/// one must be installed before the first client exists.
fn install_crypto_provider() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Err only means another provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certs_d_directories_follow_containers_image() {
        assert_eq!(
            default_certs_d(Some(Path::new("/home/u"))),
            [
                "/home/u/.config/containers/certs.d",
                "/etc/containers/certs.d",
                "/etc/docker/certs.d"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(default_certs_d(None).len(), 2);

        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir(second.path().join("reg:5000")).unwrap();
        std::fs::create_dir(first.path().join("reg")).unwrap();
        let dirs = [first.path().to_path_buf(), second.path().to_path_buf()];
        // The port is part of the name: `reg` does not serve `reg:5000`.
        assert_eq!(
            certs_d_dir(&dirs, "reg:5000"),
            Some(second.path().join("reg:5000"))
        );
        assert_eq!(certs_d_dir(&dirs, "reg"), Some(first.path().join("reg")));
        assert_eq!(certs_d_dir(&dirs, "other"), None);
    }

    #[test]
    fn crt_files_of_the_hosts_directory_are_trusted_after_ca_file() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("reg:5000");
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in [
            ("b.crt", "B"),
            ("a.crt", "A"),
            ("client.cert", "C"),
            ("k.key", "K"),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let ca_file = base.path().join("site.pem");
        std::fs::write(&ca_file, "S").unwrap();
        let endpoint = Endpoint {
            host: "reg:5000".into(),
            insecure: false,
            ca_file: Some(ca_file),
        };
        let roots = extra_roots(&endpoint, &[base.path().to_path_buf()]).unwrap();
        assert_eq!(roots, [b"S".to_vec(), b"A".to_vec(), b"B".to_vec()]);
    }
}
