//! The Redis listener and its connections: read, parse every complete
//! request in the buffer, run each, write all replies with one write per
//! read (pipelining), close after QUIT or a protocol error.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Shared};
use super::parser::{Limits, Parser};
use super::RedisConfig;

const READ_CHUNK_BYTES: usize = 16 * 1024;

pub struct RedisServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    pub shared: Arc<Shared>,
}

impl RedisServer {
    pub async fn start(config: RedisConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind Redis listener {}: {e}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let shared = Shared::new(config);
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Ok(Self { local_addr, stop, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, addr)) => {
                if shared.clients.lock().len() >= shared.config.maxclients {
                    tokio::spawn(refuse(stream));
                    continue;
                }
                tokio::spawn(serve(stream, addr, shared.clone(), stop.clone()));
            }
            Err(e) => {
                tracing::warn!(cause = %e, "Redis accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Over `maxclients`: Redis's error, then close.
async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
}

async fn serve(stream: TcpStream, addr: SocketAddr, shared: Arc<Shared>, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let laddr = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let (mut rd, mut wr) = stream.into_split();
    let c = &shared.config;
    let limits = Limits {
        bulk_bytes_max: c.proto_max_bulk_len,
        multibulk_len_max: c.multibulk_len_max,
        inline_bytes_max: c.inline_bytes_max,
    };
    let query_max = c.query_buffer_bytes_max;
    let mut conn = Conn::new(shared.clone(), addr.to_string(), laddr);
    let mut parser = Parser::new(limits);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut out = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(n) => n,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        if n == 0 {
            return;
        }
        let mut close = false;
        loop {
            match parser.parse(&buf, conn.authenticated) {
                Ok(Some(req)) => {
                    if !req.is_empty() {
                        let argv: Vec<&[u8]> = req.args(&buf).collect();
                        let reply = conn.execute(&argv);
                        reply.encode(conn.proto(), &mut out);
                    }
                    buf.advance(req.consumed);
                    if conn.closing {
                        close = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(client = %addr, cause = %e, "Redis protocol error");
                    out.extend_from_slice(&e.reply());
                    close = true;
                    break;
                }
            }
        }
        if !close && buf.len() > query_max {
            tracing::warn!(client = %addr, bytes = buf.len(), "Redis query buffer over its limit; closing");
            close = true;
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = wr.shutdown().await;
            return;
        }
    }
}
