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
    Run(RunArgs),
    /// Cluster certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
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
        Some(Command::Run(args)) => args,
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
        None => cli.run,
    };
    let config = Config::load(&args)?;
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(config))
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
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown signal received, draining clients");
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
