//! A throwaway CNCF distribution registry (`docker-registry`) on 127.0.0.1,
//! killed when the guard is dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Optional registry features.
#[derive(Clone, Debug, Default)]
pub struct RegistryOpts {
    /// Basic auth (htpasswd) with this one user; the bcrypt hash is made by
    /// `python3`'s `crypt` module (libxcrypt), so python3 must be installed.
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a fresh self-signed certificate for 127.0.0.1 /
    /// localhost (made by the `openssl` CLI); see [`Registry::cert_dir`].
    pub tls: bool,
    /// Log every request (combined log format, `"GET /v2/… HTTP/1.1"`) to
    /// [`Registry::log`], for tests that count what reached the registry.
    pub access_log: bool,
    /// Token auth (`auth.token`) against a token service such as
    /// [`super::token_server::TokenServer`].
    pub token_auth: Option<TokenAuth>,
}

/// A registry's `auth.token` section (distribution's configuration.md).
#[derive(Clone, Debug)]
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// The token signer's certificate (PEM).
    pub rootcertbundle: PathBuf,
}

/// Running registry; `Drop` kills it and removes its storage.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `https` when started with TLS, else `http`.
    pub scheme: &'static str,
    creds: Option<(String, String)>,
    tls: bool,
    child: Child,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Plain-HTTP registry without auth.
    pub fn start() -> Result<Registry, String> {
        Registry::start_with(&RegistryOpts::default())
    }

    /// Plain-HTTP registry without auth that logs every request.
    pub fn start_logging() -> Result<Registry, String> {
        Registry::start_with(&RegistryOpts {
            access_log: true,
            ..RegistryOpts::default()
        })
    }

    /// The access-log lines of GET requests for blob `digest` (`sha256:…`)
    /// after the first `from` bytes of the log (see [`Registry::log`]).
    pub fn blob_gets(&self, digest: &str, from: usize) -> Vec<String> {
        let log = self.log();
        log.get(from..)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest} ")))
            .map(str::to_string)
            .collect()
    }

    pub fn start_with(opts: &RegistryOpts) -> Result<Registry, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match try_start(opts) {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `127.0.0.1:PORT/REPO` (e.g. `reference("ns/img:tag")`).
    pub fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}", self.addr)
    }

    /// Directory holding the registry's certificate as `ca.crt` (for
    /// skopeo's `--cert-dir` / `--dest-cert-dir`), when started with TLS.
    pub fn cert_dir(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("certs"))
    }

    /// PushOpts matching this registry (creds, cert dir, TLS verification on iff TLS).
    pub fn push_opts(&self) -> super::tools::PushOpts {
        super::tools::PushOpts {
            creds: self.creds.clone(),
            cert_dir: self.cert_dir(),
            tls_verify: self.tls,
            format_v2s2: false,
        }
    }

    /// skopeo flags to read from this registry (`--creds`, `--cert-dir`, `--tls-verify`).
    pub fn skopeo_src_args(&self) -> Vec<String> {
        let mut a = vec![format!("--tls-verify={}", self.tls)];
        if let Some((u, p)) = &self.creds {
            a.push(format!("--creds={u}:{p}"));
        }
        if let Some(d) = self.cert_dir() {
            a.push(format!("--cert-dir={}", d.display()));
        }
        a
    }

    /// The registry process, for tests that freeze (SIGSTOP) or kill it.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to the registry: SIGSTOP freezes it (connections are
    /// accepted by the kernel, nothing answers), SIGCONT thaws it.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        let sent = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(sent, 0, "kill({}, {signal})", self.pid());
    }

    /// Kills the registry and starts it again on the same address and storage.
    pub fn restart(&mut self) -> Result<(), String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(
            &self.dir.path().join("config.yml"),
            &self.dir.path().join("registry.log"),
        )?;
        wait_until_answering(self)
    }

    /// Registry log so far (stdout+stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn try_start(opts: &RegistryOpts) -> Result<Registry, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let storage = dir.path().join("storage");
    let mut cfg = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: {}\n\
         storage:\n  filesystem:\n    rootdirectory: \"{}\"\n  delete:\n    enabled: true\n\
         http:\n  addr: \"{addr}\"\n",
        !opts.access_log,
        storage.display()
    );
    if opts.tls {
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).map_err(|e| e.to_string())?;
        let (crt, key) = (certs.join("ca.crt"), certs.join("registry.key"));
        let (crt_s, key_s) = (crt.display().to_string(), key.display().to_string());
        super::tools::run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                &key_s,
                "-out",
                &crt_s,
            ],
        )?;
        // The key must not sit beside ca.crt: skopeo would take it for a client key.
        let key2 = dir.path().join("registry.key");
        std::fs::rename(&key, &key2).map_err(|e| e.to_string())?;
        cfg += &format!(
            "  tls:\n    certificate: \"{crt_s}\"\n    key: \"{}\"\n",
            key2.display()
        );
    }
    if let Some((user, pass)) = &opts.basic_auth {
        let hash = super::tools::run(
            "python3",
            &["-W", "ignore", "-c", "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))", pass],
        )
        .map_err(|e| format!("bcrypt via python3 failed (install python3): {e}"))?;
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{}\n", hash.trim()))
            .map_err(|e| e.to_string())?;
        cfg += &format!(
            "auth:\n  htpasswd:\n    realm: lazyimg-test\n    path: \"{}\"\n",
            htpasswd.display()
        );
    }
    if let Some(token) = &opts.token_auth {
        cfg += &format!(
            "auth:\n  token:\n    realm: \"{}\"\n    service: \"{}\"\n    issuer: \"{}\"\n    rootcertbundle: \"{}\"\n",
            token.realm,
            token.service,
            token.issuer,
            token.rootcertbundle.display()
        );
    }
    let cfg_path = dir.path().join("config.yml");
    std::fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
    let child = spawn(&cfg_path, &dir.path().join("registry.log"))?;
    let mut reg = Registry {
        addr,
        scheme: if opts.tls { "https" } else { "http" },
        creds: opts.basic_auth.clone(),
        tls: opts.tls,
        child,
        dir,
    };
    wait_until_answering(&mut reg)?;
    Ok(reg)
}

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("cannot start docker-registry: {e}"))
}

fn wait_until_answering(reg: &mut Registry) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = reg.child.try_wait() {
            return Err(format!(
                "docker-registry exited early ({st}):\n{}",
                reg.log()
            ));
        }
        if answers_http(&reg.addr) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "docker-registry did not answer on {}:\n{}",
        reg.addr,
        reg.log()
    ))
}

/// Anything HTTP-ish answers on `addr` (200/401 from /v2/, or the 400 an HTTPS
/// server sends to a plain request).
fn answers_http(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 7 && buf.starts_with(b"HTTP/1."))
}
