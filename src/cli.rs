//! The command line: argument parsing, logging setup, and exit codes (0 nothing to act on,
//! 2 users need action, 1 error). Errors get their context here, at the edge.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::auth0::RetryPolicy;
use crate::auth0::export_job::ExportOptions;
use crate::config::{Config, ProcessEnv};
use crate::private_file::PRIVATE;
use crate::report::{self, Format};
use crate::run::{self, RunOptions};
use crate::{check, daemon, explain, migration, reviewed};

const EXIT_ERROR: u8 = 1;
const EXIT_NEEDS_ACTION: u8 = 2;

#[derive(Parser)]
#[command(
    name = "driftsync",
    version,
    about = "Finds legacy-database changes that never reach Auth0 because the user was already migrated",
    long_about = "Finds legacy-database changes that never reach Auth0 because the user was already migrated.\n\n\
        driftsync reads the legacy PostgreSQL database (read only, through the mapping query in the \
        config) and Auth0's copy of the profiles (a users-export job through the Management API, or \
        an export file), matches them by user id and reports which users have stranded changes, \
        and why it thinks so.\n\n\
        New here? `driftsync demo` shows the whole job on generated data.\n\n\
        Exit codes: 0 nothing to act on; 2 stranded, conflict, orphaned or deleted_in_auth0 \
        users remain; 1 error.",
    after_help = "Configuration keys are documented in config/driftsync.example.toml (installed \
        by the Debian package as /usr/share/doc/driftsync/examples/driftsync.example.toml). \
        Logs go to stderr; set DRIFTSYNC_LOG (e.g. DRIFTSYNC_LOG=debug) to change their level."
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(
        long,
        global = true,
        env = "DRIFTSYNC_CONFIG",
        default_value = "driftsync.toml",
        value_name = "PATH"
    )]
    config: PathBuf,

    /// Log format on stderr: `text` (readable), or `json` (one object per line, for a log
    /// collector).
    #[arg(
        long,
        global = true,
        env = "DRIFTSYNC_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// One full run: read both sides, classify every user, print the report; with --push, send
    /// the stranded changes to Auth0.
    ///
    /// Report-only by default: nothing is written to the legacy database (ever) or to Auth0.
    /// Exits 2 when stranded, conflict, orphaned or deleted_in_auth0 users remain un-pushed, 0
    /// when there is nothing to act on (users who signed up in Auth0, auth0_only, need nothing). SIGTERM or Ctrl-C during a push stops new requests, lets those in
    /// flight finish and be journaled, and exits 1.
    Reconcile(ReconcileArgs),
    /// The scheduled worker: full runs on `schedule.full`, changes runs on `schedule.changes`,
    /// one replica at a time (PostgreSQL advisory lock), metrics on `metrics.listen`.
    ///
    /// Serves /metrics and /healthz; notifies systemd (READY, STATUS, WATCHDOG); SIGHUP reloads
    /// the configuration (an invalid one is logged and the old one kept); SIGTERM or SIGINT
    /// lets the running step finish and journal, then exits 0 within 10 s.
    Daemon,
    /// Apply a plan saved by `reconcile --save-plan FILE`, exactly: a full run that sends the
    /// plan's requests and nothing else.
    ///
    /// Refuses a plan made for another tenant or connection, or longer ago than
    /// `reconcile.max_plan_age_hours` (default 24). Each user is classified again with fresh
    /// data (a users-export job: a bounded number of Management API calls however large the
    /// plan); a user whose legacy row or Auth0 values changed since the plan was made is not
    /// sent and is reported `superseded`. Journal, guards and exit codes as for `reconcile
    /// --push`. With --dry-run, only shows the plan.
    Apply(ApplyArgs),
    /// Explain one user's status: both sides' values of every compared key, whether they are
    /// equal and by which rule, what the stored baseline says, the verdict, and the PATCH a
    /// push would send.
    ///
    /// Reads the legacy row with the mapping query restricted to USER_ID (read only), the Auth0
    /// profile through the Management API (GET /api/v2/users/{id}) or from the export file
    /// (--cache-file, or `cache.source = "file"`), and the user's baseline from the state file.
    /// With --push, sends this user's push now, journaled like a run's. Exits 1 when the user
    /// exists on neither side, 2 when it still needs action, 0 otherwise.
    Explain(ExplainArgs),
    /// How far the migration has come: legacy users, migrated (share), not migrated, signups
    /// in Auth0, migrations per day (7- and 28-day averages) and the projected completion date,
    /// from the full runs recorded in the state file.
    ///
    /// With a `last_active_at` column in the mapping query, also the not-migrated users by how
    /// long they have been inactive in the legacy system. Reads only the state file.
    Progress {
        /// Output format: `table` for people, `json` for programs.
        #[arg(long, value_enum, default_value_t = PeopleOrPrograms::Table)]
        format: PeopleOrPrograms,
    },
    /// The go/no-go before switching the legacy database off: exits 0 only when the last
    /// successful full run is recent (`cutover.max_run_age_hours`) and found no not_migrated,
    /// stranded, conflict or deleted_in_auth0 user; otherwise exits 2 naming each blocker, its
    /// count, a few ids and what to do.
    Cutover {
        /// Output format: `table` for people, `json` for programs.
        #[arg(long, value_enum, default_value_t = PeopleOrPrograms::Table)]
        format: PeopleOrPrograms,

        /// Also write every migrated user as CSV `user_id,migrated_at` (the legacy id and
        /// Auth0's created_at) to FILE (mode 0600), read from Auth0's side: mark those legacy
        /// rows as migrated, so that a deleted user cannot come back and a Get User script can
        /// skip users who live in Auth0.
        #[arg(long, value_name = "FILE")]
        migrated_ids: Option<PathBuf>,

        /// With --migrated-ids: read Auth0's users from this export file instead of a
        /// users-export job.
        #[arg(long, value_name = "FILE", requires = "migrated_ids")]
        cache_file: Option<PathBuf>,
    },
    /// Check the configuration without writing anything: validate it, run the mapping query
    /// with LIMIT 0 (read only), get an Auth0 token and read the connection, open the export
    /// file; print what was found.
    Check,
    /// Show the whole job on generated data: a throwaway PostgreSQL, a simulated Auth0 tenant,
    /// a report-only reconcile through a users-export job, and what the report means.
    ///
    /// Needs no Auth0 account and no configuration file. Needs the PostgreSQL server binaries
    /// (initdb, pg_ctl) unless --legacy-url is given.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Print a shell completion script for bash, zsh or fish to standard output.
    ///
    /// The Debian package installs them; by hand, e.g.
    /// `driftsync completions bash > /usr/share/bash-completion/completions/driftsync`,
    /// `driftsync completions zsh > /usr/share/zsh/vendor-completions/_driftsync`,
    /// `driftsync completions fish > /usr/share/fish/vendor_completions.d/driftsync.fish`.
    Completions {
        #[arg(value_enum)]
        shell: ShellArg,
    },
    /// Write the man pages (driftsync.1 and one driftsync-<command>.1 per command) into DIR;
    /// what the Debian package installs. Generated from the same definitions as --help.
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

