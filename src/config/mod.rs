//! The TOML configuration: where the cache lives and how registries are reached.
//!
//! Looked up as `--config FILE`, else `$LAZYIMG_CONFIG`, else the user's
//! `$XDG_CONFIG_HOME/lazyimg/config.toml`, else `/etc/lazyimg/config.toml`, else
//! built-in defaults (see [`config_path`]). Unknown keys are errors, so a typo
//! never silently changes where images come from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod registries_conf;
mod registry;

pub use registries_conf::RegistriesConf;
pub use registry::{MirrorConfig, PullFromMirror, RegistryConfig};

pub const SYSTEM_CONFIG: &str = "/etc/lazyimg/config.toml";
/// The per-user file, relative to the XDG config directory (`~/.config`).
const USER_CONFIG: &str = "lazyimg/config.toml";
const DEFAULT_CACHE_MAX: ByteSize = ByteSize::gib(50);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    cache_dir: Option<PathBuf>,
    cache_max_size: Option<ByteSize>,
    /// The approved-image list; enforced by the policy module.
    pub approved_images: Option<PathBuf>,
    /// `[[registry]]` tables: after [`Config::load`], the system's
    /// registries.conf tables overridden (by prefix) by this file's.
    #[serde(default, rename = "registry")]
    pub registries: Vec<RegistryConfig>,
    /// registries.conf's `unqualified-search-registries`: where short names
    /// are looked up; this file's, else the system's.
    #[serde(default, rename = "unqualified-search-registries")]
    pub search_registries: Option<Vec<String>>,
    /// registries.conf's `[aliases]` (short name to fully qualified name):
    /// the system's, overridden name by name by this file's.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub network: NetworkConfig,
    /// `[lazy]`: how lazy reads use threads and memory.
    #[serde(default)]
    pub lazy: LazyConfig,
    /// A chunk cache on a filesystem many nodes share (NFS, Lustre, GPFS):
    /// read (and verified) before the registry is asked, written after.
    pub shared_cache_dir: Option<PathBuf>,
    /// Public keys (PEM files) whose signature a lazyimg index artifact must
    /// carry to be used; empty: indexes are trusted on the registry's write
    /// access alone.
    #[serde(default)]
    pub trusted_index_keys: Vec<PathBuf>,
    /// `[index_signing]`: the key the seeding step signs index artifacts with.
    #[serde(default)]
    pub index_signing: Option<IndexSigningConfig>,
    /// `[seed]`: where `lazyimg seed` and `ces-pull` copy images to.
    #[serde(default)]
    pub seed: Option<SeedConfig>,
    /// `[index_store]`: a site registry holding signed lazyimg indexes, for
    /// images whose own registry takes no pushes (a pull-through proxy).
    #[serde(default)]
    pub index_store: Option<IndexStoreConfig>,
    /// The file this came from, for error messages; `None` for defaults.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// `--tls-verify=false` on the command line: every registry is treated
    /// as `insecure` (TLS not verified, plain HTTP allowed), as podman does.
    /// Not a key of the file.
    #[serde(skip)]
    pub skip_tls_verify: bool,
}

/// `[seed]`: the site proxy registry images are copied into.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SeedConfig {
    /// `host[:port][/prefix]`, e.g. `tre-ghcr-proxy.nsh.loc:5000`.
    pub target: Option<String>,
    /// `push` (the target accepts pushes) or `pull-through` (it mirrors the source).
    pub mode: Option<SeedMode>,
}

/// How the target registry gets a seeded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SeedMode {
    /// Upload to a registry that accepts pushes.
    #[default]
    Push,
    /// Fetch everything through a pull-through cache of the source, so it keeps it.
    PullThrough,
}

impl std::fmt::Display for SeedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeedMode::Push => "push",
            SeedMode::PullThrough => "pull-through",
        })
    }
}

/// `[network]`: how long to wait for registries, and how often to retry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Seconds to wait for a TCP + TLS connection.
    pub connect_timeout: u64,
    /// Seconds a registry may stay silent before the request fails.
    pub read_timeout: u64,
    /// Tries per request for transient failures (connection errors, 5xx, 429).
    pub attempts: u32,
    /// containers-certs.d(5) directories searched, in order, for a
    /// `HOST[:PORT]/` directory whose `*.crt` CA certificates are trusted for
    /// that registry (the first that has one is used). Default:
    /// `~/.config/containers/certs.d`, `/etc/containers/certs.d`,
    /// `/etc/docker/certs.d`, as containers/image searches them.
    pub certs_d: Option<Vec<PathBuf>>,
}

