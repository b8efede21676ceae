//! Hostile weight files: every one is read or refused with a named error — never an abort (stack
//! overflow, allocation failure), a hang, or memory past a fixed bound — and wrapped training
//! checkpoints are found or explained.
//!
//! A seeded generator (xorshift, fixed seed) makes `torch.save`-shaped zips and safetensors files
//! of each hostile class, with random parameters: nesting a million deep (lists and tuples),
//! memo entries re-used until they would expand exponentially, strings, zip entries and tensors
//! whose declared sizes lie, and random mutations (bit flips, truncation) of a valid checkpoint.
//! They run in a child process under `ulimit -v` ([`ADDRESS_SPACE_LIMIT`]), each on its own thread
//! with a deadline, and the growth of the child's resident memory per file must stay under
//! [`PER_FILE_RSS_LIMIT`] (see medpatch_testkit::bounded).

use medpatch_testkit::bounded::{is_worker, rerun_under_address_limit, reset_peak, status_kib};
use medpatch_weights::{STATE_DICT_KEYS, load_bytes};
use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SEED: u64 = 0x5EED_0FBA_DF11_E000;
/// Virtual memory limit for the worker process, KiB (2 GiB).
const ADDRESS_SPACE_LIMIT: u64 = 2 << 20;
/// Largest resident-memory growth one file may cause, KiB (the reader's value budget,
/// `pickle::MAX_VALUES`, is about 250 MiB of values at worst).
const PER_FILE_RSS_LIMIT: u64 = 512 << 10;
const PER_FILE_DEADLINE: Duration = Duration::from_secs(20);
const RANDOM_MUTANTS: usize = 200;
const WORKER: &str = "MEDPATCH_HOSTILE_WEIGHTS_WORKER";

use medpatch_models::Rng;

/// Pickle opcodes, protocol 2, written by hand.
mod pickle {
    pub fn string(s: &str) -> Vec<u8> {
        let mut out = vec![b'X'];
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out
    }
    pub fn int(v: u32) -> Vec<u8> {
        let mut out = vec![b'J'];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }
    pub fn global(module: &str, name: &str) -> Vec<u8> {
        format!("c{module}\n{name}\n").into_bytes()
    }
    pub fn tuple(items: &[u32]) -> Vec<u8> {
        let mut out = vec![b'('];
        for &i in items {
            out.extend(int(i));
        }
        out.push(b't');
        out
    }
    /// `torch._utils._rebuild_tensor_v2(storage key, offset, size, stride, False, OrderedDict())`.
    pub fn tensor(key: &str, numel: u32, offset: u32, size: &[u32], stride: &[u32]) -> Vec<u8> {
        let mut out = global("torch._utils", "_rebuild_tensor_v2");
        out.push(b'(');
        out.push(b'(');
        out.extend(string("storage"));
        out.extend(global("torch", "FloatStorage"));
        out.extend(string(key));
        out.extend(string("cpu"));
        out.extend(int(numel));
        out.extend_from_slice(b"tQ");
        out.extend(int(offset));
        out.extend(tuple(size));
        out.extend(tuple(stride));
        out.push(0x89);
        out.extend(global("collections", "OrderedDict"));
        out.extend_from_slice(b")Rt");
        out.push(b'R');
        out
    }
    /// `{name: value, …}` as EMPTY_DICT, MARK, items, SETITEMS.
    pub fn dict(items: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![b'}', b'('];
        for (k, v) in items {
            out.extend(string(k));
            out.extend_from_slice(v);
        }
        out.push(b'u');
        out
    }
    pub fn stream(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80, 2];
        out.extend_from_slice(body);
        out.push(b'.');
        out
    }
}

