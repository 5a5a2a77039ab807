//! Training a model on the GPU: one submission per step, the loss read back only
//! when asked.

use super::build::{ModelGraph, build, initial_parameters};
use super::checkpoint::{Checkpoint, check_dimensions, config_mismatch};
use super::config::{ModelConfig, TaskKind};
use crate::graph::{CpuExecutor, GpuExecutor, MemoryReport, Op, Plan, Role};
use crate::shape::BalanceShape;
use crate::{Error, Gpu, Result};

/// How often [`Trainer::step`] looks for a non-finite loss on its own (a device
/// sync); reads of the loss, predictions or parameters always look.
const FINITE_CHECK_EVERY: u32 = 64;

/// The mean gate weight of each task on each expert over a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct GateReport {
    /// `weights[task][expert]`, the mean gate weight (importance per row); each row
    /// sums to 1.
    pub weights: Vec<Vec<f64>>,
    /// `load[task][expert]`: the fraction of rows whose gate gives the expert a
    /// nonzero weight (1 everywhere for a dense softmax gate; `k / E` on average for
    /// a top-k gate). Loads far from even show a gate collapsing onto few experts.
    pub load: Vec<Vec<f64>>,
    /// `routed[expert]`: the fraction of rows some task weighs the expert on, the
    /// rows a sparse expert computation runs it on.
    pub routed: Vec<f64>,
}

/// Mean loss per task over a data set, unweighted, and the weighted total.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean squared error (regression) or log-loss (classification) per task.
    pub per_task: Vec<f64>,
    /// `Σ_t weight_t · per_task[t]`, the quantity training minimises.
    pub total: f64,
}

/// A model on a device, its optimizer state and step count.
pub struct Trainer {
    config: ModelConfig,
    model: ModelGraph,
    executor: GpuExecutor,
    steps: u32,
    learning_rate: f32,
}

impl Trainer {
    /// Builds `config` on `gpu` for batches of up to `batch_capacity` rows, with
    /// seeded initial parameters.
    ///
    /// Every buffer is checked against the device's limits first: a capacity whose
    /// buffers would not fit is an [`Error::Limit`] naming the buffer and the limit
    /// ([`max_batch_capacity`](Self::max_batch_capacity) gives the largest that
    /// fits). The dispatches of a full batch are built here too, so whatever else
    /// the device cannot do at this capacity is also an error now, not at the first
    /// step.
    pub fn new(gpu: &Gpu, config: ModelConfig, batch_capacity: usize) -> Result<Trainer> {
        check_dimensions(&config, batch_capacity)?;
        let model = build(&config, batch_capacity)?;
        let plan = Plan::new(
            &model.graph,
            gpu.limits().min_storage_buffer_offset_alignment,
        )?;
        plan.check_limits(&model.graph, &config.optimizer, gpu.limits())?;
        let params = initial_parameters(&model.graph, &plan, config.seed);
        let mut executor =
            GpuExecutor::new(gpu, model.graph.clone(), plan, config.optimizer, &params)?;
        executor.dispatches_per_step(batch_capacity)?;
        Ok(Trainer {
            learning_rate: config.learning_rate,
            config,
            model,
            executor,
            steps: 0,
        })
    }

    /// The largest batch capacity whose buffers fit `gpu`'s `max_buffer_size` and
    /// `max_storage_buffer_binding_size` (and the kernels' 32-bit indexing). Err if
    /// not even one row fits, stating the limit.
    pub fn max_batch_capacity(gpu: &Gpu, config: &ModelConfig) -> Result<usize> {
        check_dimensions(config, 1)?;
        let model = build(config, 1)?;
        let graph = &model.graph;
        let limits = gpu.limits();
        let plan = Plan::new(graph, limits.min_storage_buffer_offset_alignment)?;
        // One row must fit; then every buffer that grows with the batch grows
        // linearly in it, so its size at one row is its size per row.
        plan.check_limits(graph, &config.optimizer, limits)?;
        let per_row = graph
            .tensors()
            .iter()
            .filter(|t| t.role != Role::Parameter && t.batch_axis.is_some())
            .map(|t| t.len())
            .chain(
                plan.scratch
                    .iter()
                    .flatten()
                    .filter(|s| s.kind.per_row())
                    .map(|s| s.len),
            )
            .max()
            .unwrap_or(1) as u64;
        let bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let elements = (bytes / 4).min(u32::MAX as u64 / 2 - 1);
        Ok(usize::try_from(elements / per_row)
            .unwrap_or(usize::MAX)
            .max(1))
    }

