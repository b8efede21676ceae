//! Coded concepts: the DICOM (DCM), SNOMED CT (SCT) and UCUM codes the objects use, and each
//! finding's code. Where no standard concept fits a CheXpert class, a local code in the private
//! coding scheme [`LOCAL_SCHEME`] stands in (docs/dicom.md lists which).

/// The coding scheme designator of medpatch's local codes (PS3.16 8.2: private schemes begin with "99").
pub const LOCAL_SCHEME: &str = "99MEDPATCH";

/// A coded concept: value, coding scheme designator, meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub value: String,
    pub scheme: String,
    pub meaning: String,
}

impl Code {
    pub fn new(value: &str, scheme: &str, meaning: &str) -> Self {
        Self { value: value.into(), scheme: scheme.into(), meaning: meaning.into() }
    }
    pub fn dcm(value: &str, meaning: &str) -> Self {
        Self::new(value, "DCM", meaning)
    }
    pub fn sct(value: &str, meaning: &str) -> Self {
        Self::new(value, "SCT", meaning)
    }
    pub fn is_local(&self) -> bool {
        self.scheme == LOCAL_SCHEME
    }
}

/// How a finding is coded and which segmentation category it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingCodes {
    pub finding: Code,
    /// CID 7150 "Segmentation Property Category".
    pub category: Code,
}

fn abnormal() -> Code {
    Code::sct("49755003", "Morphologically Abnormal Structure")
}

/// The codes for a model class, by its CheXpert name (case-insensitive); other names get a local
/// code made from the name itself.
pub fn finding_codes(class: &str) -> FindingCodes {
    let standard = match class.to_ascii_lowercase().as_str() {
        "cardiomegaly" => Some(Code::sct("8186001", "Cardiomegaly")),
        "lung opacity" => Some(Code::dcm("112001", "Opacity")),
        "edema" => Some(Code::sct("19242006", "Pulmonary edema")),
        "consolidation" => Some(Code::sct("95436008", "Lung consolidation")),
        "pneumonia" => Some(Code::sct("233604007", "Pneumonia")),
        "atelectasis" => Some(Code::sct("46621007", "Atelectasis")),
        "pneumothorax" => Some(Code::sct("36118008", "Pneumothorax")),
        "pleural effusion" => Some(Code::sct("60046008", "Pleural effusion")),
        "fracture" => Some(Code::sct("125605004", "Fracture of bone")),
        _ => None,
    };
    let category = match class.to_ascii_lowercase().as_str() {
        "support devices" => Code::sct("260787004", "Physical object"),
        "no finding" => Code::sct("91723000", "Anatomical Structure"),
        _ => abnormal(),
    };
    FindingCodes { finding: standard.unwrap_or_else(|| local_code(class)), category }
}

/// A local code for a class without a standard one: its name, upper-cased, non-alphanumerics as
/// `_` (Code Value is SH: at most 16 characters, so long names are cut and keep their uniqueness
/// through a short hash).
pub fn local_code(class: &str) -> Code {
    let mut value: String =
        class.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if value.len() > 16 {
        let hash = class.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        value = format!("{}_{:05X}", &value[..10], hash & 0xFFFFF);
    }
    // Code Meaning is LO (64 characters); class names are checked to be at most 64 bytes.
    Code::new(&value, LOCAL_SCHEME, class)
}

// The document's own vocabulary (TID 1500, TID 1501, TID 4019, TID 1002–1004, CID 7005).
pub fn imaging_measurement_report() -> Code {
    Code::dcm("126000", "Imaging Measurement Report")
}
pub fn imaging_measurements() -> Code {
    Code::dcm("126010", "Imaging Measurements")
}
pub fn measurement_group() -> Code {
    Code::dcm("125007", "Measurement Group")
}
pub fn language() -> Code {
    Code::dcm("121049", "Language of Content Item and Descendants")
}
pub fn english_us() -> Code {
    Code::new("en-US", "RFC5646", "English (United States)")
}
pub fn observer_type() -> Code {
    Code::dcm("121005", "Observer Type")
}
pub fn device() -> Code {
    Code::dcm("121007", "Device")
}
pub fn device_observer_uid() -> Code {
    Code::dcm("121012", "Device Observer UID")
}
pub fn device_observer_name() -> Code {
    Code::dcm("121013", "Device Observer Name")
}
pub fn device_observer_manufacturer() -> Code {
    Code::dcm("121014", "Device Observer Manufacturer")
}
pub fn device_observer_model_name() -> Code {
    Code::dcm("121015", "Device Observer Model Name")
}
pub fn procedure_reported() -> Code {
    Code::dcm("121058", "Procedure reported")
}
/// The procedure when the source names none (its Procedure Code Sequence is copied otherwise).
pub fn plain_chest_xray() -> Code {
    Code::sct("399208008", "Plain chest X-ray")
}
pub fn tracking_identifier() -> Code {
    Code::dcm("112039", "Tracking Identifier")
}
pub fn tracking_uid() -> Code {
    Code::dcm("112040", "Tracking Unique Identifier")
}
pub fn finding() -> Code {
    Code::dcm("121071", "Finding")
}
pub fn algorithm_name() -> Code {
    Code::dcm("111001", "Algorithm Name")
}
pub fn algorithm_version() -> Code {
    Code::dcm("111003", "Algorithm Version")
}
pub fn algorithm_parameters() -> Code {
    Code::dcm("111002", "Algorithm Parameters")
}
pub fn source_of_measurement() -> Code {
    Code::dcm("121112", "Source of Measurement")
}
pub fn probability() -> Code {
    Code::dcm("122157", "Probability")
}
/// UCUM's dimensionless unit: probabilities are in [0, 1].
pub fn no_units() -> Code {
    Code::new("1", "UCUM", "no units")
}
pub fn present() -> Code {
    Code::sct("52101004", "Present")
}
pub fn absent() -> Code {
    Code::sct("272519000", "Absent")
}
pub fn processing_equipment() -> Code {
    Code::dcm("109102", "Processing Equipment")
}
pub fn source_image_for_processing() -> Code {
    Code::dcm("121322", "Source image for image processing operation")
}
pub fn segmentation_derivation() -> Code {
    Code::dcm("113076", "Segmentation")
}
pub fn artificial_intelligence() -> Code {
    Code::dcm("123110", "Artificial Intelligence")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chexpert_class_has_a_code_that_fits_its_vrs() {
        let mut local = Vec::new();
        for class in medpatch_models::CHEXPERT_CLASSES {
            let codes = finding_codes(class);
            assert!(codes.finding.value.len() <= 16 && codes.finding.meaning.len() <= 64, "{codes:?}");
            if codes.finding.is_local() {
                local.push(class);
            }
        }
        // docs/dicom.md lists these as local; update both together.
        assert_eq!(
            local,
            ["No Finding", "Enlarged Cardiomediastinum", "Lung Lesion", "Pleural Other", "Support Devices"]
        );
        let long = local_code("Enlarged Cardiomediastinum").value;
        assert!(long.starts_with("ENLARGED_C_") && long.len() == 16, "{long}");
        assert_eq!(local_code("Lung Lesion").value, "LUNG_LESION");
        assert_ne!(local_code("A very long class name one").value, local_code("A very long class name two").value);
    }
}