#[cfg(feature = "demo")]
#[derive(Args)]
struct DemoArgs {
    /// Use this PostgreSQL database instead of starting a throwaway server; the demo creates
    /// (and drops again) a table named driftsync_demo_users in it.
    #[arg(long, value_name = "URL")]
    legacy_url: Option<String>,

    /// Number of generated users.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    users: u64,

    /// Seed of the generated data (the same seed gives the same users).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct ReconcileArgs {
    /// Report format: `table` for people, `json` or `ndjson` (one user per line, then a summary
    /// line) for programs.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,

    /// Write the report to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Read Auth0's profiles from this users-export file (NDJSON, gzip or plain) instead of
    /// what `[cache]` in the config says.
    #[arg(long, value_name = "FILE")]
    cache_file: Option<PathBuf>,

    /// Also write the run's metrics in Prometheus text format to FILE (atomically), for
    /// node_exporter's textfile collector; written after failed runs too.
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,

    /// Push the stranded changes to Auth0 (PATCH, journaled, rate limited). Without it (and
    /// without `reconcile.push = true`) the run only reports.
    #[arg(long)]
    push: bool,

    /// Override `reconcile.max_push_fraction` for this run, after checking that the planned
    /// changes are real.
    #[arg(long, value_name = "FRACTION", requires = "push", value_parser = fraction)]
    max_push_fraction: Option<f64>,

