//! Checkpoints in the safetensors format: a model's parameters, embedding tables,
//! optimizer state, step count, learning rate, config and encoders, in a file PyTorch
//! can read and write (the whole format, names, shapes and layouts included, is in
//! `docs/checkpoint.md`).
//!
//! Every tensor is `F32`, little-endian, row-major, named as in [`Trainer::parameter`]
//! (`experts.0.weight`, in this crate's `[groups, inputs, outputs]` layout;
//! `embeddings.{field}.weight`, `[vocab, dim]`); optimizer state is
//! `optimizer.{exp_avg,exp_avg_sq,momentum_buffer,sum}.{parameter or table}`. The
//! rest lives in one metadata entry, [`METADATA_KEY`], as JSON: one key keeps the
//! header byte-identical from save to save (safetensors writes metadata in hash
//! order), which is why the encoders are a member of it (`vocabulary`) rather than a
//! key of their own.
//!
//! [`Trainer::parameter`]: crate::model::Trainer::parameter

mod format;
mod json;
mod layout;

pub(crate) use layout::check_dimensions;
pub use layout::{state_names, state_tensor_name, table_state_names};

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::data::categorical::Encoders;
use crate::data::dense::{DenseInput, check_dense_inputs};
use crate::graph::{Graph, Plan, Role};
use crate::model::ModelConfig;
use crate::model::fields::check_encoders;
use crate::{Error, Result};
use format::{Config, DenseInputs, Description, Head, Vocabulary};

/// The safetensors metadata key holding the checkpoint's JSON description.
pub const METADATA_KEY: &str = "mmoe_wgpu";
/// The value of the description's `format` field.
pub const FORMAT: &str = "mmoe-wgpu checkpoint";
/// The version of the layout this crate writes and reads.
pub const VERSION: u64 = 1;

/// One tensor of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Its name in the file, e.g. `experts.0.weight` or `optimizer.exp_avg.gate.bias`.
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// The values, `shape.iter().product()` of them.
    pub values: Vec<f32>,
}

/// Everything needed to resume training bitwise: config, step count, learning
/// rate, parameters, embedding tables and optimizer state; and the encoders of the
/// fields' raw values, if the trainer had any. Made by [`Trainer::checkpoint`] or read
/// from a file; always checked against its own config, and immutable, so a copy
/// held by the caller survives any later failure of the trainer.
///
/// [`Trainer::checkpoint`]: crate::model::Trainer::checkpoint
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    config: ModelConfig,
    steps: u32,
    learning_rate: f32,
    tensors: Vec<NamedTensor>,
    encoders: Encoders,
    dense_inputs: Vec<DenseInput>,
}

/// An embedding table's values and optimizer state tables, as a trainer holds them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TableState {
    /// `[vocab, dim]`.
    pub(crate) weight: Vec<f32>,
    /// In [`table_state_names`] order, each `[vocab, dim]`.
    pub(crate) state: Vec<Vec<f32>>,
}

/// A trainer's state as its buffers hold it: the flat parameters, each flat
/// optimizer state buffer, and each table.
pub(crate) type TrainerState = (Vec<f32>, Vec<Vec<f32>>, Vec<TableState>);

/// Where a checkpoint came from, for error messages.
const IN_MEMORY: &str = "<in memory>";

fn fault(origin: &str, what: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        origin: origin.to_string(),
        what: what.into(),
        message: message.into(),
    }
}

impl Checkpoint {
    /// The model config (its `learning_rate` is the initial one; see
    /// [`learning_rate`](Self::learning_rate)).
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Optimizer steps taken when the checkpoint was made.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// The trainer's learning rate when the checkpoint was made.
    pub fn learning_rate(&self) -> f32 {
        self.learning_rate
    }

    /// Every tensor: the parameters in graph order, the tables, then each optimizer
    /// state of the parameters, then the tables' optimizer state.
    pub fn tensors(&self) -> &[NamedTensor] {
        &self.tensors
    }

