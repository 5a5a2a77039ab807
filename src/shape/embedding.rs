//! The embedding family's vocabulary: a categorical field and its table, the shape of
//! one field's lookup into the model's input rows, the sparse optimizers, and the
//! host-side preparation of a batch's IDs ([`EmbeddingBatch`]).

use super::{check_elements, check_nonzero};
use crate::{Error, Result};

mod batch;
mod shared;
mod training;
pub use batch::{EmbeddingArrays, EmbeddingBatch, NO_ID};
pub use shared::union_ids;
pub use training::TableOptimizer;

/// How a multi-valued field's bag of embeddings becomes one.
///
/// Row `r` of the batch has a bag of IDs `ids[offsets[r] .. offsets[r + 1]]` (one ID
/// per row for a single-valued field) with optional per-ID weights `w` (1 without).
/// Its embedding, written to `x[r, column .. column + dim]`, is
/// - [`Pooling::Sum`]: `Σ_k w_k · table[ids_k]`, PyTorch's
///   `nn.EmbeddingBag(mode="sum", per_sample_weights=w)`;
/// - [`Pooling::Mean`]: `(1/n) · Σ_k w_k · table[ids_k]` with `n` the number of IDs in
///   the bag, PyTorch's `mode="mean"` when unweighted. PyTorch defines no weighted
///   mean; dividing by the ID count (not by `Σ w`, as TensorFlow's `combiner="mean"`
///   does) keeps the output and its gradient linear in the weights, and finite when
///   they sum to zero. TensorFlow's form is [`Pooling::Sum`] over weights the caller
///   normalised.
///
/// An empty bag gives zeros in both modes. A single-valued field is a bag of one ID
/// per row, so its pooling makes no difference.
///
/// The gradient of a loss `L` with respect to table row `i` is
/// `Σ_{(r, k): ids_k = i} c_k · dL/dx[r, column ..]` with `c_k = w_k` (sum) or
/// `w_k / n_r` (mean), over every occurrence of `i` in the batch: duplicates within a
/// bag and across rows add up. Only the rows the batch touches have one, so the
/// kernels write a compact gradient `[unique, dim]` beside the sorted unique IDs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// The (weighted) sum.
    #[default]
    Sum,
    /// The (weighted) sum divided by the number of IDs in the bag.
    Mean,
}

/// A categorical field: its embedding table `[vocab, dim]` and how its IDs come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EmbeddingField {
    /// Rows of the table: IDs run over `0 .. vocab`.
    pub vocab: usize,
    /// Columns of the table: the width of the field's embedding.
    pub dim: usize,
    /// Whether a row holds a bag of IDs (CSR offsets) rather than exactly one ID.
    pub multi_valued: bool,
    /// Whether every ID comes with an f32 weight.
    pub weighted: bool,
    /// How a bag is pooled; ignored for single-valued fields.
    pub pooling: Pooling,
}

impl EmbeddingField {
    /// Whether the pooled embedding divides by the bag's size.
    pub fn is_mean(&self) -> bool {
        self.multi_valued && self.pooling == Pooling::Mean
    }

    /// Checks the table is not empty and its IDs fit in a `u32` below [`NO_ID`].
    pub fn validate(&self, context: &str) -> Result<()> {
        check_nonzero(context, &[("vocab", self.vocab), ("dim", self.dim)])?;
        if self.vocab as u64 > NO_ID as u64 {
            return Err(Error::Limit {
                context: context.into(),
                what: "vocabulary size (IDs are u32, and u32::MAX marks no ID)".into(),
                value: self.vocab as u64,
                limit: NO_ID as u64,
            });
        }
        Ok(())
    }
}

/// The most a batch of one field may hold: the capacities its buffers are sized for,
/// so that one set of dispatches serves every batch within them. Tighter bounds give
/// smaller buffers and fewer idle invocations; [`EmbeddingBatch::bounds`] gives a
/// batch's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EmbeddingBounds {
    /// IDs in the whole batch (for a single-valued field: the rows).
    pub ids: usize,
    /// IDs in the largest bag (1 for a single-valued field): the loop of the forward
    /// pass, held to [`LOOP_BUDGET`](crate::kernels::LOOP_BUDGET).
    pub longest_bag: usize,
    /// Distinct IDs in the batch: the rows of the compact gradient.
    pub unique: usize,
    /// Occurrences of the most frequent ID in the batch: the loop of the backward
    /// pass, held to [`LOOP_BUDGET`](crate::kernels::LOOP_BUDGET).
    pub most_occurrences: usize,
}

