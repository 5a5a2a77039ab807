//! Embedding tables for categorical fields: the lookup and pooling of each row's IDs
//! written straight into the model's input rows, the gradient of the table rows the
//! batch touched, and sparse optimizer steps on those rows.
//!
//! Passes, each over one field (semantics in [`Pooling`] and [`SparseOptimizer`]):
//! - [`forward`](Embedding::forward): `x[r, column .. column + dim]` = the pooled
//!   (sum or mean, optionally weighted) embedding of row `r`'s bag; the other columns
//!   of `x` are left alone, so the dense features and every field share one input.
//! - [`backward`](Embedding::backward): from `dx`, the compact gradient
//!   `grad: [unique, dim]` of the batch's unique IDs, each a sum over the ID's
//!   occurrences in ascending position: bitwise reproducible, with no float atomics,
//!   and its cost grows with the IDs in the batch, never with the vocabulary.
//! - [`update`](Embedding::update): lazy Adam or Adagrad on the touched rows only,
//!   from the compact gradient; [`EmbeddingStep::set_step`] gives each step's number
//!   and learning rate. Given the dense optimizer's non-finite-loss `status`
//!   ([`EmbeddingUpdate::status`]), it changes nothing once a loss went non-finite.
//! - [`scatter`](Embedding::scatter): the compact gradient written into a gradient
//!   table of the table's shape (zero it first), for dense optimizers: a table is a
//!   parameter buffer like any other, so [`Optimizer`](super::Optimizer)'s Adam or
//!   AdamW can update all of it, decaying every row's moments as dense Adam does.
//!
//! The host prepares each batch ([`EmbeddingBatch`]): it checks the IDs (an error
//! names the field and the row before anything is recorded) and sorts them into the
//! unique IDs and their occurrences, then pads everything to the capacities of the
//! [`EmbeddingShape`] ([`EmbeddingBatch::arrays`]), so one set of dispatches serves
//! every batch within them. Whatever the index buffers hold, the shader never reads
//! or writes outside an operand.
//!
//! Tables larger than one storage binding are split into row chunks
//! ([`EmbeddingTable`], [`EmbeddingTableBuffers`]): the forward pass gathers each
//! chunk's rows into a scratch `[ids, dim]` and pools it in bag order in one more
//! pass, and the update and scatter run per chunk; results are bitwise those of the
//! unsplit table. The backward pass never reads the table. The scratch, like every
//! other operand, must fit one binding: a batch's IDs, not the vocabulary, bound it.
//!
//! Storage is f32 only (tables, states, `x` and `dx`); f16 is not offered yet.
//! Shader: `shaders/embedding.wgsl`.
//!
//! # Example
//!
//! A multi-valued field of 3-wide embeddings written into columns 1..4 of a 5-wide
//! input, its gradient, and one lazy Adam step.
//!
//! ```
//! use mmoe_wgpu::kernels::embedding::*;
//! use mmoe_wgpu::kernels::BufferView;
//!
//! # fn main() -> mmoe_wgpu::Result<()> {
//! let gpu = mmoe_wgpu::Gpu::new()?;
//! let field = EmbeddingField {
//!     vocab: 4, dim: 3, multi_valued: true, weighted: false, pooling: Pooling::Mean,
//! };
//! // Row 0: IDs 1 and 3; row 1: no ID; row 2: ID 1 twice.
//! let batch = EmbeddingBatch::new(&field, "tags", 3, &[1, 3, 1, 1], Some(&[0, 2, 2, 4]), None)?;
//! let shape = batch.shape(5, 1);
//! let arrays = batch.arrays(&shape)?;
//!
//! let table: Vec<f32> = (0..12).map(|i| i as f32).collect(); // row i: 3i, 3i+1, 3i+2
//! let tables = EmbeddingTableBuffers::new(&gpu, "table", 4, 3)?;
//! tables.write(&gpu, &table)?;
//! let chunks = tables.views();
//! let ids = gpu.upload("ids", &arrays.ids)?;
//! let offsets = gpu.upload("offsets", &arrays.offsets)?;
//! let x = gpu.upload("x", &[9.0f32; 15])?;
//!
//! let embedding = Embedding::new(&gpu);
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! embedding.encode_forward(&mut encoder, &EmbeddingForward {
//!     shape,
//!     table: EmbeddingTable::new(&chunks, tables.chunk_rows()),
//!     ids: BufferView::new(&ids),
//!     offsets: Some(BufferView::new(&offsets)),
//!     weights: None,
//!     scratch: None,
//!     x: BufferView::new(&x),
//! })?;
//! gpu.queue().submit([encoder.finish()]);
//! let got: Vec<f32> = gpu.read(&x, 0, 15)?;
//! assert_eq!(got[..5], [9.0, 6.0, 7.0, 8.0, 9.0]); // mean of rows 1 and 3
//! assert_eq!(got[5..10], [9.0, 0.0, 0.0, 0.0, 9.0]); // an empty bag
//! assert_eq!(got[10..], [9.0, 3.0, 4.0, 5.0, 9.0]); // row 1, twice, over 2
//!
//! // The gradient of the touched rows 1 and 3 for dx = 1 everywhere ...
//! let dx = gpu.upload("dx", &[1.0f32; 15])?;
//! let unique_offsets = gpu.upload("unique_offsets", &arrays.unique_offsets)?;
//! let occurrences = gpu.upload("occurrences", &arrays.occurrences)?;
//! let grad = gpu.storage_buffer("grad", 4 * shape.grad_len() as u64)?;
//! let mut encoder = gpu.device().create_command_encoder(&Default::default());
//! embedding.encode_backward(&mut encoder, &EmbeddingBackward {
//!     shape,
//!     offsets: Some(BufferView::new(&offsets)),
//!     weights: None,
//!     unique_offsets: BufferView::new(&unique_offsets),
//!     occurrences: BufferView::new(&occurrences),
//!     dx: BufferView::new(&dx),
//!     grad: BufferView::new(&grad),
//!     accumulate: false,
//! })?;
//! // ... and a lazy Adam step on those two rows alone.
//! let (m, v) = (
//!     EmbeddingTableBuffers::new(&gpu, "m", 4, 3)?,
//!     EmbeddingTableBuffers::new(&gpu, "v", 4, 3)?,
//! );
//! let (m_chunks, v_chunks) = (m.views(), v.views());
//! let unique_ids = gpu.upload("unique_ids", &arrays.unique_ids)?;
//! let step = embedding.encode_update(&mut encoder, &EmbeddingUpdate {
//!     shape,
//!     optimizer: SparseOptimizer::LazyAdam { beta1: 0.9, beta2: 0.999, eps: 1e-8 },
//!     unique_ids: BufferView::new(&unique_ids),
//!     grad: BufferView::new(&grad),
//!     table: EmbeddingTable::new(&chunks, tables.chunk_rows()),
//!     m: EmbeddingTable::new(&m_chunks, m.chunk_rows()),
//!     v: Some(EmbeddingTable::new(&v_chunks, v.chunk_rows())),
//!     status: None,
//! })?;
//! step.set_step(gpu.queue(), 1, 0.5);
//! gpu.queue().submit([encoder.finish()]);
//!
//! // Row 1: 1/2 from row 0 and 2 · 1/2 from row 2; row 3: 1/2 from row 0.
//! assert_eq!(gpu.read::<f32>(&grad, 0, 6)?, [1.5, 1.5, 1.5, 0.5, 0.5, 0.5]);
//! // Adam's first step moves each touched element by the learning rate.
//! let updated = tables.read(&gpu)?;
//! assert_eq!(updated[..3], table[..3]); // row 0: untouched
//! assert!((updated[3] - (3.0 - 0.5)).abs() < 1e-5);
//! # Ok(())
//! # }
//! ```

mod launch;
mod table;
mod update;

#[cfg(test)]
pub(crate) use launch::EmbeddingParams;
pub use table::{EmbeddingTable, EmbeddingTableBuffers, max_chunk_rows};
#[cfg(test)]
pub(crate) use update::SparseStepParams;
pub use update::{EmbeddingScatter, EmbeddingStep, EmbeddingUpdate};

use super::{BufferView, Dispatch, Operand, bind_operands, check_loop_budget};
use crate::gpu::{BindingKind, Gpu, ShaderProgram};
pub use crate::shape::{
    EmbeddingArrays, EmbeddingBatch, EmbeddingBounds, EmbeddingField, EmbeddingShape, NO_ID,
    Pooling, SparseOptimizer, TableOptimizer, union_ids,
};
use crate::{Error, Result};
use launch::{optional, optional_mismatch};

const SOURCE: (&str, &str) = (
    "embedding.wgsl",
    include_str!("../../shaders/embedding.wgsl"),
);

/// The kernels, f32 only.
const PROGRAM: ShaderProgram = ShaderProgram {
    name: "embedding",
    parts: &[SOURCE],
    needs_subgroups: false,
    needs_f16: false,
};

/// The WGSL programs of this family.
pub const PROGRAMS: &[ShaderProgram] = &[PROGRAM];

use BindingKind::{Read, ReadWrite};

/// How the kernels map work to invocations: `workgroup_size` invocations per
/// workgroup, each computing `columns` (1 to 4) adjacent columns of a row. Results are
/// bitwise the same for every tiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EmbeddingTiling {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// Columns per invocation, 1 to 4: the ID, weight and offsets each invocation
    /// loads serve that many table values.
    pub columns: u32,
}

impl Default for EmbeddingTiling {
    fn default() -> Self {
        EmbeddingTiling {
            workgroup_size: 64,
            columns: 4,
        }
    }
}

/// Operands of the forward pass: one field's lookup into `x`.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingForward<'a> {
    /// Shape.
    pub shape: EmbeddingShape,
    /// The table `[vocab, dim]`.
    pub table: EmbeddingTable<'a>,
    /// `ids: [bounds.ids]` u32 ([`EmbeddingArrays::ids`]).
    pub ids: BufferView<'a>,
    /// `offsets: [rows + 1]` u32, exactly when the field is multi-valued.
    pub offsets: Option<BufferView<'a>>,
    /// `weights: [bounds.ids]` f32, exactly when the field is weighted.
    pub weights: Option<BufferView<'a>>,
    /// `scratch: [bounds.ids, dim]` f32 in one binding, needed when the table has
    /// several chunks (and unused otherwise); overwritten.
    pub scratch: Option<BufferView<'a>>,
    /// `x: [rows, width]`; the field's columns are overwritten, the others untouched.
    pub x: BufferView<'a>,
}

