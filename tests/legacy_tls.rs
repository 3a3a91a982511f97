//! The legacy connection over TLS and with libpq's conventions, against a real PostgreSQL with
//! `ssl = on` and a test CA made when its cluster starts (tests/common/pg.rs): each `sslmode`,
//! `sslrootcert` in the URL, the config and `PGSSLROOTCERT`, the password file, the `PG*`
//! variables and a Unix-socket host, through the real binary (`check` and `reconcile`).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::app::{App, FILE_SOURCE_NO_API, Run, TWO_USERS_QUERY};
use common::pg::{
    PASSWORD_ROLE, PASSWORD_ROLE_SECRET, TLS_ONLY_ROLE, TlsCluster, fresh_tls_database,
};

const QUERY: &str = TWO_USERS_QUERY;
const FILE_SOURCE: &str = FILE_SOURCE_NO_API;

struct TlsApp {
    app: App,
    cluster: TlsCluster,
}

impl TlsApp {
    /// Two legacy users (one changed email), readable by the test roles, and their export.
    async fn new() -> TlsApp {
        let (db, cluster) = fresh_tls_database().await;
        let app = App::with_db(db);
        app.seed_two_users(&[TLS_ONLY_ROLE, PASSWORD_ROLE]).await;
        TlsApp { app, cluster }
    }

    /// `postgres://<user>@<host>:<port>/<db>?<params>`.
    fn url(&self, user: &str, host: &str, params: &str) -> String {
        let mut url = format!(
            "postgres://{user}@{host}:{}/{}",
            self.cluster.port, self.app.db.name
        );
        if !params.is_empty() {
            url.push('?');
            url.push_str(params);
        }
        url
    }

    fn ca(&self) -> String {
        self.cluster.ca.display().to_string()
    }

    fn other_ca(&self) -> String {
        self.cluster.other_ca.display().to_string()
    }

    /// Writes the config with `url` and extra `[legacy]` lines.
    fn config(&self, url: &str, legacy_extra: &str) {
        let text =
            format!("[legacy]\nurl = {url:?}\nquery = {QUERY:?}\n{legacy_extra}\n{FILE_SOURCE}");
        std::fs::write(self.app.path("driftsync.toml"), text).unwrap();
    }

    fn check(&self, url: &str, env: &[(&str, &str)]) -> Run {
        self.config(url, "");
        self.app.run_with_env(&["check"], env)
    }
}

fn assert_ok(run: &Run) {
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
}

