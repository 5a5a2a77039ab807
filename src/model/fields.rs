//! Categorical fields of a model's input: each looked up in an embedding table (its
//! own, or another field's) and pooled into the input rows beside the dense
//! features.

use crate::data::categorical::Encoders;
use crate::shape::{EmbeddingField, NO_ID, Pooling};
use crate::{Error, Result};

/// How many IDs a row of a field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValues {
    /// Exactly one ID per row.
    Single,
    /// A bag of 0 to `max_bag` IDs per row (CSR offsets), pooled into one embedding.
    Multi {
        /// Sum or mean of the bag (see [`Pooling`]).
        pooling: Pooling,
        /// The most IDs one row may hold: a trainer's ID capacities grow with it (see
        /// [`FieldConfig::max_bag`]).
        max_bag: usize,
    },
}

/// A categorical field: its name, its table `[vocab, dim]`, and how its rows hold
/// IDs. Its `dim` columns follow the dense features and the fields before it in the
/// model's input (see [`ModelConfig::input_width`](super::ModelConfig::input_width)).
///
/// ```
/// use mmoe_wgpu::model::{
///     Batch, FieldConfig, ModelConfig, Pooling, TableOptimizer, TaskConfig, TaskKind, Trainer,
/// };
///
/// # fn main() -> mmoe_wgpu::Result<()> {
/// let tasks = vec![
///     TaskConfig::new("click", TaskKind::BinaryClassification),
///     TaskConfig::new("watch_time", TaskKind::Regression),
/// ];
/// let config = ModelConfig {
///     fields: vec![
///         FieldConfig::single("country", 200, 8),
///         FieldConfig::multi("tags", 5000, 16, Pooling::Mean, 20),
///         // Bags of up to 50 recently seen tags, in the table of `tags`.
///         FieldConfig::multi("recent_tags", 5000, 16, Pooling::Sum, 50).sharing("tags"),
///     ],
///     table_optimizer: TableOptimizer::LAZY_ADAM,
///     ..ModelConfig::mmoe(3, 4, 32, 16, tasks) // 3 dense features
/// };
/// assert_eq!(config.input_width(), 3 + 8 + 16 + 16);
/// let gpu = mmoe_wgpu::Gpu::new()?;
/// let mut trainer = Trainer::new(&gpu, config, 256)?;
///
/// // Two rows: dense values, a country each, bags of tags (3 IDs, then 1), no
/// // recent tags; then the targets, task-major.
/// let dense = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5];
/// let batch = Batch::new(2, &dense)
///     .ids("country", &[4, 17])
///     .bags("tags", &[0, 3, 4], &[7, 2, 7, 4999])
///     .bags("recent_tags", &[0, 0, 0], &[])
///     .targets(&[1.0, 0.0, 12.5, 3.0]);
/// trainer.step_batch(&batch)?;
/// let predictions = trainer.predict_batch(&batch)?; // [tasks, rows]
/// assert_eq!(predictions.len(), 4);
///
/// let bad = Batch::new(2, &dense)
///     .ids("country", &[4, 200])
///     .bags("tags", &[0, 3, 4], &[7, 2, 7, 4999])
///     .bags("recent_tags", &[0, 0, 0], &[]);
/// let message = trainer.predict_batch(&bad).unwrap_err().to_string();
/// assert!(message.contains("`country`, row 1") && message.contains("ID 200"), "{message}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FieldConfig {
    /// Unique among the model's fields; batches and errors name the field by it, and
    /// its table is `embeddings.{name}.weight` (unless it shares another's).
    pub name: String,
    /// Rows of the table: IDs run over `0 .. vocab`.
    pub vocab: usize,
    /// Columns of the table: the width of the field's embedding.
    pub dim: usize,
    /// One ID per row, or a bag.
    pub values: FieldValues,
    /// Whether every ID comes with an f32 weight (PyTorch's `per_sample_weights`).
    pub weighted: bool,
    /// The name of another field whose table this one looks up (with the same
    /// `vocab` and `dim`); that field must have a table of its own. `None`: its own.
    pub shares: Option<String>,
}

impl FieldConfig {
    /// A single-valued field with a table of its own, unweighted.
    pub fn single(name: impl Into<String>, vocab: usize, dim: usize) -> Self {
        FieldConfig {
            name: name.into(),
            vocab,
            dim,
            values: FieldValues::Single,
            weighted: false,
            shares: None,
        }
    }

    /// A multi-valued field of bags of up to `max_bag` IDs, pooled by `pooling`,
    /// with a table of its own, unweighted.
    pub fn multi(
        name: impl Into<String>,
        vocab: usize,
        dim: usize,
        pooling: Pooling,
        max_bag: usize,
    ) -> Self {
        FieldConfig {
            values: FieldValues::Multi { pooling, max_bag },
            ..FieldConfig::single(name, vocab, dim)
        }
    }

