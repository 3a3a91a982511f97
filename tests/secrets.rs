//! Secrets and transport security: the Auth0 client secret, the access tokens and the legacy
//! database password never reach logs (at any level), errors, metrics, reports or the state
//! file; certificates are always verified; plain http never leaves the machine.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::app::Run;
use common::daemon::{Daemon, free_port};
use common::tenant::Tenant;
use driftsync_testkit::datagen;
use driftsync_testkit::simulator::SimulatorConfig;

/// The legacy database password the tests put in `legacy.url`. The test cluster trusts
/// loopback connections, so the password is carried everywhere a real one would be without
/// being needed; with `DATABASE_URL`, its own password (if any) is the one looked for.
const DB_PASSWORD: &str = "legacy-db-pw-7Qx2ZrK9";

const SUCCESS: &str = "driftsync_runs_total{kind=\"full\",outcome=\"success\"}";

/// `url` with a password: the one it has, or [`DB_PASSWORD`] added. Returns the URL and the
/// password to look for.
fn with_password(url: &str) -> (String, String) {
    let Some(scheme_end) = url.find("://") else {
        // key/value form
        return match url
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix("password="))
        {
            Some(password) => (url.to_owned(), password.to_owned()),
            None => (
                format!("{url} password={DB_PASSWORD}"),
                DB_PASSWORD.to_owned(),
            ),
        };
    };
    let authority = scheme_end + 3;
    let end = url[authority..]
        .find(['/', '?'])
        .map_or(url.len(), |at| authority + at);
    match url[authority..end].rfind('@') {
        Some(at) => {
            let userinfo = &url[authority..authority + at];
            match userinfo.split_once(':') {
                Some((_, password)) => (url.to_owned(), password.to_owned()),
                None => {
                    let insert = authority + at;
                    (
                        format!("{}:{DB_PASSWORD}{}", &url[..insert], &url[insert..]),
                        DB_PASSWORD.to_owned(),
                    )
                }
            }
        }
        None => (
            format!(
                "{}postgres:{DB_PASSWORD}@{}",
                &url[..authority],
                &url[authority..]
            ),
            DB_PASSWORD.to_owned(),
        ),
    }
}

/// Rewrites the tenant's config so that `legacy.url` carries a password; returns it.
fn put_password_in_config(tenant: &Tenant) -> String {
    let path = tenant.app.path("driftsync.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (url, password) = with_password(&tenant.app.db.url);
    let old = format!("url = {:?}", tenant.app.db.url);
    assert!(text.contains(&old), "{text}");
    std::fs::write(&path, text.replace(&old, &format!("url = {url:?}"))).unwrap();
    password
}

/// Fails naming the secret and where it was found.
fn assert_absent(secrets: &[(&str, &str)], place: &str, text: &[u8]) {
    for (what, secret) in secrets {
        assert!(!secret.is_empty());
        let found = text
            .windows(secret.len())
            .any(|window| window == secret.as_bytes());
        assert!(!found, "the {what} appears in {place}");
    }
}

/// Every file of the state store (the database and any journal or WAL beside it).
fn state_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("state.db"))
        })
        .collect();
    assert!(!files.is_empty(), "no state file in {}", dir.display());
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_metrics_reports_or_state_of_a_run_at_trace_level() {
    let tenant = Tenant::new(300, SimulatorConfig::default(), true).await;
    let port = free_port();
    tenant.config_full(
        "export",
        datagen::MIGRATED_RULE,
        "",
        &format!(
            "[schedule]\nfull = \"* * * * * *\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [state]\npath = \"state.db\"\n"
        ),
    );
    let db_password = put_password_in_config(&tenant);
    let client_secret = SimulatorConfig::default().client_secret;

    // A one-shot push through the export job: token, job, download, PATCHes, journal.
    let push = tenant.app.run_with_env(
        &[
            "reconcile",
            "--push",
            "--max-push-fraction",
            "1",
            "--format",
            "json",
            "--output",
            "report.json",
        ],
        &[("DRIFTSYNC_LOG", "trace")],
    );
    assert!(push.code == 0 || push.code == 2, "{}", push.stderr);
    let report = std::fs::read(tenant.app.path("report.json")).unwrap();
    let summary = serde_json::from_slice::<serde_json::Value>(&report).unwrap()["summary"].clone();
    assert!(
        tenant.sim.stats().patches_applied > 0,
        "the run pushed something: {summary}"
    );
    assert!(
        push.stderr.contains("TRACE"),
        "the log is at trace level:\n{}",
        &push.stderr[..push.stderr.len().min(2000)]
    );

    // The daemon: scheduled runs, and its metrics endpoint.
    let daemon = Daemon::start_logging(tenant.app.dir.path(), "driftsync.toml", "trace");
    daemon.wait_for(SUCCESS, 1.0).await;
    let scrape = daemon.scrape().await.expect("the daemon serves /metrics");
    let log_path = daemon.log.clone();
    let (code, _) = daemon.stop().await;
    assert_eq!(code, Some(0));
    let daemon_log = std::fs::read(&log_path).unwrap();

    let tokens = tenant.sim.issued_tokens();
    assert!(!tokens.is_empty(), "the simulator issued access tokens");
    let mut secrets = vec![
        ("client secret", client_secret.as_str()),
        ("database password", db_password.as_str()),
    ];
    secrets.extend(tokens.iter().map(|token| ("access token", token.as_str())));

    let Run { stdout, stderr, .. } = &push;
    assert_absent(&secrets, "the push's stdout", stdout.as_bytes());
    assert_absent(&secrets, "the push's trace log", stderr.as_bytes());
    assert_absent(&secrets, "the report file", &report);
    assert_absent(&secrets, "the daemon's trace log", &daemon_log);
    assert!(scrape.contains("driftsync_users"), "{scrape}");
    assert_absent(&secrets, "the metrics", scrape.as_bytes());
    for file in state_files(tenant.app.dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert_absent(&secrets, &file.display().to_string(), &bytes);
    }
}