/// `[index_signing]`: how the seeding step (`lazyimg seed`, `ces-pull`,
/// `lazyimg index --push`) signs the index artifacts it pushes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IndexSigningConfig {
    /// The private key (PKCS#8 PEM from `lazyimg key generate`), readable only
    /// by the account that runs the seeding step.
    pub key_file: PathBuf,
}

/// `[index_store]`: where the seeding step pushes each (signed) lazyimg index
/// and mounting machines look for one besides the image's own repository.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IndexStoreConfig {
    /// `HOST[:PORT]/PREFIX`: an image's indexes go to repository
    /// `PREFIX/<the image's repository>` there, listed under the image
    /// manifest's `sha256-<hex>` tag (the OCI referrers tag schema). Its
    /// transport (`insecure`, CA) follows the `[[registry]]` matching it.
    pub location: String,
}

/// `[lazy]`: the lazy-read engine's knobs; absent keys take the defaults of
/// `lazyimg::lazy::LazyOptions`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LazyConfig {
    /// Threads decoding and verifying chunks (default: one per CPU).
    pub workers: Option<usize>,
    /// Background fetches (readahead) at once (default 4).
    pub fetchers: Option<usize>,
    /// Bytes fetched ahead of a sequential reader (default 8 MiB).
    pub readahead: Option<ByteSize>,
    /// Seconds a whole-blob download may take when a registry refuses byte
    /// ranges (default 600).
    pub whole_blob_timeout: Option<u64>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            connect_timeout: 10,
            read_timeout: 30,
            attempts: 4,
            certs_d: None,
        }
    }
}

impl Config {
    /// Loads the configuration from the file [`config_path`] chooses
    /// (`explicit` is `--config FILE`), or the built-in defaults when it
    /// chooses none.
    ///
    /// # Errors
    /// [`Error::Config`] when the chosen file cannot be read or parsed.
    /// Then the system's registries.conf files ([`RegistriesConf::load`])
    /// are merged under it ([`Config::with_registries_conf`]).
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let own = match config_path(explicit, &env_var, &|path| path.exists()) {
            Some(path) => Self::from_file(&path)?,
            None => Config::default(),
        };
        Ok(own.with_registries_conf(RegistriesConf::load()?))
    }

    /// This configuration over `system`: a `[[registry]]` of this file
    /// replaces the registries.conf table with the same prefix, its
    /// `unqualified-search-registries` replaces theirs, its aliases override
    /// theirs name by name.
    pub fn with_registries_conf(mut self, system: RegistriesConf) -> Config {
        let mut registries = system.registries;
        for own in std::mem::take(&mut self.registries) {
            registries_conf::override_by_prefix(&mut registries, own);
        }
        self.registries = registries;
        self.search_registries = self.search_registries.or(system.search);
        let mut aliases = system.aliases;
        aliases.append(&mut self.aliases);
        self.aliases = aliases;
        self
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: format!("cannot read configuration: {e}"),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let config_error = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut config: Config =
            toml::from_str(text).map_err(|e| config_error(toml_error(&e, text)))?;
        // Unlike registries.conf files, lazyimg's own file refuses what it
        // does not know: a typo must not silently change where images come from.
        for registry in &mut config.registries {
            if let Some(key) = registry.unknown_keys().first() {
                return Err(config_error(format!(
                    "unknown field `{key}` in [[registry]] {:?}",
                    registry.prefix
                )));
            }
            *registry = std::mem::take(registry)
                .with_default_prefix()
                .map_err(config_error)?;
        }
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_dir)
    }

    pub fn cache_max_size(&self) -> u64 {
        self.cache_max_size.unwrap_or(DEFAULT_CACHE_MAX).as_u64()
    }

    /// The `[[registry]]` entry with the longest prefix matching `name`
    /// (`host/repository`), matching only at a path boundary, or any
    /// subdomain for a `*.domain` prefix, as registries.conf(5) says.
    pub fn registry_for(&self, name: &str) -> Option<&RegistryConfig> {
        self.registries
            .iter()
            .filter_map(|r| Some((r.matches(name)?, r)))
            .max_by_key(|(len, _)| *len)
            .map(|(_, r)| r)
    }
}

