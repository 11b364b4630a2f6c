//! `nilecast-loadgen`: drives load scenarios against nilecast or a peer server over
//! the native protocol or Socket.IO, checks delivery, and prints one JSON line per run.
//! `report` turns JSON lines into the markdown tables of RESULTS.md.
//!
//! Every run is bounded in connections and time, targets the address it is given
//! (loopback in every documented command), and stops by itself.

mod client;
mod db;
mod fleet;
mod publisher;
mod report;
mod scenarios;
mod stats;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use client::Protocol;
use fleet::Target;
use scenarios::Params;

#[derive(Parser)]
#[command(
    name = "nilecast-loadgen",
    version,
    about = "Load generator for nilecast and its peers."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario and print its JSON line.
    Run(Box<RunArgs>),
    /// Turn JSON lines (files, or stdin) into markdown tables with ratios to nilecast.
    Report { files: Vec<String> },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    Broadcast,
    Sharded,
    Idle,
    MaxFanout,
    ReconnectStorm,
    Connections,
    /// Hold subscribed connections and wait for changes someone else publishes (the
    /// processes of a multi-process run: loadtest/scale.sh).
    Listen,
    /// Database commit to client (needs --database-url and a server on that database).
    DbLatency,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server address (host:port), or several nodes of one cluster separated by
    /// commas: connection i goes to node i mod n, changes are published to the first.
    /// Loopback only in every documented command.
    #[arg(long, default_value = "127.0.0.1:4001", value_delimiter = ',')]
    addr: Vec<String>,
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    protocol: Protocol,
    /// WebSocket path of the native protocol.
    #[arg(long, default_value = "/ws")]
    ws_path: String,
    /// Offer permessage-deflate on every connection (and decompress what comes
    /// compressed).
    #[arg(long)]
    deflate: bool,
    /// Label of the server in the results.
    #[arg(long, default_value = "nilecast")]
    server: String,
    /// Server process id, to sample its CPU time and RSS from /proc; several (the
    /// nodes of a cluster) separated by commas are summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Keys (products) the connections are spread over (`sharded`, `idle`).
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Changes per second (`broadcast`, `sharded`, `reconnect-storm`).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Largest batch per POST /publish.
    #[arg(long, default_value_t = 500)]
    max_batch: usize,
    /// `max-fanout`: first rate, factor between steps, last rate, seconds per step.
    #[arg(long, default_value_t = 25.0)]
    start_rate: f64,
    #[arg(long, default_value_t = 1.4)]
    step_factor: f64,
    #[arg(long, default_value_t = 20_000.0)]
    max_rate: f64,
    #[arg(long, default_value_t = 5.0)]
    step_seconds: f64,
    /// `listen`: a file written once every connection is subscribed.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// `listen`: changes each connection waits for (within --duration seconds).
    #[arg(long, default_value_t = 1)]
    expect: usize,
    /// Runtime threads; 0 = one per available core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// `db-latency`: the PostgreSQL the server's change feed reads.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/nilecast_bench"
    )]
    database_url: String,
    /// `db-latency`: writer connections sharing the rate.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// `db-latency`: rows per committed transaction.
    #[arg(long, default_value_t = 1)]
    rows_per_commit: usize,
    /// `db-latency`: through the trigger (notify mode) or straight into the change log
    /// (poll mode).
    #[arg(long, value_enum, default_value_t = db::Write::Trigger)]
    write: db::Write,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Report { files } => report::run(&files),
        Command::Run(args) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if args.threads > 0 {
                builder.worker_threads(args.threads);
            }
            let runtime = builder.enable_all().build()?;
            let run = runtime.block_on(run(*args))?;
            println!("{}", serde_json::to_string(&run)?);
            Ok(())
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<scenarios::Run> {
    anyhow::ensure!(
        a.duration > 0.0 && a.duration <= 600.0,
        "--duration must be in (0, 600] seconds"
    );
    anyhow::ensure!(
        a.connections <= 100_000,
        "--connections is capped at 100000"
    );
    let p = Params {
        target: Target {
            addrs: a.addr,
            protocol: a.protocol,
            ws_path: a.ws_path,
            deflate: a.deflate,
        },
        server: a.server,
        server_pids: a.server_pid,
        connections: a.connections,
        keys: a.keys,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        max_batch: a.max_batch.max(1),
        start_rate: a.start_rate,
        step_factor: a.step_factor.max(1.05),
        max_rate: a.max_rate,
        step: Duration::from_secs_f64(a.step_seconds),
        ready_file: a.ready_file,
        expect: a.expect,
    };
    match a.scenario {
        Scenario::Broadcast => scenarios::broadcast(&p).await,
        Scenario::Sharded => scenarios::sharded(&p).await,
        Scenario::Idle => scenarios::idle(&p).await,
        Scenario::MaxFanout => scenarios::max_fanout(&p).await,
        Scenario::ReconnectStorm => scenarios::reconnect_storm(&p).await,
        Scenario::Connections => scenarios::connections(&p).await,
        Scenario::Listen => scenarios::listen(&p).await,
        Scenario::DbLatency => {
            let d = db::DbParams {
                url: a.database_url,
                writers: a.writers,
                rows_per_commit: a.rows_per_commit,
                write: a.write,
            };
            db::db_latency(&p, &d).await
        }
    }
}
