//! What a graph is made of: tensors (shape, role, initial values) and nodes (the ops
//! and the tensors they read and write).

use crate::shape::{
    Activation, BalanceLoss, EmbeddingShape, ExpertAccess, GateMixShape, GemmShape, Selection,
    TaskLoss,
};

/// Index of a tensor in its [`Graph`](super::Graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// What a tensor holds, which decides where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Fed by the caller each step: `[rows, features]`. Lookups of categorical
    /// fields write their columns after it is fed; such an input has a gradient.
    Input,
    /// Fed by the caller each step: `[tasks, rows]`, task-major.
    Target,
    /// Trained: a view into the flat parameter buffer.
    Parameter,
    /// Fed by the caller for training passes only: a noisy gate's standard normal
    /// draws `ε: [gates, rows, experts]`. Passes without gate noise (inference) do not
    /// read it.
    Noise,
    /// Computed by a node.
    Activation,
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros (biases).
    Zeros,
    /// Uniform in `±sqrt(6 / fan_in)` (He, for ReLU layers).
    HeUniform {
        /// Inputs per output.
        fan_in: usize,
    },
    /// Uniform in `±sqrt(6 / (fan_in + fan_out))` (Glorot, for linear layers).
    GlorotUniform {
        /// Inputs per output.
        fan_in: usize,
        /// Outputs per input.
        fan_out: usize,
    },
    /// He uniform per group of a layer on column windows, each group's fan-in its
    /// window's width; the rows of `W_g` past that width (padding) zero.
    HeUniformWindows(crate::shape::ColumnWindows),
}

/// A tensor: name, shape at full batch capacity, role.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Unique name, e.g. `experts.0.weight`.
    pub name: String,
    /// Row-major shape at the graph's batch capacity.
    pub shape: Vec<usize>,
    /// Where it lives.
    pub role: Role,
    /// For parameters: how to initialise it.
    pub init: Option<Init>,
    /// The axis that runs over batch rows, if any.
    pub batch_axis: Option<usize>,
}

impl Tensor {
    /// Number of elements at full capacity.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of elements when a batch of `rows` rows is run.
    pub fn len_at(&self, rows: usize) -> usize {
        self.shape
            .iter()
            .enumerate()
            .map(|(axis, &n)| {
                if Some(axis) == self.batch_axis {
                    rows
                } else {
                    n
                }
            })
            .product()
    }
}

/// An operation and its tensors. Shapes are given at full capacity; executions with
/// fewer rows substitute their row count.
#[derive(Clone, Debug)]
pub enum Op {
    /// Grouped GEMM `y = act(x · w + b)` (see [`crate::kernels::grouped_gemm`]).
    Dense {
        /// Shape at full capacity.
        shape: GemmShape,
        /// Fused activation.
        activation: Activation,
        /// Input.
        x: TensorId,
        /// Weights `[groups, inputs, outputs]`.
        w: TensorId,
        /// Bias `[groups, outputs]`.
        b: Option<TensorId>,
        /// Output `[groups, rows, outputs]`.
        y: TensorId,
    },
    /// Gate softmax and expert mixing, dense or top-k (see
    /// [`crate::kernels::gate_mix`]).
    GateMix {
        /// Shape at full capacity.
        shape: GateMixShape,
        /// Experts each gate keeps per row: the number it sees for a dense softmax,
        /// fewer for a top-k gate.
        k: usize,
        /// Which experts each gate sees.
        access: ExpertAccess,
        /// Whether each gate keeps its own `k` experts or all keep the same.
        selection: Selection,
        /// Weight of the load-balancing loss on the gate values (0: none).
        balance_weight: f32,
        /// Which load-balancing loss (with a nonzero weight).
        balance_loss: BalanceLoss,
        /// Gate input `[rows, inputs]`.
        x: TensorId,
        /// Gate weights `[gates, inputs, experts]`; `None` for a static gate, whose
        /// logits are its bias alone.
        wg: Option<TensorId>,
        /// Gate bias `[gates, experts]`.
        bg: TensorId,
        /// Expert outputs `[experts, rows, width]`.
        h: TensorId,
        /// Gate values `[gates, rows, experts]`, kept for backward.
        g: TensorId,
        /// Mixtures `[gates, rows, width]`.
        m: TensorId,
        /// For a noisy gate, its noise logits and draws: training passes add
        /// `ε ⊙ softplus(n)` to the logits.
        noise: Option<GateNoise>,
    },
    /// A categorical field's embeddings, looked up in a table and pooled into
    /// columns of an input (see [`crate::kernels::embedding`]); its backward writes
    /// the gradient of the table rows the batch touched.
    Embedding {
        /// Index of the lookup in [`Graph::lookups`](super::Graph::lookups).
        lookup: usize,
        /// Index of the table in [`Graph::tables`](super::Graph::tables).
        table: usize,
        /// Shape at full capacity, with the capacities of one batch's IDs.
        shape: EmbeddingShape,
        /// The input whose columns it writes.
        x: TensorId,
    },
    /// Weighted per-task loss; its gradient is written in the same dispatch.
    Loss {
        /// Per task: kind and weight.
        tasks: Vec<TaskLoss>,
        /// Predictions `[tasks, rows]`.
        predictions: TensorId,
        /// Targets `[tasks, rows]`.
        targets: TensorId,
        /// Loss per task `[tasks]` (not batch-dependent).
        loss: TensorId,
    },
}

