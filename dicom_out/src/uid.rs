//! UIDs of the objects medpatch writes: `2.25.<UUID as a decimal integer>` (ITU-T X.667, no
//! registered root needed), the UUID name-based (RFC 9562 version 8 over SHA-256) on what the
//! object is: the same source image through the same model gets the same UIDs every time, so a
//! resend replaces its results in the PACS instead of duplicating them, and tests can predict them.

use sha2::{Digest, Sha256};

/// A UID named by `parts` (each length-prefixed, so `["ab", "c"]` and `["a", "bc"]` differ).
pub fn derived_uid(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"medpatch-dicom-uid/1");
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8 (custom, here SHA-256 based)
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

/// Whether `uid` is a syntactically valid DICOM UID (PS3.5 9.1): at most 64 characters, digits
/// and dots, components without leading zeros.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uids_are_valid_stable_and_distinct() {
        let a = derived_uid(&["1.2.3", "sr"]);
        assert_eq!(a, derived_uid(&["1.2.3", "sr"]));
        assert_ne!(a, derived_uid(&["1.2.3", "seg"]));
        assert_ne!(derived_uid(&["ab", "c"]), derived_uid(&["a", "bc"]));
        assert!(a.starts_with("2.25.") && is_valid_uid(&a) && a.len() <= 44, "{a}");
        // The integer is a version-8 UUID: its 13th hex digit is 8.
        let n: u128 = a["2.25.".len()..].parse().unwrap();
        assert_eq!(format!("{n:032x}").as_bytes()[12], b'8');
        for uid in (0..200).map(|i| derived_uid(&[&i.to_string()])) {
            assert!(is_valid_uid(&uid), "{uid}");
        }
        assert!(!is_valid_uid("1.02.3") && !is_valid_uid("1..2") && !is_valid_uid(&"1".repeat(65)));
    }
}
