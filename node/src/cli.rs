//! The `catga` command line.

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat, RunArgs};
use crate::node::Node;

#[derive(Debug, Parser)]
#[command(name = "catga", version, about = "One binary that replaces a NATS cluster and Redis + Sentinel")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (the default).
    Run(Box<RunArgs>),
    /// Cluster certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Cluster administration through a node's HTTP API.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Replace the whole Redis keyspace of the cluster with a backup
    /// file written by SAVE/BGSAVE (DATA_DIR/redis/dump.catga), through
    /// any node's HTTP API. Stop the clients first.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        file: std::path::PathBuf,
        #[arg(long, env = "CATGA_HTTP", default_value = "127.0.0.1:8222", value_name = "ADDR")]
        http: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, members and applied index, as the node sees them.
    Status {
        #[arg(long, env = "CATGA_HTTP", default_value = "127.0.0.1:8222", value_name = "ADDR")]
        http: String,
        /// Print the raw JSON of GET /cluster.
        #[arg(long)]
        json: bool,
    },
    /// Remove the node from the cluster gracefully; the node then stops.
    Leave {
        #[arg(long, env = "CATGA_HTTP", default_value = "127.0.0.1:8222", value_name = "ADDR")]
        http: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA (or reuse the one in DIR) and a certificate
    /// and key for each node that has none yet.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
        #[arg(long, value_name = "NAME,...", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(args)) => *args,
        Some(Command::Certs { command: CertsCommand::Init { dir, nodes } }) => {
            let written = catga_transport::certs::init_dir(&dir, &nodes)?;
            for f in &written {
                println!("wrote {}", f.display());
            }
            if written.is_empty() {
                println!("nothing to do: {} already holds certificates for {}", dir.display(), nodes.join(", "));
            }
            return Ok(());
        }
        Some(Command::Restore { file, http }) => {
            let bytes = std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (code, body) = runtime.block_on(crate::http::request_with(&http, "POST", "/redis/restore", &bytes))?;
            anyhow::ensure!(code == 200, "POST /redis/restore on {http}: HTTP {code}: {body}");
            print!("{body}");
            return Ok(());
        }
        Some(Command::Cluster { command }) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            return runtime.block_on(admin(command));
        }
        None => cli.run,
    };
    let config = Config::load(&args)?;
    init_logging(config.log_format);
    if config.disable_thp {
        disable_transparent_huge_pages();
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    runtime.enable_all().build()?.block_on(run(config))
}

/// Turns transparent huge pages off for this process, as Redis does at
/// start (`disable-thp yes`): pages faulted from here on are 4 KiB.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(cause = %e, "cannot disable transparent huge pages; memory may be resident in 2 MiB pages");
    }
}

async fn admin(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { http, json } => {
            let (code, body) = crate::http::request(&http, "GET", "/cluster").await?;
            anyhow::ensure!(code == 200, "GET /cluster on {http}: HTTP {code}: {body}");
            if json {
                println!("{body}");
                return Ok(());
            }
            let v: crate::http::ClusterView = serde_json::from_str(&body)?;
            print!("{}", render_status(&v));
            Ok(())
        }
        ClusterCommand::Leave { http } => {
            let (code, body) = crate::http::request(&http, "POST", "/cluster/leave").await?;
            anyhow::ensure!(code == 200, "POST /cluster/leave on {http}: HTTP {code}: {body}");
            print!("{body}");
            Ok(())
        }
    }
}

/// `catga cluster status` as text.
pub fn render_status(v: &crate::http::ClusterView) -> String {
    use std::fmt::Write;
    let r = &v.raft;
    let mut out = String::new();
    let leader = r.leader.map_or("none".to_string(), |l| {
        let name = r.members.get(&l).map_or("?", |m| m.name.as_str());
        format!("{name} ({l})")
    });
    let _ = writeln!(out, "node:     {} ({}) {}", r.name, r.id, r.state);
    let _ = writeln!(out, "leader:   {leader}");
    let _ = writeln!(out, "term:     {}", r.term);
    let applied = r.applied_index.map_or("-".to_string(), |i| i.to_string());
    let last = r.last_log_index.map_or("-".to_string(), |i| i.to_string());
    let _ = writeln!(out, "applied:  {applied} (last log {last})");
    let _ = writeln!(out, "members:");
    for (id, m) in &r.members {
        let role = if r.voters.contains(id) { "voter" } else { "learner" };
        let rtt = v.peers.iter().find(|p| p.id == *id).map_or(String::new(), |p| format!(" rtt={}us", p.rtt_us));
        let _ = writeln!(
            out,
            "  {id:<20} {:<12} {role:<7} cluster={} nats={} http={}{rtt}",
            m.name, m.cluster_addr, m.nats_addr, m.http_addr
        );
    }
    out
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Handlers first: the node announces it is listening inside `start`,
    // and a signal sent right after must drain it, not kill it.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let node = Node::start(config).await?;
    tokio::select! {
        _ = term.recv() => tracing::info!("shutdown signal received, draining clients"),
        _ = int.recv() => tracing::info!("shutdown signal received, draining clients"),
        _ = node.stop.cancelled() => tracing::info!("stop requested (cluster leave or SHUTDOWN); stopping"),
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
