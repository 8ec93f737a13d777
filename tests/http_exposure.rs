//! Where `keylife serve` listens: plain HTTP only on loopback addresses unless
//! `--insecure-http` (TLS lifts the rule); `--max-connections` is the binary's limit.

mod http_support;

use std::time::Duration;

use http_support::{ServeFiles, ServeProcess, TestCa, closed_by_server, raw_status};

/// `keylife serve` with `zones` and `extra`, expected to refuse before serving: its exit code
/// and standard error.
fn refused(files: &ServeFiles, zones: &[&str], extra: &[&str]) -> (i32, String) {
    let output = files
        .command(zones, extra)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.stdout.is_empty(),
        "it served: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const HEALTH_CLOSE: &[u8] =
    b"GET /keylife/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn plain_http_on_a_non_loopback_address_is_refused_naming_the_zone_and_the_ways_out() {
    let files = ServeFiles::new();
    for (zones, address) in [
        (&["ch-gva-2=0.0.0.0:0"][..], "0.0.0.0:0"),
        (
            &["ch-gva-2=127.0.0.1:0", "de-fra-1=0.0.0.0:0"][..],
            "0.0.0.0:0",
        ),
        (&["ch-gva-2=[::]:0"][..], "[::]:0"),
    ] {
        let (code, stderr) = refused(&files, zones, &[]);
        assert_eq!(code, 1, "{stderr}");
        let zone = zones.last().unwrap().split('=').next().unwrap();
        for needle in [
            &format!("zone {zone}") as &str,
            address,
            "--tls-cert",
            "--tls-key",
            "--insecure-http",
        ] {
            assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
        }
        // Refused before any store was opened.
        assert!(!files.dir.path().join("data").join(zone).exists());
    }
}

#[test]
fn insecure_http_or_tls_lift_the_rule() {
    let files = ServeFiles::new();
    let served = ServeProcess::start(
        files.command(&["ch-gva-2=0.0.0.0:0"], &["--insecure-http"]),
        1,
    );
    assert!(
        served.urls[0].starts_with("http://0.0.0.0:"),
        "{:?}",
        served.urls
    );
    let port = served.addr(0).port();
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let answer = runtime()
        .block_on(closed_by_server(
            local,
            HEALTH_CLOSE,
            Duration::from_secs(10),
        ))
        .expect("answered and closed");
    assert_eq!(raw_status(&answer), Some(200));
    served.stop();

    let ca = TestCa::new();
    let (cert, key) = ca.write(files.dir.path());
    let served = ServeProcess::start(
        files.command(
            &["ch-gva-2=0.0.0.0:0"],
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
        ),
        1,
    );
    assert!(
        served.urls[0].starts_with("https://0.0.0.0:"),
        "{:?}",
        served.urls
    );
    served.stop();
}

#[test]
fn max_connections_closes_one_more_at_once_and_logs_the_first_at_once() {
    let files = ServeFiles::new();
    let mut served = ServeProcess::start(
        files.command(&["ch-gva-2=127.0.0.1:0"], &["--max-connections", "1"]),
        1,
    );
    let addr = served.addr(0);
    runtime().block_on(async {
        // One connection holds the only slot (idle, open).
        let holder = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..5 {
            let answer = closed_by_server(addr, HEALTH_CLOSE, Duration::from_secs(5))
                .await
                .expect("closed at once");
            assert!(answer.is_empty(), "{answer:?}");
        }
        drop(holder);
    });
    let line = served.wait_for_stderr("closed at once", Duration::from_secs(10));
    assert!(
        line.contains("1 connections open (--max-connections): 1 new connection(s)"),
        "{line}"
    );
    served.stop();
    let (code, stderr) = refused(
        &files,
        &["ch-gva-2=127.0.0.1:0"],
        &["--max-connections", "0"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--max-connections"), "{stderr}");
}

/// `command` (a `keylife serve`) run by `sh` with at most `files` open file descriptors.
#[cfg(target_os = "linux")]
fn with_fd_limit(command: &std::process::Command, files: usize) -> std::process::Command {
    let mut limited = std::process::Command::new("sh");
    limited
        .arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => limited.env(name, value),
            None => limited.env_remove(name),
        };
    }
    limited
}

#[cfg(target_os = "linux")]
#[test]
fn accept_failures_out_of_file_descriptors_are_logged_once_and_the_server_recovers() {
    let files = ServeFiles::new();
    let zones = ["ch-gva-2=127.0.0.1:0"];
    // How many descriptors the idle server holds.
    let served = ServeProcess::start(files.command(&zones, &[]), 1);
    std::thread::sleep(Duration::from_millis(300));
    let open = std::fs::read_dir(format!("/proc/{}/fd", served.id()))
        .unwrap()
        .count();
    served.stop();
    // Room for three connections more.
    let mut served = ServeProcess::start(with_fd_limit(&files.command(&zones, &[]), open + 3), 1);
    let addr = served.addr(0);
    let connections: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // The server fails to accept (EMFILE) about 20 times a second: one line, at once.
    let lines = served.stderr_for(Duration::from_secs(2));
    let failures: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains("accepting a connection failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{lines:#?}");
    assert!(failures[0].contains("os error 24"), "{lines:#?}");
    drop(connections);
    // Once the connections are gone, it serves again.
    let mut answered = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while answered.is_none() && std::time::Instant::now() < deadline {
        let answer = runtime()
            .block_on(closed_by_server(addr, HEALTH_CLOSE, Duration::from_secs(5)))
            .unwrap_or_default();
        if raw_status(&answer) == Some(200) {
            answered = Some(answer);
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        answered.is_some(),
        "not served after the connections closed"
    );
    // The failures since the first are counted in one line when it stops.
    let rest = served.stop();
    let counted: Vec<&String> = rest
        .iter()
        .filter(|line| line.contains("accepting a connection failed"))
        .collect();
    assert!(
        counted.len() == 1 && counted[0].contains("times since the last report"),
        "{rest:#?}"
    );
}
