//! The `nilecast` command: `serve` (the default) runs the server; `health`, `metrics`,
//! `clients` and `check` talk to a running one; `token` mints a development token;
//! `migrate` and `db-check` work on the database.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nilecast::cli::{self, Target};
use nilecast::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "nilecast",
    version,
    about = "Real-time broadcast engine: live changes to many WebSocket clients."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve {
        #[command(flatten)]
        config: Box<Config>,
    },
    /// Print a running server's /health; exit 1 when it is down or unhealthy.
    Health(Target),
    /// Print a running server's /metrics.
    Metrics(Target),
    /// Print a running server's connected clients.
    Clients {
        #[command(flatten)]
        target: Target,
        /// Every node's clients (cluster mode), not only this node's.
        #[arg(long)]
        cluster: bool,
    },
    /// Connect, subscribe, publish a probe change and report the round trip.
    Check(Target),
    /// Print an HS256 token signed with JWT_SECRET (development and scripts).
    Token(cli::TokenArgs),
    /// Apply the database schema (idempotent; triggers only for CHANGE_DETECTION=notify).
    Migrate {
        #[command(flatten)]
        db: Box<nilecast::db::DbConfig>,
    },
    /// Check the database: connection, schema version, triggers, a round trip through
    /// the change feed, the fallback.
    DbCheck {
        #[command(flatten)]
        db: Box<nilecast::db::DbConfig>,
    },
}

fn main() -> ExitCode {
    // A `.env` file in the working directory supplies variables not already set. A
    // malformed one stops every command: whatever it failed to set (a JWT key, a
    // database) would otherwise be missing without a word.
    if let Err(message) = nilecast::config::load_dotenv() {
        eprintln!("error: invalid .env file {message}");
        return ExitCode::from(2);
    }
    let mut args: Vec<String> = std::env::args().collect();
    let first = args.get(1).map(String::as_str);
    if first.is_none()
        || first.is_some_and(|a| {
            a.starts_with('-') && !matches!(a, "-h" | "--help" | "-V" | "--version")
        })
    {
        args.insert(1, "serve".into());
    }
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Serve { config } => serve(*config),
        Command::Health(t) => client(cli::health(&t)),
        Command::Metrics(t) => client(cli::show(&t, "/metrics")),
        Command::Clients { target, cluster } => client(cli::show(
            &target,
            if cluster {
                "/clients?scope=cluster"
            } else {
                "/clients"
            },
        )),
        Command::Check(t) => client(cli::check(&t)),
        Command::Migrate { db } => client(nilecast::db::check::migrate(&db)),
        Command::DbCheck { db } => client(nilecast::db::check::check(&db)),
        Command::Token(args) => match cli::token(&args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn client(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(mut config: Config) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(message) = config.validate() {
        eprintln!("error: invalid configuration: {message}");
        return ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.workers > 0 {
        builder.worker_threads(config.workers);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    match &config.verifier {
        None => tracing::warn!(
            target: "nilecast::security",
            "auth is OFF: no JWT_SECRET or JWT_PUBLIC_KEY is configured, so every client is an anonymous admin (development only)"
        ),
        Some(verifier) => tracing::info!(
            target: "nilecast::security",
            algorithms = ?verifier.algorithms(),
            "auth is on: clients need a valid token"
        ),
    }
    if config.cors_origin.iter().any(|o| o == "*") && config.is_production() {
        tracing::warn!(
            target: "nilecast::security",
            "CORS_ORIGIN is *: any web page may open connections to this server; list your sites' origins"
        );
    }
    // Signal handlers go in before the readiness line: a SIGTERM that arrives right
    // after it must shut down gracefully, not kill the process.
    let signals = Signals::install()?;
    let simulate = config.simulate_rate;
    let server = nilecast::start(config)
        .await
        .map_err(|e| anyhow::anyhow!("could not listen: {e}"))?;
    // Tests and scripts wait for this exact line on stdout.
    println!("nilecast listening on {}", server.addr);
    tracing::info!(addr = %server.addr, simulate_rate = simulate, "serving; open http://{}/test to watch live events", server.addr);
    // Said in so many words: the simulator's default depends on the rest of the
    // configuration (on only without production, a database or Redis).
    if simulate > 0.0 {
        tracing::info!(
            "simulator is on: {simulate} demo changes per second (SIMULATE_RATE=0 turns it off)"
        );
    } else {
        tracing::info!("simulator is off (SIMULATE_RATE turns it on)");
    }

    signals.wait().await;
    tracing::info!("shutting down: closing connections with 1001");
    if !server.shutdown().await {
        tracing::warn!("some connections did not close before the shutdown deadline");
    }
    Ok(())
}

/// SIGTERM and SIGINT, listened for from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
