//! Where the legacy database is and how to reach it, read the way libpq reads it.
//!
//! Operators configure PostgreSQL clients with libpq's conventions, so `legacy.url` (and
//! `DRIFTSYNC_LEGACY_URL`) accepts both of libpq's forms — `postgresql://…` and `host=… dbname=…`
//! — with libpq's `sslmode` and `sslrootcert` options, and the `PG*` environment variables fill
//! in what the string leaves out. tokio-postgres knows neither the verify modes nor
//! `sslrootcert` nor the environment, so this module takes those out of the string, hands the
//! rest to tokio-postgres's parser, and resolves everything into a [`Target`] once, when the
//! configuration is read. Only files (the root certificate, the password file) are read at
//! connect time, so that `check` and every run see their current contents.
//!
//! Precedence, for each setting: the connection string, then the `[legacy]` config key (only
//! `sslmode`, `sslrootcert`), then the `PG*` variable, then libpq's default.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;

/// The default Unix-socket directory when no host is given anywhere (Debian's libpq default).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// libpq's `sslmode`. `allow` is read as `prefer` (TLS whenever the server offers it), which
/// is what `allow` gives against any server that has TLS on, and never less protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain must verify whatever else is configured.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The trusted roots for a verifying connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more certificates (`sslrootcert=/path`).
    File(PathBuf),
    /// The system's trusted roots (`sslrootcert=system`, libpq ≥ 16).
    System,
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCert::File(path) => write!(f, "sslrootcert {}", path.display()),
            RootCert::System => f.write_str("the system's trusted root certificates"),
        }
    }
}

/// Where a setting came from, to name it in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    ConnectionString,
    ConfigKey,
    Environment,
    Default,
}

/// The `[legacy]` config keys that complement the connection string.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The message never repeats the string, which can hold a password.
    #[error("not a valid PostgreSQL connection string ({0})")]
    Invalid(String),
    #[error(
        "sslmode {value:?} ({origin}) is not one of libpq's modes: disable, allow, prefer, require, verify-ca, verify-full"
    )]
    SslMode { value: String, origin: &'static str },
    #[error("{name} {value:?} is not a port number")]
    Port { name: &'static str, value: String },
    #[error("{name} {value:?} is not a number of seconds")]
    Seconds { name: &'static str, value: String },
    #[error(
        "sslrootcert=system needs sslmode=verify-full (sslmode is {mode}, {origin}): with the system's roots any certificate a public CA issued would pass without the host name check"
    )]
    WeakSystemRoot {
        mode: &'static str,
        origin: &'static str,
    },
    #[error(
        "no user name: the connection string names none, PGUSER is not set and the current user's name cannot be read"
    )]
    NoUser,
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::ConnectionString => "from the connection string",
        Origin::ConfigKey => "from the config key",
        Origin::Environment => "from the environment",
        Origin::Default => "libpq's default",
    }
}

/// Everything needed to connect, resolved. Holds the password when the string gives one:
/// its `Debug` leaves it out.
#[derive(Clone)]
pub struct Target {
    pub(super) config: tokio_postgres::Config,
    pub(super) ssl_mode: SslMode,
    /// An explicitly configured root (string, key or `PGSSLROOTCERT`).
    pub(super) root: Option<RootCert>,
    /// `~/.postgresql/root.crt`, used when it exists and no root is configured, as libpq does.
    pub(super) default_root: Option<PathBuf>,
    /// The password file to consult at connect time when no password was given.
    pub(super) passfile: Option<PathBuf>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("endpoint", &self.to_string())
            .field("sslmode", &self.ssl_mode)
            .field("root", &self.root)
            .field("passfile", &self.passfile)
            .finish_non_exhaustive()
    }
}

/// `host:port` list, database, user and TLS mode: what to print about the target (no password).
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.endpoints())?;
        if let Some(db) = self.config.get_dbname() {
            write!(f, ", database {db}")?;
        }
        if let Some(user) = self.config.get_user() {
            write!(f, ", user {user}")?;
        }
        if self.uses_socket_only() {
            write!(f, ", Unix socket (no TLS)")
        } else {
            write!(f, ", sslmode {}", self.ssl_mode.name())
        }
    }
}