    /// The tensor called `name`, if the checkpoint has one.
    pub fn tensor(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The encoders of the fields' raw values the checkpoint carries (empty when it
    /// carries none).
    pub fn encoders(&self) -> &Encoders {
        &self.encoders
    }

    /// This checkpoint carrying `encoders` in place of its own: each must name a
    /// field of the config and give IDs within its table.
    pub fn with_encoders(self, encoders: Encoders) -> Result<Checkpoint> {
        check_encoders(&self.config, &encoders)?;
        Ok(Checkpoint { encoders, ..self })
    }

    /// The dense inputs' names and standardisation the checkpoint carries (empty
    /// when it carries none).
    pub fn dense_inputs(&self) -> &[DenseInput] {
        &self.dense_inputs
    }

    /// This checkpoint carrying `inputs` in place of its own: one per dense input
    /// of the config (`inputs`), in input order, so that raw rows at prediction time
    /// can be standardised as training did; or none.
    pub fn with_dense_inputs(self, inputs: Vec<DenseInput>) -> Result<Checkpoint> {
        if !inputs.is_empty() {
            check_dense_inputs("checkpoint dense inputs", &inputs, self.config.inputs)?;
        }
        Ok(Checkpoint {
            dense_inputs: inputs,
            ..self
        })
    }

    /// Gathers a checkpoint from a trainer's state: the flat parameters and
    /// optimizer state buffers (laid out by `plan`) and each table's values and
    /// state, in [`layout::layout`] order.
    pub(crate) fn from_state(
        config: &ModelConfig,
        steps: u32,
        learning_rate: f32,
        (graph, plan): (&Graph, &Plan),
        (params, state): (&[f32], &[Vec<f32>]),
        tables: &[TableState],
    ) -> Result<Checkpoint> {
        let names = state_names(&config.optimizer);
        let table_names = table_state_names(&config.optimizer, &config.table_optimizer);
        let bad = |what: &str, message: String| Err(fault(IN_MEMORY, what, message));
        if state.len() != names.len() {
            return bad(
                "optimizer state",
                format!("{} buffers for {names:?}", state.len()),
            );
        }
        if tables.len() != graph.tables().len()
            || tables.iter().any(|t| t.state.len() != table_names.len())
        {
            return bad(
                "tables",
                format!(
                    "{} tables of state {table_names:?} expected",
                    graph.tables().len()
                ),
            );
        }
        let mut values: Vec<&[f32]> = Vec::new();
        let parameters = graph.with_role(Role::Parameter);
        let flat_views = |flat: &'_ [f32]| -> Vec<Option<std::ops::Range<usize>>> {
            parameters
                .iter()
                .map(|id| {
                    let offset = plan.param_offsets[id.0].unwrap_or(0);
                    let range = offset..offset + graph.tensor(*id).len();
                    (range.end <= flat.len()).then_some(range)
                })
                .collect()
        };
        // Layout order: the parameters, the tables, each state of the parameters,
        // then each state of the tables.
        for (k, flat) in std::iter::once(params)
            .chain(state.iter().map(Vec::as_slice))
            .enumerate()
        {
            for range in flat_views(flat) {
                let Some(range) = range else {
                    return bad("flat buffers", "out of range".into());
                };
                values.push(&flat[range]);
            }
            if k == 0 {
                values.extend(tables.iter().map(|t| t.weight.as_slice()));
            }
        }
        for k in 0..table_names.len() {
            values.extend(tables.iter().map(|t| t.state[k].as_slice()));
        }
        let layout = layout::graph_layout(config, graph);
        let mut tensors = Vec::with_capacity(layout.len());
        for ((name, shape), values) in layout.into_iter().zip(values) {
            if values.len() != shape.iter().product::<usize>() {
                return bad(
                    &format!("tensor `{name}`"),
                    format!("{} values", values.len()),
                );
            }
            tensors.push(NamedTensor {
                name,
                shape,
                values: values.to_vec(),
            });
        }
        Ok(Checkpoint {
            config: config.clone(),
            steps,
            learning_rate,
            tensors,
            encoders: Encoders::new(),
            dense_inputs: Vec::new(),
        })
    }

