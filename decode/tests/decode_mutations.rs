//! Seeded mutations of real X-rays: every mutant decodes to an image or to a named error — never a
//! panic, never a hang, never an allocation past a fixed bound.
//!
//! Sources: a sample of `../shared/data/cxr` (NIH PNGs, pediatric JPEGs, the CR DICOM; skipped with
//! a message when absent). Mutations are deterministic (xorshift, fixed seed): bit flips (anywhere,
//! or in the first KiB where the headers are), truncation, insertion and deletion of bytes, and
//! absurd values written into the size fields: PNG IHDR width/height/bit depth/colour type (CRC
//! recomputed so the chunk is not simply rejected), JPEG SOF height/width and segment lengths,
//! DICOM Rows, Columns, Bits Allocated/Stored, Samples per Pixel, Number of Frames and element
//! lengths.
//!
//! How the bounds are enforced, robustly:
//! * the mutants run in a child process (this test binary re-executed with `MEDPATCH_MUTATION_WORKER`)
//!   under `ulimit -v` ([`ADDRESS_SPACE_LIMIT`]): an allocation past it fails inside the child, which
//!   aborts, and the parent names the mutant it was decoding. Address space, not RSS, is limited:
//!   zeroed buffers that are never touched cost no RSS, so RSS would miss a huge `vec![0; n]`;
//! * and the growth of its resident memory (VmHWM, reset before each mutant through
//!   /proc/self/clear_refs) must stay under [`PER_MUTANT_RSS_LIMIT`]: touched memory is what costs;
//! * in the child each decode runs on its own thread and the child gives up (exit 3) when one takes
//!   longer than [`PER_MUTANT_DEADLINE`];
//! * a panic reaching `decode_bytes`' caller is caught in the child and reported (exit 4).
//!
//! The limit: the decoders may legitimately allocate a decoded buffer of up to `MAX_PIXELS` × 8 bytes
//! (a 16384² 16-bit RGBA PNG, 2 GiB) before they find the data missing; the input and the process's
//! own mappings need the rest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use medpatch_decode::{DecodeError, decode_bytes};
use medpatch_testkit::bounded::{is_worker, rerun_under_address_limit, reset_peak, status_kib};
use medpatch_testkit::{cxr_dir, skip_without_shared};

const SEED: u64 = 0x5EED_CAFE_F00D_0001;
/// Random mutants per source file (targeted size-field mutants come on top).
const RANDOM_MUTANTS: usize = 150;
const PER_MUTANT_DEADLINE: Duration = Duration::from_secs(10);
/// Virtual memory limit for the worker process, KiB (3 GiB).
const ADDRESS_SPACE_LIMIT: u64 = 3 << 20;
/// Largest resident-memory growth one mutant may cause, KiB. The largest legitimate decode here
/// (the 1955×1841 16-bit DICOM: the file, two sample copies, f64 values, f32 output) stays under
/// 100 MiB.
const PER_MUTANT_RSS_LIMIT: u64 = 256 << 10;

/// The real files: small ones, so that the whole run stays well under a minute on 2 cores.
fn sources(cxr: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (dir, ext, take) in [("nih/images", "png", 2), ("pediatric", "jpeg", 2)] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(cxr.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        // smallest first: cheapest decodes, still real files
        files.sort_by_key(|p| (std::fs::metadata(p).unwrap().len(), p.clone()));
        out.extend(files.into_iter().take(take));
    }
    out.push(cxr.join("dicom/RG1_UNCR.dcm"));
    out
}

/// The workspace's seeded generator, with indices in `0..n` (`n` ≥ 1).
struct Rng(medpatch_models::Rng);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n.max(1) as u64) as usize
    }
}

const ABSURD_U32: [u32; 7] = [0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 16385, 65535, 0x0100_0000];
const ABSURD_U16: [u16; 6] = [0, 1, 0x7FFF, 0xFFFF, 16385, 3];

