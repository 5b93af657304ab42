//! A tiny in-process HTTP/1.1 server for faults a real registry cannot be made to
//! produce on demand: redirects to another host, a connection cut mid-body, a
//! Range request answered with 200, a 401 in the middle of a session, a
//! download that stalls part-way. Everything else in the tests talks to the
//! real distribution registry.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::layer::{BuiltLayer, Compression};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
}

pub enum Response {
    /// Status, headers, body.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// Announces `total` bytes of body, sends the first `sent` of `body`, then
    /// closes the connection.
    Cut { body: Vec<u8>, sent: usize },
    /// A 200 announcing all of `body`, its first `sent` bytes at once, then
    /// one byte every `every` until the body is out or the client leaves: a
    /// download that never ends by itself when `every` is long (a stall) and
    /// never falls silent for a read timeout when it is short (a trickle).
    Trickle {
        body: Vec<u8>,
        sent: usize,
        every: Duration,
    },
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

pub struct FakeServer {
    pub addr: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeServer {
    /// Serves every connection with `handler` until the test process exits.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, log) = (handler.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &*handler, &log));
            }
        });
        FakeServer { addr, requests }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let request = Request {
            method,
            path,
            headers,
        };
        log.lock().unwrap().push(request.clone());
        match handler(&request) {
            Response::Full(status, extra, body) => {
                let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (name, value) in extra {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                if stream
                    .write_all(head.as_bytes())
                    .and_then(|()| stream.write_all(&body))
                    .is_err()
                {
                    return;
                }
            }
            Response::Cut { body, sent } => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body[..sent]);
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
            Response::Trickle { body, sent, every } => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body[..sent]);
                for byte in body[sent..].chunks(1) {
                    std::thread::sleep(every);
                    if stream.write_all(byte).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A one-layer image served by the fake: manifest, config and layer bytes.
pub struct FakeImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer: Vec<u8>,
    pub layer_digest: String,
}

impl FakeImage {
    /// An image of one uncompressed tar layer.
    pub fn new(tar: Vec<u8>) -> FakeImage {
        FakeImage::of(&BuiltLayer::from_tar(
            tar,
            Compression::None,
            BTreeMap::new(),
        ))
    }

    /// An image of `layer`, its media type and annotations (an eStargz
    /// layer's TOC digest) in the manifest.
    pub fn of(layer: &BuiltLayer) -> FakeImage {
        use super::layer::sha256_digest;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        }))
        .unwrap();
        let config_digest = sha256_digest(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{
                "mediaType": layer.media_type, "digest": layer.digest,
                "size": layer.blob.len(), "annotations": layer.annotations,
            }],
        }))
        .unwrap();
        FakeImage {
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config,
            config_digest,
            layer: layer.blob.clone(),
            layer_digest: layer.digest.clone(),
        }
    }

    /// Whether `request` is a GET of the layer blob.
    pub fn is_layer_get(&self, request: &Request) -> bool {
        request.method == "GET" && request.path.ends_with(&self.layer_digest)
    }

    /// The answer for manifest and config requests; `None` for anything else.
    pub fn answer(&self, request: &Request) -> Option<Response> {
        if request.path.contains("/manifests/") {
            let headers = vec![
                (
                    "Content-Type".into(),
                    "application/vnd.oci.image.manifest.v1+json".into(),
                ),
                ("Docker-Content-Digest".into(), self.manifest_digest.clone()),
            ];
            return Some(Response::Full(200, headers, self.manifest.clone()));
        }
        if request.path.ends_with(&self.config_digest) {
            return Some(Response::Full(200, vec![], self.config.clone()));
        }
        None
    }
}

/// `bytes=A-B` → A..B+1, `bytes=A-` → A..`total`; `None` without a Range header.
pub fn asked_range(request: &Request, total: usize) -> Option<Range<usize>> {
    let spec = request.headers.get("range")?.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let end = match end {
        "" => total,
        end => end.parse::<usize>().ok()? + 1,
    };
    Some(start.parse().ok()?..end.min(total))
}

/// What a registry honouring ranges answers: 206 with the bytes asked for,
/// or 200 with all of `body` when no range was asked.
pub fn ranged_answer(body: &[u8], request: &Request) -> Response {
    match asked_range(request, body.len()) {
        Some(range) => {
            let content_range = format!("bytes {}-{}/{}", range.start, range.end - 1, body.len());
            let headers = vec![("Content-Range".into(), content_range)];
            Response::Full(206, headers, body[range].to_vec())
        }
        None => Response::Full(200, vec![], body.to_vec()),
    }
}

/// `bytes=N-` → N.
pub fn range_start(request: &Request) -> Option<usize> {
    request
        .headers
        .get("range")?
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .parse()
        .ok()
}
