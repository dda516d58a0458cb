//! catga-bench: load generators that talk to servers only over the network
//! with stock clients, so they measure catga and the reference servers alike.

mod cluster;
mod compare;
mod nats;
mod raft;
mod redis;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "catga-bench", about = "Benchmarks for catga and the servers it replaces")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The binaries a comparison starts, and how many rounds it runs.
#[derive(clap::Args)]
struct Servers {
    #[arg(long, default_value = "target/release/catga")]
    catga: PathBuf,
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Runs per workload per server.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start 3-node clusters of catga and nats-server (routes), run
    /// cross-node workloads on both and a failover measurement.
    CompareNatsCluster {
        #[command(flatten)]
        servers: Servers,
        /// Only workloads whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Leader changes under Redis load: fresh 3-node clusters,
    /// redis-benchmark through a follower, Raft terms before and after.
    RedisLoadElections {
        #[arg(long, default_value = "target/release/catga")]
        catga: PathBuf,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Requests per test per pipeline depth.
        #[arg(long, default_value_t = 200_000)]
        requests: u64,
        #[arg(long, default_value = "set,get,incr,lpush,hset")]
        tests: String,
    },
    /// Raft failover on three catga processes: leader SIGKILL → a new
    /// leader commits; node SIGKILL → its queue members removed; a
    /// service instance's connection closed → unanswered requests after.
    RaftFailover {
        #[arg(long, default_value = "target/release/catga")]
        catga: PathBuf,
        /// Leader kills (half as many node kills and instance closes).
        #[arg(long, default_value_t = 20)]
        kills: usize,
    },
    /// redis-benchmark (50 clients, each pipeline depth) against one catga
    /// node, a 3-node catga cluster and redis-server (without persistence
    /// and with appendfsync always), medians, latencies and ratios.
    CompareRedis {
        #[arg(long, default_value = "target/release/catga")]
        catga: PathBuf,
        #[arg(long, default_value = "redis-server")]
        redis_server: PathBuf,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Requests per test per run.
        #[arg(long, default_value_t = 50_000)]
        requests: u64,
        /// redis-benchmark -t.
        #[arg(long, default_value = "set,get,incr,lpush,hset")]
        tests: String,
        /// Pipeline depths (redis-benchmark -P), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        pipelines: Vec<u32>,
        /// Instead of `--tests`: one command for redis-benchmark to repeat,
        /// as its trailing arguments (e.g. `--command EVAL "return 1" 0`).
        #[arg(long, num_args = 1.., allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// NATS workloads against any NATS server.
    Nats {
        #[command(subcommand)]
        workload: NatsWorkload,
    },
    /// Start catga and nats-server, run every NATS workload on both,
    /// alternating, and print medians and ratios as a markdown table.
    CompareNats {
        #[command(flatten)]
        servers: Servers,
        /// Workload size in tenths (10 = full size).
        #[arg(long, default_value_t = 10)]
        scale: u64,
    },
}

#[derive(Subcommand)]
enum NatsWorkload {
    /// Publish only.
    Pub {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, default_value_t = 1_000_000)]
        msgs: u64,
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// One publisher, one subscriber (on --sub-url, e.g. another node).
    Pubsub {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long)]
        sub_url: Option<String>,
        #[arg(long, default_value_t = 1_000_000)]
        msgs: u64,
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// Request/reply with a responder.
    Req {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, default_value_t = 50_000)]
        requests: u64,
        #[arg(long, default_value_t = 1)]
        concurrency: u64,
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// One publisher, a queue group.
    Queue {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, default_value_t = 600_000)]
        msgs: u64,
        #[arg(long, default_value_t = 3)]
        members: usize,
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Nats { workload } => {
                let report = match workload {
                    NatsWorkload::Pub { url, msgs, size } => nats::publish(&url, msgs, size).await?,
                    NatsWorkload::Pubsub { url, sub_url: None, msgs, size } => nats::pubsub(&url, msgs, size).await?,
                    NatsWorkload::Pubsub { url, sub_url: Some(sub), msgs, size } => {
                        nats::pubsub_across(&url, &sub, msgs, size).await?
                    }
                    NatsWorkload::Req { url, requests, concurrency, size } => {
                        nats::request_reply(&url, requests, concurrency, size).await?
                    }
                    NatsWorkload::Queue { url, msgs, members, size } => nats::queue(&url, msgs, members, size).await?,
                };
                println!("{report}");
            }
            Cmd::CompareNatsCluster { servers: Servers { catga, nats_server, runs }, only } => {
                println!("{}", cluster::compare(catga, nats_server, runs, only).await?);
            }
            Cmd::CompareRedis { catga, redis_server, runs, requests, tests, pipelines, command } => {
                let workload = redis::Workload { tests: &tests, command: &command };
                println!("{}", redis::compare(catga, redis_server, runs, requests, workload, &pipelines).await?)
            }
            Cmd::RaftFailover { catga, kills } => println!("{}", raft::run(catga, kills).await?),
            Cmd::RedisLoadElections { catga, rounds, requests, tests } => {
                println!("{}", redis::load_elections(catga, rounds, requests, &tests).await?)
            }
            Cmd::CompareNats { servers: Servers { catga, nats_server, runs }, scale } => {
                let table = compare::compare(catga, nats_server, runs, scale).await?;
                println!("{table}");
            }
        }
        anyhow::Ok(())
    })
}