impl Target {
    /// Resolves a connection string with the `[legacy]` TLS keys and the environment
    /// (`env("PGHOST")` etc.; an empty value counts as unset).
    pub fn resolve(
        string: &str,
        keys: &TlsSettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Target, TargetError> {
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        let (mut rest, extracted) = extract_tls_options(string)?;
        let pgport = match env("PGPORT") {
            None => None,
            Some(value) => Some(parse_ports(&value).ok_or(TargetError::Port {
                name: "PGPORT",
                value,
            })?),
        };
        // tokio-postgres fills in 5432 for a URL host without a port, where libpq would use
        // PGPORT: give it the port explicitly.
        if let Some(ports) = &pgport {
            rest = url_with_default_ports(&rest, ports);
        }
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|error| TargetError::Invalid(error.to_string()))?;

        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            let hosts = env("PGHOST").unwrap_or_else(|| DEFAULT_SOCKET_DIR.to_owned());
            for host in hosts.split(',') {
                config.host(host.trim());
            }
        }
        if config.get_ports().is_empty()
            && let Some(ports) = pgport
        {
            for port in ports {
                config.port(port);
            }
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(current_user_name)
                .ok_or(TargetError::NoUser)?;
            config.user(user);
        }
        if config.get_dbname().is_none()
            && let Some(db) = env("PGDATABASE")
        {
            config.dbname(db);
        }
        if config.get_application_name().is_none() {
            config.application_name(env("PGAPPNAME").unwrap_or_else(|| "driftsync".to_owned()));
        }
        if config.get_connect_timeout().is_none()
            && let Some(value) = env("PGCONNECT_TIMEOUT")
        {
            let seconds: u64 = value.trim().parse().map_err(|_| TargetError::Seconds {
                name: "PGCONNECT_TIMEOUT",
                value: value.clone(),
            })?;
            // libpq: zero or negative means wait forever; values below 2 count as 2.
            if seconds > 0 {
                config.connect_timeout(Duration::from_secs(seconds.max(2)));
            }
        }
        let mut passfile = None;
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            } else {
                passfile = env("PGPASSFILE")
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".pgpass")));
            }
        }

        let root = extracted
            .sslrootcert
            .map(|value| (value, Origin::ConnectionString))
            .or_else(|| keys.sslrootcert.clone().map(|v| (v, Origin::ConfigKey)))
            .or_else(|| env("PGSSLROOTCERT").map(|v| (v, Origin::Environment)))
            .map(|(value, _)| match value.as_str() {
                "system" => RootCert::System,
                path => RootCert::File(PathBuf::from(path)),
            });
        let mode = extracted
            .sslmode
            .map(|value| (value, Origin::ConnectionString))
            .or_else(|| keys.sslmode.clone().map(|v| (v, Origin::ConfigKey)))
            .or_else(|| env("PGSSLMODE").map(|v| (v, Origin::Environment)));
        let (ssl_mode, mode_origin) = match mode {
            Some((value, origin)) => (
                SslMode::parse(&value).ok_or_else(|| TargetError::SslMode {
                    value,
                    origin: origin_name(origin),
                })?,
                origin,
            ),
            // libpq: the system's roots make verify-full the default.
            None if root == Some(RootCert::System) => (SslMode::VerifyFull, Origin::Default),
            None => (SslMode::Prefer, Origin::Default),
        };
        if root == Some(RootCert::System) && ssl_mode != SslMode::VerifyFull {
            return Err(TargetError::WeakSystemRoot {
                mode: ssl_mode.name(),
                origin: origin_name(mode_origin),
            });
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        let default_root = env("HOME").map(|home| PathBuf::from(home).join(".postgresql/root.crt"));
        Ok(Target {
            config,
            ssl_mode,
            root,
            default_root,
            passfile,
        })
    }

    /// The string alone, no `PG*` variables or config keys (the demo's own database).
    pub fn without_environment(string: &str) -> Result<Target, TargetError> {
        Target::resolve(string, &TlsSettings::default(), &|_| None)
    }

    /// Whether a password was given (in the string, or by `PGPASSWORD`).
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The configured root, if any (not the `~/.postgresql/root.crt` fallback).
    pub fn root(&self) -> Option<&RootCert> {
        self.root.as_ref()
    }

    /// `host:port` of every host, comma-separated; a socket directory stands for itself.
    pub fn endpoints(&self) -> String {
        let port_of = |index: usize| port_of_host(&self.config, index);
        let mut text = String::new();
        let hosts = self.config.get_hosts();
        for (index, host) in hosts.iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            match host {
                Host::Tcp(name) => text.push_str(&format!("{name}:{}", port_of(index))),
                Host::Unix(path) => {
                    text.push_str(&format!("{}/.s.PGSQL.{}", path.display(), port_of(index)))
                }
            }
        }
        if hosts.is_empty() {
            for (index, addr) in self.config.get_hostaddrs().iter().enumerate() {
                if index > 0 {
                    text.push(',');
                }
                text.push_str(&format!("{addr}:{}", port_of(index)));
            }
        }
        text
    }

    /// Every host is a Unix socket: PostgreSQL never uses TLS there (libpq ignores sslmode).
    pub fn uses_socket_only(&self) -> bool {
        let hosts = self.config.get_hosts();
        !hosts.is_empty()
            && self.config.get_hostaddrs().is_empty()
            && hosts.iter().all(|host| matches!(host, Host::Unix(_)))
    }
}

