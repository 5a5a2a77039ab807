//! A batch of a model with categorical fields: dense values, each field's IDs and
//! (for training and evaluation) targets; and its checks against the model, which
//! name the field and the row at fault before anything reaches the device.

use std::ops::Range;

use super::build::field_bounds;
use super::config::ModelConfig;
use crate::shape::EmbeddingBatch;
use crate::{Error, Result};

/// One field's IDs in a [`Batch`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FieldIds<'a> {
    /// The field's name, as in [`FieldConfig::name`](super::FieldConfig::name).
    pub name: &'a str,
    /// The IDs: one per row for a single-valued field; bag after bag for a
    /// multi-valued one.
    pub ids: &'a [u32],
    /// Multi-valued fields: `[rows + 1]` CSR offsets, row `r`'s bag being
    /// `ids[offsets[r] .. offsets[r + 1]]` (possibly empty); `None` for a
    /// single-valued field.
    pub offsets: Option<&'a [u32]>,
    /// Weighted fields: one finite weight per ID; `None` otherwise.
    pub weights: Option<&'a [f32]>,
}

/// A batch for a model's input: `rows` rows of dense values `[rows, inputs]`, each
/// field's IDs, and targets `[tasks, rows]` (task-major) for training and
/// evaluation. Built with [`Batch::new`] and the field methods; nothing is checked
/// until a [`Trainer`](super::Trainer) takes it.
///
/// ```
/// use mmoe_wgpu::model::Batch;
///
/// // Two rows of 3 dense values, a country each, and bags of tags (3 IDs, then 1).
/// let dense = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5];
/// let (country, tag_offsets, tags) = ([4, 17], [0, 3, 4], [7, 2, 7, 9]);
/// let targets = [1.0, 0.0, 0.3, 0.2];
/// let batch = Batch::new(2, &dense)
///     .ids("country", &country)
///     .bags("tags", &tag_offsets, &tags)
///     .targets(&targets);
/// assert_eq!(batch.fields.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Batch<'a> {
    /// Rows.
    pub rows: usize,
    /// Dense values `[rows, inputs]`, row-major (empty for a model without dense
    /// features).
    pub dense: &'a [f32],
    /// One entry per field of the model, in any order.
    pub fields: Vec<FieldIds<'a>>,
    /// Targets `[tasks, rows]`, task-major; needed by training and evaluation.
    pub targets: Option<&'a [f32]>,
}

impl<'a> Batch<'a> {
    /// `rows` rows of dense values `dense: [rows, inputs]`, no field yet.
    pub fn new(rows: usize, dense: &'a [f32]) -> Self {
        Batch {
            rows,
            dense,
            fields: Vec::new(),
            targets: None,
        }
    }

    /// With `field`'s IDs.
    pub fn field(mut self, field: FieldIds<'a>) -> Self {
        self.fields.push(field);
        self
    }

    /// With one ID per row of the single-valued field `name`.
    pub fn ids(self, name: &'a str, ids: &'a [u32]) -> Self {
        self.field(FieldIds {
            name,
            ids,
            offsets: None,
            weights: None,
        })
    }

    /// With one ID and its weight per row of the weighted single-valued field `name`.
    pub fn weighted_ids(self, name: &'a str, ids: &'a [u32], weights: &'a [f32]) -> Self {
        self.field(FieldIds {
            name,
            ids,
            offsets: None,
            weights: Some(weights),
        })
    }

    /// With the bags of the multi-valued field `name`: `offsets: [rows + 1]` into
    /// `ids`.
    pub fn bags(self, name: &'a str, offsets: &'a [u32], ids: &'a [u32]) -> Self {
        self.field(FieldIds {
            name,
            ids,
            offsets: Some(offsets),
            weights: None,
        })
    }

    /// With the bags of the weighted multi-valued field `name`, a weight per ID.
    pub fn weighted_bags(
        self,
        name: &'a str,
        offsets: &'a [u32],
        ids: &'a [u32],
        weights: &'a [f32],
    ) -> Self {
        self.field(FieldIds {
            name,
            ids,
            offsets: Some(offsets),
            weights: Some(weights),
        })
    }

    /// With targets `[tasks, rows]`, task-major.
    pub fn targets(mut self, targets: &'a [f32]) -> Self {
        self.targets = Some(targets);
        self
    }
}

/// Rows of a batch as the graph takes them: the input `[rows, input_width]` (dense
/// values, zeros where the lookups write) and each field's prepared IDs, in field
/// order.
pub(super) struct Prepared {
    pub(super) rows: usize,
    pub(super) x: Vec<f32>,
    pub(super) lookups: Vec<EmbeddingBatch>,
}