    /// The flat parameter buffer and each flat optimizer state buffer, laid out by
    /// `plan` (padding zero), and each table's values and state.
    pub(crate) fn to_state(&self, graph: &Graph, plan: &Plan) -> Result<TrainerState> {
        let names = state_names(&self.config.optimizer);
        let table_names = table_state_names(&self.config.optimizer, &self.config.table_optimizer);
        let tensor = |name: &str, shape: &[usize]| {
            self.tensor(name)
                .filter(|t| t.shape == shape)
                .map(|t| t.values.clone())
                .ok_or_else(|| {
                    fault(
                        IN_MEMORY,
                        format!("tensor `{name}`"),
                        format!("missing or not of shape {shape:?}"),
                    )
                })
        };
        let mut flats = vec![vec![0.0f32; plan.param_len]; 1 + names.len()];
        for (k, flat) in flats.iter_mut().enumerate() {
            for id in graph.with_role(Role::Parameter) {
                let param = graph.tensor(id);
                let name = match k {
                    0 => param.name.clone(),
                    _ => state_tensor_name(names[k - 1], &param.name),
                };
                let values = tensor(&name, &param.shape)?;
                let offset = plan.param_offsets[id.0].unwrap_or(0);
                match flat.get_mut(offset..offset + param.len()) {
                    Some(dst) => dst.copy_from_slice(&values),
                    None => {
                        return Err(fault(IN_MEMORY, format!("tensor `{name}`"), "out of range"));
                    }
                }
            }
        }
        let tables = graph
            .tables()
            .iter()
            .map(|t| {
                let shape = [t.vocab, t.dim];
                Ok(TableState {
                    weight: tensor(&t.name, &shape)?,
                    state: table_names
                        .iter()
                        .map(|state| tensor(&state_tensor_name(state, &t.name), &shape))
                        .collect::<Result<_>>()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = flats.remove(0);
        Ok((params, flats, tables))
    }

    /// The checkpoint as the bytes of a safetensors file. The description ends in
    /// a CRC-32 of the tensor data and of the description before it, so that any
    /// damage is found on loading.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let description = Description {
            format: FORMAT.to_string(),
            version: VERSION,
            steps: self.steps,
            learning_rate: self.learning_rate,
            config: Config(self.config.clone()),
            vocabulary: Vocabulary(self.encoders.clone()),
            dense_inputs: DenseInputs(self.dense_inputs.clone()),
            crc32: None,
        };
        let text = json::to_string(&description).map_err(|m| fault(IN_MEMORY, "description", m))?;
        // Without a checksum the description ends in its object's closing brace.
        let head = text.strip_suffix('}').unwrap_or(&text);
        let bytes: Vec<Vec<u8>> = self
            .tensors
            .iter()
            .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let serialize = |description: String| {
            let views = self
                .tensors
                .iter()
                .zip(&bytes)
                .map(|(t, b)| {
                    safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), b)
                        .map(|view| (t.name.as_str(), view))
                        .map_err(|e| {
                            fault(IN_MEMORY, format!("tensor `{}`", t.name), e.to_string())
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            let metadata = HashMap::from([(METADATA_KEY.to_string(), description)]);
            safetensors::serialize(views, Some(metadata))
                .map_err(|e| fault(IN_MEMORY, "file", format!("serialising: {e}")))
        };
        // The data section does not depend on the metadata, so a first pass gives
        // the bytes the checksum covers.
        let draft = serialize(text.clone())?;
        let crc = checksum(data_section(&draft).unwrap_or(&[]), head);
        serialize(format!("{head}{CRC_MEMBER}{crc}}}"))
    }

    /// Reads a checkpoint from the bytes of a safetensors file, checking it as
    /// [`load`](Self::load) does.
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
        decode(bytes, IN_MEMORY)
    }

    /// Reads and checks the checkpoint at `path`: the description and config, then
    /// that the tensors are exactly those of the config (names, `F32` dtype,
    /// shapes) with finite values. A mismatch is an error naming the tensor.
    pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        decode(&bytes, &path.display().to_string())
    }

    /// Writes the checkpoint to `path` atomically: a crash at any moment leaves
    /// either the old file or the complete new one at `path` (see
    /// [`save_with`](Self::save_with)).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        use std::io::Write;
        self.save_with(path, |file, bytes| file.write_all(bytes))
    }

    /// [`save`](Self::save) with the bytes handed to `write` for the temporary
    /// file, e.g. through a writer that fails part way to test what a crash does.
    /// The file is written in the target's directory, flushed to disk, renamed over
    /// `path` and the directory flushed; on failure it is removed and `path` is
    /// untouched.
    pub fn save_with(
        &self,
        path: impl AsRef<Path>,
        write: impl FnOnce(&mut std::fs::File, &[u8]) -> std::io::Result<()>,
    ) -> Result<()> {
        let bytes = self.to_bytes()?;
        crate::atomic_file::replace(path.as_ref(), |file| write(file, &bytes))
    }
}

/// The checks of [`Checkpoint::load`] on `bytes`; `origin` names them in errors.
fn decode(bytes: &[u8], origin: &str) -> Result<Checkpoint> {
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| fault(origin, "file", format!("not a valid safetensors file: {e}")))?;
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| fault(origin, "file", format!("not a valid safetensors file: {e}")))?;
    let what = format!("metadata `{METADATA_KEY}`");
    let text = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| fault(origin, &what, "missing: not an mmoe-wgpu checkpoint"))?;
    let (config, steps, learning_rate, encoders, dense_inputs, crc) =
        describe(text).map_err(|m| fault(origin, &what, m))?;
    config
        .validate()
        .and_then(|()| config.optimizer.validate())
        .map_err(|e| fault(origin, "config", e.to_string()))?;
    check_encoders(&config, &encoders).map_err(|e| fault(origin, "vocabulary", e.to_string()))?;
    if !dense_inputs.is_empty() {
        check_dense_inputs("the description", &dense_inputs, config.inputs)
            .map_err(|e| fault(origin, "dense_inputs", e.to_string()))?;
    }
    let expected = layout::layout(&config).map_err(|e| fault(origin, "config", e.to_string()))?;
    // Names, dtypes and shapes first: a file of another model is reported by the
    // tensor that differs, not as damage.
    let mut views = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        let what = format!("tensor `{name}`");
        let view = file
            .tensor(&name)
            .map_err(|_| fault(origin, &what, "missing"))?;
        if view.dtype() != Dtype::F32 {
            let dtype = view.dtype();
            return Err(fault(
                origin,
                &what,
                format!("has dtype {dtype:?}, F32 expected"),
            ));
        }
        if view.shape() != shape {
            let found = view.shape();
            return Err(fault(
                origin,
                &what,
                format!("has shape {found:?}, {shape:?} expected"),
            ));
        }
        views.push((name, view));
    }
    if let Some(extra) = file
        .names()
        .into_iter()
        .find(|n| !views.iter().any(|(name, _)| name == n))
    {
        let message = "not part of this model (unexpected tensor)";
        return Err(fault(origin, format!("tensor `{extra}`"), message));
    }
    // Files written elsewhere (e.g. by PyTorch) may leave the checksum out.
    if let Some(stored) = crc {
        let covered = &text[..text.rfind(CRC_MEMBER).unwrap_or(0)];
        let computed = checksum(data_section(bytes).unwrap_or(&[]), covered);
        if computed != stored {
            return Err(fault(
                origin,
                "file",
                format!(
                    "damaged: the CRC-32 of its data and description is {computed}, \
                     the file says {stored}"
                ),
            ));
        }
    }
    let mut tensors = Vec::with_capacity(views.len());
    for (name, view) in views {
        let what = format!("tensor `{name}`");
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let message = format!("value {} at index {i} is not finite", values[i]);
            return Err(fault(origin, &what, message));
        }
        let never_negative = [
            ("optimizer.exp_avg_sq.", "second moment"),
            ("optimizer.sum.", "accumulator"),
        ];
        if let Some((_, state)) = never_negative.iter().find(|(p, _)| name.starts_with(p))
            && let Some(i) = values.iter().position(|v| *v < 0.0)
        {
            let message = format!("{state} {} at index {i} is negative", values[i]);
            return Err(fault(origin, &what, message));
        }
        let shape = view.shape().to_vec();
        tensors.push(NamedTensor {
            name,
            shape,
            values,
        });
    }
    Ok(Checkpoint {
        config,
        steps,
        learning_rate,
        tensors,
        encoders,
        dense_inputs,
    })
}

