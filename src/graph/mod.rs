//! The thin graph: tensors with shapes, nodes with their ops, the backward of each
//! op, a planner that lays every buffer out once, and two executors over the same
//! graph: [`GpuExecutor`] (the kernels) and [`CpuExecutor`] (the reference).
//!
//! A graph is built for a batch capacity; every tensor whose first batch-dependent
//! axis is the batch holds `capacity` rows, and an execution may use fewer rows (the
//! last batch of an epoch, an evaluation chunk) without re-planning.
//!
//! Nothing here knows about MMoE: `model` builds the graph.

mod backward;
mod cpu;
mod gpu;
mod plan;

pub use backward::{BackwardStep, backward_steps};
pub use cpu::CpuExecutor;
pub use gpu::GpuExecutor;
pub use plan::{MemoryReport, Plan, Scratch, ScratchKind};

use crate::shape::BalanceLoss;
use crate::shape::Selection;
use crate::shape::TaskLoss;
use crate::shape::{Activation, GemmShape, InputLayout};
use crate::shape::{ExpertAccess, GateMixShape};
use crate::{Error, Result};

/// Index of a tensor in its [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// What a tensor holds, which decides where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Fed by the caller each step: `[rows, features]`.
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
    /// Gate softmax and expert mixing (see [`crate::kernels::gate_mix`] and
    /// [`crate::kernels::gate_topk`]).
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
        }
    }

    /// Tensors the op writes.
    pub fn outputs(&self) -> Vec<TensorId> {
        match self {
            Op::Dense { y, .. } => vec![*y],
            Op::GateMix { g, m, .. } => vec![*g, *m],
            Op::Loss { loss, .. } => vec![*loss],
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

/// Tensors and nodes in topological order (a node only reads tensors made before it).
#[derive(Clone, Debug)]
pub struct Graph {
    capacity: usize,
    tensors: Vec<Tensor>,
    nodes: Vec<Op>,
}

impl Graph {
    /// An empty graph for batches of up to `capacity` rows.
    pub fn new(capacity: usize) -> Result<Graph> {
        if capacity == 0 {
            return Err(Error::invalid("graph", "batch capacity must be at least 1"));
        }
        Ok(Graph {
            capacity,
            tensors: Vec::new(),
            nodes: Vec::new(),
        })
    }

    /// Largest batch an execution may use.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// All tensors, indexed by [`TensorId`].
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// A tensor.
    pub fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id.0]
    }

    /// The nodes in execution order.
    pub fn nodes(&self) -> &[Op] {
        &self.nodes
    }

    /// Ids of the tensors with `role`, in creation order.
    pub fn with_role(&self, role: Role) -> Vec<TensorId> {
        (0..self.tensors.len())
            .map(TensorId)
            .filter(|&id| self.tensor(id).role == role)
            .collect()
    }

    /// The id of the tensor called `name`.
    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.tensors
            .iter()
            .position(|t| t.name == name)
            .map(TensorId)
    }

    fn add(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        role: Role,
        init: Option<Init>,
        batch_axis: Option<usize>,
    ) -> Result<TensorId> {
        if self.find(name).is_some() {
            return Err(Error::invalid(
                "graph",
                format!("tensor `{name}` defined twice"),
            ));
        }
        if shape.contains(&0) {
            return Err(Error::invalid(
                "graph",
                format!("tensor `{name}` has a zero dimension: {shape:?}"),
            ));
        }
        self.tensors.push(Tensor {
            name: name.to_string(),
            shape,
            role,
            init,
            batch_axis,
        });
        Ok(TensorId(self.tensors.len() - 1))
    }

    /// A per-step input `[capacity, features]`.
    pub fn input(&mut self, name: &str, features: usize) -> Result<TensorId> {
        self.add(
            name,
            vec![self.capacity, features],
            Role::Input,
            None,
            Some(0),
        )
    }

    /// Per-step targets `[tasks, capacity]`.
    pub fn target(&mut self, name: &str, tasks: usize) -> Result<TensorId> {
        self.add(
            name,
            vec![tasks, self.capacity],
            Role::Target,
            None,
            Some(1),
        )
    }

    /// A trained parameter (made by the layer that owns it: each parameter has one user).
    fn parameter(&mut self, name: &str, shape: Vec<usize>, init: Init) -> Result<TensorId> {
        self.add(name, shape, Role::Parameter, Some(init), None)
    }

    /// `y = act(x · w + b)` for `groups` groups of `outputs` features; `x` is shared
    /// by all groups when `layout` is [`InputLayout::Shared`]. Creates the weights
    /// (`name.weight`, He or Glorot by activation) and bias (`name.bias`).
    pub fn dense(
        &mut self,
        name: &str,
        x: TensorId,
        groups: usize,
        outputs: usize,
        activation: Activation,
        layout: InputLayout,
    ) -> Result<TensorId> {
        self.dense_with(name, x, (groups, outputs), activation, layout, None)
    }

    /// [`dense`](Self::dense), its weights starting as `weight_init` when given.
    fn dense_with(
        &mut self,
        name: &str,
        x: TensorId,
        (groups, outputs): (usize, usize),
        activation: Activation,
        layout: InputLayout,
        weight_init: Option<Init>,
    ) -> Result<TensorId> {
        let (x_groups, inputs) = self.row_features(x)?;
        if layout == InputLayout::PerGroup && x_groups != groups {
            return Err(Error::invalid(
                "graph",
                format!(
                    "`{name}` has {groups} groups but its per-group input `{}` has {x_groups}",
                    self.tensor(x).name
                ),
            ));
        }
        let init = weight_init.unwrap_or(match activation {
            Activation::Relu => Init::HeUniform { fan_in: inputs },
            Activation::Identity => Init::GlorotUniform {
                fan_in: inputs,
                fan_out: outputs,
            },
        });
        let w = self.parameter(
            &format!("{name}.weight"),
            vec![groups, inputs, outputs],
            init,
        )?;
        let b = self.parameter(&format!("{name}.bias"), vec![groups, outputs], Init::Zeros)?;
        let y = self.add(
            name,
            vec![groups, self.capacity, outputs],
            Role::Activation,
            None,
            Some(1),
        )?;
        let shape = GemmShape {
            groups,
            rows: self.capacity,
            inputs,
            outputs,
            input: layout,
        };
        shape.validate(name)?;
        self.nodes.push(Op::Dense {
            shape,
            activation,
            x,
            w,
            b: Some(b),
            y,
        });
        Ok(y)
    }

    /// `gates` gates over the experts of `h` (`[experts, rows, width]`), fed by `x`;
    /// returns the mixtures `[gates, rows, width]`. Creates `name.weight` (unless the
    /// gate is static), `name.bias` and the gate values `name.values`; a noisy gate
    /// also its noise layer `name.noise` (a dense node on `x` with zero-initialised
    /// `name.noise.weight` and `name.noise.bias`, so the noise starts at
    /// `ε · softplus(0) = ε · ln 2`) and its draws `name.noise.eps`.
    pub fn gate_mix(
        &mut self,
        name: &str,
        x: TensorId,
        h: TensorId,
        gates: usize,
        spec: GateSpec,
    ) -> Result<TensorId> {
        let (x_groups, inputs) = self.row_features(x)?;
        let (experts, width) = self.row_features(h)?;
        if x_groups != 1 {
            return Err(Error::invalid(
                "graph",
                format!("gate input `{}` must be one group", self.tensor(x).name),
            ));
        }
        let shape = GateMixShape {
            gates,
            experts,
            rows: self.capacity,
            inputs,
            width,
        };
        shape.validate(name)?;
        spec.access.validate(name, &shape)?;
        let visible = spec.access.visible(&shape);
        let k = spec.k.unwrap_or(visible);
        if !spec.balance_weight.is_finite() || spec.balance_weight < 0.0 {
            return Err(Error::invalid(
                name,
                format!("balance weight {}", spec.balance_weight),
            ));
        }
        crate::shape::check_k(name, &shape, k, spec.access)?;
        crate::shape::check_selection(name, &shape, spec.access, spec.selection)?;
        if spec.noisy && (spec.k.is_none() || !spec.input_dependent) {
            return Err(Error::invalid(
                name,
                "gate noise needs a top-k gate whose logits depend on the input",
            ));
        }
        let wg = spec
            .input_dependent
            .then(|| {
                self.parameter(
                    &format!("{name}.weight"),
                    vec![gates, inputs, experts],
                    Init::GlorotUniform {
                        fan_in: inputs,
                        fan_out: visible,
                    },
                )
            })
            .transpose()?;
        let bg = self.parameter(&format!("{name}.bias"), vec![gates, experts], Init::Zeros)?;
        // After the gate's own parameters, so that they draw the same initial values
        // with and without noise.
        let noise = spec
            .noisy
            .then(|| -> Result<GateNoise> {
                let n = self.dense_with(
                    &format!("{name}.noise"),
                    x,
                    (gates, experts),
                    Activation::Identity,
                    InputLayout::Shared,
                    Some(Init::Zeros),
                )?;
                let eps = self.add(
                    &format!("{name}.noise.eps"),
                    vec![gates, self.capacity, experts],
                    Role::Noise,
                    None,
                    Some(1),
                )?;
                Ok(GateNoise { n, eps })
            })
            .transpose()?;
        let g = self.add(
            &format!("{name}.values"),
            vec![gates, self.capacity, experts],
            Role::Activation,
            None,
            Some(1),
        )?;
        let m = self.add(
            name,
            vec![gates, self.capacity, width],
            Role::Activation,
            None,
            Some(1),
        )?;
        self.nodes.push(Op::GateMix {
            shape,
            k,
            access: spec.access,
            selection: spec.selection,
            balance_weight: spec.balance_weight,
            balance_loss: spec.balance_loss,
            x,
            wg,
            bg,
            h,
            g,
            m,
            noise,
        });
        Ok(m)
    }

    /// The weighted loss of `predictions` (`[tasks, rows, 1]` or `[tasks, rows]`)
    /// against `targets`; returns the per-task loss tensor `[tasks]`.
    pub fn loss(
        &mut self,
        name: &str,
        predictions: TensorId,
        targets: TensorId,
        tasks: Vec<TaskLoss>,
    ) -> Result<TensorId> {
        let per_task = |t: &Tensor| t.len() / tasks.len().max(1);
        let (p, y) = (self.tensor(predictions), self.tensor(targets));
        if tasks.is_empty()
            || p.len() != tasks.len() * self.capacity
            || y.len() != p.len()
            || per_task(p) != self.capacity
        {
            return Err(Error::invalid(
                "graph",
                format!(
                    "loss `{name}`: {} tasks need predictions and targets of {} values, got {:?} and {:?}",
                    tasks.len(),
                    tasks.len() * self.capacity,
                    p.shape,
                    y.shape
                ),
            ));
        }
        let loss = self.add(name, vec![tasks.len()], Role::Activation, None, None)?;
        self.nodes.push(Op::Loss {
            tasks,
            predictions,
            targets,
            loss,
        });
        Ok(loss)
    }

    /// `(groups, features)` of a batch tensor: `[rows, f]` is one group,
    /// `[groups, rows, f]` is `groups`.
    fn row_features(&self, id: TensorId) -> Result<(usize, usize)> {
        let t = self.tensor(id);
        match (t.batch_axis, &t.shape[..]) {
            (Some(0), &[_, f]) => Ok((1, f)),
            (Some(1), &[g, _, f]) => Ok((g, f)),
            _ => Err(Error::invalid(
                "graph",
                format!(
                    "`{}` of shape {:?} is not a batch of {} rows",
                    t.name, t.shape, self.capacity
                ),
            )),
        }
    }

    /// The tensors an execution of `rows` rows is fed, paired with their values:
    /// one slice per input tensor and per target tensor, in creation order (no
    /// targets at all for a forward pass without loss). Counts and lengths are
    /// checked; every executor feeds through this.
    pub(crate) fn fed_tensors<'a, T>(
        &self,
        context: &str,
        rows: usize,
        inputs: &[&'a [T]],
        targets: &[&'a [T]],
    ) -> Result<Vec<(TensorId, &'a [T])>> {
        self.check_rows(rows)?;
        let mut fed = Vec::new();
        for (role, data) in [(Role::Input, inputs), (Role::Target, targets)] {
            let ids = self.with_role(role);
            if data.is_empty() && role == Role::Target {
                continue;
            }
            if data.len() != ids.len() {
                return Err(Error::invalid(
                    context,
                    format!(
                        "{} {role:?} tensors expected, {} given",
                        ids.len(),
                        data.len()
                    ),
                ));
            }
            for (id, &values) in ids.into_iter().zip(data) {
                let tensor = self.tensor(id);
                if values.len() != tensor.len_at(rows) {
                    return Err(Error::shape(
                        context,
                        &tensor.name,
                        format!("{} values ({rows} rows)", tensor.len_at(rows)),
                        format!("{} values", values.len()),
                    ));
                }
                fed.push((id, values));
            }
        }
        Ok(fed)
    }

    /// The noise tensors a training execution of `rows` rows is fed, paired with
    /// their values: one slice per [`Role::Noise`] tensor, in creation order. Counts
    /// and lengths are checked.
    pub(crate) fn fed_noise<'a, T>(
        &self,
        context: &str,
        rows: usize,
        noise: &[&'a [T]],
    ) -> Result<Vec<(TensorId, &'a [T])>> {
        self.check_rows(rows)?;
        let ids = self.with_role(Role::Noise);
        if noise.len() != ids.len() {
            return Err(Error::invalid(
                context,
                format!(
                    "{} noise tensors expected, {} given",
                    ids.len(),
                    noise.len()
                ),
            ));
        }
        ids.into_iter()
            .zip(noise)
            .map(|(id, &values)| {
                let tensor = self.tensor(id);
                if values.len() != tensor.len_at(rows) {
                    return Err(Error::shape(
                        context,
                        &tensor.name,
                        format!("{} values ({rows} rows)", tensor.len_at(rows)),
                        format!("{} values", values.len()),
                    ));
                }
                Ok((id, values))
            })
            .collect()
    }

    /// The number of rows an execution uses, checked against the capacity.
    pub(crate) fn check_rows(&self, rows: usize) -> Result<()> {
        if rows == 0 || rows > self.capacity {
            return Err(Error::invalid(
                "graph execution",
                format!(
                    "batch of {rows} rows; this graph takes 1 to {} rows",
                    self.capacity
                ),
            ));
        }
        Ok(())
    }
}

/// `op` with its shapes at `rows` rows.
pub(crate) fn at_rows(op: &Op, rows: usize) -> Op {
    let mut op = op.clone();
    match &mut op {
        Op::Dense { shape, .. } => shape.rows = rows,
        Op::GateMix { shape, .. } => shape.rows = rows,
        Op::Loss { .. } => {}
    }
    op
}
