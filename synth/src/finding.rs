//! The 14 CheXpert columns as a type, so that rendering names findings, not strings.

use medpatch_eval::labels::class_task;
use medpatch_models::CHEXPERT_CLASSES;

/// A CheXpert column; the discriminant is its index in [`CHEXPERT_CLASSES`] (the CSV order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Finding {
    NoFinding,
    EnlargedCardiomediastinum,
    Cardiomegaly,
    LungOpacity,
    LungLesion,
    Edema,
    Consolidation,
    Pneumonia,
    Atelectasis,
    Pneumothorax,
    PleuralEffusion,
    PleuralOther,
    Fracture,
    SupportDevices,
}

/// The 14 labels of an image, indexed by [`Finding`] (or by column number).
pub type Labels = [bool; 14];

impl Finding {
    /// Every column, in CSV order.
    pub const ALL: [Finding; 14] = [
        Finding::NoFinding,
        Finding::EnlargedCardiomediastinum,
        Finding::Cardiomegaly,
        Finding::LungOpacity,
        Finding::LungLesion,
        Finding::Edema,
        Finding::Consolidation,
        Finding::Pneumonia,
        Finding::Atelectasis,
        Finding::Pneumothorax,
        Finding::PleuralEffusion,
        Finding::PleuralOther,
        Finding::Fracture,
        Finding::SupportDevices,
    ];

    /// The findings drawn into an image: every column but No Finding, which is derived.
    pub fn drawn() -> &'static [Finding] {
        &Finding::ALL[1..]
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The CheXpert column name.
    pub fn name(self) -> &'static str {
        CHEXPERT_CLASSES[self.index()]
    }

    /// Its CheXlocalize task (the ground-truth mask it draws), if it has one.
    pub fn task(self) -> Option<&'static str> {
        class_task(self.name())
    }

    /// Counts towards "not No Finding": every pathology; support devices do not (as in
    /// CheXpert's labeler).
    pub fn is_pathology(self) -> bool {
        !matches!(self, Finding::NoFinding | Finding::SupportDevices)
    }
}

impl std::ops::Index<Finding> for Labels {
    type Output = bool;
    fn index(&self, finding: Finding) -> &bool {
        &self[finding.index()]
    }
}

impl std::ops::IndexMut<Finding> for Labels {
    fn index_mut(&mut self, finding: Finding) -> &mut bool {
        &mut self[finding.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medpatch_eval::labels::LOCALIZATION_TASKS;

    #[test]
    fn the_enum_is_the_csv_order_and_tasks_are_chexlocalizes() {
        let names: Vec<&str> = Finding::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names, CHEXPERT_CLASSES);
        assert!(Finding::ALL.iter().enumerate().all(|(i, f)| f.index() == i));
        let mut tasks: Vec<&str> = Finding::ALL.iter().filter_map(|f| f.task()).collect();
        let mut want = LOCALIZATION_TASKS.to_vec();
        tasks.sort();
        want.sort();
        assert_eq!(tasks, want);
        assert_eq!(Finding::LungOpacity.task(), Some("Airspace Opacity"));
        let mut labels: Labels = [false; 14];
        labels[Finding::Edema] = true;
        assert!(labels[5] && labels[Finding::Edema] && !labels[Finding::LungOpacity]);
    }
}