#[tokio::test]
async fn failed_runs_name_the_problem_without_echoing_a_secret() {
    let tenant = Tenant::new(50, SimulatorConfig::default(), true).await;
    let db_password = put_password_in_config(&tenant);
    let trace = [("DRIFTSYNC_LOG", "trace")];
    let check = |run: &Run, secret: &str, names: &[&str]| {
        assert_eq!(run.code, 1, "{}", run.stderr);
        for name in names {
            assert!(
                run.stderr.contains(name),
                "{name:?} missing:\n{}",
                run.stderr
            );
        }
        assert!(!run.stderr.contains(secret), "{}", run.stderr);
        assert!(!run.stdout.contains(secret), "{}", run.stdout);
    };

    // Auth0 refuses the client secret.
    let wrong_secret = "wrong-client-secret-3vN8";
    std::fs::write(tenant.app.path("secret"), wrong_secret).unwrap();
    let run = tenant.app.run_with_env(&["reconcile"], &trace);
    check(&run, wrong_secret, &["/oauth/token", "client credentials"]);
    check(&run, &db_password, &[]);
    tenant.config("export", datagen::MIGRATED_RULE);
    let db_password = put_password_in_config(&tenant);

    // The legacy database cannot be reached.
    let path = tenant.app.path("driftsync.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let closed = format!(
        "postgres://postgres:{db_password}@127.0.0.1:{}/x",
        free_port()
    );
    let url_line = text
        .lines()
        .find(|line| line.starts_with("url = "))
        .unwrap()
        .to_owned();
    std::fs::write(&path, text.replace(&url_line, &format!("url = {closed:?}"))).unwrap();
    let run = tenant.app.run_with_env(&["reconcile"], &trace);
    check(&run, &db_password, &["legacy database"]);

    // A TOML syntax error on the very line that holds the password.
    std::fs::write(&path, text.replace(&url_line, &format!("url = \"{closed}"))).unwrap();
    let run = tenant.app.run_with_env(&["reconcile"], &trace);
    check(&run, &db_password, &["driftsync.toml", "line 2"]);
}

/// A non-loopback address of this machine, found by asking the routing table which source
/// address a datagram would leave from (no packet is sent).
fn non_loopback_address() -> Ipv4Addr {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    let found = socket
        .connect("192.0.2.1:9")
        .ok()
        .and_then(|()| socket.local_addr().ok())
        .and_then(|address| match address {
            SocketAddr::V4(v4) if !v4.ip().is_loopback() && !v4.ip().is_unspecified() => {
                Some(*v4.ip())
            }
            _ => None,
        });
    found.expect("this test needs a network interface with a non-loopback IPv4 address")
}

#[tokio::test]
async fn plain_http_beyond_loopback_is_refused_before_anything_is_sent() {
    let tenant = Tenant::new(20, SimulatorConfig::default(), true).await;
    // Something listens on every interface, so a request would have somewhere to go.
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "http://{}:{}",
        non_loopback_address(),
        listener.local_addr().unwrap().port()
    );
    let path = tenant.app.path("driftsync.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let base = format!("base_url = {:?}", tenant.sim.base_url());
    assert!(text.contains(&base));
    std::fs::write(&path, text.replace(&base, &format!("base_url = {url:?}"))).unwrap();

    for command in [&["reconcile"][..], &["reconcile", "--push"], &["check"]] {
        let run = tenant.app.run(command);
        assert_eq!(run.code, 1, "{command:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("auth0.base_url") && run.stderr.contains("use https"),
            "{command:?}: {}",
            run.stderr
        );
    }
    match listener.accept() {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("driftsync connected over plain http from {peer}"),
        Err(error) => panic!("{error}"),
    }
}

/// A TLS server on 127.0.0.1 with a self-signed certificate for `localhost`; it counts the
/// connections and the handshakes that completed.
struct SelfSignedServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
}

impl SelfSignedServer {
    async fn start() -> SelfSignedServer {
        use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
        // A throwaway key made for this test only (valid for 100 years, for localhost and
        // 127.0.0.1); no client trusts it, which is the point.
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
        let certificate =
            rustls::pki_types::CertificateDer::from_pem_file(data.join("self-signed.crt")).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_file(data.join("self-signed.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (seen, done) = (connections.clone(), handshakes.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    if acceptor.accept(stream).await.is_ok() {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        SelfSignedServer {
            port,
            connections,
            handshakes,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_is_refused_at_once_with_a_clear_error() {
    let tenant = Tenant::new(20, SimulatorConfig::default(), true).await;
    let server = SelfSignedServer::start().await;
    let path = tenant.app.path("driftsync.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let base = format!("base_url = {:?}", tenant.sim.base_url());
    let https = format!("base_url = \"https://localhost:{}\"", server.port);
    std::fs::write(&path, text.replace(&base, &https)).unwrap();

    let run = tenant.app.run(&["reconcile"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    for needle in [
        "POST /oauth/token",
        "TLS certificate was refused",
        "UnknownIssuer",
    ] {
        assert!(run.stderr.contains(needle), "{needle:?}:\n{}", run.stderr);
    }
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        1,
        "a refused certificate is not retried"
    );
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(
        tenant.sim.stats().token_requests,
        0,
        "nothing reached the real (simulated) tenant"
    );
}
