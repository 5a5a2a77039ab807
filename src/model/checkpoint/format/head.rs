//! A task's head kind as the file spells it: absent for a head of its own (as in
//! every file written before ESMM heads), `{"kind": "esmm_cvr", "ctr": "<task>"}`
//! for an ESMM pair's CVR task.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::{need, refuse};
use crate::model::HeadKind;

#[derive(Serialize)]
#[serde(remote = "HeadKind", tag = "kind", rename_all = "snake_case")]
pub(super) enum HeadKindDef {
    Own,
    EsmmCvr { ctr: String },
}

/// For `skip_serializing_if`: the default head is not written.
pub(super) fn is_own(head: &HeadKind) -> bool {
    *head == HeadKind::Own
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum HeadKindName {
    Own,
    EsmmCvr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadFields {
    kind: HeadKindName,
    #[serde(default, deserialize_with = "super::some")]
    ctr: Option<String>,
}

impl HeadKindDef {
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HeadKind, D::Error> {
        let fields = HeadFields::deserialize(d)?;
        let head = match fields.kind {
            HeadKindName::Own => refuse(&[("ctr", fields.ctr.is_some())]).map(|_| HeadKind::Own),
            HeadKindName::EsmmCvr => need("ctr", fields.ctr).map(|ctr| HeadKind::EsmmCvr { ctr }),
        };
        head.map_err(D::Error::custom)
    }
}
