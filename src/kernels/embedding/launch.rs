//! How the embedding passes become dispatches: the uniform block, the pipeline
//! constants, the grid, and the optional operands.

use super::{Embedding, EmbeddingShape, PROGRAM, SparseOptimizer};
use crate::gpu::BindingKind::Read;
use crate::kernels::binding::BoundOperand;
use crate::kernels::dispatch::Extra;
use crate::kernels::{BufferView, Dispatch, Operand, div_ceil};
use crate::{Error, Result};

crate::kernels::binding::host_struct! {
    /// Mirrors `EmbeddingParams` in the shader.
    struct EmbeddingParams {
        vocab: u32,
        dim: u32,
        rows: u32,
        width: u32,
        column: u32,
        ids: u32,
        unique: u32,
        longest_bag: u32,
        most_occurrences: u32,
        groups: u32,
        items: u32,
        groups_x: u32,
        chunk_lo: u32,
        chunk_rows: u32,
        ids_base: u32,
        offsets_base: u32,
        weights_base: u32,
        src_base: u32,
        dst_base: u32,
        dx_base: u32,
        unique_ids_base: u32,
        unique_offsets_base: u32,
        occurrences_base: u32,
        grad_base: u32,
        m_base: u32,
        v_base: u32,
        beta1: f32,
        one_minus_beta1: f32,
        beta2: f32,
        one_minus_beta2: f32,
        eps: f32,
        status_base: u32,
    }
}

impl EmbeddingParams {
    /// For a dispatch over the table chunk holding `rows`.
    pub(super) fn chunk(mut self, rows: std::ops::Range<usize>) -> Self {
        (self.chunk_lo, self.chunk_rows) = (rows.start as u32, rows.len() as u32);
        self
    }

    /// With `optimizer`'s hyper-parameters.
    pub(super) fn optimizer(mut self, optimizer: SparseOptimizer) -> Self {
        match optimizer {
            SparseOptimizer::LazyAdam { beta1, beta2, eps } => {
                (self.beta1, self.beta2, self.eps) = (beta1, beta2, eps);
                self.one_minus_beta1 = (1.0 - beta1 as f64) as f32;
                self.one_minus_beta2 = (1.0 - beta2 as f64) as f32;
            }
            SparseOptimizer::Adagrad { eps } => self.eps = eps,
        }
        self
    }

    /// Sets the element offset of the operand at `slot` in `bound`, if there is one.
    pub(super) fn bases(mut self, bound: &[BoundOperand<'_>]) -> Self {
        for b in bound {
            let base = match b.slot {
                2 => &mut self.ids_base,
                3 => &mut self.offsets_base,
                4 => &mut self.weights_base,
                5 => &mut self.src_base,
                6 => &mut self.dst_base,
                7 => &mut self.dx_base,
                8 => &mut self.unique_ids_base,
                9 => &mut self.unique_offsets_base,
                10 => &mut self.occurrences_base,
                11 => &mut self.grad_base,
                12 => &mut self.m_base,
                13 => &mut self.v_base,
                14 => &mut self.status_base,
                _ => continue,
            };
            *base = b.base;
        }
        self
    }
}

impl Embedding {
    /// The shape's fields of the uniform block for a dispatch over `items` items
    /// (rows, IDs or unique IDs), each `⌈dim / columns⌉` invocations wide.
    pub(super) fn params(&self, s: &EmbeddingShape, items: usize) -> EmbeddingParams {
        let b = &s.bounds;
        let groups = s.field.dim.div_ceil(self.tiling.columns as usize);
        EmbeddingParams {
            vocab: s.field.vocab as u32,
            dim: s.field.dim as u32,
            rows: s.rows as u32,
            width: s.width as u32,
            column: s.column as u32,
            ids: b.ids as u32,
            unique: b.unique as u32,
            longest_bag: s.bag_loop() as u32,
            most_occurrences: b.most_occurrences as u32,
            groups: groups as u32,
            items: items as u32,
            chunk_rows: s.field.vocab as u32,
            ..Default::default()
        }
    }

    /// The entry point `name` with the tiling's constants and the pass's `modes`.
    pub(super) fn entry(&self, name: &'static str, modes: &[(&'static str, u32)]) -> Entry {
        let mut constants = vec![
            ("WG", self.tiling.workgroup_size),
            ("COLS", self.tiling.columns),
        ];
        constants.extend_from_slice(modes);
        Entry { name, constants }
    }

    /// One invocation per item and column group: the workgroups fill x up to the
    /// device's limit, then rows of them along y.
    pub(super) fn dispatch(
        &self,
        label: &'static str,
        entry: Entry,
        mut params: EmbeddingParams,
        bound: &[BoundOperand<'_>],
        extras: &[(u32, Extra<'_>)],
    ) -> Result<Dispatch> {
        let invocations = params.items as usize * params.groups as usize;
        let workgroups = div_ceil(invocations, self.tiling.workgroup_size as usize).max(1);
        let max = self.gpu.limits().max_compute_workgroups_per_dimension;
        params.groups_x = workgroups.min(max);
        let kernel = (&PROGRAM, entry.name, &entry.constants[..]);
        let grid = [params.groups_x, workgroups.div_ceil(params.groups_x), 1];
        Dispatch::launch(&self.gpu, label, kernel, &params, (bound, extras), grid)
    }
}

/// An entry point of the program with its pipeline constants.
pub(super) struct Entry {
    name: &'static str,
    constants: Vec<(&'static str, u32)>,
}

/// The operand `name` at `slot` of `len` elements, given exactly when `wanted`;
/// `stand_in`'s buffer in its place when absent.
pub(super) fn optional<'a>(
    ctx: &str,
    name: &'static str,
    slot: u32,
    wanted: bool,
    given: Option<BufferView<'a>>,
    len: usize,
    stand_in: &Operand<'a>,
) -> Result<Operand<'a>> {
    match (wanted, given) {
        (true, Some(view)) => Ok(Operand::new(name, slot, view, len, Read)),
        (false, None) => Ok(stand_in.stand_in(slot)),
        (wanted, _) => Err(optional_mismatch(ctx, name, wanted)),
    }
}

/// The error for an optional operand given when the field has none, or missing when
/// the pass needs it.
pub(super) fn optional_mismatch(ctx: &str, name: &str, wanted: bool) -> Error {
    let field_has = match name {
        "offsets" => "a multi-valued field",
        "weights" => "a weighted field",
        _ => "this field",
    };
    if wanted {
        Error::shape(ctx, name, format!("a buffer (for {field_has})"), "none")
    } else {
        Error::shape(
            ctx,
            name,
            format!("none (only {field_has} has them)"),
            "a buffer",
        )
    }
}
