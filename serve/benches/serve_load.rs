//! `medpatch serve` under load against `medpatch predict` on a folder, on the same model and
//! machine: throughput and latency percentiles at 1, 4 and 16 concurrent clients, dynamic batching
//! on and off. A measurement that prints a table, not a test.
//!
//!     cargo bench -p medpatch-serve --bench serve_load          (or cargo bench --workspace ...)
//!
//! Environment: MEDPATCH_BENCH_MODEL (an ONNX file; default the embedded demo model),
//! MEDPATCH_BENCH_PROVIDER (default auto), MEDPATCH_BENCH_THREADS (backend threads, default 0 =
//! all cores, as `medpatch predict`), MEDPATCH_BENCH_REQUESTS (per scenario, default 64),
//! MEDPATCH_BIN (time the real `medpatch predict` on the folder too).
//! The X-rays are the NIH images of ../shared/data/cxr (the bundled one when absent).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Connection, TestServer, config, percentiles};
use medpatch_engine::{Engine, Input, ModelSource, ProviderChoice};
use medpatch_serve::{BatchPolicy, ServeConfig};
use medpatch_testkit::repo_root;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn cpu_model() -> String {
    let lscpu = std::process::Command::new("lscpu").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    lscpu
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Model name:").map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into())
}

/// CPU time this process has used (user + system), from /proc/self/stat (Linux; clock ticks of
/// 10 ms): on a shared machine, CPU per image is steadier than wall-clock throughput.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    // `cargo test --benches` builds this and runs it with no arguments other than --bench: only
    // run for real under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let images: Vec<PathBuf> = {
        let nih = repo_root().join("../shared/data/cxr/nih/images");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&nih)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "png"))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        if found.is_empty() {
            found.push(repo_root().join("assets/00001369_000.png"));
        }
        found
    };
    let files: Vec<Vec<u8>> = images.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let requests: usize = env_or("MEDPATCH_BENCH_REQUESTS", 64);
    let threads: usize = env_or("MEDPATCH_BENCH_THREADS", 0);
    let provider: ProviderChoice = env_or("MEDPATCH_BENCH_PROVIDER", ProviderChoice::Auto);
    let model = std::env::var_os("MEDPATCH_BENCH_MODEL").map_or(ModelSource::Default, |p| ModelSource::Path(p.into()));
    let engine = Arc::new(Engine::builder().model(model).provider(provider).threads(threads).build().unwrap());
    println!("CPU: {} ({} cores available)", cpu_model(), std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "model: {}, provider {} ({} threads), precision {}; {} X-rays ({}), {requests} requests per row",
        engine.model().origin,
        engine.provider(),
        if threads == 0 { "all".to_string() } else { threads.to_string() },
        engine.precision(),
        images.len(),
        images[0].parent().map_or(String::new(), |p| p.display().to_string())
    );

    // The ceiling: `medpatch predict`'s own pipeline on the folder (decode beside the backend, 4
    // images per batch), in this process, twice over the folder to match the request count.
    let paths: Vec<&PathBuf> = images.iter().cycle().take(requests).collect();
    let inputs: Vec<Input<'_>> = paths.iter().map(|p| Input::Path(p)).collect();
    let _ = engine.predict(Input::Path(&images[0])); // warm-up
    let (started, cpu) = (Instant::now(), cpu_seconds());
    engine.predict_pipelined(&inputs, 4, |_, r| r.map(|_| ())).unwrap();
    let folder = requests as f64 / started.elapsed().as_secs_f64();
    let folder_cpu_ms = (cpu_seconds() - cpu) * 1e3 / requests as f64;
    println!(
        "\n{:<44} {:>10} {:>8.1} CPU ms/img",
        "medpatch predict pipeline (in-process)",
        format!("{folder:.1} img/s"),
        folder_cpu_ms
    );
    if let Some(bin) = std::env::var_os("MEDPATCH_BIN").map(PathBuf::from).filter(|p| p.exists()) {
        // The real CLI on a folder of the same images, start-up and model load included.
        let dir = std::env::temp_dir().join(format!("medpatch-serve-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, p) in paths.iter().enumerate() {
            std::fs::copy(p, dir.join(format!("{i:04}.png"))).unwrap();
        }
        let started = Instant::now();
        let out = std::process::Command::new(&bin)
            .args([
                "predict",
                "--quiet",
                "--provider",
                &engine.provider().to_string(),
                "--threads",
                &threads.to_string(),
            ])
            .arg(&dir)
            .output()
            .unwrap();
        let wall = started.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        println!(
            "{:<44} {:>10}",
            "medpatch predict FOLDER (process, wall)",
            format!("{:.1} img/s", requests as f64 / wall)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    println!(
        "\n{:<8} {:<13} {:>8} {:>9} {:>9} {:>11} {:>11} {:>11}",
        "clients", "batching", "img/s", "p50 ms", "p99 ms", "mean batch", "vs predict", "CPU ms/img"
    );
    let policies = [
        ("off", BatchPolicy { max_batch_images: 1, ..BatchPolicy::default() }),
        ("8", BatchPolicy::default()),
        ("8, 2 ms delay", BatchPolicy { max_queue_delay: Duration::from_millis(2), ..BatchPolicy::default() }),
    ];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let serve = |clients: usize, batching: BatchPolicy| -> (f64, f64, f64, f64, f64) {
        let s = TestServer::with_engine(
            Arc::clone(&engine),
            ServeConfig { batching, cpu_threads: cores, max_queue_requests: 256, ..config() },
        );
        let addr = s.http;
        let per_client = requests.div_ceil(clients);
        let (started, cpu) = (Instant::now(), cpu_seconds());
        let latencies: Vec<f64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let files = &files;
                    scope.spawn(move || {
                        let mut connection = Connection::open(addr).unwrap();
                        let mut ms = Vec::with_capacity(per_client);
                        for r in 0..per_client {
                            let body = &files[(c * per_client + r) % files.len()];
                            let sent = Instant::now();
                            let reply = connection.send("POST", "/v1/predict", &[], body).unwrap();
                            assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
                            ms.push(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        ms
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let throughput = latencies.len() as f64 / started.elapsed().as_secs_f64();
        let cpu_ms = (cpu_seconds() - cpu) * 1e3 / latencies.len() as f64;
        let text = String::from_utf8(common::http(addr, "GET", "/metrics", &[], b"").body).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let (p50, p99) = percentiles(latencies);
        (throughput, p50, p99, value("nv_inference_count") / value("nv_inference_exec_count"), cpu_ms)
    };
    for clients in [1usize, 4, 16] {
        for (label, batching) in policies.clone() {
            let (throughput, p50, p99, mean_batch, cpu_ms) = serve(clients, batching);
            println!(
                "{clients:<8} {label:<13} {throughput:>8.1} {p50:>9.1} {p99:>9.1} {mean_batch:>11.2} {:>10.2}× {cpu_ms:>11.1}",
                throughput / folder
            );
        }
    }
    // The done-when ratio on a shared, noisy machine: folder and 16 served clients in turn, three
    // times, and the median of the three ratios.
    let mut ratios: Vec<f64> = (0..3)
        .map(|_| {
            let (started, cpu) = (Instant::now(), cpu_seconds());
            engine.predict_pipelined(&inputs, 4, |_, r| r.map(|_| ())).unwrap();
            let folder = requests as f64 / started.elapsed().as_secs_f64();
            let folder_cpu = (cpu_seconds() - cpu) * 1e3 / requests as f64;
            let (served, _, _, _, served_cpu) = serve(16, BatchPolicy::default());
            println!(
                "interleaved: folder {folder:.1} img/s ({folder_cpu:.1} CPU ms/img), 16 clients {served:.1} img/s \
                 ({served_cpu:.1} CPU ms/img): {:.2}×",
                served / folder
            );
            served / folder
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "\n16 clients, default batching (8 images, no delay): median {:.2}× the in-process `medpatch predict` folder throughput",
        ratios[1]
    );
}
