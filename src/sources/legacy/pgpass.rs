//! libpq's password file (`PGPASSFILE`, else `~/.pgpass`): the password for a connection
//! string that carries none, so the string itself can live in a readable config file.
//!
//! Format, as libpq reads it: one `hostname:port:database:username:password` per line, `*`
//! matches anything in the first four fields, `\:` and `\\` escape, `#` starts a comment line.
//! The first matching line wins. For a Unix-socket connection the host field is matched
//! against `localhost` and against the socket directory. Like libpq, a file that group or
//! others may read is ignored with a warning: a password in a shared file is not a secret.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio_postgres::config::Host;

/// What the lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(String),
    NoMatch,
    /// The file does not exist (the usual case without a password file).
    Missing,
    /// The file exists but is not used; the reason names the file and the fix.
    Ignored(String),
}

/// The password for the first host of `config` that has a matching line in `path`.
pub fn lookup(path: &Path, config: &tokio_postgres::Config) -> Lookup {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Lookup::Missing,
        Err(error) => {
            return Lookup::Ignored(format!("cannot read {}: {error}", path.display()));
        }
    };
    if !metadata.is_file() {
        return Lookup::Ignored(format!("{} is not a plain file", path.display()));
    }
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Lookup::Ignored(format!(
            "password file {} has group or world access (mode {:04o}); permissions should be \
             u=rw (0600) or less: chmod 0600 {}",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            return Lookup::Ignored(format!("cannot read {}: {error}", path.display()));
        }
    };
    let user = config.get_user().unwrap_or_default();
    let database = config.get_dbname().unwrap_or(user);
    for (index, host) in config.get_hosts().iter().enumerate() {
        let port = super::target::port_of_host(config, index).to_string();
        let hosts: Vec<String> = match host {
            Host::Tcp(name) => vec![name.clone()],
            Host::Unix(dir) => vec!["localhost".to_owned(), dir.display().to_string()],
        };
        for line in text.lines() {
            if let Some(password) = match_line(line, &hosts, &port, database, user) {
                return Lookup::Found(password);
            }
        }
    }
    Lookup::NoMatch
}

fn match_line(
    line: &str,
    hosts: &[String],
    port: &str,
    database: &str,
    user: &str,
) -> Option<String> {
    let line = line.trim_end_matches('\r');
    if line.trim_start().starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let fields = split_fields(line);
    let [host, line_port, line_db, line_user, password] = fields.as_slice() else {
        return None;
    };
    let matches = |field: &str, value: &str| field == "*" || field == value;
    (hosts.iter().any(|h| matches(host, h))
        && matches(line_port, port)
        && matches(line_db, database)
        && matches(line_user, user))
    .then(|| password.clone())
}

/// Splits at unescaped `:`; the password is everything after the fourth.
fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields
                .last_mut()
                .into_iter()
                .for_each(|f| f.extend(chars.next())),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().into_iter().for_each(|f| f.push(c)),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn write(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("pgpass");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "# comment\n\
             other.internal:5432:*:reader:wrong\n\
             db.internal:5432:app:reader:pa\\:ss\\\\word\n\
             *:*:*:*:fallback\n",
            0o600,
        );
        let config = tokio_postgres::Config::from_str("postgres://reader@db.internal/app").unwrap();
        assert_eq!(lookup(&path, &config), Lookup::Found("pa:ss\\word".into()));
        let config = tokio_postgres::Config::from_str("postgres://else@db.internal/app").unwrap();
        assert_eq!(lookup(&path, &config), Lookup::Found("fallback".into()));
    }

    #[test]
    fn database_defaults_to_the_user_and_ports_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "h:5433:reader:reader:pw\n", 0o600);
        let config = tokio_postgres::Config::from_str("postgres://reader@h:5433").unwrap();
        assert_eq!(lookup(&path, &config), Lookup::Found("pw".into()));
        let config = tokio_postgres::Config::from_str("postgres://reader@h").unwrap();
        assert_eq!(lookup(&path, &config), Lookup::NoMatch);
    }

    #[test]
    fn socket_hosts_match_localhost_or_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "localhost:*:*:*:local\n", 0o600);
        let config = tokio_postgres::Config::from_str("host=/run/postgresql user=u").unwrap();
        assert_eq!(lookup(&path, &config), Lookup::Found("local".into()));
        let path = write(dir.path(), "/run/postgresql:*:*:*:bydir\n", 0o600);
        assert_eq!(lookup(&path, &config), Lookup::Found("bydir".into()));
    }

    #[test]
    fn a_file_others_can_read_is_ignored_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "*:*:*:*:pw\n", 0o644);
        let config = tokio_postgres::Config::from_str("postgres://u@h/db").unwrap();
        let Lookup::Ignored(reason) = lookup(&path, &config) else {
            panic!("a 0644 file must be ignored");
        };
        assert!(reason.contains("chmod 0600"), "{reason}");
        assert!(!reason.contains("pw\n"), "{reason}");
        assert_eq!(lookup(&dir.path().join("absent"), &config), Lookup::Missing);
    }
}
