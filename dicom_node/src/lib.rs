//! `medpatch dicom-node`: MedicalPatchNet as a DICOM node between the modalities (or the PACS
//! that routes images to it) and the PACS that keeps the results.
//!
//! ```text
//! modality / PACS ──C-STORE──▶ [SCP] ─▶ engine ─▶ dicom_out ─▶ outbox (disk) ─▶ [SCU] ──C-STORE──▶ PACS
//!                 ◀─status────        (results committed to disk before the status goes back)
//! ```
//!
//! * [`scp`]: one thread per association; C-ECHO answered; each image decoded, predicted, its SR,
//!   segmentation and overlays built and committed to the [`queue`] before the success status.
//!   What cannot be read gets a failure status and a log line; the node keeps running.
//! * [`forward`]: one thread sends the queue to the destination, oldest first, one association
//!   per round, deleting each file once stored; while the destination is down it retries with
//!   doubling back-off. A restart resumes from the queue.

pub mod dimse;
pub mod forward;
pub mod queue;
pub mod scp;

pub use forward::{Destination, Timeouts, echo};
pub use scp::MapClasses;

use dicom_ul::ServerAssociationOptions;
use medpatch_engine::Engine;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Images the node accepts: computed radiography, digital X-ray (for presentation and for
/// processing) and secondary capture (digitised films, converted PNGs).
pub const IMAGE_SOP_CLASSES: [&str; 4] = [
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7",
];

/// Transfer syntaxes the engine's decoder reads: uncompressed (both byte orders), JPEG baseline
/// and extended (8-bit), JPEG lossless, JPEG 2000, RLE.
pub const TRANSFER_SYNTAXES: [&str; 10] = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
];

/// What the node sends: Comprehensive 3D SR, Segmentation, Secondary Capture, and Verification.
pub fn result_sop_classes() -> &'static [&'static str] {
    &["1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7"]
}

/// One line on stderr, prefixed; the node's log.
pub fn log(message: &str) {
    eprintln!("medpatch dicom-node: {message}");
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's AE title: associations must call it.
    pub ae_title: String,
    pub listen: SocketAddr,
    pub destination: Destination,
    pub queue: PathBuf,
    pub map: MapClasses,
    /// The patch logit at which overlays saturate (default: the model's own range).
    pub overlay_logit_range: Option<f32>,
    pub timeouts: Timeouts,
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// Associations served at once; more are turned away.
    pub max_associations: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the queue at {}: {source}", path.display())]
    Queue { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
}

/// Run the node until the process ends: listen, serve, forward.
pub fn run(engine: Engine, config: NodeConfig) -> Result<(), NodeError> {
    let queue = Arc::new(
        queue::Outbox::open(&config.queue).map_err(|source| NodeError::Queue { path: config.queue.clone(), source })?,
    );
    let listener =
        TcpListener::bind(config.listen).map_err(|source| NodeError::Listen { address: config.listen, source })?;
    let (wake, wakeup) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let owed = queue.pending().map(|p| p.len()).unwrap_or(0);
    let forwarder = forward::Forwarder {
        queue: queue.clone(),
        calling: config.ae_title.clone(),
        destination: config.destination.clone(),
        timeouts: config.timeouts,
        retry_first: config.retry_first,
        retry_max: config.retry_max,
        wake: wakeup,
        stop: stop.clone(),
    };
    std::thread::Builder::new()
        .name("forwarder".into())
        .spawn(move || forwarder.run())
        .map_err(|source| NodeError::Listen { address: config.listen, source })?;

    match echo(&config.ae_title, &config.destination, config.timeouts) {
        Ok(0) => log(&format!("C-ECHO to {}: success", config.destination)),
        Ok(code) => log(&format!("C-ECHO to {}: status {code:04X}H", config.destination)),
        Err(e) => log(&format!("C-ECHO to {}: {e} (results will wait in the queue)", config.destination)),
    }
    let processor = Arc::new(scp::Processor {
        engine: Arc::new(engine),
        map: config.map.clone(),
        overlay_logit_range: config.overlay_logit_range,
        queue,
        wake: Mutex::new(wake),
    });
    let mut options = ServerAssociationOptions::new()
        .accept_called_ae_title()
        .ae_title(config.ae_title.clone())
        .read_timeout(config.timeouts.io)
        .write_timeout(config.timeouts.io)
        .with_abstract_syntax(dimse::VERIFICATION);
    for uid in IMAGE_SOP_CLASSES {
        options = options.with_abstract_syntax(uid);
    }
    for uid in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(uid);
    }
    let options = Arc::new(options);
    let active = Arc::new(AtomicUsize::new(0));
    let address = listener.local_addr().unwrap_or(config.listen);
    log(&format!(
        "listening as {}@{address}, forwarding to {}; queue {} ({owed} result file(s) owed)",
        config.ae_title,
        config.destination,
        config.queue.display()
    ));
    // A chest X-ray is tens of megabytes; a data set larger than this is refused, not buffered.
    let max_bytes = 256 << 20;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log(&format!("accept failed: {e}"));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= config.max_associations {
            log(&format!("{} associations already open: connection turned away", config.max_associations));
            drop(stream);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (options, processor, finished) = (options.clone(), processor.clone(), active.clone());
        let spawned = std::thread::Builder::new().name("association".into()).spawn(move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            match options.establish(stream) {
                Ok(association) => scp::serve(association, &processor, max_bytes),
                Err(e) => log(&format!("association from {peer} not established: {}", forward::error_chain(&e))),
            }
            finished.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            log(&format!("cannot start a thread for a new association: {e}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    Ok(())
}
