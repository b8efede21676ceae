//! The SCP side: associations from modalities or a PACS, C-ECHO answered, each C-STORE run
//! through the engine and its results committed to the outbox before the response goes out.

use crate::dimse::{self, Command, status};
use crate::forward::error_chain;
use crate::log;
use crate::queue::Outbox;
use dicom_ul::association::Association;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{Pdu, ServerAssociation};
use medpatch_dicom_out::{Findings, SourceImage};
use medpatch_engine::{Engine, Input};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc::Sender;

/// Which classes get a segment and an overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapClasses {
    /// Those called present (at the model's thresholds, else 0.5); the most probable if none is.
    Default,
    Only(Vec<usize>),
}

/// Everything a C-STORE needs, shared by the association threads.
pub struct Processor {
    pub engine: Arc<Engine>,
    pub map: MapClasses,
    pub overlay_logit_range: Option<f32>,
    pub queue: Arc<Outbox>,
    pub wake: Mutex<Sender<()>>,
}

/// The bytes of a DICOM file around a received data set: preamble, meta header, data set.
fn file_bytes(command: &Command, transfer_syntax: &str, dataset: &[u8]) -> Result<Vec<u8>, String> {
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax(transfer_syntax)
        .media_storage_sop_class_uid(command.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(command.sop_instance_uid.as_str())
        .build()
        .map_err(|e| error_chain(&e))?;
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    meta.write(&mut bytes).map_err(|e| error_chain(&e))?;
    bytes.extend_from_slice(dataset);
    Ok(bytes)
}

impl Processor {
    /// One received image: predict, build the results, commit them. The status to answer.
    pub fn store(&self, command: &Command, transfer_syntax: &str, dataset: &[u8], peer: &str) -> (u16, Option<String>) {
        let label = format!("{} from {peer}", command.sop_instance_uid);
        let refuse = |code: u16, problem: String| {
            log(&format!("refused {label}: {problem} (status {code:04X}H)"));
            (code, Some(problem))
        };
        let bytes = match file_bytes(command, transfer_syntax, dataset) {
            Ok(b) => b,
            Err(e) => return refuse(status::CANNOT_UNDERSTAND, e),
        };
        // Decoded once: the results' overlay shows exactly the pixels the model saw.
        let source = match SourceImage::from_bytes(&bytes, &command.sop_instance_uid) {
            Ok(s) => s,
            Err(e) => return refuse(status::CANNOT_UNDERSTAND, e.to_string()),
        };
        let prediction = match self.engine.predict(Input::Image(&source.image)) {
            Ok(p) => p,
            Err(e) => return refuse(status::PROCESSING_FAILURE, e.to_string()),
        };
        let metadata = &self.engine.model().metadata;
        let map_classes = match &self.map {
            MapClasses::Default => None,
            MapClasses::Only(list) => Some(list.as_slice()),
        };
        let objects = match medpatch_dicom_out::for_prediction(
            &self.engine,
            &source,
            &prediction,
            map_classes,
            self.overlay_logit_range,
        ) {
            Ok(o) => o,
            Err(e) => return refuse(status::PROCESSING_FAILURE, e.to_string()),
        };
        let mut files = Vec::with_capacity(objects.objects.len());
        for object in &objects.objects {
            match object.to_bytes() {
                Ok(b) => files.push((objects.file_name(object, "result", &metadata.classes), b)),
                Err(e) => return refuse(status::PROCESSING_FAILURE, e.to_string()),
            }
        }
        if let Err(e) = self.queue.commit(&command.sop_instance_uid, &files) {
            return refuse(status::OUT_OF_RESOURCES, format!("cannot queue the results: {e}"));
        }
        if let Ok(wake) = self.wake.lock() {
            let _ = wake.send(());
        }
        let findings = Findings::of(self.engine.model(), &prediction);
        let present: Vec<&str> = (0..metadata.classes.len())
            .filter(|&i| findings.is_present(i))
            .map(|i| metadata.classes[i].as_str())
            .collect();
        log(&format!(
            "processed {label}: {} result object(s) queued; called present: {}",
            files.len(),
            if present.is_empty() { "none".to_string() } else { present.join(", ") }
        ));
        (status::SUCCESS, None)
    }
}

fn send_command(association: &mut ServerAssociation<TcpStream>, pc: u8, data: Vec<u8>) -> Result<(), String> {
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data,
        }],
    };
    association.send(&pdu).map_err(|e| error_chain(&e))
}