/// One field's lookup into the model's input `x: [rows, width]`: the field's `dim`
/// columns start at `column`, beside the dense features and the other fields, so
/// every field writes into the one input with no concatenation pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EmbeddingShape {
    /// The field and its table.
    pub field: EmbeddingField,
    /// Rows of the batch `B` (and of `x`).
    pub rows: usize,
    /// Columns of `x`: its row stride.
    pub width: usize,
    /// The first of the field's columns in `x`.
    pub column: usize,
    /// Capacities of one batch.
    pub bounds: EmbeddingBounds,
}

impl EmbeddingShape {
    /// Checks the field, that the field's columns fit in `x`, that the capacities are
    /// non-zero (a single-valued field has exactly one ID per row), and that every
    /// tensor fits the 32-bit indexing of the shader. The table itself may be larger
    /// than one binding: the kernels split it into row chunks.
    pub fn validate(&self, context: &str) -> Result<()> {
        let f = &self.field;
        f.validate(context)?;
        let b = &self.bounds;
        check_nonzero(
            context,
            &[
                ("rows", self.rows),
                ("width", self.width),
                ("bounds.ids", b.ids),
                ("bounds.unique", b.unique),
            ],
        )?;
        if self
            .column
            .checked_add(f.dim)
            .is_none_or(|end| end > self.width)
        {
            return Err(Error::shape(
                context,
                "column",
                format!(
                    "a column where the field's {} columns fit in rows of width {}",
                    f.dim, self.width
                ),
                format!("column {}", self.column),
            ));
        }
        if !f.multi_valued && b.ids != self.rows {
            return Err(Error::shape(
                context,
                "bounds.ids",
                format!("{} IDs (one per row of a single-valued field)", self.rows),
                format!("{} IDs", b.ids),
            ));
        }
        let bags = [b.longest_bag, b.most_occurrences];
        if let Some(&n) = bags.iter().find(|&&n| n as u64 >= super::ELEMENT_LIMIT) {
            return Err(Error::Limit {
                context: context.into(),
                what: "a bag or occurrence bound".into(),
                value: n as u64,
                limit: super::ELEMENT_LIMIT,
            });
        }
        check_elements(
            context,
            &[
                ("x", &[self.rows, self.width]),
                ("offsets", &[self.rows + 1]),
                ("the gathered rows", &[b.ids, f.dim]),
                ("occurrences", &[b.ids, 2]),
                ("the gradient", &[b.unique + 1, f.dim]),
            ],
        )
    }

    /// IDs the forward pass loops over for one row: the longest bag, or 1.
    pub fn bag_loop(&self) -> usize {
        if self.field.multi_valued {
            self.bounds.longest_bag
        } else {
            1
        }
    }

    /// Elements of `x` (and `dx`): `rows · width`.
    pub fn x_len(&self) -> usize {
        self.rows * self.width
    }

    /// Elements of the table: `vocab · dim`.
    pub fn table_len(&self) -> usize {
        self.field.vocab * self.field.dim
    }

    /// `u32`s of `ids` (and f32s of `weights`): `bounds.ids`.
    pub fn ids_len(&self) -> usize {
        self.bounds.ids
    }

    /// `u32`s of `offsets`: `rows + 1`.
    pub fn offsets_len(&self) -> usize {
        self.rows + 1
    }

    /// Elements of the scratch a table split in chunks is gathered into:
    /// `bounds.ids · dim`.
    pub fn scratch_len(&self) -> usize {
        self.bounds.ids * self.field.dim
    }

    /// `u32`s of `unique_ids`: `bounds.unique`.
    pub fn unique_len(&self) -> usize {
        self.bounds.unique
    }

    /// `u32`s of `unique_offsets`: `bounds.unique + 1`.
    pub fn unique_offsets_len(&self) -> usize {
        self.bounds.unique + 1
    }

    /// `u32`s of `occurrences` (pairs of position and row): `2 · bounds.ids`.
    pub fn occurrences_len(&self) -> usize {
        2 * self.bounds.ids
    }

    /// Elements of the compact gradient: `bounds.unique · dim`.
    pub fn grad_len(&self) -> usize {
        self.bounds.unique * self.field.dim
    }
}

