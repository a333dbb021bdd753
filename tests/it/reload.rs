//! Hot reload: every trigger (file watcher for the usual ways files get replaced, SIGHUP,
//! the admin API), broken configs never swapped in, and no request lost while it happens.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::support::{Relay, TestSink};

/// A config whose only route stamps deliveries with `X-Version: {version}`.
fn versioned(sink: &TestSink, version: u32) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nroutes:\n  - name: load\n    match: {{ path: /hooks/load }}\n    forward:\n      - url: {}/deliver\n        headers: {{ X-Version: \"{version}\" }}\n        body: {{ n: \"{{{{json body.n}}}}\" }}\n",
        sink.url()
    )
}

/// Sends one event and returns the version stamped on its delivery.
async fn delivered_version(relay: &Relay, sink: &TestSink) -> String {
    let before = sink.seen().len();
    let reply = relay.client.post_json(&relay.url("/hooks/load"), &[], r#"{"n": -1}"#).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let seen = sink.wait_for(before + 1).await;
    seen[before].header("x-version").unwrap_or_default().to_string()
}

fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test]
async fn api_reload_reports_errors_and_keeps_the_old_config() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&versioned(&sink, 1)).await;
    std::fs::write(relay.config_path(), "listen: 127.0.0.1:0\nroutes:\n  - name: load\n    match: { path: /hooks/load\n").unwrap();
    let reply = relay.client.post_json(&relay.admin_url("/api/reload"), &[], "").await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["error"], "config invalid; the previous config keeps serving");
    let detail = answer["detail"][0].as_str().unwrap();
    assert!(detail.contains("hookrelay.yaml:5:1: YAML syntax error"), "{detail}");
    assert_eq!(delivered_version(&relay, &sink).await, "1", "the old config keeps serving");
    let status = relay.client.get(&relay.admin_url("/api/status"), &[]).await.json();
    assert_eq!(status["config"]["generation"], 1);
    assert!(status["config"]["last_error"].as_str().unwrap().contains("YAML syntax error"));

    std::fs::write(relay.config_path(), versioned(&sink, 2)).unwrap();
    let reply = relay.client.post_json(&relay.admin_url("/api/reload"), &[], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["generation"], 2, "the watcher may have reloaded first; either way generation 2 serves");
    assert_eq!(delivered_version(&relay, &sink).await, "2");
    let status = relay.client.get(&relay.admin_url("/api/status"), &[]).await.json();
    assert_eq!(status["config"]["last_error"], serde_json::Value::Null);
    let metrics = relay.client.get(&relay.admin_url("/metrics"), &[]).await.text();
    assert!(metrics.contains(r#"hookrelay_config_reloads_total{result="error"}"#), "{metrics}");

    // A file truncated by a writer that has not written yet is not a config with no routes.
    std::fs::write(relay.config_path(), "").unwrap();
    let reply = relay.client.post_json(&relay.admin_url("/api/reload"), &[], "").await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.text().contains("the config file is empty"), "{}", reply.text());
    assert_eq!(delivered_version(&relay, &sink).await, "2");
}

