//! PostgreSQL for the integration tests: each call to [`fresh_database`] returns a new, empty
//! database, so tests never see each other's tables. [`fresh_tls_database`] does the same on a
//! second cluster with `ssl = on`, a test CA made at its start and a `pg_hba.conf` that demands
//! TLS or a password of two roles (the TLS tests always use it, `DATABASE_URL` or not).
//!
//! Where the databases live:
//! - If `DATABASE_URL` is set, it is an admin URL for an existing server: the databases are
//!   created there and nothing is started.
//! - Otherwise all tests of all test binaries share one throwaway cluster under
//!   `<target dir>/driftsync-test-pg/`. Starting a cluster takes seconds while creating a
//!   database takes milliseconds, so one cluster with one database per test is both fast and
//!   isolated. The cluster outlives the test process, so the next test binary (or the next
//!   `cargo nextest` process, which runs each test on its own) reuses it; `scripts/test` stops
//!   it at the end if that run started it.
//! - "Start once" must hold across processes, so a `static` is not enough: an exclusive
//!   `File::lock` on `<target dir>/driftsync-test-pg/lock` lets exactly one process initdb or
//!   start the cluster while the others wait, then find it running. Within a process a
//!   `OnceCell` skips the lock after the first call. The lock is released when the file is
//!   closed, so a panicking process cannot leave it held.
//! - PostgreSQL refuses to run as root. As root (e.g. in CI), the cluster directory is handed to
//!   the `postgres` user and `initdb`/`pg_ctl` run through `runuser -u postgres --`.
//! - When a stopped cluster is started, nobody can be using its databases, so the databases
//!   left by earlier runs are dropped then; that keeps the cluster from growing forever.
//!
//! The setup runs blocking commands inside async code on purpose: it happens once per process
//! before any test work, and it keeps the harness free of extra dependencies.

// Every test binary compiles this module but not all of them use every item.
#![allow(dead_code)]

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// A database created for one test. `url` connects to it with the admin's credentials.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    /// Connects to this database; the connection task runs on the current tokio runtime.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

/// Creates a new, empty database, on `DATABASE_URL`'s server or on the shared test cluster.
pub async fn fresh_database() -> TestDb {
    let admin_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => SHARED_CLUSTER
            .get_or_init(start_shared_cluster)
            .await
            .clone(),
    };
    let name = unique_name();
    create_database(&connect(&admin_url).await, &name).await;
    TestDb {
        url: with_database(&admin_url, &name),
        name,
    }
}

/// Returns `url` with its database replaced by `name`. Accepts the URL form
/// (`postgres://user@host:port/db?opts`, path optional) and the key/value form
/// (`host=... dbname=...`, where a later `dbname` wins).
pub fn with_database(url: &str, name: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{} dbname={name}", url.trim_end());
    };
    let (base, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority = scheme_end + 3;
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    format!("{}/{name}{query}", &base[..path])
}

/// Admin URL of the shared cluster, once this process has made sure it runs.
static SHARED_CLUSTER: OnceCell<String> = OnceCell::const_new();
/// The same for the TLS cluster.
static TLS_CLUSTER: OnceCell<(String, TlsCluster)> = OnceCell::const_new();

/// The TLS cluster's name in the target directory, and the file names in its `tls/` folder.
const TLS_CLUSTER_NAME: &str = "driftsync-test-pg-tls";
/// A role that may connect over TCP only with TLS (`hostnossl … reject`).
pub const TLS_ONLY_ROLE: &str = "tls_only";
/// A role that must give a password (SCRAM); its password is [`PASSWORD_ROLE_SECRET`].
pub const PASSWORD_ROLE: &str = "pw_user";
pub const PASSWORD_ROLE_SECRET: &str = "pw-Secret-4711";

/// A second cluster with `ssl = on`, a test CA made when it starts, and a `pg_hba.conf` with
/// a TLS-only role and a password role. Like the shared cluster it outlives the test process
/// and `scripts/test` stops it.
#[derive(Clone)]
pub struct TlsCluster {
    pub port: u16,
    /// The CA that signed the server's certificate (for the DNS name `localhost` only).
    pub ca: PathBuf,
    /// A CA that signed nothing the server has.
    pub other_ca: PathBuf,
    /// The Unix-socket directory, when its path is short enough for a socket.
    pub socket_dir: Option<PathBuf>,
}

/// A new database on the TLS cluster, owned by the admin (`TestDb::url` connects as the
/// admin over TCP without TLS, which its `pg_hba.conf` allows).
pub async fn fresh_tls_database() -> (TestDb, TlsCluster) {
    let (admin_url, cluster) = TLS_CLUSTER.get_or_init(start_tls_cluster).await.clone();
    let name = unique_name();
    create_database(&connect(&admin_url).await, &name).await;
    (
        TestDb {
            url: with_database(&admin_url, &name),
            name,
        },
        cluster,
    )
}

fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("driftsync_t_{}_{n}_{nanos}", std::process::id())
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", redact(url)));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("test database connection failed: {e}");
        }
    });
    client
}

