//! Registry faults only a fake can stage on demand (see support::fake_registry):
//! redirects to a CDN host, connections cut mid-blob, Range requests answered
//! with 200, and a 401 in the middle of a session.

mod support;

use std::sync::{Arc, Mutex};

use support::fake_registry::{
    FakeImage, FakeServer, Request, Response, range_start, ranged_answer,
};
use support::layer::{LongNames, build_tar, file};
use support::testenv::{Lazyimg, Run, testenv};
use support::torture::prng_bytes;

/// A real (uncompressed) tar layer: `pull` indexes it, so it must be one.
fn image() -> FakeImage {
    FakeImage::new(build_tar(
        &[file("data.bin", prng_bytes(11, 3 << 20))],
        LongNames::Pax,
    ))
}

fn lazyimg_for(registry: &FakeServer) -> Lazyimg {
    let config = format!(
        "[network]\nread_timeout = 5\nattempts = 3\n[[registry]]\nprefix = {:?}\ninsecure = true\n",
        registry.addr
    );
    Lazyimg::with_config(testenv(), &config)
}

fn pull(lazyimg: &Lazyimg, registry: &FakeServer, token: Option<&str>) -> Run {
    let reference = format!("{}/ns/img:1", registry.addr);
    match token {
        Some(token) => lazyimg.run_with_stdin(
            &["pull", "--username", "u", "--password-stdin", &reference],
            token,
        ),
        None => lazyimg.run(&["pull", &reference]),
    }
}

/// An open registry serving `image`'s manifest and config itself and layer requests
/// through `layer`, where each test stages its fault.
fn anonymous_registry(
    image: &Arc<FakeImage>,
    layer: impl Fn(&FakeImage, &Request) -> Response + Send + Sync + 'static,
) -> FakeServer {
    let served = image.clone();
    FakeServer::start(move |req| {
        if req.path == "/v2/" {
            return ok(b"{}");
        }
        served.answer(req).unwrap_or_else(|| layer(&served, req))
    })
}

/// What a registry with HTTP Basic auth answers a request without credentials.
fn challenge() -> Response {
    Response::Full(
        401,
        vec![("WWW-Authenticate".into(), "Basic realm=\"fake\"".into())],
        vec![],
    )
}

fn ok(body: &[u8]) -> Response {
    Response::Full(200, vec![], body.to_vec())
}

#[test]
fn blob_redirects_to_another_host_never_carry_the_credentials() {
    let image = Arc::new(image());
    let layer = image.layer.clone();
    let cdn = FakeServer::start(move |_| ok(&layer));
    let cdn_addr = cdn.addr.clone();
    let served = image.clone();
    let registry = FakeServer::start(move |req| {
        if !req.headers.contains_key("authorization") {
            return challenge();
        }
        if let Some(answer) = served.answer(req) {
            return answer;
        }
        let signed = format!(
            "http://{cdn_addr}/cdn/{}?signature=abc",
            served.layer_digest
        );
        Response::Full(307, vec![("Location".into(), signed)], vec![])
    });
    let lazyimg = lazyimg_for(&registry);
    let run = pull(&lazyimg, &registry, Some("s3cret-token")).ok();
    assert_eq!(run.stdout().trim(), image.manifest_digest);
    assert!(lazyimg.cached_blobs().contains(&image.layer_digest));
    let cdn_requests = cdn.requests();
    assert!(
        !cdn_requests.is_empty(),
        "the layer must have come from the CDN host"
    );
    for request in &cdn_requests {
        assert!(
            !request.headers.contains_key("authorization"),
            "credentials leaked to the CDN: {request:?}"
        );
    }
}

#[test]
fn a_connection_cut_mid_blob_resumes_with_a_range_request() {
    let image = Arc::new(image());
    let half = image.layer.len() / 2;
    let registry = anonymous_registry(&image, move |image, req| match range_start(req) {
        Some(_) => ranged_answer(&image.layer, req),
        None => Response::Cut {
            body: image.layer.clone(),
            sent: half,
        },
    });
    let lazyimg = lazyimg_for(&registry);
    pull(&lazyimg, &registry, None).ok();
    assert!(lazyimg.cached_blobs().contains(&image.layer_digest));
    let resumed: Vec<usize> = registry.requests().iter().filter_map(range_start).collect();
    assert_eq!(resumed.len(), 1, "one resume: {resumed:?}");
    assert!(
        resumed[0] > 0 && resumed[0] <= half,
        "resumed from byte {}",
        resumed[0]
    );
}