/// A sparse optimizer: it updates only the table rows of the batch's unique IDs, from
/// the compact gradient, and keeps its state in tables of the table's shape (zero
/// before the first step, or as said below). Rows the batch does not touch keep their
/// parameters *and* their state: their moments do not decay as dense Adam's would.
///
/// The step number `t` (1-based) and the learning rate are given per step
/// ([`EmbeddingStep::set_step`](crate::kernels::embedding::EmbeddingStep::set_step)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SparseOptimizer {
    /// Lazy Adam, as PyTorch's `torch.optim.SparseAdam` and TensorFlow Addons'
    /// `LazyAdam`: for each touched row, `m = β1·m + (1−β1)·g`,
    /// `v = β2·v + (1−β2)·g²`, then
    /// `p −= lr · sqrt(1 − β2^t) / (1 − β1^t) · m / (sqrt(v) + eps)`.
    ///
    /// `t` is the table's step count, the number of steps taken on the table so far
    /// including this one (PyTorch's `state['step']` of the parameter, TensorFlow's
    /// `iterations + 1`), the same for every row: not the number of times the row was
    /// touched. A row first seen at step 100 therefore gets `m = (1−β1)·g` with the
    /// bias correction of step 100, a smaller first move than dense Adam's first step.
    /// `eps` is added to `sqrt(v)` before the bias correction (TensorFlow's "epsilon
    /// hat"; equivalently dense Adam with `eps·sqrt(1 − β2^t)`), unlike this crate's
    /// dense [`OptimizerConfig::Adam`](super::OptimizerConfig::Adam), which adds it
    /// to `sqrt(v / (1 − β2^t))`. No weight decay, as in both libraries.
    LazyAdam {
        /// `β1`, in `[0, 1)`.
        beta1: f32,
        /// `β2`, in `[0, 1)`.
        beta2: f32,
        /// `eps`, positive.
        eps: f32,
    },
    /// Adagrad, as PyTorch's `torch.optim.Adagrad` on a sparse gradient: for each
    /// touched row, `acc += g²`, then `p −= lr · g / (sqrt(acc) + eps)`. The
    /// accumulator starts at the value the caller fills it with: PyTorch's
    /// `initial_accumulator_value` (default 0; TensorFlow's default is 0.1). PyTorch's
    /// `lr_decay` is the caller's per-step learning rate `lr / (1 + (t − 1)·lr_decay)`;
    /// weight decay is refused on sparse gradients there and absent here.
    Adagrad {
        /// `eps` (PyTorch's default is 1e-10), positive.
        eps: f32,
    },
}

impl SparseOptimizer {
    /// Checks the hyper-parameters are in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::invalid("sparse optimizer", format!("{self:?}: {m}")));
        let eps = match *self {
            SparseOptimizer::LazyAdam { beta1, beta2, eps } => {
                if !(0.0..1.0).contains(&beta1) {
                    return bad("beta1 must be in [0, 1)");
                }
                if !(0.0..1.0).contains(&beta2) {
                    return bad("beta2 must be in [0, 1)");
                }
                eps
            }
            SparseOptimizer::Adagrad { eps } => eps,
        };
        if !(eps > 0.0 && eps.is_finite()) {
            return bad("eps must be positive and finite");
        }
        Ok(())
    }

    /// Whether the rule keeps a second state table (`v`).
    pub fn needs_second_state(&self) -> bool {
        matches!(self, SparseOptimizer::LazyAdam { .. })
    }

    /// The factor of `m / (sqrt(v) + eps)` (lazy Adam) or `g / (sqrt(acc) + eps)`
    /// (Adagrad) at step `step` (1-based) with learning rate `lr`, in `f64`:
    /// `lr · sqrt(1 − β2^t) / (1 − β1^t)`, or `lr`.
    pub fn step_size(&self, step: u32, lr: f64) -> f64 {
        match *self {
            SparseOptimizer::LazyAdam { beta1, beta2, .. } => {
                let t = step.max(1) as f64;
                let bc1 = 1.0 - (beta1 as f64).powf(t);
                let bc2 = 1.0 - (beta2 as f64).powf(t);
                lr * bc2.sqrt() / bc1
            }
            SparseOptimizer::Adagrad { .. } => lr,
        }
    }
}
