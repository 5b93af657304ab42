//! The HTTP client under a [`RegistryClient`](super::RegistryClient): TLS
//! trust and timeouts.

use oci_client::Client;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use super::ClientOptions;
use crate::error::{Error, Result};
use crate::reference::Endpoint;

/// The oci-client for `endpoint`: loads the system CA store (oci-client builds
/// two reqwest clients, so it is read twice) plus the endpoint's `ca_file`.
pub(super) fn make_client(endpoint: &Endpoint, options: &ClientOptions) -> Result<Client> {
    install_crypto_provider();
    let started = std::time::Instant::now();
    let extra_root_certificates = extra_roots(endpoint)?
        .into_iter()
        .map(|data| Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        })
        .collect();
    let protocol = if endpoint.insecure {
        ClientProtocol::HttpsExcept(vec![endpoint.host.clone()])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        extra_root_certificates,
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
/// requests oci-client cannot make (the identity-token exchange).
///
/// # Errors
/// As [`make_client`].
pub(super) fn http_client(endpoint: &Endpoint, options: &ClientOptions) -> Result<reqwest::Client> {
    install_crypto_provider();
    let cannot = |e: reqwest::Error| Error::Registry {
        registry: endpoint.host.clone(),
        reason: format!("cannot set up the HTTP client: {e}"),
    };
    let roots = extra_roots(endpoint)?
        .iter()
        .map(|pem| reqwest::Certificate::from_pem(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(cannot)?;
    reqwest::Client::builder()
        .tls_certs_merge(roots)
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
        .user_agent(USER_AGENT)
        .build()
        .map_err(cannot)
}

/// `scheme://host[:port]` of `endpoint`: plain HTTP for an insecure one.
pub(super) fn base_url(endpoint: &Endpoint) -> String {
    let scheme = if endpoint.insecure { "http" } else { "https" };
    format!("{scheme}://{}", endpoint.host)
}

/// The PEM certificates trusted for `endpoint` besides the system's.
///
/// # Errors
/// [`Error::Io`] when its `ca_file` cannot be read.
fn extra_roots(endpoint: &Endpoint) -> Result<Vec<Vec<u8>>> {
    endpoint
        .ca_file
        .iter()
        .map(|file| std::fs::read(file).map_err(|e| Error::io(file, e)))
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