    /// This field with a weight per ID.
    pub fn weighted(self) -> Self {
        FieldConfig {
            weighted: true,
            ..self
        }
    }

    /// This field looking up `other`'s table.
    pub fn sharing(self, other: impl Into<String>) -> Self {
        FieldConfig {
            shares: Some(other.into()),
            ..self
        }
    }

    /// The field as the embedding kernels see it.
    pub fn embedding_field(&self) -> EmbeddingField {
        let (multi_valued, pooling) = match self.values {
            FieldValues::Single => (false, Pooling::Sum),
            FieldValues::Multi { pooling, .. } => (true, pooling),
        };
        EmbeddingField {
            vocab: self.vocab,
            dim: self.dim,
            multi_valued,
            weighted: self.weighted,
            pooling,
        }
    }

    /// The most IDs one row holds: `max_bag`, or 1 for a single-valued field.
    ///
    /// A trainer of batch capacity `B` sizes the field's buffers for `B · max_bag`
    /// IDs, and its table's for `min(vocab, Σ B · max_bag over the fields sharing
    /// it)` touched rows; a batch with a longer bag is an [`Error::Limit`]. One ID
    /// may occur at most `min(B · max_bag, 65,533)` times in one batch of a field
    /// (the kernels' loop budget); more is an [`Error::Limit`] too.
    pub fn max_bag(&self) -> usize {
        match self.values {
            FieldValues::Single => 1,
            FieldValues::Multi { max_bag, .. } => max_bag,
        }
    }

    /// The name of the field whose table this one looks up: its own or the one it
    /// shares.
    pub fn table_field(&self) -> &str {
        self.shares.as_deref().unwrap_or(&self.name)
    }
}

/// The name of the table of the field named `field` (the one that owns it).
pub fn table_name(field: &str) -> String {
    format!("embeddings.{field}.weight")
}

/// Checks the fields of a model with `inputs` dense features: names, sizes, bags,
/// sharing, and that the input has at least one column.
pub(super) fn validate(inputs: usize, fields: &[FieldConfig]) -> Result<()> {
    let bad = |what: String| Err(Error::invalid("model config", what));
    if inputs == 0 && fields.is_empty() {
        return bad("inputs must be at least 1 (or the model needs categorical fields)".into());
    }
    let mut width = inputs;
    for (i, f) in fields.iter().enumerate() {
        let name = &f.name;
        if name.is_empty() {
            return bad(format!("field {i} has an empty name"));
        }
        if fields[..i].iter().any(|g| g.name == *name) {
            return bad(format!("field `{name}` is defined twice"));
        }
        if f.vocab == 0 || f.dim == 0 {
            return bad(format!(
                "field `{name}` has a table of {} rows of {}; both must be at least 1",
                f.vocab, f.dim
            ));
        }
        if f.vocab > NO_ID as usize {
            return bad(format!(
                "field `{name}` has {} rows; IDs are u32 below {NO_ID}",
                f.vocab
            ));
        }
        if let FieldValues::Multi { max_bag: 0, .. } = f.values {
            return bad(format!(
                "field `{name}` has max_bag 0; at least 1 ID per bag"
            ));
        }
        width = match width.checked_add(f.dim) {
            Some(w) => w,
            None => return bad("the input width overflows".into()),
        };
        let Some(owner) = &f.shares else {
            continue;
        };
        let Some(table) = fields.iter().find(|g| g.name == *owner) else {
            return bad(format!(
                "field `{name}` shares the table of `{owner}`, which is not a field"
            ));
        };
        if table.name == *name || table.shares.is_some() {
            return bad(format!(
                "field `{name}` shares the table of `{owner}`, which does not have one of its own"
            ));
        }
        if (table.vocab, table.dim) != (f.vocab, f.dim) {
            return bad(format!(
                "field `{name}` ({} rows of {}) shares the table of `{owner}` ({} rows of {})",
                f.vocab, f.dim, table.vocab, table.dim
            ));
        }
    }
    Ok(())
}

/// Checks every encoder of `encoders` names a field of `config` and gives IDs within
/// its table.
pub(super) fn check_encoders(config: &super::ModelConfig, encoders: &Encoders) -> Result<()> {
    for (name, encoder) in encoders.iter() {
        let Some(field) = config.fields.iter().find(|f| f.name == name) else {
            return Err(Error::invalid(
                "encoders",
                format!("`{name}` is not a field of the model"),
            ));
        };
        if encoder.size() > field.vocab || encoder.size() == 0 {
            return Err(Error::invalid(
                "encoders",
                format!(
                    "the encoder of field `{name}` gives IDs 0 .. {}, its table has {} rows",
                    encoder.size(),
                    field.vocab
                ),
            ));
        }
    }
    Ok(())
}
