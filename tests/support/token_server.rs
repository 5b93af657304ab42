//! A token service of the test's own: this checkout's `scripts/token-server.py`
//! on a free port, with the shared topology's keys, certificate and users, and
//! a throwaway registry that trusts it. For what the shared one (started by
//! whichever checkout came first) may not speak yet: refresh tokens.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::registry::{Registry, RegistryOpts, TokenAuth};
use super::testenv::TestEnv;

const ISSUER: &str = "lazyimg-test-token";
const SERVICE: &str = "lazyimg-test-registry";

/// The token service and the plain-HTTP registry it guards; both stop on drop.
pub struct TokenRegistry {
    pub registry: Registry,
    /// `https://127.0.0.1:PORT/token`
    pub realm: String,
    token: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TokenRegistry {
    /// Starts both, with the users of `env` (`testuser:testtoken` may push).
    pub fn start(env: &TestEnv) -> TokenRegistry {
        let state = Path::new(env.var("LAZYIMG_TEST_STATE"));
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let log = dir.path().join("token.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/token-server.py");
        let token = Command::new("python3")
            .arg(script)
            .args([
                "--listen",
                &listen,
                "--issuer",
                ISSUER,
                "--service",
                SERVICE,
            ])
            .arg("--tls-cert")
            .arg(state.join("server.crt"))
            .arg("--tls-key")
            .arg(state.join("server.key"))
            .arg("--sign-key")
            .arg(state.join("token.key"))
            .arg("--sign-cert")
            .arg(state.join("token.crt"))
            .arg("--users")
            .arg(env.var("LAZYIMG_TEST_USERS_FILE"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("token log"))
            .spawn()
            .expect("python3 runs the token server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "token server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let realm = format!("https://{listen}/token");
        let registry = Registry::start_with(&RegistryOpts {
            token_auth: Some(TokenAuth {
                realm: realm.clone(),
                service: SERVICE.into(),
                issuer: ISSUER.into(),
                rootcertbundle: state.join("token.crt"),
            }),
            ..RegistryOpts::default()
        })
        .expect("token-auth registry starts");
        TokenRegistry {
            registry,
            realm,
            token,
            log,
            _dir: dir,
        }
    }

    /// What the token service logged: one line per request, never a secret.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An OAuth2 refresh token for `user` (docker's `identitytoken`), from a
    /// password grant with `access_type=offline`, as `docker login` gets one.
    pub fn refresh_token(&self, env: &TestEnv, user: &str, password: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(env.ca())
            .args(["-d", "grant_type=password", "-d", "access_type=offline"])
            .args(["-d", &format!("username={user}")])
            .args(["-d", &format!("password={password}")])
            .args(["-d", &format!("service={SERVICE}")])
            .arg(&self.realm)
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token JSON");
        answer["refresh_token"]
            .as_str()
            .expect("a refresh_token in the answer")
            .to_string()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.token.kill();
        let _ = self.token.wait();
    }
}