    /// Run although the legacy rows or the Auth0 users fell by more than
    /// `reconcile.max_shrink_fraction` since the last successful full run. Without it such a
    /// run stops (exit 1) before anything is pushed or recorded: the usual cause is a broken
    /// mapping query or a truncated export. Use it once, after checking that the fall is real.
    #[arg(long)]
    allow_shrink: bool,

    /// Also save the push plan to FILE (JSON, stable key order, mode 0600) for review: every
    /// planned request, its user, Auth0's values it was computed from, the run, tenant and
    /// connection. `driftsync apply FILE` sends exactly those requests later.
    #[arg(long, value_name = "FILE", conflicts_with = "push")]
    save_plan: Option<PathBuf>,
}

fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a number between 0 and 1")),
    }
}

#[derive(Args)]
struct ApplyArgs {
    /// The plan file (`reconcile --save-plan FILE` wrote it).
    #[arg(value_name = "FILE")]
    plan: PathBuf,

    /// Only check and show the plan; send nothing (`--format table` shows it readably).
    #[arg(long)]
    dry_run: bool,

    /// Report format (with --dry-run: the plan's): `table` for people, `json` or `ndjson` for
    /// programs.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,

    /// Write the report to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Also write the run's metrics in Prometheus text format to FILE (atomically).
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,

    /// Override `reconcile.max_push_fraction` for this run.
    #[arg(long, value_name = "FRACTION", value_parser = fraction)]
    max_push_fraction: Option<f64>,

    /// Run although the legacy rows or the Auth0 users fell by more than
    /// `reconcile.max_shrink_fraction` since the last successful full run.
    #[arg(long)]
    allow_shrink: bool,
}

#[derive(Args)]
struct ExplainArgs {
    /// The user, with or without `auth0|` (e.g. `auth0|42` or `42`).
    #[arg(value_name = "USER_ID")]
    user_id: String,

    /// Send this user's push now (journaled exactly like a run's push), instead of only
    /// showing it.
    #[arg(long)]
    push: bool,

    /// Read the Auth0 profile from this users-export file (NDJSON, gzip or plain) instead of
    /// the Management API.
    #[arg(long, value_name = "FILE")]
    cache_file: Option<PathBuf>,

    /// Output format: `table` for people, `json` for programs.
    #[arg(long, value_enum, default_value_t = PeopleOrPrograms::Table)]
    format: PeopleOrPrograms,
}

/// The format of the commands that print one document: a table for people or JSON.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PeopleOrPrograms {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Table,
    Json,
    Ndjson,
}

impl From<FormatArg> for Format {
    fn from(format: FormatArg) -> Format {
        match format {
            FormatArg::Table => Format::Table,
            FormatArg::Json => Format::Json,
            FormatArg::Ndjson => Format::Ndjson,
        }
    }
}