fn crc32(data: &[u8]) -> u32 {
    // PNG's chunk CRC is zlib's CRC-32, which flate2 (already the engine's) computes.
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

/// Mutants that put absurd values in the fields that size allocations.
fn size_field_mutants(orig: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if orig.starts_with(b"\x89PNG") && orig.len() > 33 {
        // IHDR data at 16..29: width, height, bit depth, colour type, ...; CRC at 29..33
        let fix_crc = |m: &mut Vec<u8>| {
            let crc = crc32(&m[12..29]);
            m[29..33].copy_from_slice(&crc.to_be_bytes());
        };
        for (field, at) in [("width", 16), ("height", 20)] {
            for v in ABSURD_U32 {
                let mut m = orig.to_vec();
                m[at..at + 4].copy_from_slice(&v.to_be_bytes());
                fix_crc(&mut m);
                out.push((format!("IHDR {field}={v}"), m));
            }
        }
        for (w, h) in [(16384u32, 16384u32), (16384, 16383), (1, 0x0FFF_FFFF)] {
            for colour in [0u8, 2, 6] {
                let mut m = orig.to_vec();
                m[16..20].copy_from_slice(&w.to_be_bytes());
                m[20..24].copy_from_slice(&h.to_be_bytes());
                m[24] = 16;
                m[25] = colour;
                fix_crc(&mut m);
                out.push((format!("IHDR {w}×{h} 16-bit colour type {colour}"), m));
            }
        }
        for (at, v) in [(24, 0u8), (24, 3), (24, 64), (25, 7), (25, 255), (28, 1)] {
            let mut m = orig.to_vec();
            m[at] = v;
            fix_crc(&mut m);
            out.push((format!("IHDR byte {at}={v}"), m));
        }
    } else if orig.starts_with(&[0xFF, 0xD8]) {
        let sofs: Vec<usize> = orig
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2))
            .map(|(i, _)| i)
            .take(2)
            .collect();
        for &s in &sofs {
            // FF Cx, length(2), precision(1), height(2), width(2)
            for (field, at) in [("height", s + 5), ("width", s + 7)] {
                for v in ABSURD_U16 {
                    let mut m = orig.to_vec();
                    m[at..at + 2].copy_from_slice(&v.to_be_bytes());
                    out.push((format!("SOF@{s} {field}={v}"), m));
                }
            }
            for v in [0u8, 1, 12, 16, 255] {
                let mut m = orig.to_vec();
                m[s + 4] = v;
                out.push((format!("SOF@{s} precision={v}"), m));
            }
            for v in [0u8, 4, 255] {
                let mut m = orig.to_vec();
                m[s + 9] = v;
                out.push((format!("SOF@{s} components={v}"), m));
            }
        }
        // segment lengths of the first few markers
        let mut i = 2;
        let mut seen = 0;
        while i + 4 <= orig.len() && orig[i] == 0xFF && seen < 6 {
            let len = u16::from_be_bytes([orig[i + 2], orig[i + 3]]) as usize;
            for v in [0u16, 1, 2, 0xFFFF] {
                let mut m = orig.to_vec();
                m[i + 2..i + 4].copy_from_slice(&v.to_be_bytes());
                out.push((format!("segment {:02X}@{i} length={v}", orig[i + 1]), m));
            }
            if orig[i + 1] == 0xDA {
                break;
            }
            i += 2 + len;
            seen += 1;
        }
    } else if orig.len() > 132 && &orig[128..132] == b"DICM" {
        // explicit VR little endian: tag (4), VR (2), then a 2-byte length for US
        let find = |group: u16, elem: u16, vr: &[u8; 2]| {
            let mut pat = group.to_le_bytes().to_vec();
            pat.extend_from_slice(&elem.to_le_bytes());
            pat.extend_from_slice(vr);
            orig.windows(pat.len()).position(|w| w == pat.as_slice())
        };
        for (name, elem) in [
            ("Samples per Pixel", 0x0002u16),
            ("Rows", 0x0010),
            ("Columns", 0x0011),
            ("Bits Allocated", 0x0100),
            ("Bits Stored", 0x0101),
            ("High Bit", 0x0102),
            ("Pixel Representation", 0x0103),
        ] {
            if let Some(at) = find(0x0028, elem, b"US") {
                for v in ABSURD_U16 {
                    let mut m = orig.to_vec();
                    m[at + 8..at + 10].copy_from_slice(&v.to_le_bytes());
                    out.push((format!("{name}={v}"), m));
                }
                // the element's own length field
                for v in [0u16, 1, 0xFFFF] {
                    let mut m = orig.to_vec();
                    m[at + 6..at + 8].copy_from_slice(&v.to_le_bytes());
                    out.push((format!("{name} length={v}"), m));
                }
            }
        }
        if let Some(at) = find(0x7FE0, 0x0010, b"OW").or_else(|| find(0x7FE0, 0x0010, b"OB")) {
            for v in [0u32, 1, 2, 0x7FFF_FFFF, 0xFFFF_FFFE, 0xFFFF_FFFF] {
                let mut m = orig.to_vec();
                m[at + 8..at + 12].copy_from_slice(&v.to_le_bytes());
                out.push((format!("Pixel Data length={v}"), m));
            }
        }
        // a Number of Frames element inserted before Rows
        if let Some(at) = find(0x0028, 0x0010, b"US") {
            for v in ["0", "2", "99999999"] {
                let mut m = orig[..at].to_vec();
                m.extend_from_slice(&[0x28, 0x00, 0x08, 0x00, b'I', b'S']);
                let mut text = v.as_bytes().to_vec();
                if text.len() % 2 == 1 {
                    text.push(b' ');
                }
                m.extend_from_slice(&(text.len() as u16).to_le_bytes());
                m.extend_from_slice(&text);
                m.extend_from_slice(&orig[at..]);
                out.push((format!("Number of Frames={v}"), m));
            }
        }
        // the file meta group length
        for v in [0u32, 3, 0xFFFF_FFFF] {
            let mut m = orig.to_vec();
            m[140..144].copy_from_slice(&v.to_le_bytes());
            out.push((format!("meta group length={v}"), m));
        }
    }
    out
}

