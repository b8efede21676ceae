//! The SCU side: C-ECHO and C-STORE to the destination (the PACS), and the forwarding loop that
//! empties the outbox, with back-off while the destination is unreachable.

use crate::dimse::{self, status};
use crate::queue::Outbox;
use crate::{log, result_sop_classes};
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociation, ClientAssociationOptions, Pdu};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// A remote application entity: `AE@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub ae_title: String,
    /// `host:port`.
    pub address: String,
}

impl std::str::FromStr for Destination {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (ae, address) = text.split_once('@').ok_or_else(|| format!("'{text}' is not AE@host:port"))?;
        let ae_ok = !ae.is_empty() && ae.len() <= 16 && ae.chars().all(|c| c.is_ascii_graphic() || c == ' ');
        if !ae_ok {
            return Err(format!("'{ae}' is not an AE title (1 to 16 printable ASCII characters)"));
        }
        let port_ok =
            address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!("'{address}' is not host:port"));
        }
        Ok(Destination { ae_title: ae.to_string(), address: address.to_string() })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.ae_title, self.address)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub io: Duration,
}

fn associate(
    calling: &str,
    destination: &Destination,
    abstract_syntaxes: &[&str],
    timeouts: Timeouts,
) -> Result<ClientAssociation<TcpStream>, String> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling.to_string())
        .called_ae_title(destination.ae_title.clone())
        .connection_timeout(timeouts.connect)
        .read_timeout(timeouts.io)
        .write_timeout(timeouts.io);
    for uid in abstract_syntaxes {
        options = options.with_presentation_context(uid.to_string(), vec![EXPLICIT_VR_LITTLE_ENDIAN.to_string()]);
    }
    options.establish(destination.address.as_str()).map_err(|e| error_chain(&e))
}

/// An error and its sources, `a: b: c`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// The response command to the last request.
fn response(association: &mut ClientAssociation<TcpStream>) -> Result<dimse::Command, String> {
    let mut command = Vec::new();
    loop {
        match association.receive().map_err(|e| error_chain(&e))? {
            Pdu::PData { data } => {
                for value in data {
                    if value.value_type == PDataValueType::Command {
                        command.extend_from_slice(&value.data);
                        if value.is_last {
                            return dimse::parse(&command);
                        }
                    }
                }
            }
            other => return Err(format!("unexpected {}", other.short_description())),
        }
    }
}

/// C-ECHO `destination`; its status.
pub fn echo(calling: &str, destination: &Destination, timeouts: Timeouts) -> Result<u16, String> {
    let mut association = associate(calling, destination, &[dimse::VERIFICATION], timeouts)?;
    let pc = association
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| pc.id)
        .ok_or("the destination does not accept Verification")?;
    let request = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data: dimse::echo_request(1),
        }],
    };
    association.send(&request).map_err(|e| error_chain(&e))?;
    let status = response(&mut association)?.status.ok_or("the C-ECHO response has no status")?;
    let _ = association.release();
    Ok(status)
}

/// Why one file was not stored.
#[derive(Debug)]
enum StoreError {
    /// The connection failed: try again later, on a new association.
    Transport(String),
    /// This file will never be stored as it is.
    Refused(String),
}

/// A written result file: its SOP class and instance (from the meta header) and its data set.
fn read_result_file(path: &Path) -> Result<(String, String, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err("not a DICOM file".into());
    }
    let meta = dicom_object::FileMetaTable::from_reader(&bytes[128..]).map_err(|e| error_chain(&e))?;
    if meta.transfer_syntax().trim_end_matches('\0') != EXPLICIT_VR_LITTLE_ENDIAN {
        return Err(format!("transfer syntax {} is not the one medpatch writes", meta.transfer_syntax()));
    }
    // The data set follows the meta group: its length element (12 bytes) and its value.
    let start = 132 + 12 + meta.information_group_length as usize;
    let dataset = bytes.get(start..).ok_or("truncated file")?.to_vec();
    let trim = |s: &str| s.trim_end_matches('\0').to_string();
    Ok((trim(meta.media_storage_sop_class_uid()), trim(meta.media_storage_sop_instance_uid()), dataset))
}

