//! What did not fit when named weights were matched to an architecture's layers: one report
//! type for the exporter (which refuses any problem) and the trainer (which may expect some, e.g.
//! the stem and head it replaces when starting from ImageNet weights).

/// Problems found while matching weights to the architecture.
#[derive(Debug, Default, PartialEq)]
pub struct WeightProblems {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (tensor, expected shape, found shape)
    pub wrong_shape: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl WeightProblems {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_shape.is_empty()
    }

    /// The problems left when the tensors in `expected` may be missing or misshapen (they are
    /// replaced on purpose).
    pub fn except(&self, expected: &[&str]) -> WeightProblems {
        let kept = |name: &String| !expected.contains(&name.as_str());
        WeightProblems {
            missing: self.missing.iter().filter(|n| kept(n)).cloned().collect(),
            unexpected: self.unexpected.clone(),
            wrong_shape: self.wrong_shape.iter().filter(|(n, ..)| kept(n)).cloned().collect(),
        }
    }
}

impl std::fmt::Display for WeightProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |f: &mut std::fmt::Formatter<'_>, what: &str, names: &[String]| {
            if names.is_empty() {
                return Ok(());
            }
            const SHOWN: usize = 12;
            write!(
                f,
                "\n  {} {what}: {}",
                names.len(),
                names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ")
            )?;
            if names.len() > SHOWN { write!(f, ", …") } else { Ok(()) }
        };
        write!(f, "the weights do not fit the architecture")?;
        list(f, "missing keys", &self.missing)?;
        list(f, "unexpected keys", &self.unexpected)?;
        for (name, expected, found) in &self.wrong_shape {
            write!(f, "\n  wrong shape for {name}: expected {expected:?}, found {found:?}")?;
        }
        Ok(())
    }
}