async fn create_database(admin: &Client, name: &str) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
        {
            Ok(()) => return,
            // "source database template1 is being accessed by other users": another process is
            // copying template1 right now. It is over in milliseconds.
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && attempt < 50 => {
                tokio::time::sleep(Duration::from_millis(10 * attempt.min(10))).await;
            }
            Err(e) => panic!("CREATE DATABASE {name} failed: {}", describe(&e)),
        }
    }
}

/// Makes sure the shared cluster runs and returns its admin URL. Panics with what to do if it
/// cannot: tests needing a database must never be skipped silently.
async fn start_shared_cluster() -> String {
    start_cluster(Cluster::locate("driftsync-test-pg", false)).await
}

async fn start_tls_cluster() -> (String, TlsCluster) {
    let cluster = Cluster::locate(TLS_CLUSTER_NAME, true);
    let url = start_cluster(cluster).await;
    let cluster = Cluster::locate(TLS_CLUSTER_NAME, true);
    let port = cluster.stored_port().expect("the TLS cluster's port file");
    let sock = cluster.socket_dir();
    (
        url,
        TlsCluster {
            port,
            ca: cluster.tls_dir().join("ca.pem"),
            other_ca: cluster.tls_dir().join("other-ca.pem"),
            socket_dir: sock,
        },
    )
}

async fn start_cluster(cluster: Cluster) -> String {
    fs::create_dir_all(&cluster.dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", cluster.dir.display()));
    let lock_path = cluster.dir.join("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    // `File::lock` is stable since Rust 1.89; tests need not build with the crate's MSRV.
    #[allow(clippy::incompatible_msrv)]
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));

    if let Some(port) = cluster.running_port() {
        return admin_url(port);
    }
    if !cluster.dir.join("initdb-done").exists() {
        cluster.initdb();
    }
    let port = cluster.start();
    let url = admin_url(port);
    let admin = connect(&url).await;
    drop_leftover_databases(&admin).await;
    if cluster.tls {
        create_tls_roles(&admin).await;
    }
    drop(lock);
    url
}

async fn create_tls_roles(admin: &Client) {
    for (role, password) in [
        (TLS_ONLY_ROLE, None),
        (PASSWORD_ROLE, Some(PASSWORD_ROLE_SECRET)),
    ] {
        let password = password.map_or(String::new(), |p| format!(" PASSWORD '{p}'"));
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN CREATE ROLE {role} LOGIN{password}; \
                 EXCEPTION WHEN duplicate_object THEN ALTER ROLE {role} LOGIN{password}; END $$"
            ))
            .await
            .unwrap_or_else(|e| panic!("cannot create role {role}: {}", describe(&e)));
    }
}

fn admin_url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

async fn drop_leftover_databases(admin: &Client) {
    let rows = admin
        .query(
            r"SELECT datname FROM pg_database WHERE datname LIKE 'driftsync\_t\_%'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("cannot list databases: {}", describe(&e)));
    for row in rows {
        let name: String = row.get(0);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot drop {name}: {}", describe(&e)));
    }
}

/// The throwaway cluster: `dir` holds `data/`, `sock/`, `log`, `port`, `lock` and the
/// `initdb-done` marker.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    as_root: bool,
    /// `ssl = on` with certificates made at each start, and the TLS cluster's `pg_hba.conf`.
    tls: bool,
}

