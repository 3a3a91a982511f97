//! Auth0's Management API: the settings and credentials it needs, its errors, and the few
//! endpoints driftsync calls. [`client`] owns the HTTP exchange (token, rate limits, retries),
//! [`limiter`] the rate limiter, [`export_job`] the users-export job and its download.

pub mod client;
pub mod export_job;
pub mod limiter;

use std::net::IpAddr;

use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::{self, ENV_CLIENT_SECRET, Environment};
pub use client::{Auth0Client, RequestBody, RetryPolicy};
pub use limiter::EndpointClass;

#[derive(Debug, thiserror::Error)]
pub enum Auth0Error {
    #[error("`auth0.{key}` is not set: {why}")]
    MissingSetting {
        key: &'static str,
        why: &'static str,
    },
    #[error(
        "`auth0.base_url` {0:?} uses plain http to a host that is not a loopback address: use https (plain http is only for a local simulator or proxy)"
    )]
    InsecureUrl(String),
    #[error("cannot read the Auth0 client secret from {path}")]
    SecretFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the Auth0 client: {0}")]
    Setup(String),
    #[error("POST /oauth/token: Auth0 refused the client credentials ({status}): {message}")]
    TokenRejected { status: u16, message: String },
    #[error("{method} {endpoint}: Auth0 answered {status}{}: {message}", code.as_ref().map(|code| format!(" {code}")).unwrap_or_default())]
    Api {
        method: String,
        endpoint: &'static str,
        status: u16,
        code: Option<String>,
        message: String,
    },
    #[error("{method} {endpoint}: no answer after {attempts} attempts: {detail}")]
    Transport {
        method: String,
        endpoint: &'static str,
        attempts: u32,
        detail: String,
    },
    #[error(
        "{method} {endpoint}: the server's TLS certificate was refused: {detail} (driftsync verifies every certificate against the public web PKI roots and has no switch to skip that; check `auth0.domain`/`auth0.base_url`, or a proxy that intercepts TLS)"
    )]
    Certificate {
        method: String,
        endpoint: &'static str,
        detail: String,
    },
    #[error("{method} {endpoint}: still rate limited (429) after {attempts} waits")]
    Throttled {
        method: String,
        endpoint: &'static str,
        attempts: u32,
    },
    #[error("{method} {endpoint}: unexpected answer: {detail}")]
    BadAnswer {
        method: String,
        endpoint: &'static str,
        detail: String,
    },
    #[error(
        "the connection {name:?} (auth0.connection) does not exist in the tenant; its database connections: {known}"
    )]
    ConnectionNotFound { name: String, known: String },
    #[error("the users-export job {job} failed: {detail}")]
    JobFailed { job: String, detail: String },
    #[error(
        "the users-export job {job} did not complete within {seconds} s (cache.export_timeout_seconds; last status: {status})"
    )]
    JobTimeout {
        job: String,
        seconds: u64,
        status: String,
    },
    #[error("downloading the export of job {job} failed: {detail}")]
    Download { job: String, detail: String },
}

/// The systemd credential name (`LoadCredential=auth0-client-secret:…`) read when neither the
/// environment nor `auth0.client_secret_file` gives the secret.
pub const CREDENTIAL_NAME: &str = "auth0-client-secret";

/// Where and as whom to call the Management API.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `https://{domain}`, or `auth0.base_url`; no trailing slash.
    pub base_url: String,
    pub audience: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

