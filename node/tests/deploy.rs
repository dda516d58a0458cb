//! deploy/start-cluster.sh and stop-cluster.sh, run as a user would (with
//! the test build of catga and free ports).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{eventually, Raw};
use futures_util::StreamExt;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
}

/// Stops the cluster even if the test fails half way.
struct Stop(PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script("stop-cluster.sh")).env("CATGA_LOCAL_DIR", &self.0).output();
    }
}

fn alive(pid: &str) -> bool {
    Command::new("kill").args(["-0", pid]).status().map(|s| s.success()).unwrap_or(false)
}

#[tokio::test]
async fn start_cluster_script_runs_three_nodes_and_stop_script_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let _stop = Stop(local.clone());
    let out = Command::new("bash")
        .arg(script("start-cluster.sh"))
        .env("CATGA_BIN", env!("CARGO_BIN_EXE_catga"))
        .env("CATGA_LOCAL_DIR", &local)
        .env("CATGA_NATS_PORTS", "0 0 0")
        .env("CATGA_CLUSTER_PORTS", "0 0 0")
        .env("CATGA_HTTP_PORTS", "0 0 0")
        .env("CATGA_REDIS_PORTS", "0 0 0")
        .env("CATGA_SENTINEL_PORTS", "0 0 0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "start failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let nodes: Vec<(String, String)> = stdout
        .lines()
        .filter(|l| l.starts_with('n') && l.contains(" nats=nats://"))
        .map(|l| {
            let pid = l.split("pid=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
            let url = l.split("nats=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
            (pid, url)
        })
        .collect();
    assert_eq!(nodes.len(), 3, "{stdout}");
    for f in ["certs/ca.pem", "certs/n1.pem", "n1.log", "n2/node_id", "n3.pid"] {
        assert!(local.join(f).exists(), "{f} missing");
    }

    // The nodes find each other: every node's INFO lists all three.
    for (_, url) in &nodes {
        let addr = url.trim_start_matches("nats://").parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let raw = Raw::connect(addr).await;
            let info: serde_json::Value = serde_json::from_str(raw.info.strip_prefix("INFO ").unwrap()).unwrap();
            if info["connect_urls"].as_array().map(Vec::len) == Some(3) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "mesh never formed: {}", raw.info);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A message crosses from n1 to n3.
    let sub = async_nats::connect(&nodes[2].1).await.unwrap();
    let mut s = sub.subscribe("deploy.check").await.unwrap();
    sub.flush().await.unwrap();
    let publisher = async_nats::connect(&nodes[0].1).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        // Interest reaches n1 shortly after the SUB; publish until it has.
        loop {
            publisher.publish("deploy.check", "hi".into()).await.unwrap();
            publisher.flush().await.unwrap();
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), s.next()).await {
                return m;
            }
        }
    })
    .await
    .expect("message crossed nodes");
    assert_eq!(got.payload, "hi");

    let out = Command::new("bash").arg(script("stop-cluster.sh")).env("CATGA_LOCAL_DIR", &local).output().unwrap();
    assert!(out.status.success());
    for (pid, _) in &nodes {
        let pid = pid.clone();
        eventually(Duration::from_secs(15), "node process gone", || !alive(&pid)).await;
    }
}