fn random_mutant(orig: &[u8], rng: &mut Rng) -> (String, Vec<u8>) {
    let mut m = orig.to_vec();
    let header = orig.len().min(1024);
    match rng.below(6) {
        0 | 1 => {
            let in_header = rng.below(2) == 0;
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                let at = if in_header { rng.below(header) } else { rng.below(m.len()) };
                m[at] ^= 1 << rng.below(8);
            }
            (format!("{flips} bit flip(s){}", if in_header { " in the first KiB" } else { "" }), m)
        }
        2 => {
            let at = if rng.below(2) == 0 { rng.below(header) } else { rng.below(m.len()) };
            m.truncate(at);
            (format!("truncated at {at}"), m)
        }
        3 => {
            let at = rng.below(m.len());
            let n = 1 + rng.below(64);
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            m.splice(at..at, junk);
            (format!("{n} bytes inserted at {at}"), m)
        }
        4 => {
            let at = rng.below(m.len());
            let n = (1 + rng.below(64)).min(m.len() - at);
            m.drain(at..at + n);
            (format!("{n} bytes deleted at {at}"), m)
        }
        _ => {
            // a 4-byte little- or big-endian length-like value somewhere in the headers
            let at = rng.below(header.saturating_sub(4).max(1));
            let v = [0xFFFF_FFFFu32, 0x7FFF_FFFF, 0x0010_0000, 0][rng.below(4)];
            let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
            let end = (at + 4).min(m.len());
            m[at..end].copy_from_slice(&bytes[..end - at]);
            (format!("0x{v:08X} written at {at}"), m)
        }
    }
}