/// Parses the command line, runs the command and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // clap exits 2 on usage errors, but 2 means "users need action" here.
            return if error.use_stderr() {
                ExitCode::from(EXIT_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.log_format);
    // One thread for the async side: it only waits on sockets, timers and signals (the heavy
    // work of a run has threads of its own). PostgreSQL's connection task and the loop that
    // consumes its rows then share a core and its cache instead of waking each other across
    // threads for every batch of rows: a tenth less CPU for a million-user run.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Completions { shell } => {
            let shell = match shell {
                ShellArg::Bash => clap_complete::Shell::Bash,
                ShellArg::Zsh => clap_complete::Shell::Zsh,
                ShellArg::Fish => clap_complete::Shell::Fish,
            };
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "driftsync", &mut out);
            out.flush().context("cannot write the completions")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile(args) => {
            let config = Config::load(&cli.config, &ProcessEnv)?;
            for warning in config.permission_warnings() {
                tracing::warn!("{warning}");
            }
            reconcile_command(&config, args, None).await
        }
        Command::Daemon => {
            daemon::run(cli.config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply(args) => {
            let config = Config::load(&cli.config, &ProcessEnv)?;
            for warning in config.permission_warnings() {
                tracing::warn!("{warning}");
            }
            let plan = reviewed::load(&args.plan, &config)?;
            if args.dry_run {
                let mut out = std::io::stdout().lock();
                let json = !matches!(args.format, FormatArg::Table);
                reviewed::show(&plan, json, &mut out)?;
                out.flush().context("cannot write to standard output")?;
                return Ok(ExitCode::SUCCESS);
            }
            let run = ReconcileArgs {
                format: args.format,
                output: args.output,
                cache_file: None,
                metrics_file: args.metrics_file,
                push: true,
                max_push_fraction: args.max_push_fraction,
                allow_shrink: args.allow_shrink,
                save_plan: None,
            };
            reconcile_command(&config, run, Some(std::sync::Arc::new(plan))).await
        }
        Command::Explain(args) => {
            let config = Config::load(&cli.config, &ProcessEnv)?;
            let options = explain::Options {
                user_id: args.user_id,
                push: args.push,
                cache_file: args.cache_file,
                json: args.format == PeopleOrPrograms::Json,
            };
            let mut out = std::io::stdout().lock();
            let explained = explain::run(&config, &options, &ProcessEnv, &mut out).await?;
            out.flush().context("cannot write to standard output")?;
            Ok(if explained.needs_action {
                ExitCode::from(EXIT_NEEDS_ACTION)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Progress { format } => {
            let config = Config::load(&cli.config, &ProcessEnv)?;
            let mut out = std::io::stdout().lock();
            migration::progress(&config, format == PeopleOrPrograms::Json, &mut out)?;
            out.flush().context("cannot write to standard output")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cutover {
            format,
            migrated_ids,
            cache_file,
        } => {
            let config = Config::load(&cli.config, &ProcessEnv)?;
            let options = migration::CutoverOptions {
                json: format == PeopleOrPrograms::Json,
                migrated_ids,
                cache_file,
            };
            let mut out = std::io::stdout().lock();
            let ready = migration::cutover(&config, &options, &ProcessEnv, &mut out).await?;
            out.flush().context("cannot write to standard output")?;
            Ok(if ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NEEDS_ACTION)
            })
        }
        Command::Check => {
            let config = Config::load(&cli.config, &ProcessEnv)?;
            let mut out = std::io::stdout().lock();
            check::run(&config, &ProcessEnv, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            let options = crate::demo::DemoOptions {
                legacy_url: args.legacy_url,
                users: args.users,
                seed: args.seed,
            };
            let mut out = std::io::stdout().lock();
            crate::demo::run(&options, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn reconcile_command(
    config: &Config,
    args: ReconcileArgs,
    plan: Option<std::sync::Arc<crate::model::saved_plan::SavedPlan>>,
) -> anyhow::Result<ExitCode> {
    let options = RunOptions {
        save_plan: args.save_plan.clone(),
        plan,
        cache_file: args.cache_file,
        progress: true,
        push: args.push,
        max_push_fraction: args.max_push_fraction,
        allow_shrink: args.allow_shrink,
        report_file: args
            .output
            .clone()
            .map(|path| (path, Format::from(args.format))),
        export: ExportOptions::from_config(&config.cache),
        retry: RetryPolicy::from_config(&config.auth0),
        ..RunOptions::default()
    };
    stop_on_signals(options.stop.clone());
    let metrics = match &args.metrics_file {
        Some(_) => Some(crate::metrics::install()?),
        None => None,
    };
    let result = run::run(config, &options, &ProcessEnv).await;
    if let (Some(handle), Some(path)) = (&metrics, &args.metrics_file) {
        // Written whatever the outcome: a failed run is exactly what an alert must see.
        crate::metrics::write_file(handle, path)?;
    }
    let run::Finished {
        report,
        report_file,
        ..
    } = result?;
    let format = Format::from(args.format);
    match (&args.output, report_file) {
        (Some(path), Some(prepared)) => prepared
            .commit()
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        (Some(path), None) => {
            report::write_atomically(path, PRIVATE, |out| report.render(format, out))
                .with_context(|| format!("cannot write the report to {}", path.display()))?
        }
        (None, _) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            report
                .render(format, &mut out)
                .and_then(|()| out.flush())
                .context("cannot write the report to standard output")?;
        }
    }
    let code = if report.needs_action() {
        ExitCode::from(EXIT_NEEDS_ACTION)
    } else {
        ExitCode::SUCCESS
    };
    // The process ends next, and the kernel takes its memory back at once: freeing a large
    // report entry by entry first would only delay the exit (a tenth of a second at a million
    // users).
    std::mem::forget(report);
    Ok(code)
}

/// Cancels `stop` on the first SIGTERM or SIGINT; a second one ends the process at once.
fn stop_on_signals(stop: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot listen for SIGTERM/SIGINT");
            return;
        };
        for round in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            if round == 0 {
                tracing::warn!(
                    "stopping: no new pushes start; those in flight finish and are journaled"
                );
                stop.cancel();
            } else {
                std::process::exit(i32::from(EXIT_ERROR));
            }
        }
    });
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRIFTSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("driftsync=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible subcommand with the long flags it accepts (its own and the global ones).
    fn commands() -> Vec<(String, Vec<String>)> {
        let mut cli = Cli::command();
        cli.build();
        let flags = |command: &clap::Command| -> Vec<String> {
            command
                .get_arguments()
                .filter(|arg| !arg.is_hide_set())
                .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
                .collect()
        };
        let mut all = vec![(String::new(), flags(&cli))];
        for sub in cli.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            if sub.get_name() != "help" {
                all.push((sub.get_name().to_owned(), flags(sub)));
            }
        }
        all
    }

    #[test]
    fn completions_name_every_subcommand_and_flag() {
        let commands = commands();
        assert!(commands.len() >= 6, "{commands:?}");
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "driftsync", &mut script);
            let script = String::from_utf8(script).unwrap();
            for (name, flags) in &commands {
                assert!(script.contains(name.as_str()), "{shell}: {name} missing");
                for flag in flags {
                    // fish writes `-l push` for --push.
                    let fish = format!("-l {}", &flag[2..]);
                    assert!(
                        script.contains(flag.as_str()) || script.contains(&fish),
                        "{shell}: {flag} of {name:?} missing"
                    );
                }
            }
        }
    }

    #[test]
    fn man_pages_cover_every_subcommand_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        clap_mangen::generate_to(Cli::command(), dir.path()).unwrap();
        // roff escapes a dash as `\-`.
        let read = |name: &str| {
            std::fs::read_to_string(dir.path().join(name))
                .unwrap_or_else(|error| panic!("{name}: {error}"))
                .replace("\\-", "-")
        };
        let main_page = read("driftsync.1");
        for (name, flags) in commands() {
            let page = if name.is_empty() {
                main_page.clone()
            } else {
                assert!(
                    main_page.contains(&name),
                    "driftsync.1 does not list {name}"
                );
                read(&format!("driftsync-{name}.1"))
            };
            for flag in flags {
                assert!(page.contains(&flag), "the page of {name:?} misses {flag}");
            }
        }
    }
}