/// Checks `batch` against `config`: its rows, its dense values (finite), one entry
/// per field (none missing, none unknown, none twice), each field's IDs, offsets and
/// weights, the bags against each field's `max_bag`, and (when `need_targets`) its
/// targets. Errors name the field and the row; `ctx` names the call.
pub(super) fn check(
    config: &ModelConfig,
    ctx: &str,
    batch: &Batch<'_>,
    need_targets: bool,
) -> Result<()> {
    let rows = batch.rows;
    if rows == 0 {
        return Err(Error::shape(ctx, "rows", "at least 1", "0"));
    }
    let dense_len = rows.checked_mul(config.inputs);
    if dense_len != Some(batch.dense.len()) {
        return Err(Error::shape(
            ctx,
            "dense",
            format!("{rows} rows × {} inputs of values", config.inputs),
            format!("{} values", batch.dense.len()),
        ));
    }
    if let Some(i) = batch.dense.iter().position(|v| !v.is_finite()) {
        let (row, column) = (i / config.inputs, i % config.inputs);
        return Err(Error::NonFinite {
            what: format!("{ctx}: dense input (row {row}, column {column})"),
            index: i,
            value: batch.dense[i],
        });
    }
    for (i, given) in batch.fields.iter().enumerate() {
        if batch.fields[..i].iter().any(|f| f.name == given.name) {
            let message = format!("field `{}` is given twice", given.name);
            return Err(Error::invalid(ctx, message));
        }
        if !config.fields.iter().any(|f| f.name == given.name) {
            return Err(Error::invalid(
                ctx,
                format!(
                    "the batch has field `{}`, which the model does not ({})",
                    given.name,
                    field_list(config)
                ),
            ));
        }
    }
    for field in &config.fields {
        let given = find(ctx, config, batch, &field.name)?;
        let prepared = EmbeddingBatch::new(
            &field.embedding_field(),
            &field.name,
            rows,
            given.ids,
            given.offsets,
            given.weights,
        )?;
        let limit = field.max_bag();
        if let Some(r) = (0..rows).find(|&r| bag(&prepared, r) > limit) {
            return Err(Error::Limit {
                context: format!("{ctx}: field `{}`, row {r}", field.name),
                what: "IDs in one bag (the field's max_bag)".into(),
                value: bag(&prepared, r) as u64,
                limit: limit as u64,
            });
        }
    }
    if need_targets {
        let Some(targets) = batch.targets else {
            return Err(Error::shape(ctx, "targets", "targets", "none"));
        };
        check_targets(config, ctx, rows, targets)?;
    }
    Ok(())
}

/// Checks `targets` are `[tasks, rows]` and finite.
pub(super) fn check_targets(
    config: &ModelConfig,
    ctx: &str,
    rows: usize,
    targets: &[f32],
) -> Result<()> {
    let tasks = config.tasks.len();
    if targets.len() != tasks * rows {
        return Err(Error::shape(
            ctx,
            "targets",
            format!(
                "{} values ({tasks} tasks × {rows} rows, task-major)",
                tasks * rows
            ),
            format!("{} values", targets.len()),
        ));
    }
    match targets.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            what: "targets".into(),
            index,
            value: targets[index],
        }),
        None => Ok(()),
    }
}

/// Rows `range` of a batch that passed [`check`], prepared for a trainer of batch
/// capacity `capacity` (at least `range.len()`): an error if an ID occurs more
/// often in it than the kernels' bound allows.
pub(super) fn prepare(
    config: &ModelConfig,
    ctx: &str,
    batch: &Batch<'_>,
    range: Range<usize>,
    capacity: usize,
) -> Result<Prepared> {
    let (inputs, width, rows) = (config.inputs, config.input_width(), range.len());
    let mut x = vec![0.0f32; rows * width];
    for (r, row) in x.chunks_exact_mut(width).enumerate() {
        let at = (range.start + r) * inputs;
        row[..inputs].copy_from_slice(&batch.dense[at..at + inputs]);
    }
    let mut lookups = Vec::with_capacity(config.fields.len());
    for (i, field) in config.fields.iter().enumerate() {
        let given = find(ctx, config, batch, &field.name)?;
        let (ids, offsets, weights) = match given.offsets {
            None => (
                &given.ids[range.clone()],
                None,
                given.weights.map(|w| &w[range.clone()]),
            ),
            Some(o) => {
                let (lo, hi) = (o[range.start] as usize, o[range.end] as usize);
                let offsets: Vec<u32> = o[range.start..=range.end]
                    .iter()
                    .map(|&v| v - lo as u32)
                    .collect();
                let weights = given.weights.map(|w| &w[lo..hi]);
                (&given.ids[lo..hi], Some(offsets), weights)
            }
        };
        let prepared = EmbeddingBatch::new(
            &field.embedding_field(),
            &field.name,
            rows,
            ids,
            offsets.as_deref(),
            weights,
        )?;
        let most = field_bounds(config, i, capacity).most_occurrences;
        let u = prepared.unique_offsets();
        if let Some(j) =
            (0..prepared.unique_ids().len()).find(|&j| (u[j + 1] - u[j]) as usize > most)
        {
            return Err(Error::Limit {
                context: format!("{ctx}: field `{}`", field.name),
                what: format!(
                    "occurrences of ID {} in one batch (the kernels' bound)",
                    prepared.unique_ids()[j]
                ),
                value: (u[j + 1] - u[j]) as u64,
                limit: most as u64,
            });
        }
        lookups.push(prepared);
    }
    Ok(Prepared { rows, x, lookups })
}

/// IDs in row `r`'s bag.
fn bag(batch: &EmbeddingBatch, r: usize) -> usize {
    (batch.offsets()[r + 1] - batch.offsets()[r]) as usize
}

/// The batch's entry for field `name`.
fn find<'b, 'a>(
    ctx: &str,
    config: &ModelConfig,
    batch: &'b Batch<'a>,
    name: &str,
) -> Result<&'b FieldIds<'a>> {
    batch.fields.iter().find(|f| f.name == name).ok_or_else(|| {
        Error::invalid(
            ctx,
            format!(
                "the batch has no IDs for field `{name}` (the model's fields: {})",
                field_list(config)
            ),
        )
    })
}

fn field_list(config: &ModelConfig) -> String {
    let names: Vec<String> = config
        .fields
        .iter()
        .map(|f| format!("`{}`", f.name))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