impl Op {
    /// Tensors the op reads.
    pub fn inputs(&self) -> Vec<TensorId> {
        match self {
            Op::Dense { x, w, b, .. } => [Some(*x), Some(*w), *b].into_iter().flatten().collect(),
            Op::GateMix {
                x,
                wg,
                bg,
                h,
                noise,
                ..
            } => [Some(*x), *wg, Some(*bg), Some(*h)]
                .into_iter()
                .chain(noise.iter().flat_map(|n| [Some(n.n), Some(n.eps)]))
                .flatten()
                .collect(),
            Op::Loss {
                predictions,
                targets,
                ..
            } => vec![*predictions, *targets],
            // The table is not a tensor.
            Op::Embedding { .. } => Vec::new(),
        }
    }

    /// Tensors the op writes.
    pub fn outputs(&self) -> Vec<TensorId> {
        match self {
            Op::Dense { y, .. } => vec![*y],
            Op::GateMix { g, m, .. } => vec![*g, *m],
            Op::Loss { loss, .. } => vec![*loss],
            Op::Embedding { x, .. } => vec![*x],
        }
    }
}

/// The noise of a noisy top-k gate (Shazeer et al. 2017): training passes add
/// `ε ⊙ softplus(n)` to the gate's logits, passes without noise add nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateNoise {
    /// The noise logits `n = X · Wn + bn`, `[gates, rows, experts]`: the output of
    /// the gate's noise layer, a dense node of its own.
    pub n: TensorId,
    /// The standard normal draws `ε: [gates, rows, experts]`, a [`Role::Noise`]
    /// tensor.
    pub eps: TensorId,
}

/// How a gate node weighs the experts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateSpec {
    /// Keep the top `k` logits of the experts a gate sees; `None`: all of them (the
    /// dense softmax).
    pub k: Option<usize>,
    /// Which experts each gate sees.
    pub access: ExpertAccess,
    /// Whether each gate keeps its own top `k` or all gates of a row the same `k`
    /// (a top-k gate over every expert only).
    pub selection: Selection,
    /// Whether the logits depend on the input; a static gate's are its bias alone.
    pub input_dependent: bool,
    /// Weight of the load-balancing loss, `weight · CV²` of each gate's importance
    /// (see [`crate::kernels::balance`]); 0 for none.
    pub balance_weight: f32,
    /// Which load-balancing loss: `weight · CV²` of the importance, or the Switch
    /// load loss on the full softmax (see [`BalanceLoss`]).
    pub balance_loss: BalanceLoss,
    /// Trainable Gaussian noise on the logits of training passes (a top-k,
    /// input-dependent gate only): see [`GateNoise`].
    pub noisy: bool,
}

impl GateSpec {
    /// The paper's gate: a softmax over every expert, fed by the input.
    pub const SOFTMAX: GateSpec = GateSpec {
        k: None,
        access: ExpertAccess::All,
        selection: Selection::PerGate,
        input_dependent: true,
        balance_weight: 0.0,
        balance_loss: BalanceLoss::Importance,
        noisy: false,
    };
}

/// `op` with its shapes at `rows` rows.
pub(crate) fn at_rows(op: &Op, rows: usize) -> Op {
    let mut op = op.clone();
    match &mut op {
        Op::Dense { shape, .. } => shape.rows = rows,
        Op::GateMix { shape, .. } => shape.rows = rows,
        // A single-valued field holds one ID per row.
        Op::Embedding { shape, .. } => {
            shape.rows = rows;
            if !shape.field.multi_valued {
                shape.bounds.ids = rows;
            }
        }
        Op::Loss { .. } => {}
    }
    op
}