/// Exit 1 at once, nothing on stdout but what `check` printed before the connection, and the
/// error names every needle.
fn assert_fails(run: &Run, needles: &[&str]) {
    assert_eq!(
        run.code, 1,
        "expected exit 1\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} missing from:\n{}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn verify_full_with_the_right_root_runs_over_tls_and_stays_read_only() {
    let t = TlsApp::new().await;
    let url = t.url(
        TLS_ONLY_ROLE,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", t.ca()),
    );
    let run = t.check(&url, &[]);
    assert_ok(&run);
    // The server's own view of the session (pg_stat_ssl), not only what the client asked for.
    assert!(run.stdout.contains("TLSv1."), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("certificate chain and host name verified against sslrootcert"),
        "{}",
        run.stdout
    );

    let report = t.app.run(&["reconcile", "--format", "json"]).report();
    assert_eq!(report["summary"]["in_sync"], 1, "{report}");
    assert_eq!(report["summary"]["stranded"], 1, "{report}");

    // READ ONLY holds over TLS as over a plain connection.
    t.config(&url, "");
    let text = std::fs::read_to_string(t.app.path("driftsync.toml")).unwrap();
    let writing = text.replace(
        QUERY,
        "WITH gone AS (DELETE FROM users RETURNING id) SELECT id::text AS user_id FROM gone",
    );
    std::fs::write(t.app.path("driftsync.toml"), writing).unwrap();
    assert_fails(&t.app.run(&["reconcile"]), &["read-only transaction"]);
    let count: i64 = t
        .app
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_fails_check_and_reconcile_naming_host_and_problem() {
    let t = TlsApp::new().await;
    // The password role over TLS, with its password in the URL: no message may show it.
    let with_password = format!("{PASSWORD_ROLE}:{PASSWORD_ROLE_SECRET}");
    let wrong_root = t.url(
        &with_password,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", t.other_ca()),
    );
    let endpoint = format!("localhost:{}", t.cluster.port);
    for command in ["check", "reconcile"] {
        t.config(&wrong_root, "");
        let run = t.app.run(&[command]);
        assert_fails(
            &run,
            &[&endpoint, "certificate", "UnknownIssuer", "set sslrootcert"],
        );
        assert!(!run.stderr.contains(PASSWORD_ROLE_SECRET), "{}", run.stderr);
        assert!(!run.stdout.contains(PASSWORD_ROLE_SECRET), "{}", run.stdout);
    }

    // The right root, but the server's certificate names `localhost`, not 127.0.0.1.
    let wrong_name = t.url(
        &with_password,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", t.ca()),
    );
    for command in ["check", "reconcile"] {
        t.config(&wrong_name, "");
        let run = t.app.run(&[command]);
        assert_fails(
            &run,
            &[
                &format!("127.0.0.1:{}", t.cluster.port),
                "not valid for name",
                "sslmode=verify-ca",
            ],
        );
        assert!(!run.stderr.contains(PASSWORD_ROLE_SECRET), "{}", run.stderr);
    }

    // A root file that is not there, or holds no certificate, is named.
    let missing = t.url(
        TLS_ONLY_ROLE,
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    assert_fails(&t.check(&missing, &[]), &["/nonexistent/ca.pem"]);
    std::fs::write(t.app.path("empty.pem"), "not a certificate\n").unwrap();
    let empty = t.url(
        TLS_ONLY_ROLE,
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            t.app.path("empty.pem").display()
        ),
    );
    assert_fails(
        &t.check(&empty, &[]),
        &["empty.pem", "no usable certificate"],
    );
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let t = TlsApp::new().await;
    let right = t.url(
        TLS_ONLY_ROLE,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", t.ca()),
    );
    let run = t.check(&right, &[]);
    assert_ok(&run);
    assert!(
        run.stdout.contains("certificate chain verified against"),
        "{}",
        run.stdout
    );
    let wrong = t.url(
        TLS_ONLY_ROLE,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", t.other_ca()),
    );
    assert_fails(&t.check(&wrong, &[]), &["UnknownIssuer"]);
}

#[tokio::test]
async fn require_encrypts_without_verifying_unless_a_root_is_given() {
    let t = TlsApp::new().await;
    // No root anywhere (HOME is the test directory): encrypted, certificate not checked.
    let run = t.check(&t.url(TLS_ONLY_ROLE, "127.0.0.1", "sslmode=require"), &[]);
    assert_ok(&run);
    assert!(run.stdout.contains("TLSv1."), "{}", run.stdout);
    assert!(
        run.stdout.contains("certificate not verified"),
        "{}",
        run.stdout
    );

    // libpq's rule: with a root file, require checks the chain like verify-ca — given in the
    // URL, or found at ~/.postgresql/root.crt.
    let with_root = t.url(
        TLS_ONLY_ROLE,
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", t.other_ca()),
    );
    assert_fails(&t.check(&with_root, &[]), &["UnknownIssuer"]);
    std::fs::create_dir_all(t.app.path(".postgresql")).unwrap();
    std::fs::copy(&t.cluster.other_ca, t.app.path(".postgresql/root.crt")).unwrap();
    let run = t.check(&t.url(TLS_ONLY_ROLE, "127.0.0.1", "sslmode=require"), &[]);
    assert_fails(&run, &["UnknownIssuer", "root.crt"]);
    std::fs::copy(&t.cluster.ca, t.app.path(".postgresql/root.crt")).unwrap();
    let run = t.check(&t.url(TLS_ONLY_ROLE, "127.0.0.1", "sslmode=require"), &[]);
    assert_ok(&run);
    assert!(run.stdout.contains("root.crt"), "{}", run.stdout);
}

#[tokio::test]
async fn disable_against_a_server_that_requires_tls_fails_clearly_and_prefer_is_the_default() {
    let t = TlsApp::new().await;
    let run = t.check(&t.url(TLS_ONLY_ROLE, "127.0.0.1", "sslmode=disable"), &[]);
    assert_fails(
        &run,
        &["no encryption", "only over TLS", "remove sslmode=disable"],
    );

    // No sslmode anywhere: libpq's default `prefer` takes the TLS the server offers.
    let run = t.check(&t.url(TLS_ONLY_ROLE, "127.0.0.1", ""), &[]);
    assert_ok(&run);
    assert!(run.stdout.contains("sslmode prefer"), "{}", run.stdout);
    assert!(run.stdout.contains("TLSv1."), "{}", run.stdout);
}

#[tokio::test]
async fn tls_settings_come_from_config_keys_and_pg_variables_after_the_url() {
    let t = TlsApp::new().await;
    let bare = t.url(TLS_ONLY_ROLE, "localhost", "");

    // The [legacy] keys.
    t.config(
        &bare,
        &format!("sslmode = \"verify-full\"\nsslrootcert = {:?}", t.ca()),
    );
    let run = t.app.run(&["check"]);
    assert_ok(&run);
    assert!(run.stdout.contains("sslmode verify-full"), "{}", run.stdout);
    t.config(&bare, "sslmode = \"verify\"");
    assert_fails(&t.app.run(&["check"]), &["legacy.sslmode", "\"verify\""]);

    // PGSSLMODE and PGSSLROOTCERT, when neither the URL nor the config says.
    let other_ca = t.other_ca();
    let wrong_root = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", other_ca.as_str()),
    ];
    assert_fails(&t.check(&bare, &wrong_root), &["UnknownIssuer"]);
    let ca = t.ca();
    let run = t.check(
        &bare,
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)],
    );
    assert_ok(&run);
    assert!(run.stdout.contains("host name verified"), "{}", run.stdout);
    // The URL wins over the variables.
    let run = t.check(
        &t.url(TLS_ONLY_ROLE, "localhost", "sslmode=require"),
        &wrong_root,
    );
    assert_fails(&run, &["UnknownIssuer"]);
}

