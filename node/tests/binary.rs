//! The `catga` binary as a process: port 0, config precedence, a
//! SIGTERM that drains clients (INFO with ldm) and exits 0, and Redis's
//! SHUTDOWN.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::proc::{start, Proc, LOOPBACK_PORT_ZERO};
use common::Raw;
use tokio::process::Command;

/// Starts `catga` with `args` and `env` (RUST_LOG unset: the default
/// level must still log the listening line).
async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catga"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env_remove("RUST_LOG");
    start(cmd).await
}

fn server_name(info: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(info.strip_prefix("INFO ").unwrap()).unwrap();
    v["server_name"].as_str().unwrap().to_string()
}

/// Starts catga on port 0, connects a client, sends `signal`, and checks
/// the lame-duck INFO, the close, and exit code 0.
async fn port_zero_then_signal_drains_and_exits_zero(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args: Vec<&str> =
        ["run"].into_iter().chain(LOOPBACK_PORT_ZERO).chain(["--data-dir", data.to_str().unwrap()]).collect();
    let mut p = spawn(&args, &[]).await;
    assert_ne!(p.nats.port(), 0);
    assert!(data.is_dir(), "data dir created");
    let mut raw = Raw::connect(p.nats).await;
    raw.send(b"CONNECT {\"verbose\":false}\r\n").await;
    assert_eq!(raw.sync().await, b"");

    let pid = p.child.id().unwrap() as i32;
    send_signal(pid, signal);
    let line = raw.read_line().await.expect("INFO pushed on lame duck");
    assert!(line.starts_with("INFO ") && line.contains("\"ldm\":true"), "{line}");
    let rest = raw.read_to_close().await;
    assert!(rest.is_empty(), "nothing after the INFO: {rest:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn port_zero_and_sigterm_drains_then_exits_zero() {
    port_zero_then_signal_drains_and_exits_zero("TERM").await;
}

#[tokio::test]
async fn port_zero_and_sigint_drains_then_exits_zero() {
    port_zero_then_signal_drains_and_exits_zero("INT").await;
}

#[tokio::test]
async fn flags_win_over_env_and_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catga.toml");
    let data = dir.path().join("d");
    std::fs::write(
        &file,
        format!(
            "name = \"from-file\"\ndata_dir = {:?}\nhttp = \"127.0.0.1:0\"\n[nats]\nlisten = \"127.0.0.1:0\"\n[redis]\nlisten = \"127.0.0.1:0\"\nsentinel_listen = \"127.0.0.1:0\"\n[cluster]\nlisten = \"127.0.0.1:0\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let cfg = file.to_str().unwrap();

    // Each process gets its own data dir (sled allows one process per
    // database); the earlier ones are still running.
    let d = |i: usize| dir.path().join(format!("d{i}")).to_str().unwrap().to_string();
    let (d1, d2, d3, d4) = (d(1), d(2), d(3), d(4));

    let p = spawn(&["--config", cfg], &[("CATGA_DATA_DIR", &d1)]).await;
    assert_eq!(server_name(&Raw::connect(p.nats).await.info), "from-file");

    let p = spawn(&["--config", cfg], &[("CATGA_NAME", "from-env"), ("CATGA_DATA_DIR", &d2)]).await;
    assert_eq!(server_name(&Raw::connect(p.nats).await.info), "from-env");

    let p =
        spawn(&["--config", cfg, "--name", "from-flag"], &[("CATGA_NAME", "from-env"), ("CATGA_DATA_DIR", &d3)]).await;
    assert_eq!(server_name(&Raw::connect(p.nats).await.info), "from-flag");

    // Env also sets the listener: CATGA_CONFIG and CATGA_NATS without flags.
    let p = spawn(&[], &[("CATGA_CONFIG", cfg), ("CATGA_NATS", "127.0.0.1:0"), ("CATGA_DATA_DIR", &d4)]).await;
    assert_eq!(server_name(&Raw::connect(p.nats).await.info), "from-file");
}

#[tokio::test]
async fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[nats]\nmax_payload = 5\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_catga")).args(["--config", file.to_str().unwrap()]).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_payload") && err.contains("bad.toml"), "{err}");
}

