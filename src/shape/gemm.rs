//! The grouped GEMM's vocabulary: its shape, input layout and fused activation.

use super::{ColumnWindows, check_elements, check_nonzero};
use crate::Result;

/// Activation fused into a GEMM's epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// `y = z`
    #[default]
    Identity,
    /// `y = max(z, 0)`
    Relu,
}

impl Activation {
    pub(crate) fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
        }
    }
}

/// Which input each group of a grouped GEMM reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputLayout {
    /// One `X: [rows, inputs]` read by every group (experts on the same input).
    Shared,
    /// `X: [groups, rows, inputs]`, one per group (towers on their task's mixture).
    PerGroup,
    /// The inputs of one extraction level of a multi-level model (PLE):
    /// `X: [tasks + 1, rows, inputs]`, block `t < tasks` task `t`'s input and block
    /// `tasks` the shared one. Groups `0..shared` (the shared experts) read block
    /// `tasks`; group `shared + t·own + i` (task `t`'s `i`-th expert) reads block `t`,
    /// so `groups = shared + tasks·own`. The input gradient of each block sums the
    /// groups that read it, in group order (a block no group reads gets zeros).
    /// `Shared` is `{ tasks: 0, shared: groups, own: 0 }` and `PerGroup`
    /// `{ tasks: groups, shared: 0, own: 1 }`, block for block.
    Level {
        /// Task blocks before the shared block.
        tasks: usize,
        /// Groups reading the shared block (numbered first).
        shared: usize,
        /// Groups of each task's own, reading that task's block.
        own: usize,
    },
    /// One `X: [rows, columns]`, each group reading its window of columns (experts on
    /// feature subsets). `inputs` is at least the widest window; group `g` multiplies
    /// its `width_g` columns by rows `0..width_g` of `W_g` (the rest of `W_g` is
    /// padding: never read, its gradient zero). The input gradient of a column sums
    /// the groups whose window holds it, in group order (zeros where none does).
    Columns(ColumnWindows),
}

/// Shape of a grouped GEMM `Y_g = act(X_g · W_g + b_g)`, `g = 0..groups`.
///
/// `W: [groups, inputs, outputs]`, `b: [groups, outputs]`, `Y: [groups, rows, outputs]`,
/// `X` as given by [`InputLayout`]. All row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmShape {
    /// Number of groups (experts or towers).
    pub groups: usize,
    /// Batch rows.
    pub rows: usize,
    /// Input features per row (the reduction length of the forward pass).
    pub inputs: usize,
    /// Output features per row and group.
    pub outputs: usize,
    /// Shared or per-group input.
    pub input: InputLayout,
}

impl GemmShape {
    /// Checks every dimension is non-zero and every tensor fits the 32-bit indexing
    /// the shaders use.
    pub fn validate(&self, context: &str) -> Result<()> {
        check_nonzero(
            context,
            &[
                ("groups", self.groups),
                ("rows", self.rows),
                ("inputs", self.inputs),
                ("outputs", self.outputs),
            ],
        )?;
        if let InputLayout::Level { tasks, shared, own } = self.input {
            let total = tasks.checked_mul(own).and_then(|n| n.checked_add(shared));
            if total != Some(self.groups) {
                return Err(crate::Error::invalid(
                    format!("{context} input layout"),
                    format!(
                        "{shared} shared groups plus {own} for each of {tasks} tasks, but \
                         the shape has {} groups",
                        self.groups
                    ),
                ));
            }
        }
        if let InputLayout::Columns(windows) = &self.input
            && (windows.groups() != self.groups || windows.max_width() > self.inputs)
        {
            return Err(crate::Error::invalid(
                format!("{context} input layout"),
                format!(
                    "column windows for {} groups up to {} wide, but the shape has {} \
                     groups of {} inputs",
                    windows.groups(),
                    windows.max_width(),
                    self.groups,
                    self.inputs
                ),
            ));
        }
        let (g, b, d, n) = (self.groups, self.rows, self.inputs, self.outputs);
        check_elements(
            context,
            &[
                ("X", &[self.x_groups(), b, self.x_columns()]),
                ("W", &[g, d, n]),
                ("Y", &[g, b, n]),
            ],
        )
    }

    /// Elements of `X` (and of `dX`).
    pub fn x_len(&self) -> usize {
        self.x_groups() * self.rows * self.x_columns()
    }

    /// Columns of a row of `X`: `inputs`, or the input's width under
    /// [`InputLayout::Columns`].
    pub fn x_columns(&self) -> usize {
        match &self.input {
            InputLayout::Columns(windows) => windows.columns(),
            _ => self.inputs,
        }
    }

    /// `(first column, width)` of what group `g` reads of its block's rows:
    /// `(0, inputs)` except under [`InputLayout::Columns`].
    pub fn x_window(&self, g: usize) -> (usize, usize) {
        match &self.input {
            InputLayout::Columns(windows) => windows.window_of(g),
            _ => (0, self.inputs),
        }
    }

    /// Number of distinct inputs (blocks of `X`): 1 when shared.
    pub fn x_groups(&self) -> usize {
        match self.input {
            InputLayout::Shared | InputLayout::Columns(_) => 1,
            InputLayout::PerGroup => self.groups,
            InputLayout::Level { tasks, .. } => tasks + 1,
        }
    }

    /// The block of `X` group `g` reads.
    pub fn x_block(&self, g: usize) -> usize {
        let (tasks, shared, own) = self.level_form();
        if g < shared {
            tasks
        } else {
            (g - shared) / own.max(1)
        }
    }

    /// The groups that read block `block` of `X`, in order (contiguous in every
    /// layout).
    pub fn x_readers(&self, block: usize) -> std::ops::Range<usize> {
        let (tasks, shared, own) = self.level_form();
        if block == tasks {
            0..shared
        } else {
            let first = shared + block * own;
            first..first + own
        }
    }

    /// The layout as `(tasks, shared, own)` of [`InputLayout::Level`].
    pub(crate) fn level_form(&self) -> (usize, usize, usize) {
        match self.input {
            InputLayout::Shared | InputLayout::Columns(_) => (0, self.groups, 0),
            InputLayout::PerGroup => (self.groups, 0, 1),
            InputLayout::Level { tasks, shared, own } => (tasks, shared, own),
        }
    }

    /// Elements of `W` (and of `dW`).
    pub fn w_len(&self) -> usize {
        self.groups * self.inputs * self.outputs
    }

    /// Elements of `b` (and of `db`).
    pub fn b_len(&self) -> usize {
        self.groups * self.outputs
    }

    /// Elements of `Y` (and of `dY`).
    pub fn y_len(&self) -> usize {
        self.groups * self.rows * self.outputs
    }

    /// Floating-point operations of the forward pass (2 per multiply-add; each group
    /// over its window's columns).
    pub fn forward_flops(&self) -> f64 {
        let reduced: usize = (0..self.groups).map(|g| self.x_window(g).1).sum();
        2.0 * reduced as f64 * self.rows as f64 * self.outputs as f64
    }
}
