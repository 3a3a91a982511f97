//! Writes a deterministic data set for benchmarks and manual runs:
//!
//! ```text
//! cargo run --release -p driftsync-testkit --bin datagen -- --users 100000 --seed 1 --out /tmp/ds \
//!     [--profile lean|realistic]
//! ```
//!
//! creates `schema.sql` (the legacy table), `legacy.copy` (rows in COPY text format),
//! `query.sql` (the mapping query), `copy_columns.txt` (the columns of the COPY rows), `export.json.gz` (the Auth0 export) and `expected.json`
//! (the summary a correct report-only reconcile gives).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use driftsync_testkit::datagen::{self, DataSet};

#[derive(Parser)]
struct Args {
    /// Number of user ids (legacy rows plus orphaned Auth0 users).
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// What each profile carries: `lean` (short text fields, two metadata keys) or
    /// `realistic` (every field, UTF-8 names, eight metadata keys with a nested object and an
    /// array, app_metadata with roles).
    #[arg(long, default_value = "lean")]
    profile: datagen::Shape,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let set = DataSet::new(args.users, args.seed).with_shape(args.profile);
    let path = |name: &str| args.out.join(name);

    std::fs::write(
        path("schema.sql"),
        format!("{};\n", set.create_table("users")),
    )?;
    std::fs::write(path("query.sql"), set.mapping_query("users"))?;
    std::fs::write(path("copy_columns.txt"), set.copy_columns())?;

    let mut legacy = BufWriter::new(File::create(path("legacy.copy"))?);
    set.write_legacy_copy(&mut legacy)?;
    legacy.flush()?;

    let gz = File::create(path("export.json.gz"))?;
    let mut export = BufWriter::new(flate2::write::GzEncoder::new(
        gz,
        flate2::Compression::default(),
    ));
    set.write_export(&mut export)?;
    export
        .into_inner()
        .map_err(|error| error.into_error())?
        .finish()?;

    let expected = serde_json::to_string_pretty(&set.expected())?;
    std::fs::write(path("expected.json"), expected + "\n")?;
    Ok(())
}