#[tokio::test]
async fn watcher_sees_vim_saves_atomic_moves_and_includes() {
    let sink = TestSink::start().await;
    let relay = Relay::start(&versioned(&sink, 1)).await;
    let path = relay.config_path();

    // vim (backupcopy=no): rename the original away, write a new file, delete the backup.
    let backup = path.with_file_name("hookrelay.yaml~");
    std::fs::rename(&path, &backup).unwrap();
    std::fs::write(&path, versioned(&sink, 2)).unwrap();
    std::fs::remove_file(&backup).unwrap();
    relay.wait_for_generation(2).await;
    assert_eq!(delivered_version(&relay, &sink).await, "2");

    // sed -i / atomic mv: write a temporary file and rename it over the config.
    write_atomically(&path, &versioned(&sink, 3));
    relay.wait_for_generation(3).await;
    assert_eq!(delivered_version(&relay, &sink).await, "3");

    // A new file matching an include glob adds its routes.
    let with_include = versioned(&sink, 3).replace("routes:\n", "include: [routes/*.yaml]\nroutes:\n");
    std::fs::create_dir(relay.dir.path().join("routes")).unwrap();
    write_atomically(&path, &with_include);
    relay.wait_for_generation(4).await;
    std::fs::write(
        relay.dir.path().join("routes/extra.yaml"),
        format!(
            "routes:\n  - name: extra\n    match: {{ path: /hooks/extra }}\n    respond: sync\n    forward:\n      - url: {}/extra\n",
            sink.url()
        ),
    )
    .unwrap();
    relay.wait_for_generation(5).await;
    let reply = relay.client.post_json(&relay.url("/hooks/extra"), &[], "{}").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[cfg(unix)]
#[tokio::test]
async fn watcher_sees_a_configmap_symlink_swap() {
    let sink = TestSink::start().await;
    let mount = tempfile::tempdir().unwrap();
    let dir = mount.path();
    // The layout kubelet writes: hookrelay.yaml -> ..data/hookrelay.yaml, ..data -> ..<timestamp>
    std::fs::create_dir(dir.join("..2026_11_24_01")).unwrap();
    std::fs::write(dir.join("..2026_11_24_01/hookrelay.yaml"), versioned(&sink, 1)).unwrap();
    std::os::unix::fs::symlink("..2026_11_24_01", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/hookrelay.yaml", dir.join("hookrelay.yaml")).unwrap();
    let running = hookrelay::app::start(&dir.join("hookrelay.yaml")).await.unwrap();
    let relay = Relay::attach(running);
    assert_eq!(delivered_version(&relay, &sink).await, "1");

    std::fs::create_dir(dir.join("..2026_11_24_02")).unwrap();
    std::fs::write(dir.join("..2026_11_24_02/hookrelay.yaml"), versioned(&sink, 2)).unwrap();
    std::os::unix::fs::symlink("..2026_11_24_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_24_01")).unwrap();
    relay.wait_for_generation(2).await;
    assert_eq!(delivered_version(&relay, &sink).await, "2");
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_binary() {
    let sink = TestSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let free_port = crate::support::binary::free_port;
    let (port, admin_port) = (free_port(), free_port());
    let config = |version: u32| {
        versioned(&sink, version).replace(
            "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }",
            &format!("listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin_port} }}"),
        )
    };
    let path = dir.path().join("hookrelay.yaml");
    std::fs::write(&path, config(1)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["run", "--no-watch", "-c", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = crate::support::reqwest_like::Client::new();
    let status_url = format!("http://127.0.0.1:{admin_port}/api/status");
    let generation = |client: crate::support::reqwest_like::Client| {
        let url = status_url.clone();
        async move { client.try_get(&url).await.map(|reply| reply.json()["config"]["generation"].as_u64().unwrap_or(0)) }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while generation(client.clone()).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&path, config(2)).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(generation(client.clone()).await, Some(1), "--no-watch: a file change alone does not reload");
    let killed = std::process::Command::new("sh").args(["-c", &format!("kill -HUP {}", child.id())]).status().unwrap();
    assert!(killed.success());
    while generation(client.clone()).await != Some(2) {
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = client.post_json(&format!("http://127.0.0.1:{port}/hooks/load"), &[], r#"{"n": 1}"#).await;
    assert_eq!(reply.status, 202);
    assert_eq!(sink.wait_for(1).await[0].header("x-version"), Some("2"));
    let _ = std::process::Command::new("sh").args(["-c", &format!("kill -TERM {}", child.id())]).status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "SIGTERM exits cleanly: {exit:?}");
}

/// 2,000 events from 8 clients while the config is rewritten 20 times (one write broken,
/// one a rename): every request answered 2xx, every event delivered exactly once, and the
/// last config in force within a second of the last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_lost_while_the_config_is_rewritten() {
    let sink = TestSink::start().await;
    let relay = Arc::new(Relay::start(&versioned(&sink, 0)).await);
    let path = relay.config_path();
    let clients = 8;
    let per_client = 250;
    let mut senders = Vec::new();
    for client_index in 0..clients {
        let relay = relay.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..per_client {
                let n = client_index * per_client + i;
                let reply = relay.client.post_json(&relay.url("/hooks/load"), &[], json!({ "n": n }).to_string()).await;
                assert_eq!(reply.status, 202, "event {n}: {}", reply.text());
            }
        }));
    }
    let writer = {
        let sink = sink.clone();
        tokio::spawn(async move {
            for version in 1..=20u32 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                match version {
                    7 => std::fs::write(&path, "routes: [ { name: broken\n").unwrap(),
                    12 => write_atomically(&path, &versioned(&sink, version)),
                    _ => std::fs::write(&path, versioned(&sink, version)).unwrap(),
                }
            }
            tokio::time::Instant::now()
        })
    };
    for sender in senders {
        sender.await.unwrap();
    }
    let last_write = writer.await.unwrap();
    let total = (clients * per_client) as usize;
    let seen = sink.wait_for(total).await;
    let numbers: Vec<i64> = seen.iter().map(|s| s.json()["n"].as_i64().unwrap()).collect();
    let unique: HashSet<i64> = numbers.iter().copied().collect();
    assert_eq!(unique.len(), total, "every event delivered");
    assert_eq!(numbers.len(), total, "and none twice");

    loop {
        if delivered_version(&relay, &sink).await == "20" {
            break;
        }
        assert!(last_write.elapsed() < Duration::from_secs(1), "the final config was not in force within 1 s of the last write");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reload attempts counted in the relay's metrics, by result.
async fn reload_attempts(client: &crate::support::reqwest_like::Client, admin: u16) -> (u64, u64, u64) {
    let text = client.get(&format!("http://127.0.0.1:{admin}/metrics"), &[]).await.text();
    let count = |result: &str| {
        text.lines()
            .find(|line| line.starts_with("hookrelay_config_reloads_total") && line.contains(&format!("result=\"{result}\"")))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    (count("ok"), count("error"), count("unchanged"))
}

/// The config folder also holds the store and a log appended every 50 ms, and webhooks
/// arrive at 20 per second: a quiet relay attempts no reload for 10 s; an edit applies
/// within a second; a broken edit is reported once.
#[cfg(unix)]
#[tokio::test]
async fn reload_applies_under_traffic_in_a_busy_folder_once_per_change() {
    use crate::support::binary::{free_port, spawn, stop, wait_up, Folder};
    let sink = TestSink::start().await;
    let (port, admin) = (free_port(), free_port());
    let config = |version: u32| {
        versioned(&sink, version).replace(
            "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }",
            &format!("listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin} }}\nstore: {{ path: ./relay.db }}"),
        )
    };
    let folder = Folder::new(&config(1));
    let client = crate::support::reqwest_like::Client::new();
    let mut child = spawn(&folder.config(), &[], &[]);
    wait_up(&client, &mut child, admin).await;
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let log = folder.dir.path().join("relay.log");
    let appender = {
        let busy = busy.clone();
        tokio::spawn(async move {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
            for line in 0..1000 {
                if !busy.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                writeln!(file, "line {line}").unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let traffic = {
        let (busy, client) = (busy.clone(), client.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            for n in 0..1000 {
                if !busy.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let reply = client.post_json(&format!("http://127.0.0.1:{port}/hooks/load"), &[], format!(r#"{{"n": {n}}}"#)).await;
                assert_eq!(reply.status, 202);
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(reload_attempts(&client, admin).await, (0, 0, 0), "a quiet relay read its config again");

    let status = format!("http://127.0.0.1:{admin}/api/status");
    let generation = |client: crate::support::reqwest_like::Client| {
        let url = status.clone();
        async move { client.get(&url, &[]).await.json()["config"]["generation"].as_u64().unwrap() }
    };
    assert_eq!(generation(client.clone()).await, 1);
    let edited = std::time::Instant::now();
    std::fs::write(folder.config(), config(2)).unwrap();
    while generation(client.clone()).await != 2 {
        assert!(edited.elapsed() < Duration::from_secs(1), "the edit did not apply within 1 s under traffic");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied = edited.elapsed();

    std::fs::write(folder.config(), "listen: [broken\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    appender.await.unwrap();
    let sent = traffic.await.unwrap();
    assert!(sent >= 150, "traffic kept flowing: {sent}");
    assert_eq!(reload_attempts(&client, admin).await, (1, 1, 0), "one reload per change (the edit applied in {applied:?})");
    assert_eq!(generation(client.clone()).await, 2, "the broken config was not swapped in");
    let logs = stop(child);
    let reported = logs.lines().filter(|line| line.contains("config reload failed")).count();
    assert_eq!(reported, 1, "a broken config is reported once: {logs}");
    assert_eq!(logs.lines().filter(|line| line.contains("the store is in a folder watched for config changes")).count(), 1, "{logs}");
}

/// A writer that truncates the config and writes it in two steps, again and again, never
/// gets its first half (a valid config with fewer routes) read and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_written_in_steps_is_never_served_half_written() {
    let sink = TestSink::start().await;
    let first_half = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nroutes:\n  - name: a\n    match: {{ path: /hooks/a }}\n    forward: [ {{ url: \"{}/a\" }} ]\n",
        sink.url()
    );
    let second_half = format!("  - name: b\n    match: {{ path: /hooks/b }}\n    forward: [ {{ url: \"{}/b\" }} ]\n", sink.url());
    let relay = Arc::new(Relay::start(&format!("{first_half}{second_half}")).await);
    let path = relay.config_path();
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        tokio::spawn(async move {
            // The first half stays alone for most of each cycle, so a reload forced in the
            // middle of the writes would almost surely read it.
            for _ in 0..40 {
                std::fs::write(&path, &first_half).unwrap();
                tokio::time::sleep(Duration::from_millis(35)).await;
                use std::io::Write;
                std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(second_half.as_bytes()).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            writing.store(false, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let mut sent = 0;
    while writing.load(std::sync::atomic::Ordering::Relaxed) && sent < 2000 {
        let reply = relay.client.post_json(&relay.url("/hooks/b"), &[], "{}").await;
        assert_eq!(reply.status, 202, "request {sent}: {}", reply.text());
        sent += 1;
    }
    writer.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(relay.client.post_json(&relay.url("/hooks/b"), &[], "{}").await.status, 202);
    assert!(sent > 20, "traffic ran while the file was rewritten: {sent}");
}
