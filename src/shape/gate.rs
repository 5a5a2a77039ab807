//! The gate + mix family's vocabulary: its shape, which experts each gate sees, and
//! how a top-k gate selects.

use super::{GemmShape, InputLayout, check_elements, check_nonzero};
use crate::{Error, Result};

/// Shape of a gate + mix over `gates` gates (`T` for MMoE, 1 for a one-gate model).
///
/// `X: [rows, inputs]` (or one block per gate, see [`input`](Self::input)),
/// `Wg: [gates, inputs, experts]`, `bg: [gates, experts]`,
/// `H: [experts, rows, width]`, `G: [gates, rows, experts]`, `M: [gates, rows, width]`.
/// All row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GateMixShape {
    /// Number of gates.
    pub gates: usize,
    /// Number of experts `E`, the softmax length.
    pub experts: usize,
    /// Batch rows `B`.
    pub rows: usize,
    /// Input features `d` of the gates.
    pub inputs: usize,
    /// Expert width `h`.
    pub width: usize,
    /// Which input each gate reads: one `X: [rows, inputs]` read by every gate
    /// ([`InputLayout::Shared`]), or gate `t` its own block `t`:
    /// [`InputLayout::PerGroup`] (`X: [gates, rows, inputs]`), or
    /// [`InputLayout::Level`] `{ tasks: gates, shared: 0, own: 1 }` (`X: [gates + 1,
    /// rows, inputs]`, the task gates of a multi-level model's last level: they read
    /// the task blocks of the level's input, and the shared block, read by none of
    /// them, gets a zero gradient).
    pub input: InputLayout,
}

impl GateMixShape {
    /// Checks every dimension is non-zero and every tensor fits the 32-bit indexing
    /// the shader uses.
    pub fn validate(&self, context: &str) -> Result<()> {
        check_nonzero(
            context,
            &[
                ("gates", self.gates),
                ("experts", self.experts),
                ("rows", self.rows),
                ("inputs", self.inputs),
                ("width", self.width),
            ],
        )?;
        let own_blocks = match self.input {
            InputLayout::Shared | InputLayout::PerGroup => true,
            InputLayout::Level { tasks, shared, own } => {
                tasks == self.gates && shared == 0 && own == 1
            }
            InputLayout::Columns(_) => false,
        };
        if !own_blocks {
            return Err(Error::invalid(
                format!("{context} input"),
                format!(
                    "gates read one shared input or gate t block t of theirs; {:?} for {} gates",
                    self.input, self.gates
                ),
            ));
        }
        let (t, e, b, d, w) = (self.gates, self.experts, self.rows, self.inputs, self.width);
        check_elements(
            context,
            &[
                ("X", &[self.logits_gemm().x_groups(), b, d]),
                ("Wg", &[t, d, e]),
                ("H", &[e, b, w]),
                ("G", &[t, b, e]),
                ("M", &[t, b, w]),
            ],
        )
    }

    /// Elements of `X` (and of `dX`).
    pub fn x_len(&self) -> usize {
        self.logits_gemm().x_len()
    }

    /// Where gate `gate`'s rows of `X` start: 0 when shared, else block `gate`.
    pub fn x_offset(&self, gate: usize) -> usize {
        match self.input {
            InputLayout::Shared | InputLayout::Columns(_) => 0,
            InputLayout::PerGroup | InputLayout::Level { .. } => gate * self.rows * self.inputs,
        }
    }

    /// Elements of `Wg` (and of `dWg`).
    pub fn wg_len(&self) -> usize {
        self.gates * self.inputs * self.experts
    }

    /// Elements of `bg` (and of `dbg`).
    pub fn bg_len(&self) -> usize {
        self.gates * self.experts
    }

    /// Elements of `H` (and of `dH`).
    pub fn h_len(&self) -> usize {
        self.experts * self.rows * self.width
    }

    /// Elements of `G` (and of `dz`).
    pub fn g_len(&self) -> usize {
        self.gates * self.rows * self.experts
    }

    /// Elements of `M` (and of `dM`).
    pub fn m_len(&self) -> usize {
        self.gates * self.rows * self.width
    }

    /// The gate logits `X · Wg_t + bg_t` as a grouped GEMM: one group per gate, on
    /// the gates' input layout.
    pub fn logits_gemm(&self) -> GemmShape {
        GemmShape {
            groups: self.gates,
            rows: self.rows,
            inputs: self.inputs,
            outputs: self.experts,
            input: self.input,
        }
    }
}

/// Which experts each gate may weigh.
///
/// With task-specific experts beside shared ones, each task's gate sees the shared
/// experts and its own: experts are numbered shared first, then each gate's own in
/// gate order. The experts a gate does not see get a weight of exactly 0, so they
/// neither feed its mixture nor receive a gradient from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExpertAccess {
    /// Every gate sees every expert.
    #[default]
    All,
    /// Experts `0..shared` are seen by every gate; gate `t` also sees its own
    /// `shared + t·own .. shared + (t+1)·own`.
    SharedAndOwn {
        /// Experts every gate sees.
        shared: usize,
        /// Experts of each gate's own (at least 1).
        own: usize,
    },
    /// An extraction level of a multi-level model (PLE) that is not the last: gates
    /// `0..gates − 1` (the tasks') as [`SharedAndOwn`](Self::SharedAndOwn), and the
    /// last gate, the level's shared gate, sees every expert.
    SharedGate {
        /// Experts every gate sees.
        shared: usize,
        /// Experts of each task gate's own (at least 1).
        own: usize,
        /// Task gates; the shared gate is gate `tasks`, the last.
        tasks: usize,
    },
}

