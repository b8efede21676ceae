//! The load test, in-process on loopback, bounded in count and time: 16 concurrent clients with
//! every answer checked, dynamic batching on and off (latency percentiles printed, not asserted).

mod common;

use common::*;
use medpatch_engine::{Input, Prediction};
use medpatch_serve::{BatchPolicy, ServeConfig};
use medpatch_testkit::{cxr_dir, nih_images, repo_root};
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;

/// X-rays like a hold-out set: the real ones when ../shared is there, else the bundled one.
fn xrays() -> Vec<(String, Vec<u8>)> {
    let mut paths = vec![repo_root().join("assets/00001369_000.png")];
    if repo_root().join("../shared/data/cxr").is_dir() {
        paths.extend(nih_images().into_iter().take(8));
        let mut pediatric: Vec<_> =
            std::fs::read_dir(cxr_dir().join("pediatric")).unwrap().map(|e| e.unwrap().path()).collect();
        pediatric.sort();
        paths.extend(pediatric.into_iter().take(3));
        paths.push(cxr_dir().join("dicom/RG1_UNCR.dcm"));
    } else {
        eprintln!("(../shared/data/cxr is absent: the load test uses the bundled X-ray only)");
    }
    paths.iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(p).unwrap())).collect()
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(f64::NAN)
}

#[test]
fn sixteen_clients_get_right_answers_with_and_without_batching() {
    const REQUESTS_PER_CLIENT: usize = 4;
    let files = xrays();
    let references: Vec<Prediction> =
        files.iter().map(|(name, bytes)| engine().predict(Input::Bytes { bytes, name }).unwrap()).collect();
    let policies = [
        ("batching on (max 8 images, no delay)", BatchPolicy::default()),
        (
            "batching off (max 1 image)",
            BatchPolicy { max_batch_images: 1, max_queue_delay: Duration::ZERO, preferred_batch_images: vec![] },
        ),
    ];
    for (label, batching) in policies {
        let off = batching.max_batch_images == 1;
        let s = TestServer::start(ServeConfig { batching, ..config() });
        let addr = s.http;
        let started = Instant::now();
        let latencies: Vec<f64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..CLIENTS)
                .map(|client| {
                    let (files, references) = (&files, &references);
                    scope.spawn(move || {
                        let mut connection = Connection::open(addr).unwrap();
                        let mut latencies = Vec::new();
                        for r in 0..REQUESTS_PER_CLIENT {
                            let k = (client * 5 + r) % files.len();
                            let (body, n) =
                                binary_files_request(&[&files[k].1], r#","parameters":{"binary_data_output":true}"#);
                            let sent = Instant::now();
                            let reply = connection
                                .send(
                                    "POST",
                                    "/v2/models/medpatch/infer",
                                    &[("Inference-Header-Content-Length", &n.to_string())],
                                    &body,
                                )
                                .unwrap();
                            latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                            assert_eq!(reply.status, 200, "{}: {}", files[k].0, String::from_utf8_lossy(&reply.body));
                            for (name, _, values) in outputs_f32(&reply) {
                                let want = match name.as_str() {
                                    "probabilities" => &references[k].probabilities,
                                    "logits" => &references[k].logits,
                                    _ => &references[k].patch_logits,
                                };
                                let diff = max_abs_diff(&values, want);
                                assert!(diff <= 1e-6, "{} {name}: max |Δ| {diff}", files[k].0);
                            }
                        }
                        latencies
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        let text = String::from_utf8(http(addr, "GET", "/metrics", &[], b"").body).unwrap();
        let (images, batches) = (metric(&text, "nv_inference_count"), metric(&text, "nv_inference_exec_count"));
        let (p50, p99) = percentiles(latencies.clone());
        eprintln!(
            "{label}: {} requests from {CLIENTS} clients in {elapsed:.2} s: {:.1} requests/s, p50 {p50:.1} ms, p99 {p99:.1} ms, mean batch {:.2} images",
            latencies.len(),
            latencies.len() as f64 / elapsed,
            images / batches
        );
        assert_eq!(images, (CLIENTS * REQUESTS_PER_CLIENT) as f64);
        if off {
            assert_eq!(batches, images, "batching off: one image per backend call");
        }
        assert!(s.shutdown().is_ok());
    }
}