/// Serve one association until it is released, aborted or broken. Errors end this association
/// only; the node keeps listening.
pub fn serve(mut association: ServerAssociation<TcpStream>, processor: &Processor, max_bytes: u64) {
    let peer = association.peer_ae_title().to_string();
    let mut command_bytes = Vec::new();
    let mut command: Option<(Command, u8)> = None;
    let mut data = Vec::new();
    let mut overflow = false;
    loop {
        let pdu = match association.receive() {
            Ok(pdu) => pdu,
            Err(e) => {
                log(&format!("association with {peer} ended: {}", error_chain(&e)));
                return;
            }
        };
        match pdu {
            Pdu::PData { data: values } => {
                for value in values {
                    match value.value_type {
                        PDataValueType::Command => {
                            command_bytes.extend_from_slice(&value.data);
                            if !value.is_last {
                                continue;
                            }
                            let parsed = dimse::parse(&command_bytes);
                            command_bytes.clear();
                            let parsed = match parsed {
                                Ok(c) => c,
                                Err(e) => {
                                    log(&format!("{peer} sent {e}; aborting the association"));
                                    let _ = association.abort();
                                    return;
                                }
                            };
                            let pc = value.presentation_context_id;
                            if parsed.has_data_set {
                                command = Some((parsed, pc));
                                data.clear();
                                overflow = false;
                                continue;
                            }
                            let reply = match parsed.field {
                                dimse::C_ECHO_RQ => {
                                    log(&format!("C-ECHO from {peer}"));
                                    dimse::echo_response(&parsed)
                                }
                                other => {
                                    log(&format!("{peer} sent command {other:04X}H, which this node does not provide"));
                                    dimse::store_response(&parsed, status::UNRECOGNIZED_OPERATION, None)
                                }
                            };
                            if let Err(e) = send_command(&mut association, pc, reply) {
                                log(&format!("cannot answer {peer}: {e}"));
                                return;
                            }
                        }
                        PDataValueType::Data => {
                            if !overflow {
                                data.extend_from_slice(&value.data);
                                if data.len() as u64 > max_bytes {
                                    overflow = true;
                                    data = Vec::new();
                                }
                            }
                            if !value.is_last {
                                continue;
                            }
                            let Some((request, pc)) = command.take() else {
                                log(&format!("{peer} sent a data set without a command; aborting the association"));
                                let _ = association.abort();
                                return;
                            };
                            let (code, comment) = if overflow {
                                log(&format!(
                                    "refused {} from {peer}: over {max_bytes} bytes",
                                    request.sop_instance_uid
                                ));
                                (status::OUT_OF_RESOURCES, Some("data set too large".to_string()))
                            } else if request.field != dimse::C_STORE_RQ {
                                (status::UNRECOGNIZED_OPERATION, None)
                            } else {
                                let ts = association
                                    .presentation_contexts()
                                    .iter()
                                    .find(|p| p.id == pc)
                                    .map(|p| p.transfer_syntax.clone())
                                    .unwrap_or_default();
                                processor.store(&request, &ts, &data, &peer)
                            };
                            data = Vec::new();
                            let reply = dimse::store_response(&request, code, comment.as_deref());
                            if let Err(e) = send_command(&mut association, pc, reply) {
                                log(&format!("cannot answer {peer}: {e}"));
                                return;
                            }
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                let _ = association.send(&Pdu::ReleaseRP);
                return;
            }
            Pdu::AbortRQ { .. } => {
                log(&format!("{peer} aborted the association"));
                return;
            }
            other => {
                log(&format!("{peer} sent an unexpected {}; aborting the association", other.short_description()));
                let _ = association.abort();
                return;
            }
        }
    }
}