    /// A trainer for `checkpoint`'s config on `gpu`, in the state the checkpoint
    /// holds (see [`restore`](Self::restore)).
    pub fn from_checkpoint(
        gpu: &Gpu,
        checkpoint: &Checkpoint,
        batch_capacity: usize,
    ) -> Result<Trainer> {
        let mut trainer = Trainer::new(gpu, checkpoint.config().clone(), batch_capacity)?;
        trainer.restore(checkpoint)?;
        Ok(trainer)
    }

    /// The parameters, optimizer state, step count and learning rate, read from the
    /// device: resuming from it continues bitwise as if training had not stopped.
    /// Err, and no checkpoint, when the device failed or a step's loss was
    /// non-finite, so a checkpoint always holds a good state.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        self.executor.check_finite()?;
        let params = self.executor.parameters()?;
        check_finite("parameters", &params)?;
        let state = self.executor.optimizer_state()?;
        for s in &state {
            check_finite("optimizer state", s)?;
        }
        Checkpoint::from_flat(
            &self.config,
            self.steps,
            self.learning_rate,
            (&self.model.graph, self.executor.plan()),
            &params,
            &state,
        )
    }

    /// Puts the trainer in the state `checkpoint` holds: parameters, optimizer
    /// state, step count and learning rate; a non-finite loss seen before is
    /// forgotten. The checkpoint's config must equal this trainer's except for the
    /// learning rate, else the error names the first field that differs. If the
    /// device fails part way the error says so and the step count is unchanged:
    /// restore again, on this trainer or a new one.
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        if let Some(difference) = config_mismatch(&self.config, checkpoint.config()) {
            return Err(Error::Checkpoint {
                origin: "being restored".into(),
                what: "config".into(),
                message: format!("does not match the trainer's: {difference}"),
            });
        }
        let (params, state) = checkpoint.to_flat(&self.model.graph, self.executor.plan())?;
        self.executor.set_parameters(&params)?;
        self.executor.set_optimizer_state(&state)?;
        self.executor.clear_non_finite()?;
        self.steps = checkpoint.steps();
        self.learning_rate = checkpoint.learning_rate();
        Ok(())
    }

    /// The learning rate the next step uses.
    pub fn learning_rate(&self) -> f32 {
        self.learning_rate
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model's graph and named tensors.
    pub fn model(&self) -> &ModelGraph {
        &self.model
    }

    /// The executor, for direct access to tensors and buffers.
    pub fn executor(&self) -> &GpuExecutor {
        &self.executor
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Largest batch one step takes.
    pub fn batch_capacity(&self) -> usize {
        self.model.graph.capacity()
    }

    /// Sets the learning rate of the following steps (no recompilation).
    pub fn set_learning_rate(&mut self, learning_rate: f32) -> Result<()> {
        if !learning_rate.is_finite() || learning_rate < 0.0 {
            return Err(Error::invalid(
                "Trainer::set_learning_rate",
                format!("learning rate {learning_rate}"),
            ));
        }
        self.learning_rate = learning_rate;
        Ok(())
    }

    fn tasks(&self) -> usize {
        self.config.tasks.len()
    }

    /// Rows in `x`, checked against the input width, the capacity (when `capped`)
    /// and finiteness.
    fn rows_of(&self, context: &str, x: &[f32], capped: bool) -> Result<usize> {
        let inputs = self.config.inputs;
        if x.is_empty() || !x.len().is_multiple_of(inputs) {
            return Err(Error::shape(
                context,
                "x",
                format!("a non-empty multiple of {inputs} values (rows × inputs)"),
                format!("{} values", x.len()),
            ));
        }
        let rows = x.len() / inputs;
        if capped && rows > self.batch_capacity() {
            return Err(Error::invalid(
                context,
                format!(
                    "batch of {rows} rows; this trainer was built for at most {}",
                    self.batch_capacity()
                ),
            ));
        }
        check_finite("x", x)?;
        Ok(rows)
    }

    fn check_targets(&self, context: &str, rows: usize, targets: &[f32]) -> Result<()> {
        let want = self.tasks() * rows;
        if targets.len() != want {
            return Err(Error::shape(
                context,
                "targets",
                format!(
                    "{want} values ({} tasks × {rows} rows, task-major)",
                    self.tasks()
                ),
                format!("{} values", targets.len()),
            ));
        }
        check_finite("targets", targets)
    }

    /// The draws `ε: [gates, rows, experts]` a noisy gate adds (scaled by
    /// `softplus(X · Wn + bn)`) to its logits in training step `step` (1-based) on a
    /// batch of `rows` rows: standard normal, from the config's seed and the step
    /// alone. `None` for a model without gate noise.
    pub fn gate_noise(&self, step: u32, rows: usize) -> Option<Vec<f32>> {
        let id = self.model.gate_noise?;
        let len = self.model.graph.tensor(id).len_at(rows);
        Some(super::noise::draws(self.config.seed, step, len))
    }

    /// Writes a training batch, with the gate noise of the next step.
    fn write_training_batch(&self, rows: usize, x: &[f32], targets: &[f32]) -> Result<()> {
        self.executor.write_batch(rows, &[x], &[targets])?;
        if let Some(eps) = self.gate_noise(self.steps + 1, rows) {
            self.executor.write_noise(rows, &[&eps])?;
        }
        Ok(())
    }

    /// One training step on a batch: `x` is `[rows, inputs]`, `targets` is
    /// `[tasks, rows]` (task-major). Nothing is read back. A non-finite loss stops
    /// the updates on the device and is reported as an error naming its step by
    /// this call (at most 64 steps later) or by the next read. Noisy gates add the
    /// step's [`gate_noise`](Self::gate_noise).
    pub fn step(&mut self, x: &[f32], targets: &[f32]) -> Result<()> {
        let rows = self.rows_of("Trainer::step", x, true)?;
        self.check_targets("Trainer::step", rows, targets)?;
        self.write_training_batch(rows, x, targets)?;
        self.executor
            .train_step(rows, self.steps + 1, self.learning_rate)?;
        self.steps += 1;
        if self.steps.is_multiple_of(FINITE_CHECK_EVERY) {
            self.executor.check_finite()?;
        }
        Ok(())
    }

    /// Like [`step`](Self::step), dispatch by dispatch, returning each kernel's
    /// label and time.
    pub fn profile_step(
        &mut self,
        x: &[f32],
        targets: &[f32],
    ) -> Result<Vec<(&'static str, std::time::Duration)>> {
        let rows = self.rows_of("Trainer::profile_step", x, true)?;
        self.check_targets("Trainer::profile_step", rows, targets)?;
        self.write_training_batch(rows, x, targets)?;
        let times = self
            .executor
            .profile_step(rows, self.steps + 1, self.learning_rate)?;
        self.steps += 1;
        Ok(times)
    }

    /// The load-balancing loss of each gate (`weight · CV²` of its importance, or
    /// the load loss `weight · E · Σ_e f_e · P_e`) at the last step or forward pass, or `None` when the gates have no balancing
    /// loss. Not part of [`loss`](Self::loss), which is the tasks'.
    pub fn balance_loss(&self) -> Result<Option<Vec<f32>>> {
        let graph = &self.model.graph;
        let Some((node, shape)) = graph
            .nodes()
            .iter()
            .enumerate()
            .find_map(|(i, op)| match op {
                Op::GateMix { shape, .. } => Some((i, BalanceShape::from(*shape))),
                _ => None,
            })
        else {
            return Ok(None);
        };
        let stats = self.executor.balance_stats(node)?;
        Ok(stats.map(|s| s[shape.aux_range()].to_vec()))
    }

    /// The weighted loss of each task at the last step (waits for the device).
    pub fn loss(&self) -> Result<Vec<f32>> {
        self.executor.check_finite()?;
        self.executor.loss()
    }

    /// The flat gradient of the loss on a batch, without updating the parameters:
    /// the gradient the next [`step`](Self::step) would take, its gate noise
    /// included.
    pub fn gradients(&mut self, x: &[f32], targets: &[f32]) -> Result<Vec<f32>> {
        let rows = self.rows_of("Trainer::gradients", x, true)?;
        self.check_targets("Trainer::gradients", rows, targets)?;
        self.write_training_batch(rows, x, targets)?;
        self.executor.gradients(rows)?;
        self.executor.gradients_flat()
    }

    /// Runs the forward pass over `x` in chunks of the batch capacity, handing each
    /// chunk's row range to `visit`.
    fn for_each_chunk(
        &mut self,
        context: &str,
        x: &[f32],
        mut visit: impl FnMut(&GpuExecutor, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let rows = self.rows_of(context, x, false)?;
        self.executor.check_finite()?;
        let inputs = self.config.inputs;
        for start in (0..rows).step_by(self.batch_capacity()) {
            let end = (start + self.batch_capacity()).min(rows);
            self.executor
                .write_batch(end - start, &[&x[start * inputs..end * inputs]], &[])?;
            self.executor.forward(end - start, false)?;
            visit(&self.executor, start..end)?;
        }
        Ok(())
    }

    /// Predictions for `x` (`[rows, inputs]`, any number of rows) as `[tasks, rows]`,
    /// task-major: the value for regression tasks, the probability for classification.
    /// Noisy gates add no noise here (nor in [`evaluate`](Self::evaluate) and
    /// [`gate_report`](Self::gate_report)).
    pub fn predict(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let rows = self.rows_of("Trainer::predict", x, false)?;
        let tasks = self.tasks();
        let kinds: Vec<TaskKind> = self.config.tasks.iter().map(|t| t.kind).collect();
        let predictions = self.model.predictions;
        let mut out = vec![0.0f32; tasks * rows];
        self.for_each_chunk("Trainer::predict", x, |executor, range| {
            let chunk = executor.read(predictions, range.len())?;
            for (t, kind) in kinds.iter().enumerate() {
                let src = &chunk[t * range.len()..(t + 1) * range.len()];
                for (dst, &z) in out[t * rows + range.start..t * rows + range.end]
                    .iter_mut()
                    .zip(src)
                {
                    *dst = match kind {
                        TaskKind::Regression => z,
                        TaskKind::BinaryClassification => sigmoid(z),
                    };
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Mean loss per task over `x` and `targets` (`[tasks, rows]`), any number of rows.
    pub fn evaluate(&mut self, x: &[f32], targets: &[f32]) -> Result<Evaluation> {
        let rows = self.rows_of("Trainer::evaluate", x, false)?;
        self.check_targets("Trainer::evaluate", rows, targets)?;
        let predictions = self.predict(x)?;
        let mut per_task = Vec::new();
        for (t, task) in self.config.tasks.iter().enumerate() {
            let p = &predictions[t * rows..(t + 1) * rows];
            let y = &targets[t * rows..(t + 1) * rows];
            let sum: f64 = p
                .iter()
                .zip(y)
                .map(|(&p, &y)| {
                    let (p, y) = (p as f64, y as f64);
                    match task.kind {
                        TaskKind::Regression => (p - y) * (p - y),
                        TaskKind::BinaryClassification => {
                            let p = p.clamp(1e-12, 1.0 - 1e-12);
                            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
                        }
                    }
                })
                .sum();
            per_task.push(sum / rows as f64);
        }
        let total = per_task
            .iter()
            .zip(&self.config.tasks)
            .map(|(l, t)| l * t.weight as f64)
            .sum();
        Ok(Evaluation { per_task, total })
    }

    /// The mean gate weight of each task on each expert over `x`. Under OMoE every
    /// task shows the one shared gate. Err for shared-bottom (no gates).
    pub fn gate_report(&mut self, x: &[f32]) -> Result<GateReport> {
        let Some(values) = self.model.gate_values else {
            return Err(Error::invalid(
                "Trainer::gate_report",
                "this model has no gates (shared-bottom)",
            ));
        };
        let rows = self.rows_of("Trainer::gate_report", x, false)?;
        let gates = self.model.gates;
        let experts = self.model.graph.tensor(values).shape[2];
        let mut sums = vec![vec![0.0f64; experts]; gates];
        let mut counts = vec![vec![0usize; experts]; gates];
        let mut routed = vec![0usize; experts];
        self.for_each_chunk("Trainer::gate_report", x, |executor, range| {
            let g = executor.read(values, range.len())?;
            let at = |gate: usize, row: usize| (gate * range.len() + row) * experts;
            for row in 0..range.len() {
                for gate in 0..gates {
                    let weights = &g[at(gate, row)..at(gate, row) + experts];
                    for (e, &v) in weights.iter().enumerate() {
                        sums[gate][e] += v as f64;
                        counts[gate][e] += (v != 0.0) as usize;
                    }
                }
                for (e, r) in routed.iter_mut().enumerate() {
                    *r += (0..gates).any(|gate| g[at(gate, row) + e] != 0.0) as usize;
                }
            }
            Ok(())
        })?;
        let per_row = |v: &[f64]| v.iter().map(|s| s / rows as f64).collect::<Vec<_>>();
        let per_row_count = |v: &[usize]| v.iter().map(|&c| c as f64 / rows as f64).collect();
        Ok(GateReport {
            weights: (0..self.tasks())
                .map(|t| per_row(&sums[t % gates]))
                .collect(),
            load: (0..self.tasks())
                .map(|t| per_row_count(&counts[t % gates]))
                .collect(),
            routed: per_row_count(&routed),
        })
    }

    /// Compute dispatches one full training step records.
    pub fn dispatches_per_step(&mut self) -> Result<usize> {
        let capacity = self.batch_capacity();
        self.executor.dispatches_per_step(capacity)
    }

    /// The flat parameter vector (layout: [`crate::graph::Plan::param_offsets`]).
    pub fn parameters(&self) -> Result<Vec<f32>> {
        self.executor.check_finite()?;
        self.executor.parameters()
    }

    /// Replaces the flat parameters (e.g. with the best epoch's, kept from
    /// [`parameters`](Self::parameters)); the optimizer state and step count stay.
    pub fn set_parameters(&mut self, params: &[f32]) -> Result<()> {
        check_finite("parameters", params)?;
        self.executor.set_parameters(params)
    }

    /// The values of the parameter called `name` (e.g. `experts.0.weight`).
    pub fn parameter(&self, name: &str) -> Result<Vec<f32>> {
        let graph = &self.model.graph;
        let id = graph
            .find(name)
            .filter(|id| self.executor.plan().param_offsets[id.0].is_some())
            .ok_or_else(|| {
                Error::invalid(
                    "Trainer::parameter",
                    format!("no parameter called `{name}`"),
                )
            })?;
        self.executor.check_finite()?;
        self.executor.read(id, 0)
    }

    /// Device memory this trainer allocated, by kind.
    pub fn memory(&self) -> MemoryReport {
        self.executor.memory()
    }

    /// Device memory the plan calls for, by kind.
    pub fn planned_memory(&self) -> MemoryReport {
        self.executor
            .plan()
            .memory(&self.model.graph, &self.config.optimizer)
    }

    /// A CPU reference executor over the same graph, starting from the current
    /// parameters (optimizer state starts fresh): the ground truth for tests.
    pub fn reference(&self) -> Result<CpuExecutor> {
        let params: Vec<f64> = self.parameters()?.iter().map(|&p| p as f64).collect();
        CpuExecutor::new(
            self.model.graph.clone(),
            self.executor.plan().clone(),
            self.config.optimizer,
            &params,
        )
    }
}

fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn check_finite(what: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            what: what.into(),
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}
