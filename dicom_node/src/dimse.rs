//! DIMSE command sets (PS3.7): the C-ECHO and C-STORE requests and responses the node sends and
//! answers, always in Implicit VR Little Endian.

use dicom_core::value::C;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type: no data set follows.
pub const NO_DATA_SET: u16 = 0x0101;

pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Statuses the node answers with (PS3.4 B.2.3, PS3.7 C).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (the result could not be queued).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: cannot understand (not an X-ray the engine can read).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Failure: processing failure (the engine failed).
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// Failure: no such SOP class / unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;

    /// Stored: success, or a warning (coercion, elements discarded, …).
    pub fn is_stored(status: u16) -> bool {
        matches!(status, 0x0000 | 0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF)
    }
    /// Worth retrying later: the destination was out of resources.
    pub fn is_transient(status: u16) -> bool {
        (0xA700..=0xA7FF).contains(&status)
    }
}

/// A received command set, the fields the node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub has_data_set: bool,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub status: Option<u16>,
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(|c: char| c.is_whitespace() || c == '\0').to_string())
        .unwrap_or_default()
}

fn number(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    obj.get(tag).and_then(|e| e.to_int::<u16>().ok())
}

pub fn parse(bytes: &[u8]) -> Result<Command, String> {
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, &ts).map_err(|e| format!("unreadable command set: {e}"))?;
    let field = number(&obj, tags::COMMAND_FIELD).ok_or("the command set has no Command Field")?;
    let message_id = number(&obj, tags::MESSAGE_ID).or_else(|| number(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO));
    Ok(Command {
        field,
        message_id: message_id.unwrap_or(0),
        has_data_set: number(&obj, tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET),
        sop_class_uid: text(&obj, tags::AFFECTED_SOP_CLASS_UID),
        sop_instance_uid: text(&obj, tags::AFFECTED_SOP_INSTANCE_UID),
        status: number(&obj, tags::STATUS),
    })
}

fn u16_element(tag: Tag, value: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::U16(C::from_elem(value, 1)))
}

fn encode(elements: Vec<DataElement<InMemDicomObject>>) -> Vec<u8> {
    let obj = InMemDicomObject::command_from_element_iter(elements);
    let mut bytes = Vec::new();
    obj.write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .expect("a command set of a few fixed elements always encodes");
    bytes
}

pub fn echo_request(message_id: u16) -> Vec<u8> {
    encode(vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(VERIFICATION)),
        u16_element(tags::COMMAND_FIELD, C_ECHO_RQ),
        u16_element(tags::MESSAGE_ID, message_id),
        u16_element(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
    ])
}

pub fn echo_response(request: &Command) -> Vec<u8> {
    encode(vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(VERIFICATION)),
        u16_element(tags::COMMAND_FIELD, C_ECHO_RSP),
        u16_element(tags::MESSAGE_ID_BEING_RESPONDED_TO, request.message_id),
        u16_element(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
        u16_element(tags::STATUS, status::SUCCESS),
    ])
}

pub fn store_request(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> Vec<u8> {
    encode(vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(sop_class_uid)),
        u16_element(tags::COMMAND_FIELD, C_STORE_RQ),
        u16_element(tags::MESSAGE_ID, message_id),
        u16_element(tags::PRIORITY, 0),
        u16_element(tags::COMMAND_DATA_SET_TYPE, 0x0000),
        DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop_instance_uid)),
    ])
}

/// A C-STORE response (or a failure response to another request, with its command field).
pub fn store_response(request: &Command, status: u16, comment: Option<&str>) -> Vec<u8> {
    let mut elements = vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(request.sop_class_uid.as_str())),
        u16_element(tags::COMMAND_FIELD, request.field | 0x8000),
        u16_element(tags::MESSAGE_ID_BEING_RESPONDED_TO, request.message_id),
        u16_element(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET),
        u16_element(tags::STATUS, status),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(request.sop_instance_uid.as_str()),
        ),
    ];
    if let Some(comment) = comment {
        // Error Comment is LO: 64 characters.
        let short: String = comment.chars().take(64).collect();
        elements.push(DataElement::new(tags::ERROR_COMMENT, VR::LO, PrimitiveValue::from(short)));
    }
    encode(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let rq = parse(&store_request(7, "1.2.3", "4.5.6")).unwrap();
        assert_eq!(rq.field, C_STORE_RQ);
        assert_eq!((rq.message_id, rq.has_data_set), (7, true));
        assert_eq!((rq.sop_class_uid.as_str(), rq.sop_instance_uid.as_str()), ("1.2.3", "4.5.6"));
        let rsp = parse(&store_response(&rq, status::CANNOT_UNDERSTAND, Some(&"x".repeat(100)))).unwrap();
        assert_eq!((rsp.field, rsp.message_id, rsp.status), (C_STORE_RSP, 7, Some(0xC000)));
        assert!(!rsp.has_data_set);
        let echo = parse(&echo_request(3)).unwrap();
        assert_eq!((echo.field, echo.has_data_set), (C_ECHO_RQ, false));
        let echo_rsp = parse(&echo_response(&echo)).unwrap();
        assert_eq!((echo_rsp.field, echo_rsp.message_id, echo_rsp.status), (C_ECHO_RSP, 3, Some(0)));
        assert!(status::is_stored(0xB007) && !status::is_stored(0xA700) && status::is_transient(0xA702));
        assert!(parse(b"junk").is_err());
    }
}