/// Operands of the backward pass: the compact gradient of the touched table rows.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingBackward<'a> {
    /// Shape.
    pub shape: EmbeddingShape,
    /// `offsets: [rows + 1]` u32: needed by mean pooling (the bags' sizes), ignored
    /// otherwise.
    pub offsets: Option<BufferView<'a>>,
    /// `weights: [bounds.ids]` f32, exactly when the field is weighted.
    pub weights: Option<BufferView<'a>>,
    /// `unique_offsets: [bounds.unique + 1]` u32.
    pub unique_offsets: BufferView<'a>,
    /// `occurrences: [bounds.ids]` pairs of u32.
    pub occurrences: BufferView<'a>,
    /// `dx: [rows, width]`, the gradient of the loss with respect to `x`.
    pub dx: BufferView<'a>,
    /// Output `grad: [bounds.unique, dim]`: row `u` the gradient of table row
    /// `unique_ids[u]`, zeros for the padding; overwritten, or added to when
    /// `accumulate`.
    pub grad: BufferView<'a>,
    /// Add into `grad` instead of overwriting it: for fields sharing one table, whose
    /// batches are laid out over the same unique IDs
    /// ([`EmbeddingBatch::arrays_over`]), so that their gradients sum in field order.
    pub accumulate: bool,
}