/// The worker: decodes every mutant of every source, printing `START i` before each so that the
/// parent can name the one that killed it.
fn worker(cxr: &Path) {
    let mut rng = Rng(medpatch_models::Rng::new(SEED));
    let mut out = std::io::stdout();
    let mut index = 0usize;
    let (mut ok, mut refused) = (0usize, 0usize);
    let mut worst = 0u64;
    let mut over_memory = 0usize;
    for src in sources(cxr) {
        let orig = std::fs::read(&src).unwrap();
        let name = src.file_name().unwrap().to_string_lossy().to_string();
        let mut mutants = size_field_mutants(&orig);
        for _ in 0..RANDOM_MUTANTS {
            mutants.push(random_mutant(&orig, &mut rng));
        }
        for (what, bytes) in mutants {
            writeln!(out, "START {index} {name}: {what}").unwrap();
            out.flush().unwrap();
            let can_measure = reset_peak();
            let rss_before = status_kib("VmRSS");
            let (tx, rx) = mpsc::channel();
            let label = name.clone();
            let started = Instant::now();
            std::thread::spawn(move || {
                let r = std::panic::catch_unwind(|| decode_bytes(&bytes, &label));
                let _ = tx.send(r);
            });
            match rx.recv_timeout(PER_MUTANT_DEADLINE) {
                Ok(Ok(Ok(_))) => ok += 1,
                Ok(Ok(Err(e))) => {
                    assert_named(&e, index);
                    refused += 1;
                }
                Ok(Err(_)) => {
                    writeln!(out, "PANIC {index}").unwrap();
                    std::process::exit(4);
                }
                Err(_) => {
                    writeln!(out, "HANG {index} after {:?}", started.elapsed()).unwrap();
                    std::process::exit(3);
                }
            }
            let growth = status_kib("VmHWM").saturating_sub(rss_before);
            if can_measure && growth > PER_MUTANT_RSS_LIMIT {
                writeln!(out, "MEMORY {index}: resident memory grew by {} MiB", growth >> 10).unwrap();
                over_memory += 1;
            }
            worst = worst.max(growth);
            index += 1;
        }
    }
    writeln!(
        out,
        "DONE {index} mutants: {ok} decoded, {refused} refused; largest resident growth for one mutant {} MiB",
        worst >> 10
    )
    .unwrap();
    if over_memory > 0 {
        std::process::exit(6);
    }
}

/// An error must say what is wrong: a known variant with a non-empty message.
fn assert_named(e: &DecodeError, index: usize) {
    let msg = e.to_string();
    if msg.trim().is_empty() || msg.contains("unknown panic") {
        println!("UNNAMED {index}: {msg:?}");
        std::process::exit(5);
    }
}

#[test]
fn mutated_real_files_fail_cleanly_within_time_and_memory() {
    if skip_without_shared() {
        return;
    }
    let cxr = cxr_dir();
    if is_worker("MEDPATCH_MUTATION_WORKER") {
        worker(&cxr);
        return;
    }
    let started = Instant::now();
    let run = rerun_under_address_limit(
        "mutated_real_files_fail_cleanly_within_time_and_memory",
        "MEDPATCH_MUTATION_WORKER",
        ADDRESS_SPACE_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let last_start = stdout.lines().rev().find(|l| l.starts_with("START")).unwrap_or("none");
    let over: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("MEMORY"))
        .map(|l| {
            let i = l.split_whitespace().nth(1).unwrap_or("").trim_end_matches(':');
            let what = stdout.lines().find(|s| s.starts_with(&format!("START {i} "))).unwrap_or("");
            format!("{l} ({what})")
        })
        .collect();
    let done = stdout.lines().find(|l| l.starts_with("DONE"));
    println!("{}", done.unwrap_or("worker did not finish"));
    println!("{:.1} s in all", started.elapsed().as_secs_f64());
    assert!(
        run.status.success() && done.is_some(),
        "the worker failed ({}) on mutant {last_start}:\n{}\n{}\n{}",
        run.status,
        over.join("\n"),
        stdout.lines().rev().take(5).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&run.stderr).lines().rev().take(10).collect::<Vec<_>>().join("\n")
    );
}
