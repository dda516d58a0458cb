//! Sentinel without Sentinel: a listener (`--sentinel`, default 26379)
//! that answers the commands Sentinel-aware Redis clients use to find
//! the master, with the Raft leader's Redis address. There is no
//! election of its own: the master is whoever leads Raft, and it changes
//! when Raft elects another leader. Subscribers of `+switch-master` get
//! Sentinel's message (`<name> <old-ip> <old-port> <new-ip> <new-port>`)
//! when that happens.

use catga_raft::WatchReceiver as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::admin::role;
use super::conn::{unknown_command, Shared};
use super::parser::{Limits, Parser};
use super::reply::Reply;

pub struct SentinelServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
}

impl SentinelServer {
    pub async fn start(shared: Arc<Shared>) -> anyhow::Result<Self> {
        let listen = shared.config.sentinel_listen.clone();
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind Sentinel listener {listen}: {e}"))?;
        let local_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = s.cancelled() => return,
                };
                match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, shared.clone(), s.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(cause = %e, "Sentinel accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        });
        Ok(Self { local_addr, stop })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

/// The master's (ip, port) as Sentinel reports it, if a leader is known.
fn master(shared: &Shared) -> Option<(String, u16)> {
    role(shared).master
}

/// One Sentinel connection: requests answered in order; once subscribed,
/// `+switch-master` messages are pushed as the leader changes.
async fn serve(stream: TcpStream, shared: Arc<Shared>, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let limits = Limits::default();
    let mut parser = Parser::new(limits);
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::new();
    let mut proto = 2u8;
    let mut subscribed: Vec<Vec<u8>> = Vec::new();
    let mut leader_changes = shared.raft.get().map(|r| r.raft.metrics());
    let mut last_master = master(&shared);
    // Raft metrics change on every replication event; only a change of
    // leader is looked at further.
    let mut last_leader = leader_changes.as_mut().and_then(|rx| rx.borrow_and_update().current_leader);
    loop {
        let changed = async {
            match leader_changes.as_mut() {
                Some(rx) if !subscribed.is_empty() => loop {
                    if rx.changed().await.is_err() {
                        break false;
                    }
                    let leader = rx.borrow_and_update().current_leader;
                    if leader != last_leader {
                        last_leader = leader;
                        break true;
                    }
                },
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            ok = changed => {
                if !ok {
                    leader_changes = None;
                    continue;
                }
                // Between leaders there is none; the switch is from the
                // last one known to the next.
                if let Some((nh, np)) = master(&shared) {
                    if let Some((oh, op)) = last_master.as_ref().filter(|(h, p)| (h, p) != (&nh, &np)) {
                        if subscribed.iter().any(|c| c == b"+switch-master") {
                            let msg = format!("{} {oh} {op} {nh} {np}", shared.config.sentinel_master_name);
                            Reply::Push(vec![Reply::bulk("message"), Reply::bulk("+switch-master"), Reply::bulk(msg)])
                                .encode(proto, &mut out);
                        }
                    }
                    last_master = Some((nh, np));
                }
                if !out.is_empty() {
                    if wr.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                continue;
            }
            _ = stop.cancelled() => return,
        }
        loop {
            match parser.parse(&buf, true) {
                Ok(Some(req)) => {
                    if !req.is_empty() {
                        let argv: Vec<&[u8]> = req.args(&buf).collect();
                        let name = String::from_utf8_lossy(argv[0]).to_ascii_lowercase();
                        match name.as_str() {
                            "subscribe" if argv.len() >= 2 => {
                                for ch in &argv[1..] {
                                    if !subscribed.iter().any(|c| c == ch) {
                                        subscribed.push(ch.to_vec());
                                    }
                                    Reply::Push(vec![
                                        Reply::bulk("subscribe"),
                                        Reply::bulk(ch),
                                        Reply::Int(subscribed.len() as i64),
                                    ])
                                    .encode(proto, &mut out);
                                }
                                last_master = master(&shared).or(last_master);
                            }
                            "hello" => {
                                let reply = match argv.get(1).copied() {
                                    None => None,
                                    Some([b'2']) => Some(2),
                                    Some([b'3']) => Some(3),
                                    Some(_) => None,
                                };
                                match reply {
                                    Some(p) => {
                                        proto = p;
                                        hello(&shared, proto).encode(proto, &mut out);
                                    }
                                    None if argv.len() == 1 => hello(&shared, proto).encode(proto, &mut out),
                                    None => Reply::err("NOPROTO unsupported protocol version").encode(proto, &mut out),
                                }
                            }
                            "sentinel" if argv.len() == 3 && argv[1].eq_ignore_ascii_case(b"failover") => {
                                failover(&shared, argv[2]).await.encode(proto, &mut out)
                            }
                            _ => command(&shared, &name, &argv).encode(proto, &mut out),
                        }
                    }
                    buf.advance(req.consumed);
                }
                Ok(None) => break,
                Err(e) => {
                    out.extend_from_slice(&e.reply());
                    let _ = wr.write_all(&out).await;
                    return;
                }
            }
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// SENTINEL FAILOVER: the Raft leadership goes to the other voter furthest
/// along (through whichever node leads), and `+OK` once another node
/// leads, or once the cluster is left to elect by itself. Refusals as
/// Sentinel words them.
async fn failover(shared: &Shared, name: &[u8]) -> Reply {
    use catga_raft::HandoverError;
    if name != shared.config.sentinel_master_name.as_bytes() {
        return Reply::err("ERR No such master with that name");
    }
    let Some(raft) = shared.raft.get() else { return Reply::err("NOGOODSLAVE No suitable replica to promote") };
    match raft.handover(None).await {
        Ok(Ok(_)) | Ok(Err(HandoverError::TimedOut)) => Reply::ok(),
        Ok(Err(HandoverError::InProgress)) => Reply::err("INPROG Failover already in progress"),
        Ok(Err(e)) => {
            tracing::info!(cause = %e, "SENTINEL FAILOVER refused");
            Reply::err("NOGOODSLAVE No suitable replica to promote")
        }
        Err(e) => Reply::err(format!("ERR no leader to fail over from: {e}")),
    }
}

fn hello(shared: &Shared, proto: u8) -> Reply {
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(&shared.config.compat_version)),
        (Reply::bulk("proto"), Reply::Int(i64::from(proto))),
        (Reply::bulk("id"), Reply::Int(0)),
        (Reply::bulk("mode"), Reply::bulk("sentinel")),
        (Reply::bulk("role"), Reply::bulk("sentinel")),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ])
}

fn fields(pairs: Vec<(&str, String)>) -> Reply {
    Reply::Map(pairs.into_iter().map(|(k, v)| (Reply::bulk(k), Reply::bulk(v))).collect())
}

/// The master's fields as `SENTINEL masters` / `master` list them.
fn master_fields(shared: &Shared) -> Reply {
    let r = role(shared);
    let (ip, port) = r.master.clone().unwrap_or_default();
    let sentinels = shared.raft.get().map_or(1, |raft| raft.status().members.len());
    fields(vec![
        ("name", shared.config.sentinel_master_name.clone()),
        ("ip", ip),
        ("port", port.to_string()),
        ("runid", String::new()),
        ("flags", if r.master.is_some() { "master" } else { "master,o_down" }.into()),
        ("num-slaves", r.replicas.len().to_string()),
        ("num-other-sentinels", sentinels.saturating_sub(1).to_string()),
        ("quorum", (sentinels / 2 + 1).to_string()),
    ])
}

fn command(shared: &Shared, name: &str, argv: &[&[u8]]) -> Reply {
    match name {
        "ping" => Reply::Simple("PONG".into()),
        "role" => Reply::Array(vec![
            Reply::bulk("sentinel"),
            Reply::Array(vec![Reply::bulk(&shared.config.sentinel_master_name)]),
        ]),
        "client" | "auth" => Reply::ok(),
        "info" => {
            let r = role(shared);
            let (ip, port) = r.master.clone().unwrap_or_default();
            let sentinels = shared.raft.get().map_or(1, |raft| raft.status().members.len());
            Reply::Verbatim(format!(
                "# Sentinel\r\nsentinel_masters:1\r\nsentinel_tilt:0\r\nmaster0:name={},status={},address={ip}:{port},slaves={},sentinels={sentinels}\r\n",
                shared.config.sentinel_master_name,
                if r.master.is_some() { "ok" } else { "odown" },
                r.replicas.len(),
            ))
        }
        "sentinel" if argv.len() >= 2 => sentinel(shared, argv),
        "sentinel" => Reply::err("ERR wrong number of arguments for 'sentinel' command"),
        _ => unknown_command(argv),
    }
}

fn sentinel(shared: &Shared, argv: &[&[u8]]) -> Reply {
    let sub = String::from_utf8_lossy(argv[1]).to_ascii_lowercase();
    let named = |i: usize| argv.get(i).is_some_and(|n| *n == shared.config.sentinel_master_name.as_bytes());
    let no_such = || Reply::err("ERR No such master with that name");
    match sub.as_str() {
        "get-master-addr-by-name" if argv.len() == 3 => match (named(2), master(shared)) {
            (true, Some((ip, port))) => Reply::Array(vec![Reply::bulk(ip), Reply::bulk(port.to_string())]),
            _ => Reply::NullArray,
        },
        "masters" if argv.len() == 2 => Reply::Array(vec![master_fields(shared)]),
        "master" if argv.len() == 3 => {
            if named(2) {
                master_fields(shared)
            } else {
                no_such()
            }
        }
        "replicas" | "slaves" if argv.len() == 3 => {
            if !named(2) {
                return no_such();
            }
            let r = role(shared);
            let (mip, mport) = r.master.clone().unwrap_or_default();
            Reply::Array(
                r.replicas
                    .iter()
                    .map(|(ip, port)| {
                        fields(vec![
                            ("name", format!("{ip}:{port}")),
                            ("ip", ip.clone()),
                            ("port", port.to_string()),
                            ("flags", "slave".into()),
                            ("master-link-status", if r.master.is_some() { "ok" } else { "err" }.into()),
                            ("master-host", mip.clone()),
                            ("master-port", mport.to_string()),
                        ])
                    })
                    .collect(),
            )
        }
        "sentinels" if argv.len() == 3 => {
            if !named(2) {
                return no_such();
            }
            let Some(raft) = shared.raft.get() else { return Reply::Array(Vec::new()) };
            let st = raft.status();
            Reply::Array(
                st.members
                    .iter()
                    .filter(|(id, _)| **id != st.id)
                    .filter_map(|(id, m)| {
                        let (h, p) = m.sentinel_addr.rsplit_once(':')?;
                        Some(fields(vec![
                            ("name", m.name.clone()),
                            ("ip", h.to_string()),
                            ("port", p.to_string()),
                            ("runid", format!("{id:040x}")),
                            ("flags", "sentinel".into()),
                        ]))
                    })
                    .collect(),
            )
        }
        "myid" if argv.len() == 2 => Reply::bulk(format!("{:040x}", shared.raft.get().map_or(0, |r| r.id))),
        "ckquorum" if argv.len() == 3 => {
            if !named(2) {
                return no_such();
            }
            let n = shared.raft.get().map_or(1, |raft| raft.status().members.len());
            Reply::Simple(format!("OK {n} usable Sentinels. Quorum and failover authorization can be reached"))
        }
        "get-master-addr-by-name"
        | "masters"
        | "master"
        | "replicas"
        | "slaves"
        | "sentinels"
        | "myid"
        | "ckquorum"
        | "failover" => Reply::err(format!("ERR wrong number of arguments for 'sentinel|{sub}' command")),
        _ => Reply::err(format!("ERR unknown subcommand '{}'. Try SENTINEL HELP.", String::from_utf8_lossy(argv[1]))),
    }
}