fn store(association: &mut ClientAssociation<TcpStream>, path: &Path, message_id: u16) -> Result<u16, StoreError> {
    let (class_uid, instance_uid, dataset) = read_result_file(path).map_err(StoreError::Refused)?;
    let pc = association
        .presentation_contexts()
        .iter()
        .find(|pc| pc.abstract_syntax == class_uid && pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| pc.id)
        .ok_or_else(|| StoreError::Refused(format!("the destination does not accept SOP class {class_uid}")))?;
    let command = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data: dimse::store_request(message_id, &class_uid, &instance_uid),
        }],
    };
    let transport = |e: String| StoreError::Transport(e);
    association.send(&command).map_err(|e| transport(error_chain(&e)))?;
    {
        let mut writer = association.send_pdata(pc);
        writer.write_all(&dataset).map_err(|e| transport(e.to_string()))?;
        writer.finish().map_err(|e| transport(e.to_string()))?;
    }
    let rsp = response(association).map_err(transport)?;
    rsp.status.ok_or_else(|| transport("the C-STORE response has no status".into()))
}

/// What the forwarding loop needs.
pub struct Forwarder {
    pub queue: Arc<Outbox>,
    pub calling: String,
    pub destination: Destination,
    pub timeouts: Timeouts,
    /// Back-off after a failed attempt: first wait, doubled each time up to the last.
    pub retry_first: Duration,
    pub retry_max: Duration,
    pub wake: Receiver<()>,
    pub stop: Arc<AtomicBool>,
}

impl Forwarder {
    /// Send what is owed until `stop` is set; sleeps (woken by new results) when nothing is.
    pub fn run(self) {
        let mut delay = self.retry_first;
        let mut outage = false;
        while !self.stop.load(Ordering::Relaxed) {
            let pending = match self.queue.pending() {
                Ok(p) => p,
                Err(e) => {
                    log(&format!("cannot read the queue: {e}"));
                    Vec::new()
                }
            };
            if pending.is_empty() {
                let _ = self.wake.recv_timeout(Duration::from_millis(500));
                continue;
            }
            match self.send_all(&pending) {
                Ok(()) => {
                    if outage {
                        log(&format!("destination {} reachable again", self.destination));
                        outage = false;
                    }
                    delay = self.retry_first;
                }
                Err(problem) => {
                    log(&format!(
                        "destination {}: {problem}; {} result file(s) kept in the queue, retrying in {:.1} s",
                        self.destination,
                        pending.len(),
                        delay.as_secs_f64()
                    ));
                    outage = true;
                    // New results do not cut the wait short: the destination is what is slow.
                    let until = std::time::Instant::now() + delay;
                    while !self.stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(50).min(delay));
                    }
                    delay = (delay * 2).min(self.retry_max);
                }
            }
        }
    }

    /// One association: every pending file, in order. `Err` when the destination cannot be
    /// reached or the association broke (the unsent files stay queued).
    fn send_all(&self, pending: &[std::path::PathBuf]) -> Result<(), String> {
        let mut association = associate(&self.calling, &self.destination, result_sop_classes(), self.timeouts)?;
        for (i, path) in pending.iter().enumerate() {
            let message_id = (i % 0xFFFF) as u16 + 1;
            match store(&mut association, path, message_id) {
                Ok(code) if status::is_stored(code) => {
                    let _ = self.queue.delivered(path);
                    log(&format!("stored {} at {}", file_label(path), self.destination));
                }
                Ok(code) if status::is_transient(code) => {
                    let _ = association.abort();
                    return Err(format!("out of resources (status {code:04X}H)"));
                }
                Ok(code) => self.quarantine(path, &format!("refused with status {code:04X}H")),
                Err(StoreError::Refused(reason)) => self.quarantine(path, &reason),
                Err(StoreError::Transport(problem)) => {
                    let _ = association.abort();
                    return Err(problem);
                }
            }
        }
        let _ = association.release();
        Ok(())
    }

    fn quarantine(&self, path: &Path, reason: &str) {
        match self.queue.quarantine(path, reason) {
            Ok(kept) => log(&format!("{}: {reason}; kept at {}", file_label(path), kept.display())),
            Err(e) => log(&format!("{}: {reason}; cannot move it aside: {e}", file_label(path))),
        }
    }
}

fn file_label(path: &Path) -> String {
    let dir = path.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy()).unwrap_or_default();
    format!("{dir}/{}", path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        let d: Destination = "ORTHANC@127.0.0.1:4242".parse().unwrap();
        assert_eq!((d.ae_title.as_str(), d.address.as_str()), ("ORTHANC", "127.0.0.1:4242"));
        assert_eq!(d.to_string(), "ORTHANC@127.0.0.1:4242");
        for bad in ["127.0.0.1:4242", "@h:1", "A@h", "A@:1", "A@h:99999", "SEVENTEEN_CHARS_X@h:1"] {
            assert!(bad.parse::<Destination>().is_err(), "{bad}");
        }
    }
}