impl Cluster {
    fn locate(name: &str, tls: bool) -> Cluster {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        // A relative CARGO_TARGET_DIR is relative to the workspace root, as for cargo.
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .filter(|t| !t.is_empty())
            .map_or_else(|| manifest_dir.join("target"), |t| manifest_dir.join(t));
        let bin = find_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries not found (initdb, pg_ctl on PATH or in \
                 /usr/lib/postgresql/*/bin): apt-get install postgresql-15, or set DATABASE_URL \
                 to an existing server, e.g. postgres://postgres@127.0.0.1:5432/postgres"
            )
        });
        Cluster {
            dir: target.join(name),
            bin,
            as_root: running_as_root(),
            tls,
        }
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The socket directory, unless its path is too long for a Unix socket (107 bytes).
    fn socket_dir(&self) -> Option<PathBuf> {
        let sock = self.dir.join("sock");
        (sock.as_os_str().len() + 16 < 108).then_some(sock)
    }

    /// A test CA, a server certificate it signed for `localhost`, a CA that signed nothing,
    /// and the `pg_hba.conf`: made anew at every start, owned by the server's user.
    fn write_tls_files(&self) -> String {
        let dir = self.tls_dir();
        fs::create_dir_all(&dir).expect("cannot create the TLS directory");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "driftsync test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let mut server_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        server_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let server = server_params
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let other =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("another CA");
        fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
        fs::write(dir.join("other-ca.pem"), other.cert.pem()).expect("write other-ca.pem");
        fs::write(dir.join("server.crt"), server.pem()).expect("write server.crt");
        fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("write server.key");
        fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");
        // First match wins: the TLS-only role must use TLS over TCP, the password role gives
        // its password, everyone else (the admin) is trusted on loopback and the socket.
        let hba = format!(
            "local all all trust\n\
             hostssl all {TLS_ONLY_ROLE} 127.0.0.1/32 trust\n\
             hostnossl all {TLS_ONLY_ROLE} 127.0.0.1/32 reject\n\
             host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n"
        );
        fs::write(dir.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        if self.as_root {
            self.give_to_postgres();
        }
        format!(
            " -c ssl=on -c ssl_cert_file='{dir}/server.crt' -c ssl_key_file='{dir}/server.key' \
             -c hba_file='{dir}/pg_hba.conf'",
            dir = dir.display()
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `initdb` or `pg_ctl`, run as the `postgres` user when we are root.
    fn tool(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        let mut cmd = if self.as_root {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(exe);
            cmd
        } else {
            Command::new(exe)
        };
        cmd.current_dir(&self.dir);
        cmd
    }

    fn running_port(&self) -> Option<u16> {
        let mut status = self.tool("pg_ctl");
        status.arg("status").arg("-D").arg(self.data());
        if !output(status).status.success() {
            return None;
        }
        let port = self.stored_port();
        assert!(
            port.is_some(),
            "a server runs on {} but {} is missing; stop it with pg_ctl stop -D ...",
            self.data().display(),
            self.dir.join("port").display()
        );
        port
    }

    fn stored_port(&self) -> Option<u16> {
        let text = fs::read_to_string(self.dir.join("port")).ok()?;
        text.trim().parse().ok()
    }

    fn initdb(&self) {
        let data = self.data();
        if data.exists() {
            // An earlier initdb did not finish.
            fs::remove_dir_all(&data)
                .unwrap_or_else(|e| panic!("cannot remove {}: {e}", data.display()));
        }
        fs::create_dir_all(self.dir.join("sock")).expect("cannot create the socket directory");
        if self.as_root {
            self.give_to_postgres();
        }
        let mut initdb = self.tool("initdb");
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        let out = output(initdb);
        assert!(
            out.status.success(),
            "initdb failed for {}:\n{}{}",
            data.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(self.dir.join("initdb-done"), "").expect("cannot write the initdb marker");
    }

    /// Lets the `postgres` user reach and own the cluster directory.
    fn give_to_postgres(&self) {
        for dir in self.dir.ancestors().skip(1) {
            let Ok(meta) = fs::metadata(dir) else {
                continue;
            };
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                eprintln!(
                    "pg harness: chmod o+x {} so postgres can reach its cluster",
                    dir.display()
                );
                fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o001))
                    .unwrap_or_else(|e| panic!("cannot chmod o+x {}: {e}", dir.display()));
            }
        }
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:postgres"]).arg(&self.dir);
        let out = output(chown);
        assert!(
            out.status.success(),
            "chown -R postgres:postgres {} failed (is there a postgres user?): {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the stopped cluster, on the stored port if it is still free, and returns the port.
    fn start(&self) -> u16 {
        let port = self
            .stored_port()
            .filter(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
            .unwrap_or_else(free_port);
        fs::write(self.dir.join("port"), port.to_string()).expect("cannot write the port file");

        // Unix socket paths are limited to 107 bytes; with a deeper target dir use TCP only.
        let sock = match self.socket_dir() {
            Some(sock) => format!("'{}'", sock.display()),
            None => "''".to_string(),
        };
        let tls = if self.tls {
            self.write_tls_files()
        } else {
            String::new()
        };
        let log = self.dir.join("log");
        let mut pg_ctl = self.tool("pg_ctl");
        pg_ctl
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-p {port} -c unix_socket_directories={sock} -c listen_addresses=127.0.0.1 \
                 -c fsync=off -c synchronous_commit=off -c full_page_writes=off{tls}"
            ));
        let out = output(pg_ctl);
        if !out.status.success() {
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = log_text.lines().collect();
            panic!(
                "pg_ctl start failed for {}:\n{}{}\nlast lines of {}:\n{}",
                self.data().display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log.display(),
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        port
    }
}

/// Directory holding both `initdb` and `pg_ctl`: from PATH, else the newest
/// /usr/lib/postgresql/<version>/bin.
fn find_bin_dir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let version = e.file_name().to_string_lossy().parse().unwrap_or(0);
            (version, e.path().join("bin"))
        })
        .collect();
    versioned.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    std::env::split_paths(&path)
        .chain(versioned.into_iter().map(|(_, dir)| dir))
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

fn running_as_root() -> bool {
    // Effective uid, the second field of "Uid:"; no libc needed.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uids = s.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            Some(uids.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free TCP port on 127.0.0.1")
        .port()
}

fn output(mut cmd: Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    match (url[..authority_end].rfind('@'), url[scheme_end..].find(':')) {
        (Some(at), Some(colon)) if scheme_end + colon < at => {
            format!("{}***{}", &url[..=scheme_end + colon], &url[at..])
        }
        _ => url.to_string(),
    }
}