/// The embedding kernels on one device. Cheap to clone; pipelines are compiled on
/// first use and cached per device.
#[derive(Clone, Debug)]
pub struct Embedding {
    gpu: Gpu,
    tiling: EmbeddingTiling,
}

impl Embedding {
    /// The kernels on `gpu` with the default [`EmbeddingTiling`].
    pub fn new(gpu: &Gpu) -> Self {
        Embedding {
            gpu: gpu.clone(),
            tiling: EmbeddingTiling::default(),
        }
    }

    /// The kernels with `tiling`: 1 to 4 columns per invocation and a workgroup size
    /// within the device's limits. Results do not depend on it.
    pub fn with_tiling(gpu: &Gpu, tiling: EmbeddingTiling) -> Result<Self> {
        let limits = gpu.limits();
        let max = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x);
        if tiling.workgroup_size == 0 || tiling.workgroup_size > max {
            return Err(Error::invalid(
                "embedding tiling",
                format!(
                    "workgroup size {} is not between 1 and {max}",
                    tiling.workgroup_size
                ),
            ));
        }
        if !(1..=4).contains(&tiling.columns) {
            return Err(Error::invalid(
                "embedding tiling",
                format!(
                    "{} columns per invocation is not between 1 and 4",
                    tiling.columns
                ),
            ));
        }
        Ok(Embedding {
            gpu: gpu.clone(),
            tiling,
        })
    }

    /// The tiling.
    pub fn tiling(&self) -> EmbeddingTiling {
        self.tiling
    }

    /// Checks and binds the forward pass: one dispatch for a table in one chunk;
    /// otherwise a gather per chunk, then the pooling, to record in order.
    pub fn forward(&self, args: &EmbeddingForward<'_>) -> Result<Vec<Dispatch>> {
        const CTX: &str = "embedding forward";
        let s = &args.shape;
        s.validate(CTX)?;
        let f = &s.field;
        args.table.check(CTX, "table", f.vocab)?;
        check_loop_budget(
            CTX,
            s.bag_loop() as u64 + 2,
            "bounds.longest_bag, the IDs of the longest bag: shorter bags need fewer",
        )?;
        let ids = Operand::new("ids", 2, args.ids, s.ids_len(), Read);
        let (multi, weighted) = (f.multi_valued, f.weighted);
        let offsets = optional(
            CTX,
            "offsets",
            3,
            multi,
            args.offsets,
            s.offsets_len(),
            &ids,
        )?;
        let weights = optional(CTX, "weights", 4, weighted, args.weights, s.ids_len(), &ids)?;
        let x = Operand::new("x", 6, args.x, s.x_len(), ReadWrite);
        let dim = f.dim;
        let mut out = Vec::new();
        let source = if let [chunk] = args.table.chunks {
            Operand::new("table", 5, *chunk, s.table_len(), Read)
        } else {
            let scratch_view = args.scratch.ok_or_else(|| {
                let want = format!(
                    "a scratch of {} f32 (the table has {} chunks)",
                    s.scratch_len(),
                    args.table.chunks.len()
                );
                Error::shape(CTX, "scratch", want, "none")
            })?;
            let scratch = Operand::new("scratch", 6, scratch_view, s.scratch_len(), ReadWrite);
            for (i, chunk) in args.table.chunks.iter().enumerate() {
                let rows = args.table.rows(i, f.vocab);
                let table = Operand::new("table", 5, *chunk, rows.len() * dim, Read);
                let ctx = format!("{CTX}, table chunk {i}");
                let bound = bind_operands(&self.gpu, &ctx, &[ids, table, scratch])?;
                let p = self.params(s, s.bounds.ids).bases(&bound).chunk(rows);
                let entry = self.entry("gather", &[]);
                out.push(self.dispatch("embedding gather", entry, p, &bound, &[])?);
            }
            Operand::new("scratch", 5, scratch_view, s.scratch_len(), Read)
        };
        let bound = bind_operands(&self.gpu, CTX, &[ids, offsets, weights, source, x])?;
        let p = self.params(s, s.rows).bases(&bound);
        let modes = [
            ("MULTI", f.multi_valued as u32),
            ("WEIGHTED", f.weighted as u32),
            ("MEAN", f.is_mean() as u32),
            ("GATHERED", (args.table.chunks.len() > 1) as u32),
        ];
        let entry = self.entry("pool", &modes);
        out.push(self.dispatch("embedding pool", entry, p, &bound, &[])?);
        Ok(out)
    }

    /// Checks and binds the backward pass: one dispatch, one invocation per unique
    /// ID and group of columns.
    pub fn backward(&self, args: &EmbeddingBackward<'_>) -> Result<Dispatch> {
        const CTX: &str = "embedding backward";
        let s = &args.shape;
        s.validate(CTX)?;
        let f = &s.field;
        check_loop_budget(
            CTX,
            s.bounds.most_occurrences as u64 + 2,
            "bounds.most_occurrences, the occurrences of the most frequent ID: \
             fewer rows per batch need fewer",
        )?;
        let dx = Operand::new("dx", 7, args.dx, s.x_len(), Read);
        let offsets = match (f.is_mean(), args.offsets) {
            (true, Some(v)) => Operand::new("offsets", 3, v, s.offsets_len(), Read),
            (true, None) => return Err(optional_mismatch(CTX, "offsets", true)),
            (false, _) => dx.stand_in(3),
        };
        let weights = optional(
            CTX,
            "weights",
            4,
            f.weighted,
            args.weights,
            s.ids_len(),
            &dx,
        )?;
        let operands = [
            offsets,
            weights,
            Operand::new("grad", 6, args.grad, s.grad_len(), ReadWrite),
            dx,
            Operand::new(
                "unique_offsets",
                9,
                args.unique_offsets,
                s.unique_offsets_len(),
                Read,
            ),
            Operand::new(
                "occurrences",
                10,
                args.occurrences,
                s.occurrences_len(),
                Read,
            ),
        ];
        let bound = bind_operands(&self.gpu, CTX, &operands)?;
        let p = self.params(s, s.bounds.unique).bases(&bound);
        let modes = [
            ("MULTI", f.is_mean() as u32),
            ("WEIGHTED", f.weighted as u32),
            ("MEAN", f.is_mean() as u32),
            ("ACCUMULATE", args.accumulate as u32),
        ];
        let entry = self.entry("backward", &modes);
        self.dispatch("embedding backward", entry, p, &bound, &[])
    }

    crate::kernels::encoders! {
        encode_forward => forward(args: &EmbeddingForward<'_>);
        encode_backward => backward(args: &EmbeddingBackward<'_>);
        encode_scatter => scatter(args: &EmbeddingScatter<'_>);
    }
}