/// The port of the `index`-th host, as libpq pairs them: none given means 5432, one port
/// serves every host, otherwise one port per host.
pub(super) fn port_of_host(config: &tokio_postgres::Config, index: usize) -> u16 {
    match config.get_ports() {
        [] => 5432,
        [one] => *one,
        many => many.get(index).copied().unwrap_or(5432),
    }
}

/// The current user's login name, libpq's default user.
fn current_user_name() -> Option<String> {
    // SAFETY: geteuid cannot fail; getpwuid_r writes only into the buffers given, and the name
    // is copied out before they go.
    unsafe {
        let uid = libc::geteuid();
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut buffer = vec![0 as libc::c_char; 4096];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let status = libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        );
        if status != 0 || result.is_null() || entry.pw_name.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(entry.pw_name)
            .to_str()
            .ok()
            .map(str::to_owned)
    }
}

fn parse_ports(value: &str) -> Option<Vec<u16>> {
    value
        .split(',')
        .map(|port| port.trim().parse().ok())
        .collect()
}

/// A URL whose hosts name no port, with `ports` added (the first for hosts beyond the list);
/// any other string unchanged.
fn url_with_default_ports(string: &str, ports: &[u16]) -> String {
    let Some(start) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|prefix| string.strip_prefix(prefix).map(|_| prefix.len()))
    else {
        return string.to_owned();
    };
    let (scheme, rest) = string.split_at(start);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = authority.split_at(authority.find('@').map_or(0, |at| at + 1));
    let query_port = tail
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair.starts_with("port=")));
    let explicit = hosts.split(',').any(|host| match host.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => host.contains(':'),
    });
    if query_port || explicit || ports.is_empty() {
        return string.to_owned();
    }
    if hosts.is_empty() {
        let port = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let separator = if tail.contains('?') { '&' } else { '?' };
        return format!("{string}{separator}port={port}");
    }
    let hosts: Vec<String> = hosts
        .split(',')
        .enumerate()
        .map(|(index, host)| format!("{host}:{}", ports.get(index).unwrap_or(&ports[0])))
        .collect();
    format!("{scheme}{userinfo}{}{tail}", hosts.join(","))
}