/// How the checksum member is written: last, so that the text before it is what it
/// covers.
const CRC_MEMBER: &str = r#","crc32":"#;

/// The bytes after a safetensors file's header, if the header length is in range.
fn data_section(file: &[u8]) -> Option<&[u8]> {
    let n = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    file.get(usize::try_from(n).ok()?.checked_add(8)?..)
}

/// CRC-32 (IEEE 802.3, the one of zlib and Python's `zlib.crc32`) of a file's
/// tensor data, then of its description up to the checksum member.
fn checksum(data: &[u8], description: &str) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(data);
    hasher.update(description.as_bytes());
    hasher.finalize()
}

/// Config, steps, learning rate, encoders, dense inputs and checksum (if any) from
/// the JSON description `text`.
type Described = (
    ModelConfig,
    u32,
    f32,
    Encoders,
    Vec<DenseInput>,
    Option<u32>,
);

fn describe(text: &str) -> Result<Described, String> {
    let head: Head = json::from_str(text)?;
    if head.format != FORMAT {
        return Err(format!("format is `{}`, `{FORMAT}` expected", head.format));
    }
    if let Some(version) = head.version
        && version != VERSION
    {
        return Err(format!(
            "version {version}; this build reads version {VERSION}"
        ));
    }
    let description: Description = json::from_str(text)?;
    let learning_rate = description.learning_rate;
    if learning_rate < 0.0 {
        return Err(format!("learning rate {learning_rate} is negative"));
    }
    if let Some(crc) = description.crc32
        && !text.ends_with(&format!("{CRC_MEMBER}{crc}}}"))
    {
        return Err(format!(
            "`crc32` must be the last member, written as `{CRC_MEMBER}{crc}}}`"
        ));
    }
    let config = description.config.0;
    let encoders = description.vocabulary.0;
    Ok((
        config,
        description.steps,
        learning_rate,
        encoders,
        description.dense_inputs.0,
        description.crc32,
    ))
}

/// Why `found` cannot be restored into a trainer of `expected`, if it cannot: the
/// first member of their descriptions that differs, the learning rate aside (the
/// caller's schedule moves it), as `member: expected …, found …`.
pub(crate) fn config_mismatch(expected: &ModelConfig, found: &ModelConfig) -> Option<String> {
    let value = |config: &ModelConfig| {
        let text = json::to_string(&Config(config.clone())).ok()?;
        let mut value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value.as_object_mut()?.remove("learning_rate");
        Some(value)
    };
    match (value(expected), value(found)) {
        (Some(a), Some(b)) => json::difference("", &a, &b),
        // Only a config with a non-finite member has no description.
        _ => (expected != found).then(|| format!("expected {expected:?}, found {found:?}")),
    }
}