#[test]
fn a_range_request_answered_with_the_whole_blob_starts_over_and_verifies() {
    let image = Arc::new(image());
    let registry = anonymous_registry(&image, |image, req| match range_start(req) {
        // Like distribution's pull-through proxy for a blob it has not cached.
        Some(_) => ok(&image.layer),
        None => Response::Cut {
            body: image.layer.clone(),
            sent: image.layer.len() / 3,
        },
    });
    let lazyimg = lazyimg_for(&registry);
    pull(&lazyimg, &registry, None).ok();
    assert!(lazyimg.cached_blobs().contains(&image.layer_digest));
    let verify = lazyimg.run(&["cache", "verify"]).ok();
    assert!(verify.stderr().contains("0 corrupt"), "{}", verify.stderr());
}

#[test]
fn a_401_mid_session_reauthenticates_once_and_carries_on() {
    let image = Arc::new(image());
    let served = image.clone();
    let refused = std::sync::atomic::AtomicBool::new(false);
    let registry = FakeServer::start(move |req| {
        if !req.headers.contains_key("authorization") {
            return challenge();
        }
        if req.path == "/v2/" {
            return ok(b"{}");
        }
        if let Some(answer) = served.answer(req) {
            return answer;
        }
        // The first layer request is refused, as when a token expires mid-pull.
        if !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return challenge();
        }
        ok(&served.layer)
    });
    let lazyimg = lazyimg_for(&registry);
    pull(&lazyimg, &registry, Some("token")).ok();
    let version_checks = registry
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/")
        .count();
    assert!(
        version_checks >= 2,
        "expected a re-authentication, saw {version_checks} /v2/ requests"
    );
    assert!(lazyimg.cached_blobs().contains(&image.layer_digest));
}

/// Ranged reads (what lazy mounts do) against the registry behaviours a real
/// one cannot be made to show: a redirect to a signed CDN URL, 416, 501, and
/// a 200 answer with the whole blob.
#[test]
fn ranged_reads_follow_signed_redirects_and_give_up_on_refused_ranges() {
    use lazyimg::reference::Endpoint;
    use lazyimg::registry::{ClientOptions, RegistryClient};

    let image = Arc::new(image());
    let layer = image.layer.clone();
    let cdn = FakeServer::start(move |req| ranged_answer(&layer, req));
    let cdn_addr = cdn.addr.clone();
    let answer = Arc::new(Mutex::new(307u16));
    let status = answer.clone();
    let registry = anonymous_registry(&image, move |served, _| match *status.lock().unwrap() {
        307 => {
            let signed = format!("http://{cdn_addr}/cdn/{}?sig=x", served.layer_digest);
            Response::Full(307, vec![("Location".into(), signed)], vec![])
        }
        200 => ok(&served.layer),
        code => Response::Full(code, vec![], vec![]),
    });
    let endpoint = Endpoint {
        host: registry.addr.clone(),
        insecure: true,
        ca_file: None,
    };
    let client = RegistryClient::new(&endpoint, None, &ClientOptions::default()).unwrap();
    let reference: oci_client::Reference =
        format!("{}/fake/image:1", registry.addr).parse().unwrap();
    let digest: lazyimg::digest::Digest = image.layer_digest.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fetch = |range: std::ops::Range<u64>| {
        runtime.block_on(client.fetch_range(&reference, &digest, range))
    };

    let bytes = fetch(100..1100)
        .unwrap()
        .expect("the CDN honours the range");
    assert_eq!(&bytes[..], &image.layer[100..1100]);
    let cdn_request = cdn.requests().pop().unwrap();
    assert_eq!(
        cdn_request.headers.get("range").map(String::as_str),
        Some("bytes=100-1099")
    );
    for code in [416, 501, 200] {
        *answer.lock().unwrap() = code;
        assert!(
            fetch(0..10).unwrap().is_none(),
            "HTTP {code}: fall back to the whole blob"
        );
    }
}
