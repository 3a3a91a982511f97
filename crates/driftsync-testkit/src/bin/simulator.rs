//! Runs the Auth0 simulator as a process, for benchmarks and manual experiments:
//!
//! ```text
//! cargo run --release -p driftsync-testkit --bin simulator -- --users export.json.gz [--listen 127.0.0.1:8080]
//! ```
//!
//! loads the users of an export file (NDJSON, gzip or plain) into the connection
//! `legacy-users`, prints `listening on http://…` and serves until standard input closes.
//! Each `stats` line read on standard input prints the request counters as one JSON line.
//! Credentials are the simulator's defaults (`driftsync-test` / `test-secret`).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use driftsync_testkit::simulator::{BucketLimit, Faults, Limits, Simulator, SimulatorConfig};

#[derive(Parser)]
struct Args {
    /// Export file whose users the tenant holds.
    #[arg(long)]
    users: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long, default_value = "legacy-users")]
    connection: String,
    /// The connection's import_mode (automatic migration).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    import_mode: bool,
    /// How the Management API's buckets are laid out: `global` (Enterprise: one bucket for
    /// every endpoint, of the size below) or `per-endpoint` (Essentials/Professional: the
    /// users-write bucket of the size below, the others at the same size).
    #[arg(long, default_value = "global", value_parser = ["global", "per-endpoint"])]
    layout: String,
    /// Burst of the users-write bucket (PATCH), or of the global one; default: Enterprise, 50.
    #[arg(long, default_value_t = 50)]
    write_burst: u32,
    /// Sustained rate per second of that bucket; default: Enterprise, 16.
    #[arg(long, default_value_t = 16.0)]
    write_rate: f64,
    /// Latency added to every Management API answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = SimulatorConfig::default();
    let bucket = BucketLimit {
        burst: args.write_burst,
        per_second: args.write_rate,
    };
    config.limits = Limits::per_class(bucket);
    if args.layout == "global" {
        config.limits.global = Some(bucket);
    }
    let simulator = Simulator::start_on(args.listen, config).await?;
    simulator.set_faults(Faults {
        latency: std::time::Duration::from_millis(args.latency_ms),
        ..Faults::default()
    });
    simulator.add_connection(&args.connection, args.import_mode);
    let input = open_export(&args.users)
        .with_context(|| format!("cannot open {}", args.users.display()))?;
    let loaded = simulator
        .load_ndjson(&args.connection, input)
        .with_context(|| format!("cannot load {}", args.users.display()))?;
    eprintln!("loaded {loaded} users");
    println!("listening on {}", simulator.base_url());

    // Answer `stats` lines as they come; stdin is read on its own thread.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<String>(8);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if sender.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(command) = receiver.recv().await {
        if command.trim() == "stats" {
            let stats = simulator.stats();
            println!(
                "{}",
                serde_json::json!({
                    "requests": stats.requests,
                    "token_requests": stats.token_requests,
                    "downloads": stats.downloads,
                    "throttled": stats.throttled,
                    "over_limit_attempts": stats.over_limit_attempts,
                    "patches": stats.patches,
                    "patches_applied": stats.patches_applied,
                    "by_endpoint": stats.by_endpoint,
                })
            );
        }
    }
    simulator.shutdown().await;
    Ok(())
}

/// The export file, decompressed when it starts with gzip's magic bytes.
fn open_export(path: &std::path::Path) -> std::io::Result<Box<dyn BufRead>> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let gzip = file.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(std::io::BufReader::new(
            flate2::bufread::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(file)
    })
}
