//! The description's members of categorical fields: the config's `fields` and
//! `table_optimizer`, and the top-level `vocabulary` of the fields' encoders. Each is
//! absent from files of models without fields, which are thereby byte for byte what
//! earlier versions wrote.

use std::fmt;

use serde::de::{Error as _, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::super::json::{some, some_exact};
use super::{need, refuse};
use crate::data::categorical::{Category, Encoders, FieldEncoder, Vocabulary as Values};
use crate::model::{FieldConfig, FieldValues};
use crate::shape::{Pooling, TableOptimizer};

#[derive(Serialize, Deserialize)]
#[serde(remote = "FieldConfig", deny_unknown_fields)]
struct FieldDef {
    name: String,
    vocab: usize,
    dim: usize,
    #[serde(with = "FieldValuesDef")]
    values: FieldValues,
    weighted: bool,
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    shares: Option<String>,
}

/// One field, for a serde sequence.
#[derive(Serialize, Deserialize)]
struct Field(#[serde(with = "FieldDef")] FieldConfig);

/// The config's fields, through [`Field`].
pub(super) struct FieldList;

impl FieldList {
    pub(super) fn serialize<S: Serializer>(
        fields: &[FieldConfig],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(fields.iter().cloned().map(Field))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<FieldConfig>, D::Error> {
        Ok(Vec::<Field>::deserialize(d)?
            .into_iter()
            .map(|f| f.0)
            .collect())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Pooling", rename_all = "snake_case")]
enum PoolingDef {
    Sum,
    Mean,
}

#[derive(Serialize)]
#[serde(remote = "FieldValues", tag = "kind", rename_all = "snake_case")]
enum FieldValuesDef {
    Single,
    Multi {
        #[serde(with = "PoolingDef")]
        pooling: Pooling,
        max_bag: usize,
    },
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum FieldValuesKind {
    Single,
    Multi,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldValuesFields {
    kind: FieldValuesKind,
    #[serde(default, deserialize_with = "pooling")]
    pooling: Option<Pooling>,
    #[serde(default, deserialize_with = "some")]
    max_bag: Option<usize>,
}

fn pooling<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Pooling>, D::Error> {
    PoolingDef::deserialize(d).map(Some)
}

impl FieldValuesDef {
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FieldValues, D::Error> {
        let f = FieldValuesFields::deserialize(d)?;
        let values = match f.kind {
            FieldValuesKind::Single => refuse(&[
                ("pooling", f.pooling.is_some()),
                ("max_bag", f.max_bag.is_some()),
            ])
            .map(|()| FieldValues::Single),
            FieldValuesKind::Multi => need("pooling", f.pooling).and_then(|pooling| {
                let max_bag = need("max_bag", f.max_bag)?;
                Ok(FieldValues::Multi { pooling, max_bag })
            }),
        };
        values.map_err(D::Error::custom)
    }
}

/// Whether the table optimizer is the default one, which files leave out.
pub(super) fn is_default(optimizer: &TableOptimizer) -> bool {
    *optimizer == TableOptimizer::default()
}

#[derive(Serialize)]
#[serde(remote = "TableOptimizer", tag = "kind", rename_all = "snake_case")]
pub(super) enum TableOptimizerDef {
    Dense,
    LazyAdam {
        beta1: f32,
        beta2: f32,
        eps: f32,
        #[serde(skip_serializing_if = "Option::is_none")]
        learning_rate: Option<f32>,
    },
    Adagrad {
        eps: f32,
        initial_accumulator: f32,
        #[serde(skip_serializing_if = "Option::is_none")]
        learning_rate: Option<f32>,
    },
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum TableOptimizerKind {
    Dense,
    LazyAdam,
    Adagrad,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableOptimizerFields {
    kind: TableOptimizerKind,
    #[serde(default, deserialize_with = "some_exact")]
    beta1: Option<f32>,
    #[serde(default, deserialize_with = "some_exact")]
    beta2: Option<f32>,
    #[serde(default, deserialize_with = "some_exact")]
    eps: Option<f32>,
    #[serde(default, deserialize_with = "some_exact")]
    initial_accumulator: Option<f32>,
    #[serde(default, deserialize_with = "some_exact")]
    learning_rate: Option<f32>,
}

impl TableOptimizerDef {
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TableOptimizer, D::Error> {
        TableOptimizerFields::deserialize(d)?
            .build()
            .map_err(D::Error::custom)
    }
}

impl TableOptimizerFields {
    fn build(self) -> Result<TableOptimizer, String> {
        let learning_rate = self.learning_rate;
        match self.kind {
            TableOptimizerKind::Dense => {
                refuse(&[
                    ("beta1", self.beta1.is_some()),
                    ("beta2", self.beta2.is_some()),
                    ("eps", self.eps.is_some()),
                    ("initial_accumulator", self.initial_accumulator.is_some()),
                    ("learning_rate", learning_rate.is_some()),
                ])?;
                Ok(TableOptimizer::Dense)
            }
            TableOptimizerKind::LazyAdam => {
                refuse(&[("initial_accumulator", self.initial_accumulator.is_some())])?;
                Ok(TableOptimizer::LazyAdam {
                    beta1: need("beta1", self.beta1)?,
                    beta2: need("beta2", self.beta2)?,
                    eps: need("eps", self.eps)?,
                    learning_rate,
                })
            }
            TableOptimizerKind::Adagrad => {
                refuse(&[
                    ("beta1", self.beta1.is_some()),
                    ("beta2", self.beta2.is_some()),
                ])?;
                Ok(TableOptimizer::Adagrad {
                    eps: need("eps", self.eps)?,
                    initial_accumulator: need("initial_accumulator", self.initial_accumulator)?,
                    learning_rate,
                })
            }
        }
    }
}

/// The fields' encoders, as the description's `vocabulary`: an object of one member
/// per field, in name order.
#[derive(Default)]
pub(in crate::model::checkpoint) struct Vocabulary(pub(in crate::model::checkpoint) Encoders);

impl Vocabulary {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A vocabulary entry: an integer or a string.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Entry {
    Int(u64),
    Str(String),
}

/// One field's encoder as the file has it.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum EncoderDef {
    Vocabulary { values: Vec<Entry> },
    Hash { buckets: u32 },
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum EncoderKind {
    Vocabulary,
    Hash,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncoderFields {
    kind: EncoderKind,
    #[serde(default, deserialize_with = "some")]
    values: Option<Vec<Entry>>,
    #[serde(default, deserialize_with = "some")]
    buckets: Option<u32>,
}

impl EncoderFields {
    fn build(self) -> Result<FieldEncoder, String> {
        match self.kind {
            EncoderKind::Hash => {
                refuse(&[("values", self.values.is_some())])?;
                let buckets = need("buckets", self.buckets)?;
                if buckets == 0 {
                    return Err("a hash needs at least 1 bucket".into());
                }
                Ok(FieldEncoder::Hash { buckets })
            }
            EncoderKind::Vocabulary => {
                refuse(&[("buckets", self.buckets.is_some())])?;
                let values = need("values", self.values)?
                    .into_iter()
                    .map(|v| match v {
                        Entry::Int(n) => Category::Int(n),
                        Entry::Str(s) => Category::Str(s),
                    })
                    .collect();
                Values::from_values(values)
                    .map(FieldEncoder::Vocabulary)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

impl Serialize for Vocabulary {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, encoder) in self.0.iter() {
            let def = match encoder {
                FieldEncoder::Vocabulary(v) => EncoderDef::Vocabulary {
                    values: v
                        .values()
                        .iter()
                        .map(|c| match c {
                            Category::Int(n) => Entry::Int(*n),
                            Category::Str(s) => Entry::Str(s.clone()),
                        })
                        .collect(),
                },
                FieldEncoder::Hash { buckets } => EncoderDef::Hash { buckets: *buckets },
            };
            map.serialize_entry(name, &def)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Vocabulary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Vocabulary;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of one encoder per field")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vocabulary, A::Error> {
                let mut encoders = Encoders::new();
                while let Some(name) = map.next_key::<String>()? {
                    if encoders.get(&name).is_some() {
                        return Err(A::Error::custom(format!("duplicate field `{name}`")));
                    }
                    let encoder = map
                        .next_value::<EncoderFields>()?
                        .build()
                        .map_err(|m| A::Error::custom(format!("`{name}`: {m}")))?;
                    encoders.insert(name, encoder);
                }
                Ok(Vocabulary(encoders))
            }
        }
        d.deserialize_map(Fields)
    }
}