/// A `torch.save`-shaped zip: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`.
fn torch_zip(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/byteorder", stored).unwrap();
    zip.write_all(b"little").unwrap();
    for (key, data) in storages {
        zip.start_file(format!("archive/data/{key}"), stored).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A valid two-tensor state dict, optionally wrapped in a training checkpoint under `wrapper`.
fn checkpoint(wrapper: Option<&str>, prefix: &str) -> Vec<u8> {
    let weight = format!("{prefix}features.0.0.weight");
    let bias = format!("{prefix}classifier.1.bias");
    let state = pickle::dict(&[
        (&weight, pickle::tensor("0", 6, 0, &[2, 3], &[3, 1])),
        (&bias, pickle::tensor("1", 2, 0, &[2], &[1])),
    ]);
    let body = match wrapper {
        None => state,
        Some(key) => pickle::dict(&[
            ("epoch", pickle::int(7)),
            (key, state),
            ("optimizer", pickle::dict(&[("lr", pickle::int(1))])),
        ]),
    };
    torch_zip(&pickle::stream(&body), &[("0", floats(&[1., 2., 3., 4., 5., 6.])), ("1", floats(&[0.5, -0.5]))])
}

#[test]
fn wrapped_training_checkpoints_are_found_or_explained() {
    let plain = load_bytes(&checkpoint(None, ""), "plain.pt").unwrap();
    assert_eq!(plain.found_under, None);
    assert_eq!(plain.tensors["features.0.0.weight"].data, [1., 2., 3., 4., 5., 6.]);
    assert_eq!(plain.tensors["features.0.0.weight"].shape, [2, 3]);
    // Lightning: {"epoch", "state_dict": {"model.features…"}, "optimizer_states", …}.
    for key in STATE_DICT_KEYS {
        let w = load_bytes(&checkpoint(Some(key), "model."), "ckpt.pt").unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(w.found_under.as_deref(), Some(key));
        assert_eq!(w.tensors["classifier.1.bias"].data, [0.5, -0.5], "{key}");
    }
    // An unknown wrapper key: the error names the key that holds the tensors and what to do.
    let err = load_bytes(&checkpoint(Some("student"), ""), "ckpt.pt").unwrap_err().to_string();
    assert!(err.starts_with("ckpt.pt: the checkpoint wraps its weights under 'student'"), "{err}");
    assert!(err.contains("torch.save(torch.load(path)['student'], 'weights.pt')"), "{err}");
    // Nothing holding tensors at all.
    let err = load_bytes(&torch_zip(&pickle::stream(&pickle::dict(&[("epoch", pickle::int(1))])), &[]), "empty.pt")
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds no tensors (its keys: epoch)"), "{err}");
}

/// One hostile file, what it is, and whether it must be refused (random mutants may still parse).
struct Case {
    what: String,
    bytes: Vec<u8>,
    must_fail_with: Option<&'static str>,
}

fn hostile_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |what: String, bytes: Vec<u8>, must_fail_with: Option<&'static str>| {
        cases.push(Case { what, bytes, must_fail_with })
    };
    for _ in 0..3 {
        // Lists nested n deep: n × EMPTY_LIST, then n − 1 × APPEND.
        let n = rng.int(250, 2_000_001) as usize;
        let mut body = vec![b']'; n];
        body.extend(std::iter::repeat_n(b'a', n - 1));
        add(format!("lists nested {n} deep"), torch_zip(&pickle::stream(&body), &[]), Some("deep"));
        // Tuples nested n deep through MARKs.
        let n = rng.int(250, 1_000_001) as usize;
        let mut body = vec![b'('; n];
        body.extend(pickle::int(1));
        body.extend(std::iter::repeat_n(b't', n));
        add(format!("tuples nested {n} deep"), torch_zip(&pickle::stream(&body), &[]), Some("deep"));
    }
    for _ in 0..3 {
        // Memo amplification: each level is a list of two copies of the level below.
        let levels = rng.int(24, 65) as u8;
        let mut body = vec![b']', b'q', 0];
        for k in 0..levels {
            body.extend_from_slice(&[b'(', b'h', k, b'h', k, b'l', b'q', k + 1]);
        }
        add(
            format!("memo copies doubling {levels} times ({} bytes of pickle)", body.len() + 3),
            torch_zip(&pickle::stream(&body), &[]),
            Some("expands to more than"),
        );
    }
    // Strings and byte strings longer than the file.
    for (op, width) in [(b'X', 4usize), (b'B', 4), (0x8d, 8)] {
        let mut body = vec![op];
        body.extend_from_slice(&u64::MAX.to_le_bytes()[..width]);
        let claimed = u64::MAX >> (64 - 8 * width);
        add(
            format!("opcode 0x{op:02x} claiming {claimed} bytes"),
            torch_zip(&pickle::stream(&body), &[]),
            Some("truncated"),
        );
    }
    // Tensors whose declared shape, strides or offset lie about their storage.
    let lies: [(&str, u32, &[u32], &[u32]); 4] = [
        ("a 2^31 × 2^31 shape", 0, &[1 << 31, 1 << 31], &[1, 1]),
        ("a 65536^4 shape", 0, &[65536, 65536, 65536, 65536], &[0, 0, 0, 0]),
        ("a stride past the storage", 0, &[2, 3], &[u32::MAX, 1]),
        ("an offset past the storage", u32::MAX, &[2], &[1]),
    ];
    for (what, offset, size, stride) in lies {
        let state = pickle::dict(&[("w", pickle::tensor("0", 6, offset, size, stride))]);
        let bytes = torch_zip(&pickle::stream(&state), &[("0", floats(&[0.0; 6]))]);
        add(format!("a tensor with {what}"), bytes, Some("tensor 'w'"));
    }
    // Zip entries whose headers claim 4 GiB (local header and central directory both patched).
    let valid = checkpoint(None, "");
    let mut lying = valid.clone();
    for (signature, size_at) in [(*b"PK\x03\x04", 22usize), (*b"PK\x01\x02", 24)] {
        let mut at = 0;
        while let Some(p) = lying[at..].windows(4).position(|w| w == signature) {
            let header = at + p;
            lying[header + size_at..header + size_at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
            at = header + 4;
        }
    }
    add("zip entries claiming 4 GiB each".into(), lying, None);
    // safetensors headers that lie: a header length past the file, and offsets past the data.
    let mut st = (u64::MAX / 2).to_le_bytes().to_vec();
    st.extend_from_slice(b"{\"w\":{}}");
    add("a safetensors header length of 2^63".into(), st, None);
    let header = br#"{"w":{"dtype":"F32","shape":[1073741824,1073741824],"data_offsets":[0,4294967296]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[0; 16]);
    add("a safetensors tensor of 2^60 elements".into(), st, Some("invalid safetensors"));
    // Random damage to a valid checkpoint.
    for _ in 0..RANDOM_MUTANTS {
        let mut m = valid.clone();
        let what = match rng.below(3) {
            0 => {
                let flips = rng.int(1, 9);
                for _ in 0..flips {
                    let at = rng.below(m.len() as u64) as usize;
                    m[at] ^= 1 << rng.below(8);
                }
                format!("{flips} bit flips")
            }
            1 => {
                let keep = rng.below(m.len() as u64) as usize;
                m.truncate(keep);
                format!("truncated to {keep} bytes")
            }
            _ => {
                let at = rng.below(m.len().saturating_sub(4) as u64) as usize;
                m[at..at + 4].copy_from_slice(&(rng.next_u64() as u32).to_le_bytes());
                format!("4 random bytes at {at}")
            }
        };
        add(what, m, None);
    }
    cases
}

/// The worker: reads every hostile file, printing `START i` first so that the parent can name the
/// one that killed it, and `FAIL i` for a file that was read although it must be refused.
fn worker() {
    let mut rng = Rng::new(SEED);
    let mut out = std::io::stdout();
    let (mut read, mut refused, mut worst) = (0usize, 0usize, 0u64);
    for (i, case) in hostile_cases(&mut rng).into_iter().enumerate() {
        writeln!(out, "START {i} {}", case.what).unwrap();
        out.flush().unwrap();
        let can_measure = reset_peak();
        let before = status_kib("VmRSS");
        let (tx, rx) = mpsc::channel();
        let bytes = case.bytes;
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| load_bytes(&bytes, "hostile.pt").map(drop).map_err(|e| e.to_string()));
            let _ = tx.send(r);
        });
        match rx.recv_timeout(PER_FILE_DEADLINE) {
            Ok(Ok(Ok(()))) if case.must_fail_with.is_some() => {
                writeln!(out, "FAIL {i}: read, but must be refused").unwrap();
                std::process::exit(5);
            }
            Ok(Ok(Ok(()))) => read += 1,
            Ok(Ok(Err(message))) => {
                let named = message.starts_with("hostile.pt: ");
                let expected = case.must_fail_with.is_none_or(|m| message.contains(m));
                if !named || !expected {
                    writeln!(out, "FAIL {i}: {message:?} (expected to contain {:?})", case.must_fail_with).unwrap();
                    std::process::exit(5);
                }
                refused += 1;
            }
            Ok(Err(_)) => {
                writeln!(out, "PANIC {i}").unwrap();
                std::process::exit(4);
            }
            Err(_) => {
                writeln!(out, "HANG {i}").unwrap();
                std::process::exit(3);
            }
        }
        let growth = status_kib("VmHWM").saturating_sub(before);
        if can_measure && growth > PER_FILE_RSS_LIMIT {
            writeln!(out, "MEMORY {i}: resident memory grew by {} MiB", growth >> 10).unwrap();
            std::process::exit(6);
        }
        worst = worst.max(growth);
    }
    writeln!(out, "DONE {read} read, {refused} refused; largest resident growth for one file {} MiB", worst >> 10)
        .unwrap();
}

#[test]
fn hostile_weight_files_are_refused_within_time_and_memory() {
    if is_worker(WORKER) {
        worker();
        return;
    }
    let started = Instant::now();
    let run = rerun_under_address_limit(
        "hostile_weight_files_are_refused_within_time_and_memory",
        WORKER,
        ADDRESS_SPACE_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let last = stdout.lines().rev().find(|l| l.starts_with("START")).unwrap_or("none");
    let done = stdout.lines().find(|l| l.starts_with("DONE"));
    println!("{} ({:.1} s)", done.unwrap_or("worker did not finish"), started.elapsed().as_secs_f64());
    assert!(
        run.status.success() && done.is_some(),
        "the worker failed ({}) on {last}:\n{}\n{}",
        run.status,
        stdout.lines().rev().take(3).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&run.stderr).lines().rev().take(10).collect::<Vec<_>>().join("\n")
    );
}
