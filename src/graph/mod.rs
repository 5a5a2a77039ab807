//! The thin graph: tensors with shapes, nodes with their ops, the backward of each
//! op, a planner that lays every buffer out once, and two executors over the same
//! graph: [`GpuExecutor`] (the kernels) and [`CpuExecutor`] (the reference).
//!
//! A graph is built for a batch capacity; every tensor whose first batch-dependent
//! axis is the batch holds `capacity` rows, and an execution may use fewer rows (the
//! last batch of an epoch, an evaluation chunk) without re-planning.
//!
//! Embedding [`Table`]s are trained like parameters but kept apart from the flat
//! buffers, each in row chunks with its own optimizer state; [`Lookup`]s (the first
//! nodes) pool a batch's IDs into columns of an input, which then has a gradient, and
//! executions are fed one [`EmbeddingBatch`](crate::shape::EmbeddingBatch) per lookup.
//!
//! Nothing here knows about MMoE: `model` builds the graph.

mod backward;
mod cpu;
mod gpu;
mod lookup;
mod node;
mod plan;

pub use backward::{BackwardStep, backward_steps};
pub use cpu::CpuExecutor;
pub use gpu::{GpuExecutor, PhaseTimes, StepPhase};
pub use lookup::{Lookup, Table};
pub(crate) use node::at_rows;
pub use node::{GateNoise, GateSpec, Init, Op, Role, Tensor, TensorId};
pub use plan::{
    LookupBuffer, LookupBufferKind, MemoryReport, Plan, Scratch, ScratchKind, lookup_buffers,
    table_buffers,
};

use crate::shape::{Activation, GateMixShape, GemmShape, InputLayout, TaskLoss};
use crate::{Error, Result};

/// Tensors and nodes in topological order (a node only reads tensors made before it).
#[derive(Clone, Debug)]
pub struct Graph {
    capacity: usize,
    tensors: Vec<Tensor>,
    nodes: Vec<Op>,
    tables: Vec<Table>,
    lookups: Vec<Lookup>,
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
            tables: Vec::new(),
            lookups: Vec::new(),
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
        let (x_groups, mut inputs) = self.row_features(x)?;
        if let InputLayout::Columns(windows) = &layout {
            if windows.columns() != inputs {
                return Err(Error::invalid(
                    "graph",
                    format!(
                        "`{name}` has column windows over {} columns but its input `{}` has {inputs}",
                        windows.columns(),
                        self.tensor(x).name
                    ),
                ));
            }
            inputs = windows.max_width();
        }
        let blocks = match layout {
            InputLayout::Shared | InputLayout::Columns(_) => 1,
            InputLayout::PerGroup => groups,
            InputLayout::Level { tasks, .. } => tasks + 1,
        };
        if x_groups != blocks {
            return Err(Error::invalid(
                "graph",
                format!(
                    "`{name}` reads {blocks} input blocks ({layout:?}) but its input `{}` has {x_groups}",
                    self.tensor(x).name
                ),
            ));
        }
        let init = weight_init.unwrap_or(match (activation, layout) {
            (Activation::Relu, InputLayout::Columns(windows)) => Init::HeUniformWindows(windows),
            (Activation::Relu, _) => Init::HeUniform { fan_in: inputs },
            (Activation::Identity, _) => Init::GlorotUniform {
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
    /// returns the mixtures `[gates, rows, width]`. Every gate reads `x` when it is one
    /// group; gate `t` reads group `t` when `x` has `gates` groups, or `gates + 1`
    /// (a multi-level model's last level: the shared block is read by no gate). Creates `name.weight` (unless the
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
        let input = if x_groups == 1 {
            InputLayout::Shared
        } else if x_groups == gates {
            InputLayout::PerGroup
        } else if x_groups == gates + 1 {
            InputLayout::Level {
                tasks: gates,
                shared: 0,
                own: 1,
            }
        } else {
            return Err(Error::invalid(
                "graph",
                format!(
                    "gate input `{}` has {x_groups} groups; {gates} gates read 1, {gates} or {}",
                    self.tensor(x).name,
                    gates + 1
                ),
            ));
        };
        if input != InputLayout::Shared && spec.noisy {
            return Err(Error::invalid(
                name,
                "gate noise needs gates that share one input",
            ));
        }
        if matches!(spec.access, crate::shape::ExpertAccess::SharedGate { .. })
            && spec.balance_weight > 0.0
        {
            return Err(Error::invalid(
                name,
                "a balancing loss is not available on a level with a shared gate",
            ));
        }
        let shape = GateMixShape {
            gates,
            experts,
            rows: self.capacity,
            inputs,
            width,
            input,
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
    /// against `targets`; returns the per-task loss tensor `[tasks]`. ESMM pairs'
    /// tasks must name each other ([`crate::shape::check_pairs`]).
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
        let kinds: Vec<_> = tasks.iter().map(|t| t.kind).collect();
        crate::shape::check_pairs(&format!("graph: loss `{name}`"), &kinds)?;
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