impl Settings {
    /// Reads the settings and the secret: `DRIFTSYNC_AUTH0_CLIENT_SECRET`, else
    /// `auth0.client_secret_file`, else `$CREDENTIALS_DIRECTORY/auth0-client-secret`.
    pub fn from_config(
        auth0: &config::Auth0,
        env: &dyn Environment,
    ) -> Result<Settings, Auth0Error> {
        let domain = auth0
            .domain
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty());
        let base_url = match (&auth0.base_url, domain) {
            (Some(base), _) => base.trim_end_matches('/').to_owned(),
            (None, Some(domain)) => format!("https://{domain}"),
            (None, None) => {
                return Err(Auth0Error::MissingSetting {
                    key: "domain",
                    why: "the tenant domain is needed to call the Management API",
                });
            }
        };
        check_transport(&base_url)?;
        let audience = match domain {
            Some(domain) => format!("https://{domain}/api/v2/"),
            None => format!("{base_url}/api/v2/"),
        };
        let client_id = auth0
            .client_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .ok_or(Auth0Error::MissingSetting {
                key: "client_id",
                why: "the machine-to-machine application's client id is needed to get a token",
            })?;
        // systemd's LoadCredential puts the secret here when the unit asks for it.
        let credential = env
            .var("CREDENTIALS_DIRECTORY")
            .map(|dir| std::path::Path::new(&dir).join(CREDENTIAL_NAME));
        let client_secret = match env.var(ENV_CLIENT_SECRET) {
            Some(secret) => SecretString::from(secret),
            None => match auth0.client_secret_file.as_ref().or(credential.as_ref()) {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(path).map_err(|source| Auth0Error::SecretFile {
                            path: path.clone(),
                            source,
                        })?;
                    SecretString::from(text.trim().to_owned())
                }
                None => {
                    return Err(Auth0Error::MissingSetting {
                        key: "client_secret_file",
                        why: "set it, or the environment variable DRIFTSYNC_AUTH0_CLIENT_SECRET, or a systemd credential named auth0-client-secret",
                    });
                }
            },
        };
        Ok(Settings {
            base_url,
            audience,
            client_id,
            client_secret,
        })
    }
}

/// Whether the URL's host is this machine (`localhost` or a loopback address).
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Plain http is accepted only to loopback addresses (the simulator, a local proxy): tokens
/// and profiles must not cross a network in clear text.
fn check_transport(base_url: &str) -> Result<(), Auth0Error> {
    // The URL is not quoted when it cannot be parsed, and quoted without its user:password
    // part when it can: an error message must not carry a credential someone put there.
    let mut url = reqwest::Url::parse(base_url)
        .map_err(|error| Auth0Error::Setup(format!("auth0.base_url is not a URL: {error}")))?;
    let _ = url.set_password(None);
    let _ = url.set_username("");
    let base_url = url.as_str().trim_end_matches('/').to_owned();
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(Auth0Error::InsecureUrl(base_url)),
        other => Err(Auth0Error::Setup(format!(
            "auth0.base_url {base_url:?}: scheme {other:?} is not http(s)"
        ))),
    }
}

/// A connection as `GET /api/v2/connections` describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Connection {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub options: ConnectionOptions,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectionOptions {
    /// "Import Users to Auth0" (automatic migration).
    #[serde(default)]
    pub import_mode: bool,
    /// "Sync user profile attributes at each login": `on_each_login` (the default, and absent
    /// from the connection while it is), `on_first_login` or `never_on_login`.
    #[serde(default)]
    pub set_user_root_attributes: Option<String>,
}

impl ConnectionOptions {
    /// Whether Auth0 refreshes a cached profile's root attributes (name, nickname, given and
    /// family name, picture) at each login. Only the two documented values that say otherwise
    /// turn it off; a value driftsync does not know is read as refreshed, which pushes nothing
    /// that Auth0 might refuse or overwrite.
    pub fn root_attributes_refreshed(&self) -> bool {
        !matches!(
            self.set_user_root_attributes.as_deref(),
            Some("on_first_login" | "never_on_login")
        )
    }
}

/// A job as `GET /api/v2/jobs/{id}` describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub time_left_seconds: Option<u64>,
    #[serde(default)]
    pub summary: Option<serde_json::Value>,
}

/// One field of a users-export job.
#[derive(Debug, Clone, Serialize)]
pub struct ExportField {
    pub name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_as: Option<&'static str>,
}

impl Auth0Client {
    /// Finds a connection by its exact name.
    pub async fn connection_by_name(&self, name: &str) -> Result<Connection, Auth0Error> {
        let mut url = self.api_url(&["connections"])?;
        url.query_pairs_mut().append_pair("name", name);
        let connections: Vec<Connection> = self
            .json(
                Method::GET,
                EndpointClass::Other,
                "/api/v2/connections",
                url,
                None,
            )
            .await?;
        if let Some(found) = connections
            .into_iter()
            .find(|connection| connection.name == name)
        {
            return Ok(found);
        }
        // Only on this error path: list the database connections, so a typo is easy to see.
        let mut url = self.api_url(&["connections"])?;
        url.query_pairs_mut().append_pair("strategy", "auth0");
        let all: Vec<Connection> = self
            .json(
                Method::GET,
                EndpointClass::Other,
                "/api/v2/connections",
                url,
                None,
            )
            .await
            .unwrap_or_default();
        let known = all
            .iter()
            .map(|connection| format!("{:?}", connection.name))
            .collect::<Vec<_>>()
            .join(", ");
        Err(Auth0Error::ConnectionNotFound {
            name: name.to_owned(),
            known: if known.is_empty() {
                "no database connections".into()
            } else {
                known
            },
        })
    }

