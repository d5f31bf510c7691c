//! The server binary stops cleanly on SIGTERM (what `kill` and service managers send), not only
//! on Ctrl-C, and says it is draining.

#![cfg(unix)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("s.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_parkpay-server"))
        .args([
            "--database-url",
            &db,
            "--http",
            "127.0.0.1:0",
            "--mqtt-bind",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server starts");
    // The binary prints its address once it is ready (after its log lines): read until then.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "exited early:\n{seen}"
        );
        seen.push_str(&line);
        if line.contains("dashboard http://") {
            break;
        }
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut logs = String::new();
    out.read_to_string(&mut logs).unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.contains("shutting down"), "{logs}");
}
