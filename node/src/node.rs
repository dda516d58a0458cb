//! A running node: every listener it owns, started and stopped together.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::bus::Bus;
use crate::config::Config;
use crate::nats::server::NatsServer;

pub struct Node {
    pub config: Config,
    pub bus: Arc<Bus>,
    pub nats: NatsServer,
}

impl Node {
    /// Creates the data directory and binds every listener.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display()))?;
        let bus = Arc::new(Bus::new());
        let nats = NatsServer::start(config.nats.clone(), bus.clone(), &config.name).await?;
        tracing::info!(nats = %nats.local_addr(), name = %config.name, data_dir = %config.data_dir.display(), "catga node listening");
        Ok(Self { config, bus, nats })
    }

    pub fn nats_addr(&self) -> SocketAddr {
        self.nats.local_addr()
    }

    /// Graceful stop: lame-duck drain of NATS clients.
    pub async fn shutdown(&self) {
        self.nats.drain().await;
    }
}