/// `--worker-threads N` runs the node on N runtime threads.
/// Redis's SHUTDOWN stops the node as SIGTERM does: the connection
/// closes unanswered (as Redis exits) and the process exits 0. SAVE writes
/// the backup file first.
#[tokio::test]
async fn redis_shutdown_saves_then_stops_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args: Vec<&str> =
        ["run"].into_iter().chain(LOOPBACK_PORT_ZERO).chain(["--data-dir", data.to_str().unwrap()]).collect();
    let mut p = spawn(&args, &[]).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut r = tokio::net::TcpStream::connect(p.redis).await.unwrap();
    r.write_all(b"SET k v\r\n").await.unwrap();
    let mut ok = [0u8; 5];
    r.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    let dump = data.join("redis").join("dump.catga");
    assert!(!dump.exists());
    r.write_all(b"SHUTDOWN SAVE\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty(), "no reply to SHUTDOWN: {:?}", String::from_utf8_lossy(&rest));
    let status = tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(dump.is_file(), "SAVE wrote {}", dump.display());
}

#[tokio::test]
async fn worker_threads_sets_the_runtime_threads() {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = LOOPBACK_PORT_ZERO.to_vec();
    args.extend(["--worker-threads", "1", "--data-dir", dir.path().to_str().unwrap()]);
    let p = spawn(&args, &[]).await;
    let pid = p.child.id().unwrap();
    let workers = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|comm| comm.trim() == "tokio-rt-worker")
        .count();
    assert_eq!(workers, 1);
}

/// Transparent huge pages are off for the process by default (Redis's
/// `disable-thp`), and `disable_thp = false` leaves the system's setting.
#[tokio::test]
async fn transparent_huge_pages_are_disabled_unless_configured_not_to_be() {
    let thp = |pid: u32| -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .expect("kernel reports THP_enabled")
            .trim()
            .to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = LOOPBACK_PORT_ZERO.to_vec();
    args.extend(["--data-dir", dir.path().to_str().unwrap()]);
    let p = spawn(&args, &[]).await;
    assert_eq!(thp(p.child.id().unwrap()), "0");
    drop(p);

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("catga.toml");
    std::fs::write(&cfg, "disable_thp = false\n").unwrap();
    let mut args: Vec<&str> = LOOPBACK_PORT_ZERO.to_vec();
    args.extend(["--data-dir", dir.path().to_str().unwrap(), "--config", cfg.to_str().unwrap()]);
    let p = spawn(&args, &[]).await;
    assert_eq!(
        thp(p.child.id().unwrap()),
        thp(std::process::id()),
        "the system's setting, as this test process has it"
    );
}

/// The node's JSON log lines, read from its stderr by a task of their own
/// as they come: a node logging at `debug` fills a pipe nobody reads in
/// moments, and then blocks on its next log line.
fn json_lines(stderr: tokio::process::ChildStderr) -> tokio::sync::mpsc::UnboundedReceiver<serde_json::Value> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    rx
}

/// Takes log lines from `lines` until one whose message is `want`.
async fn next_json(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    want: &str,
) -> serde_json::Value {
    let read = async {
        while let Some(v) = lines.recv().await {
            if v["fields"]["message"] == want {
                return v;
            }
        }
        panic!("stderr closed before {want:?}");
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.unwrap_or_else(|_| panic!("no {want:?} log line"))
}

/// `--log-format json` writes one JSON object per line to stderr, and the
/// level comes from RUST_LOG: at `debug` a client's CONNECT is logged,
/// which the default `info` leaves out.
#[tokio::test]
async fn json_logs_at_the_level_rust_log_sets() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catga"));
    cmd.args(LOOPBACK_PORT_ZERO).args(["--log-format", "json", "--data-dir"]).arg(dir.path());
    cmd.env("RUST_LOG", "debug").stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = json_lines(child.stderr.take().unwrap());
    let listening = next_json(&mut lines, "catga node listening").await;
    assert_eq!(listening["level"], "INFO");
    let nats: std::net::SocketAddr = listening["fields"]["nats"].as_str().unwrap().parse().unwrap();
    let mut raw = Raw::connect(nats).await;
    raw.send(b"CONNECT {\"name\":\"json-log-test\"}\r\n").await;
    raw.sync().await;
    let connected = next_json(&mut lines, "client connected").await;
    assert_eq!(connected["level"], "DEBUG");
    assert_eq!(connected["fields"]["name"], "json-log-test");
}

/// Sends a signal with `kill(1)`, which keeps unsafe code out of tests.
fn send_signal(pid: i32, sig: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}
