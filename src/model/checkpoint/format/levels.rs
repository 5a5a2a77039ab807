//! The description's `levels` of a PLE model: each level's experts and gate, in the
//! members the config's [`Level`] has. Absent from files of every other
//! architecture, which are thereby byte for byte what earlier versions wrote.

use serde::{Deserialize, Serialize, Serializer};

use super::{GateDef, GateFields};
use crate::model::{Gate, Level};

#[derive(Serialize)]
#[serde(remote = "Level")]
struct LevelDef {
    shared_experts: usize,
    task_experts: usize,
    expert_layers: Vec<usize>,
    #[serde(with = "GateDef")]
    gate: Gate,
}

/// One level, serialised through [`LevelDef`].
struct One<'a>(&'a Level);

impl Serialize for One<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        LevelDef::serialize(self.0, s)
    }
}

/// `levels` as a JSON array of level objects.
pub(super) fn serialize<S: Serializer>(levels: &[Level], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(levels.iter().map(One))
}

/// A level as read, every member required.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LevelFields {
    shared_experts: usize,
    task_experts: usize,
    expert_layers: Vec<usize>,
    gate: GateFields,
}

impl LevelFields {
    pub(super) fn build(self) -> Result<Level, String> {
        Ok(Level {
            shared_experts: self.shared_experts,
            task_experts: self.task_experts,
            expert_layers: self.expert_layers,
            gate: self.gate.build()?,
        })
    }
}