    pub async fn create_users_export(
        &self,
        connection_id: &str,
        fields: &[ExportField],
    ) -> Result<Job, Auth0Error> {
        let url = self.api_url(&["jobs", "users-exports"])?;
        let body = serde_json::json!({
            "connection_id": connection_id,
            "format": "json",
            "fields": fields,
        });
        self.json(
            Method::POST,
            EndpointClass::Jobs,
            "/api/v2/jobs/users-exports",
            url,
            Some(&body),
        )
        .await
    }

    pub async fn job(&self, id: &str) -> Result<Job, Auth0Error> {
        let url = self.api_url(&["jobs", id])?;
        self.get_found(EndpointClass::Jobs, "/api/v2/jobs/{id}", url)
            .await?
            .ok_or_else(|| Auth0Error::JobFailed {
                job: id.to_owned(),
                detail: "Auth0 no longer knows the job (404); job data is deleted after 24 hours"
                    .into(),
            })
    }

    /// One user's profile, or `None` when Auth0 has no such user.
    pub async fn user(&self, auth0_id: &str) -> Result<Option<serde_json::Value>, Auth0Error> {
        let url = self.api_url(&["users", auth0_id])?;
        self.get_found(EndpointClass::UsersRead, "/api/v2/users/{id}", url)
            .await
    }

    /// A GET whose 404 means "no such thing" rather than an error.
    async fn get_found<T: serde::de::DeserializeOwned>(
        &self,
        class: EndpointClass,
        endpoint: &'static str,
        url: reqwest::Url,
    ) -> Result<Option<T>, Auth0Error> {
        let (status, bytes) = self.send(Method::GET, class, endpoint, url, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        client::decode(&Method::GET, endpoint, &bytes).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    struct Env(Vec<(&'static str, String)>);

    impl Environment for Env {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
        }
    }

    #[test]
    fn the_secret_comes_from_env_then_file_then_systemd_credential() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "from-file\n").unwrap();
        std::fs::write(dir.path().join(CREDENTIAL_NAME), "from-credential").unwrap();
        let mut auth0 = config::Auth0 {
            domain: Some("t.eu.auth0.com".into()),
            base_url: None,
            client_id: Some("id".into()),
            client_secret_file: Some(dir.path().join("file")),
            connection: "c".into(),
            migrated: crate::model::profile::MigratedRule::Always,
            request_timeout: std::time::Duration::from_secs(30),
        };
        let credentials = ("CREDENTIALS_DIRECTORY", dir.path().display().to_string());
        let secret = |auth0: &config::Auth0, env: Env| {
            Settings::from_config(auth0, &env)
                .unwrap()
                .client_secret
                .expose_secret()
                .to_owned()
        };
        let with_env = Env(vec![
            (ENV_CLIENT_SECRET, "from-env".into()),
            credentials.clone(),
        ]);
        assert_eq!(secret(&auth0, with_env), "from-env");
        assert_eq!(secret(&auth0, Env(vec![credentials.clone()])), "from-file");
        auth0.client_secret_file = None;
        assert_eq!(secret(&auth0, Env(vec![credentials])), "from-credential");
        let missing = Settings::from_config(&auth0, &Env(vec![]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("client_secret_file"), "{missing}");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_transport("https://tenant.eu.auth0.com").is_ok());
        assert!(check_transport("http://127.0.0.1:8080").is_ok());
        assert!(check_transport("http://localhost:8080").is_ok());
        assert!(check_transport("http://[::1]:8080").is_ok());
        assert!(matches!(
            check_transport("http://tenant.eu.auth0.com"),
            Err(Auth0Error::InsecureUrl(_))
        ));
        assert!(matches!(
            check_transport("http://10.0.0.8"),
            Err(Auth0Error::InsecureUrl(_))
        ));
    }

    #[test]
    fn a_bad_base_url_is_named_without_its_credentials() {
        for (url, shown) in [
            (
                "http://admin:hunter2@proxy.example:3128",
                "proxy.example:3128",
            ),
            ("ftp://admin:hunter2@tenant.example", "tenant.example"),
            ("hunter2 is not a url", "is not a URL"),
        ] {
            let message = check_transport(url).unwrap_err().to_string();
            assert!(message.contains(shown), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}
