//! The result record of one prediction as the front ends print it: `medpatch predict`'s JSON
//! line (after its input fields) and the service's `POST /v1/predict` answer are this, so that
//! the two cannot drift apart.

use crate::backend::{Precision, Provider};
use crate::engine::{Engine, Prediction, Timings};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Everything about one prediction but its input: `model`, `provider`, `precision`,
/// `probabilities` and `logits` (class → value, model order, rounded to 6 decimals), `timings_ms`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PredictionRecord<'a> {
    pub model: String,
    pub provider: Provider,
    pub precision: Precision,
    pub probabilities: PerClass<'a>,
    pub logits: PerClass<'a>,
    pub timings_ms: Timings,
}

impl<'a> PredictionRecord<'a> {
    pub fn new(engine: &'a Engine, prediction: &'a Prediction) -> Self {
        let classes = &engine.model().metadata.classes;
        Self {
            model: engine.model().origin.to_string(),
            provider: prediction.provider,
            precision: engine.precision(),
            probabilities: PerClass { classes, values: &prediction.probabilities },
            logits: PerClass { classes, values: &prediction.logits },
            timings_ms: prediction.timings,
        }
    }
}

/// Per-class values serialised as a map from class name to the value rounded to 6 decimals.
#[derive(Debug, Clone, Copy)]
pub struct PerClass<'a> {
    pub classes: &'a [String],
    pub values: &'a [f32],
}

impl Serialize for PerClass<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.classes.len()))?;
        for (class, &value) in self.classes.iter().zip(self.values) {
            map.serialize_entry(class, &round6(value))?;
        }
        map.end()
    }
}

/// A value as printed: rounded to 6 decimals (the CLI's and the service's records).
pub fn round6(v: f32) -> f64 {
    (v as f64 * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Input, ProviderChoice};

    #[test]
    fn the_record_names_classes_in_model_order_with_rounded_values() {
        let engine = Engine::builder().provider(ProviderChoice::Only(Provider::Tract)).threads(1).build().unwrap();
        let png = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/00001369_000.png")).unwrap();
        let p = engine.predict(Input::Bytes { bytes: &png, name: "a.png" }).unwrap();
        let value = serde_json::to_value(PredictionRecord::new(&engine, &p)).unwrap();
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["model", "provider", "precision", "probabilities", "logits", "timings_ms"]);
        assert_eq!(value["provider"], "tract");
        assert_eq!(value["precision"], "f32");
        let probabilities = value["probabilities"].as_object().unwrap();
        let classes: Vec<&String> = probabilities.keys().collect();
        assert_eq!(classes, engine.model().metadata.classes.iter().collect::<Vec<_>>());
        for (i, class) in engine.model().metadata.classes.iter().enumerate() {
            let printed = value["logits"][class].as_f64().unwrap();
            assert!((printed - p.logits[i] as f64).abs() <= 5e-7 + 1e-12, "{class}: {printed} vs {}", p.logits[i]);
            assert_eq!(printed, round6(p.logits[i]));
        }
        assert_eq!(round6(0.123_456_78), 0.123457);
    }
}