impl ExpertAccess {
    /// Whether gate `gate` sees expert `expert`.
    pub fn sees(&self, gate: usize, expert: usize) -> bool {
        match *self {
            ExpertAccess::All => true,
            ExpertAccess::SharedAndOwn { shared, own } => {
                expert < shared || (expert - shared) / own == gate
            }
            ExpertAccess::SharedGate { shared, own, tasks } => {
                gate == tasks || expert < shared || (expert - shared) / own == gate
            }
        }
    }

    /// Experts each gate of `shape` sees.
    pub fn visible(&self, shape: &GateMixShape) -> usize {
        match *self {
            ExpertAccess::All => shape.experts,
            ExpertAccess::SharedAndOwn { shared, own }
            | ExpertAccess::SharedGate { shared, own, .. } => shared + own,
        }
    }

    /// Experts gate `gate` of `shape` keeps per row for a gate of `k`: `k`, but the
    /// shared gate of [`SharedGate`](Self::SharedGate) keeps every expert when `k`
    /// is all a task gate sees (the dense softmax).
    pub fn gate_k(&self, shape: &GateMixShape, gate: usize, k: usize) -> usize {
        match *self {
            ExpertAccess::SharedGate { shared, own, tasks }
                if gate == tasks && k >= shared + own && tasks < shape.gates =>
            {
                shape.experts
            }
            _ => k,
        }
    }

    /// Checks the experts of `shape` are exactly the shared ones plus `own` per gate.
    pub fn validate(&self, context: &str, shape: &GateMixShape) -> Result<()> {
        let (shared, own, task_gates) = match *self {
            ExpertAccess::All => return Ok(()),
            ExpertAccess::SharedAndOwn { shared, own } => (shared, own, shape.gates),
            ExpertAccess::SharedGate { shared, own, tasks } => {
                if tasks + 1 != shape.gates {
                    return Err(Error::invalid(
                        format!("{context} access"),
                        format!(
                            "{tasks} task gates and a shared gate, but the shape has {} gates",
                            shape.gates
                        ),
                    ));
                }
                (shared, own, tasks)
            }
        };
        let total = own
            .checked_mul(task_gates)
            .and_then(|n| n.checked_add(shared));
        if own == 0 || total != Some(shape.experts) {
            return Err(Error::invalid(
                format!("{context} access"),
                format!(
                    "{shared} shared experts plus {own} of its own for each of {task_gates} \
                     task gates, but the shape has {} experts (own must be at least 1)",
                    shape.experts
                ),
            ));
        }
        Ok(())
    }
}

/// Checks `1 ≤ k ≤` the experts each gate sees, the selections a top-k gate can make.
pub(crate) fn check_k(
    context: &str,
    shape: &GateMixShape,
    k: usize,
    access: ExpertAccess,
) -> Result<()> {
    let visible = access.visible(shape);
    if (1..=visible).contains(&k) {
        return Ok(());
    }
    Err(Error::invalid(
        format!("{context} k"),
        format!("k = {k}, but a top-k gate over {visible} experts needs 1 ≤ k ≤ {visible}"),
    ))
}

/// Which experts the gates of one row keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Selection {
    /// Each gate its own `k` largest logits: a row needs the union of the gates'
    /// choices, up to `gates · k` experts.
    #[default]
    PerGate,
    /// Every gate the same `k` experts: those with the largest sum of the gates'
    /// logits (equivalently the largest product of the gates' full softmax weights;
    /// equal sums: the lower expert first), each gate's softmax over them. A row then
    /// needs `k` experts whatever the number of gates. Every gate must see every
    /// expert ([`ExpertAccess::All`]), and at most [`MAX_SHARED_SELECTION_EXPERTS`].
    Shared,
}

/// Experts a [`Selection::Shared`] gate may have: the kernel keeps each row's
/// selection in a bit mask of this many bits.
pub const MAX_SHARED_SELECTION_EXPERTS: usize = 256;

/// Checks that `selection` is one the kernel can make for `shape` and `access`.
pub(crate) fn check_selection(
    context: &str,
    shape: &GateMixShape,
    access: ExpertAccess,
    selection: Selection,
) -> Result<()> {
    if selection == Selection::PerGate {
        return Ok(());
    }
    if access != ExpertAccess::All {
        return Err(Error::invalid(
            format!("{context} selection"),
            format!(
                "a shared selection needs every gate to see every expert, \
                 but the access is {access:?}"
            ),
        ));
    }
    if shape.experts > MAX_SHARED_SELECTION_EXPERTS {
        return Err(Error::Limit {
            context: context.into(),
            what: "experts of a shared selection".into(),
            value: shape.experts as u64,
            limit: MAX_SHARED_SELECTION_EXPERTS as u64,
        });
    }
    Ok(())
}