/// A TOML parse error as one line: `line L, column C: MESSAGE` (the
/// toml crate's own text spans several lines with a source excerpt).
pub(crate) fn toml_error(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().trim();
    let Some(at) = err.span().map(|span| span.start.min(text.len())) else {
        return message.to_string();
    };
    let before = &text.as_bytes()[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = at
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    format!("line {line}, column {column}: {message}")
}

/// The configuration file: the first of
/// 1. `explicit` (`--config FILE`);
/// 2. `$LAZYIMG_CONFIG`, unless empty;
/// 3. the user's `lazyimg/config.toml` in the XDG config directory
///    (`$XDG_CONFIG_HOME`, default `~/.config`; see [`xdg_dir`]), if it exists;
/// 4. [`SYSTEM_CONFIG`], if it exists.
///
/// `None` when none applies: the built-in defaults. A file named by 1 or 2 is
/// chosen even when missing, so that a wrong name fails loudly instead of
/// falling back. `var` reads an environment variable and `exists` tells
/// whether a file is there: the rule is testable without the process's own.
fn config_path(
    explicit: Option<&Path>,
    var: &dyn Fn(&str) -> Option<OsString>,
    exists: &dyn Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = var("LAZYIMG_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let user = xdg_dir(var, "XDG_CONFIG_HOME", ".config").map(|dir| dir.join(USER_CONFIG));
    user.into_iter()
        .chain([PathBuf::from(SYSTEM_CONFIG)])
        .find(|path| exists(path))
}

/// An XDG base directory: `$name` when it is an absolute path, else
/// `$HOME/home_default`; `None` without either. A relative (or empty) value
/// is ignored, as the XDG Base Directory Specification requires.
fn xdg_dir(
    var: &dyn Fn(&str) -> Option<OsString>,
    name: &str,
    home_default: &str,
) -> Option<PathBuf> {
    var(name)
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            var("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| Path::new(&home).join(home_default))
        })
}

fn env_var(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Root shares one cache per host (the mount daemon and site jobs); users keep theirs
/// under the XDG cache directory.
fn default_cache_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/lazyimg");
    }
    xdg_dir(&env_var, "XDG_CACHE_HOME", ".cache")
        .unwrap_or_else(|| PathBuf::from("/tmp/.cache"))
        .join("lazyimg")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_mistakes_are_one_line_naming_line_and_column() {
        let err = Config::parse(
            "cache_max_size = \"1GiB\"\ncache_dir = \n",
            Path::new("/c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/c.toml: line 2, column 13: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = RegistriesConf::default()
            .merge("bad = [\n", Path::new("/r.conf"))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("/r.conf: line 1, column 8: "),
            "{err}"
        );
        assert!(
            err.hint()
                .is_some_and(|h| h.contains("CONTAINERS_REGISTRIES_CONF"))
        );
    }

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/lazyimg/test.toml"))
    }

    #[test]
    fn full_example_parses() {
        let config = parse(
            r#"
            cache_dir = "/var/cache/lazyimg"
            cache_max_size = "50GiB"
            approved_images = "/etc/lazyimg/approved.toml"

            [network]
            read_timeout = 5

            [[registry]]
            prefix = "ghcr.io"
            location = "tre-ghcr-proxy.nsh.loc:5000"
            insecure = true
            ca_file = "/etc/pki/site-ca.pem"
            "#,
        )
        .unwrap();
        assert_eq!(config.network.read_timeout, 5);
        assert_eq!(config.network.attempts, NetworkConfig::default().attempts);
        assert_eq!(config.cache_dir(), Path::new("/var/cache/lazyimg"));
        assert_eq!(config.cache_max_size(), 50 * 1024 * 1024 * 1024);
        let reg = config.registry_for("ghcr.io/ns/name").unwrap();
        assert_eq!(reg.location.as_deref(), Some("tre-ghcr-proxy.nsh.loc:5000"));
        assert!(reg.insecure);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        let err = parse("cache_dri = \"/x\"\n").unwrap_err().to_string();
        assert!(err.contains("cache_dri"), "{err}");
        assert!(err.contains("/etc/lazyimg/test.toml"), "{err}");

        let err = parse("[[registry]]\nprefix = \"a\"\nlocaton = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("locaton"), "{err}");
    }

    #[test]
    fn longest_prefix_wins_at_path_boundaries_only() {
        let config = parse(
            r#"
            [[registry]]
            prefix = "ghcr.io"
            location = "proxy:5000"
            [[registry]]
            prefix = "ghcr.io/lab"
            location = "lab-mirror:5000"
            "#,
        )
        .unwrap();
        let loc = |name| {
            config
                .registry_for(name)
                .and_then(|r| r.location.as_deref())
        };
        assert_eq!(loc("ghcr.io/lab/x"), Some("lab-mirror:5000"));
        assert_eq!(loc("ghcr.io/laboratory/x"), Some("proxy:5000"));
        assert_eq!(loc("ghcr.io.evil.com/x"), None);
    }

    /// lazyimg's file stays strict (even inside mirrors) and overrides the
    /// system's registries.conf by prefix; search registries and aliases too.
    #[test]
    fn own_tables_are_strict_and_override_registries_conf() {
        let err = parse(
            "[[registry]]\nprefix = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirorr = \"all\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mirror.pull-from-mirorr"), "{err}");
        let mut system = RegistriesConf::default();
        system
            .merge(
                "unqualified-search-registries = [\"s.io\"]\n[aliases]\n\"a\" = \"s.io/a\"\n\"b\" = \"s.io/b\"\n\
                 [[registry]]\nprefix = \"ghcr.io\"\nlocation = \"system:5000\"\n\
                 [[registry]]\nprefix = \"quay.io\"\nblocked = true\n",
                Path::new("/etc/containers/registries.conf"),
            )
            .unwrap();
        let own = parse(
            "[aliases]\n\"b\" = \"own.io/b\"\n\
             [[registry]]\nprefix = \"ghcr.io\"\nlocation = \"own:5000\"\n",
        )
        .unwrap()
        .with_registries_conf(system);
        let location = |name| own.registry_for(name).and_then(|r| r.location.as_deref());
        assert_eq!(location("ghcr.io/x/y"), Some("own:5000"));
        assert!(own.registry_for("quay.io/x/y").unwrap().blocked);
        assert_eq!(own.search_registries, Some(vec!["s.io".to_string()]));
        assert_eq!(own.aliases["a"], "s.io/a");
        assert_eq!(own.aliases["b"], "own.io/b");
    }

    #[test]
    fn seed_table_parses_and_rejects_unknown_keys() {
        let config =
            parse("[seed]\ntarget = \"tre-ghcr-proxy.nsh.loc:5000\"\nmode = \"pull-through\"\n")
                .unwrap();
        let seed = config.seed.unwrap();
        assert_eq!(seed.target.as_deref(), Some("tre-ghcr-proxy.nsh.loc:5000"));
        assert_eq!(seed.mode, Some(SeedMode::PullThrough));
        let err = parse("[seed]\ntargte = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("targte"), "{err}");
        assert!(parse("[seed]\nmode = \"copy\"\n").is_err());
    }

    #[test]
    fn config_file_is_looked_up_in_the_documented_order() {
        const USER: &str = "/home/u/.config/lazyimg/config.toml";
        const XDG: &str = "/xdg/lazyimg/config.toml";
        const HOME: (&str, &str) = ("HOME", "/home/u");
        struct Case {
            explicit: Option<&'static str>,
            vars: &'static [(&'static str, &'static str)],
            files: &'static [&'static str],
            chosen: Option<&'static str>,
        }
        let case = |explicit, vars, files, chosen| Case {
            explicit,
            vars,
            files,
            chosen,
        };
        let all = &[XDG, USER, SYSTEM_CONFIG];
        let cases = [
            case(
                Some("/cli.toml"),
                &[("LAZYIMG_CONFIG", "/env.toml"), HOME],
                all,
                Some("/cli.toml"),
            ),
            // Named, so chosen even though missing: reading it will say so.
            case(
                None,
                &[("LAZYIMG_CONFIG", "/env.toml"), HOME],
                all,
                Some("/env.toml"),
            ),
            case(None, &[("LAZYIMG_CONFIG", ""), HOME], all, Some(USER)),
            case(None, &[("XDG_CONFIG_HOME", "/xdg"), HOME], all, Some(XDG)),
            // $XDG_CONFIG_HOME replaces ~/.config: no falling back to it.
            case(
                None,
                &[("XDG_CONFIG_HOME", "/xdg"), HOME],
                &[USER, SYSTEM_CONFIG],
                Some(SYSTEM_CONFIG),
            ),
            // Relative: not a valid XDG directory, so HOME's default.
            case(
                None,
                &[("XDG_CONFIG_HOME", "xdg"), HOME],
                &["xdg/lazyimg/config.toml", USER],
                Some(USER),
            ),
            case(None, &[], &[SYSTEM_CONFIG], Some(SYSTEM_CONFIG)),
            case(None, &[HOME], &[], None),
        ];
        for Case {
            explicit,
            vars,
            files,
            chosen,
        } in cases
        {
            let var = |name: &str| {
                vars.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            };
            let exists = |path: &Path| files.iter().any(|file| Path::new(file) == path);
            assert_eq!(
                config_path(explicit.map(Path::new), &var, &exists).as_deref(),
                chosen.map(Path::new),
                "--config {explicit:?}, environment {vars:?}, files {files:?}"
            );
        }
    }

    #[test]
    fn bad_sizes_and_prefixes_are_rejected() {
        assert!(parse("cache_max_size = \"lots\"\n").is_err());
        assert!(parse("[[registry]]\nprefix = \"https://ghcr.io\"\n").is_err());
    }
}
