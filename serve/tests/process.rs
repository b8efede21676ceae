//! `medpatch serve` as a process: its command line, the lines that say where it listens, and a
//! SIGTERM under load (every request the server accepted is answered, then it exits 0).

mod common;

use common::*;
use medpatch_testkit::repo_root;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The `medpatch` binary (scripts/test.sh builds it before the tests and sets MEDPATCH_BIN).
fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("MEDPATCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/medpatch"));
    if path.exists() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {} is not built (cargo build --workspace)", path.display());
        None
    }
}

fn provider() -> &'static str {
    if std::env::var_os("ORT_DYLIB_PATH").is_some() { "cpu" } else { "tract" }
}

/// A server process, killed if the test ends without stopping it.
struct Server {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    http: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(bin: &PathBuf, extra: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(["serve", "--http-port", "0", "--grpc-port", "0", "--provider", provider(), "--threads", "1"])
            .args(extra)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (found, addr) = mpsc::channel();
        let all = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("medpatch: http listening on ") {
                    let _ = found.send(rest.split_whitespace().next().unwrap_or("").parse::<SocketAddr>());
                }
                all.lock().unwrap().push(line);
            }
        });
        let http = match addr.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(a)) => a,
            other => {
                let _ = child.kill();
                panic!("the server did not say where it listens ({other:?}):\n{}", lines.lock().unwrap().join("\n"));
            }
        };
        Self { child, lines, http }
    }

    fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

#[test]
fn sigterm_answers_every_accepted_request_then_exits_zero() {
    let Some(bin) = binary() else { return };
    let mut server = Server::start(&bin, &[]);
    let addr = server.http;
    let png = std::fs::read(repo_root().join("assets/00001369_000.png")).unwrap();

    // One request held open across the signal: headers and half the body before SIGTERM, the rest
    // after. Accepted before the signal, so it must be answered.
    let mut held = std::net::TcpStream::connect(addr).unwrap();
    held.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let request = request_bytes("POST", "/v1/predict?name=held.png", &[], &png, true);
    let half = request.len() - png.len() / 2;
    held.write_all(&request[..half]).unwrap();

    let answered = AtomicUsize::new(0);
    let terminated = AtomicBool::new(false);
    let outcomes: Vec<(usize, usize, usize)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let (png, answered, terminated) = (&png, &answered, &terminated);
                scope.spawn(move || {
                    // (answered with 200, refused at connect or closed before any answer, other status)
                    let mut counts = (0, 0, 0);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    for _ in 0..200 {
                        if Instant::now() > deadline {
                            break;
                        }
                        match try_http(addr, "POST", "/v1/predict", &[], png) {
                            Ok(reply) if reply.status == 200 => {
                                counts.0 += 1;
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(reply) => {
                                eprintln!("unexpected {}: {}", reply.status, String::from_utf8_lossy(&reply.body));
                                counts.2 += 1;
                            }
                            Err(_) => {
                                counts.1 += 1;
                                // Once the server has stopped accepting, this client is done.
                                if terminated.load(Ordering::Relaxed) {
                                    break;
                                }
                            }
                        }
                    }
                    counts
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered.load(Ordering::Relaxed) < 16 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        server.terminate();
        terminated.store(true, Ordering::Relaxed);
        // The held request's body arrives after the signal.
        std::thread::sleep(Duration::from_millis(200));
        held.write_all(&request[half..]).unwrap();
        let reply = read_reply(&mut BufReader::new(&held)).unwrap();
        assert_eq!(reply.status, 200, "the request in flight at SIGTERM: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["input"], "held.png");
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let status = server.wait(Duration::from_secs(60)).expect("the server exits after draining");
    let stderr = server.stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM: no new connections") && stderr.contains("drained, exiting"), "{stderr}");
    let ok: usize = outcomes.iter().map(|o| o.0).sum();
    let other: usize = outcomes.iter().map(|o| o.2).sum();
    assert_eq!(other, 0, "every answer was a 200");
    // Every request the server answered reached its client: the access log's 200s on /v1/predict
    // are exactly the clients' 200s plus the held one.
    let logged =
        stderr.lines().filter(|l| l.contains("\"path\":\"/v1/predict\"") && l.contains("\"status\":200")).count();
    assert_eq!(logged, ok + 1, "{stderr}");
    eprintln!(
        "{ok} requests answered, the held one too; {} refused after SIGTERM",
        outcomes.iter().map(|o| o.1).sum::<usize>()
    );
}

#[test]
fn bad_command_lines_are_refused_with_the_reason() {
    let Some(bin) = binary() else { return };
    for (args, code, message) in [
        (vec!["--max-batch-images", "0"], 2, "--max-batch-images must be at least 1"),
        (vec!["--preferred-batch-images", "4,16"], 2, "--preferred-batch-images 16"),
        (vec!["--tls-cert", "x.pem"], 2, "--tls-key"),
        (vec!["--auth-token-file", "/nonexistent/token"], 1, "cannot read /nonexistent/token"),
    ] {
        let out = Command::new(&bin).arg("serve").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    // A port that is taken: the error names it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(&bin)
        .args(["serve", "--provider", "tract", "--http-port", &port, "--grpc-port", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{stderr}");
}
