//! The description's top-level `dense_inputs`: each dense input's name and the
//! standardisation training applied to its raw values. Absent when the checkpoint
//! carries none, so files without it are byte for byte what earlier versions wrote.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::data::dense::DenseInput;

/// The dense inputs, as the description's `dense_inputs`: an array in input order.
#[derive(Default, Serialize, Deserialize)]
#[serde(transparent)]
pub(in crate::model::checkpoint) struct DenseInputs(
    #[serde(with = "DenseInputList")] pub(in crate::model::checkpoint) Vec<DenseInput>,
);

impl DenseInputs {
    pub(in crate::model::checkpoint) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "DenseInput", deny_unknown_fields)]
struct DenseInputDef {
    name: String,
    #[serde(deserialize_with = "exact_f64")]
    mean: f64,
    #[serde(deserialize_with = "exact_f64")]
    std: f64,
}

#[derive(Serialize, Deserialize)]
struct Entry(#[serde(with = "DenseInputDef")] DenseInput);

struct DenseInputList;

impl DenseInputList {
    fn serialize<S: serde::Serializer>(inputs: &[DenseInput], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(inputs.iter().cloned().map(Entry))
    }

    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DenseInput>, D::Error> {
        Ok(Vec::<Entry>::deserialize(d)?
            .into_iter()
            .map(|e| e.0)
            .collect())
    }
}

/// An `f64` parsed from its own text with one correct rounding (serde_json's
/// default parser may be one unit in the last place off), finite.
fn exact_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let text = <&RawValue>::deserialize(deserializer)?.get();
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => {
            let shown: String = text.chars().take(40).collect();
            Err(D::Error::custom(format_args!(
                "invalid value: `{shown}`, expected a finite number"
            )))
        }
    }
}
