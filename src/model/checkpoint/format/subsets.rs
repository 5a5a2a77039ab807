//! The description's `expert_inputs`: which part of the input each run of experts
//! reads, as `{"experts": 4, "columns": [0, 50]}` or `{"experts": 4, "fields": [..]}`.
//! Absent when every expert reads the whole input, so such files are byte for byte
//! what earlier versions wrote.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{ExpertInput, InputSubset};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Run {
    experts: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    columns: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fields: Option<Vec<String>>,
}

pub(super) struct ExpertInputList;

impl ExpertInputList {
    pub(super) fn serialize<S: Serializer>(runs: &[ExpertInput], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(runs.iter().map(|run| {
            let (columns, fields) = match &run.subset {
                InputSubset::Columns { start, end } => (Some([*start, *end]), None),
                InputSubset::Fields(names) => (None, Some(names.clone())),
            };
            Run {
                experts: run.experts,
                columns,
                fields,
            }
        }))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<ExpertInput>, D::Error> {
        Vec::<Run>::deserialize(d)?
            .into_iter()
            .enumerate()
            .map(|(i, run)| {
                let subset = match (run.columns, run.fields) {
                    (Some([start, end]), None) => InputSubset::Columns { start, end },
                    (None, Some(names)) => InputSubset::Fields(names),
                    _ => {
                        return Err(D::Error::custom(format!(
                            "expert input {i} needs exactly one of `columns` and `fields`"
                        )));
                    }
                };
                Ok(ExpertInput {
                    experts: run.experts,
                    subset,
                })
            })
            .collect()
    }
}