/// The TLS options taken out of a connection string.
#[derive(Debug, Default, PartialEq, Eq)]
struct Extracted {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` out of either form of connection string and returns the
/// rest, in the same form, for tokio-postgres's parser.
fn extract_tls_options(string: &str) -> Result<(String, Extracted), TargetError> {
    let mut extracted = Extracted::default();
    let mut take = |key: &str, value: String| -> bool {
        match key {
            "sslmode" => extracted.sslmode = Some(value),
            "sslrootcert" => extracted.sslrootcert = Some(value),
            _ => return false,
        }
        true
    };
    let trimmed = string.trim();
    let rest = if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        match trimmed.split_once('?') {
            None => trimmed.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let key = percent_decode(key)?;
                    if !take(&key, percent_decode(value)?) {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = String::new();
        for (key, value) in key_values(trimmed)? {
            if !take(&key, value.clone()) {
                if !kept.is_empty() {
                    kept.push(' ');
                }
                kept.push_str(&key);
                kept.push_str("='");
                for c in value.chars() {
                    if c == '\'' || c == '\\' {
                        kept.push('\\');
                    }
                    kept.push(c);
                }
                kept.push('\'');
            }
        }
        kept
    };
    Ok((rest, extracted))
}

fn percent_decode(text: &str) -> Result<String, TargetError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    TargetError::Invalid("a % not followed by two hex digits".to_owned())
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| TargetError::Invalid("a percent-encoded value is not UTF-8".to_owned()))
}

/// libpq's `keyword = value` form: values unquoted (backslash escapes) or in single quotes.
fn key_values(text: &str) -> Result<Vec<(String, String)>, TargetError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(TargetError::Invalid(format!(
                "the keyword {key:?} has no `=` after it"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(TargetError::Invalid(format!(
                            "the value of {key:?} has no closing quote"
                        )));
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve_with(
        string: &str,
        keys: &TlsSettings,
        vars: &[(&str, &str)],
    ) -> Result<Target, TargetError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Target::resolve(string, keys, &|name| vars.get(name).cloned())
    }

    fn resolve(string: &str) -> Target {
        resolve_with(string, &TlsSettings::default(), &[("PGUSER", "env-user")]).unwrap()
    }

    #[test]
    fn url_tls_options_are_taken_out_and_the_rest_parses() {
        let target = resolve(
            "postgres://reader:p%40ss@db.internal:6432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(target.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(target.root(), Some(&RootCert::File("/etc/ca.pem".into())));
        assert_eq!(target.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(target.config.get_application_name(), Some("x"));
        assert_eq!(target.endpoints(), "db.internal:6432");
        assert_eq!(
            target.to_string(),
            "db.internal:6432, database app, user reader, sslmode verify-full"
        );
        assert!(!format!("{target:?}").contains("p@ss"));
    }

    #[test]
    fn key_value_form_with_quotes_and_a_socket_host() {
        let target = resolve(
            r"host=/var/run/postgresql dbname='my app' password='it\'s' sslmode = require user=u",
        );
        assert_eq!(target.ssl_mode(), SslMode::Require);
        assert_eq!(target.config.get_dbname(), Some("my app"));
        assert_eq!(target.config.get_password(), Some(&b"it's"[..]));
        assert!(target.uses_socket_only());
        assert_eq!(target.endpoints(), "/var/run/postgresql/.s.PGSQL.5432");
        assert!(target.to_string().ends_with("Unix socket (no TLS)"));
    }

    #[test]
    fn url_socket_host_in_the_query() {
        let target = resolve("postgresql:///app?host=/tmp/pg");
        assert!(target.uses_socket_only());
        assert_eq!(target.config.get_dbname(), Some("app"));
    }

    #[test]
    fn precedence_string_then_key_then_environment_then_default() {
        let keys = TlsSettings {
            sslmode: Some("verify-ca".into()),
            sslrootcert: Some("/key/ca.pem".into()),
        };
        let env = [
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", "/env/ca.pem"),
            ("PGUSER", "u"),
        ];
        let from_string = resolve_with(
            "postgres://h/db?sslmode=verify-full&sslrootcert=/url/ca.pem",
            &keys,
            &env,
        )
        .unwrap();
        assert_eq!(from_string.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(
            from_string.root(),
            Some(&RootCert::File("/url/ca.pem".into()))
        );
        let from_keys = resolve_with("postgres://h/db", &keys, &env).unwrap();
        assert_eq!(from_keys.ssl_mode(), SslMode::VerifyCa);
        assert_eq!(
            from_keys.root(),
            Some(&RootCert::File("/key/ca.pem".into()))
        );
        let from_env = resolve_with("postgres://h/db", &TlsSettings::default(), &env).unwrap();
        assert_eq!(from_env.ssl_mode(), SslMode::Require);
        assert_eq!(from_env.root(), Some(&RootCert::File("/env/ca.pem".into())));
        let default = resolve_with(
            "postgres://h/db",
            &TlsSettings::default(),
            &[("PGUSER", "u")],
        )
        .unwrap();
        assert_eq!(default.ssl_mode(), SslMode::Prefer);
        assert_eq!(default.root(), None);
    }

    #[test]
    fn pg_variables_fill_what_the_string_leaves_out() {
        let env = [
            ("PGHOST", "a.internal,b.internal"),
            ("PGPORT", "5433"),
            ("PGUSER", "reader"),
            ("PGDATABASE", "app"),
            ("PGAPPNAME", "migration"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGPASSWORD", "secret"),
        ];
        let target = resolve_with("", &TlsSettings::default(), &env).unwrap();
        assert_eq!(target.endpoints(), "a.internal:5433,b.internal:5433");
        assert_eq!(target.config.get_user(), Some("reader"));
        assert_eq!(target.config.get_dbname(), Some("app"));
        assert_eq!(target.config.get_application_name(), Some("migration"));
        assert_eq!(
            target.config.get_connect_timeout(),
            Some(&Duration::from_secs(2))
        );
        assert_eq!(target.config.get_password(), Some(&b"secret"[..]));
        assert_eq!(target.passfile, None);
        // The string wins over every variable.
        let target =
            resolve_with("postgres://me@c.internal/x", &TlsSettings::default(), &env).unwrap();
        assert_eq!(target.endpoints(), "c.internal:5433");
        assert_eq!(target.config.get_user(), Some("me"));
        let target = resolve_with(
            "postgres://me@c.internal:6000/x",
            &TlsSettings::default(),
            &env,
        )
        .unwrap();
        assert_eq!(target.endpoints(), "c.internal:6000");
        let target =
            resolve_with("postgresql:///x?host=/tmp", &TlsSettings::default(), &env).unwrap();
        assert_eq!(target.endpoints(), "/tmp/.s.PGSQL.5433");
        assert_eq!(target.config.get_dbname(), Some("x"));
    }

    #[test]
    fn without_a_password_the_passfile_is_pgpassfile_or_home_pgpass() {
        let target = resolve_with(
            "postgres://u@h/db",
            &TlsSettings::default(),
            &[("HOME", "/home/op")],
        )
        .unwrap();
        assert_eq!(target.passfile, Some("/home/op/.pgpass".into()));
        assert_eq!(
            target.default_root,
            Some("/home/op/.postgresql/root.crt".into())
        );
        let target = resolve_with(
            "postgres://u@h/db",
            &TlsSettings::default(),
            &[
                ("HOME", "/home/op"),
                ("PGPASSFILE", "/etc/driftsync/pgpass"),
            ],
        )
        .unwrap();
        assert_eq!(target.passfile, Some("/etc/driftsync/pgpass".into()));
        let target = resolve_with(
            "postgres://u:pw@h/db",
            &TlsSettings::default(),
            &[("PGPASSFILE", "/x")],
        )
        .unwrap();
        assert_eq!(target.passfile, None);
    }

    #[test]
    fn no_host_anywhere_means_the_default_socket_directory() {
        let target = resolve("dbname=app");
        assert!(target.uses_socket_only());
        assert_eq!(
            target.endpoints(),
            format!("{DEFAULT_SOCKET_DIR}/.s.PGSQL.5432")
        );
    }

    #[test]
    fn system_roots_default_to_verify_full_and_refuse_weaker_modes() {
        let target = resolve("postgres://h/db?sslrootcert=system");
        assert_eq!(target.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(target.root(), Some(&RootCert::System));
        let error = resolve_with(
            "postgres://h/db?sslrootcert=system&sslmode=require",
            &TlsSettings::default(),
            &[("PGUSER", "u")],
        )
        .unwrap_err();
        assert!(error.to_string().contains("verify-full"), "{error}");
    }

    #[test]
    fn bad_values_name_the_setting_and_never_the_password() {
        let error = resolve_with(
            "postgres://u:hunter2@h/db?sslmode=verify",
            &TlsSettings::default(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("sslmode \"verify\""), "{error}");
        assert!(error.contains("connection string"), "{error}");
        let error = resolve_with(
            "postgres://u@h/db",
            &TlsSettings {
                sslmode: Some("on".into()),
                sslrootcert: None,
            },
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("config key"), "{error}");
        let error = resolve_with(
            "postgres://u:hunter2@h/db?nonsense=1",
            &TlsSettings::default(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        let error = resolve_with(
            "host=h password='unterminated",
            &TlsSettings::default(),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("closing quote"), "{error}");
        assert!(!error.contains("unterminated"), "{error}");
        let error = resolve_with(
            "postgres://u@h/db",
            &TlsSettings::default(),
            &[("PGPORT", "x")],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("PGPORT"), "{error}");
    }

    #[test]
    fn allow_reads_as_prefer() {
        assert_eq!(
            resolve("postgres://h/db?sslmode=allow").ssl_mode(),
            SslMode::Prefer
        );
        assert_eq!(
            resolve("postgres://h/db?sslmode=disable").ssl_mode(),
            SslMode::Disable
        );
    }
}