#[tokio::test]
async fn the_password_comes_from_the_password_file_and_pg_variables_fill_in() {
    let t = TlsApp::new().await;
    let no_password = t.url(PASSWORD_ROLE, "127.0.0.1", "sslmode=require");
    // No password anywhere: the server asks for one.
    assert_fails(&t.check(&no_password, &[]), &["password"]);

    let passfile = t.app.path("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# host:port:database:user:password\n127.0.0.1:{}:*:{PASSWORD_ROLE}:{PASSWORD_ROLE_SECRET}\n",
            t.cluster.port
        ),
    )
    .unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let passfile_text = passfile.display().to_string();
    let run = t.check(&no_password, &[("PGPASSFILE", &passfile_text)]);
    assert_ok(&run);
    assert!(!run.stdout.contains(PASSWORD_ROLE_SECRET), "{}", run.stdout);
    assert!(!run.stderr.contains(PASSWORD_ROLE_SECRET), "{}", run.stderr);

    // ~/.pgpass when PGPASSFILE is not set.
    std::fs::copy(&passfile, t.app.path(".pgpass")).unwrap();
    std::fs::set_permissions(
        t.app.path(".pgpass"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_ok(&t.check(&no_password, &[]));

    // A file others may read is ignored, as libpq does, with the fix in the warning.
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = t.check(&no_password, &[("PGPASSFILE", &passfile_text)]);
    assert_fails(&run, &["chmod 0600", &passfile_text, "password"]);
    assert!(!run.stderr.contains(PASSWORD_ROLE_SECRET), "{}", run.stderr);

    // Everything from PG* variables: host, port, user, database, password, sslmode.
    let port = t.cluster.port.to_string();
    let run = t.check(
        "postgresql://",
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &port),
            ("PGUSER", PASSWORD_ROLE),
            ("PGDATABASE", &t.app.db.name),
            ("PGPASSWORD", PASSWORD_ROLE_SECRET),
            ("PGSSLMODE", "require"),
        ],
    );
    assert_ok(&run);
    assert!(
        run.stdout.contains(&format!(
            "127.0.0.1:{port}, database {}, user {PASSWORD_ROLE}",
            t.app.db.name
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("TLSv1."), "{}", run.stdout);
}

#[tokio::test]
async fn a_unix_socket_host_connects_without_tls() {
    let t = TlsApp::new().await;
    let Some(socket_dir) = t.cluster.socket_dir.clone() else {
        panic!(
            "the TLS cluster's socket path is longer than a Unix socket allows; use a shorter \
             CARGO_TARGET_DIR to run this test"
        );
    };
    let socket_dir = socket_dir.display().to_string();
    let port = t.cluster.port;
    // The URL form, host in the query; then libpq's keyword form.
    for url in [
        format!(
            "postgresql:///{}?host={socket_dir}&port={port}&user={TLS_ONLY_ROLE}",
            t.app.db.name
        ),
        format!(
            "host={socket_dir} port={port} dbname={} user={TLS_ONLY_ROLE} sslmode=verify-full",
            t.app.db.name
        ),
    ] {
        let run = t.check(&url, &[]);
        assert_ok(&run);
        assert!(
            run.stdout.contains("Unix socket (no TLS)"),
            "{}",
            run.stdout
        );
        assert!(run.stdout.contains(".s.PGSQL."), "{}", run.stdout);
        let report = t.app.run(&["reconcile", "--format", "json"]).report();
        assert_eq!(report["summary"]["stranded"], 1, "{report}");
    }
}
