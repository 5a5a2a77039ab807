//! Training a model on the GPU: one submission per step, the loss read back only
//! when asked.
//!
//! Every call that takes rows comes in two forms: dense rows of a model without
//! categorical fields (`step`, `predict`, `evaluate`, `gate_report`, `gradients`),
//! and a [`Batch`](super::Batch) of dense values, every field's IDs and targets
//! (`step_batch`, `predict_batch`, `evaluate_batch`, `gate_report_batch`,
//! `gradients_batch`), which any model takes.

mod inference;
#[cfg(feature = "mpi")]
mod sharded;
mod training;

pub use inference::{Evaluation, GateReport};
pub use training::{BatchGradients, TableGradient};

use super::build::{ModelGraph, build, initial_parameters, initial_tables};
use super::checkpoint::{Checkpoint, TableState, check_dimensions, config_mismatch};
use super::config::ModelConfig;
use super::fields::check_encoders;
use crate::data::categorical::Encoders;
use crate::graph::{CpuExecutor, GpuExecutor, MemoryReport, Op, Plan, Role, lookup_buffers};
use crate::shape::BalanceShape;
use crate::{Error, Gpu, Result};

/// How often [`Trainer::step`] looks for a non-finite loss on its own (a device
/// sync); reads of the loss, predictions or parameters always look.
const FINITE_CHECK_EVERY: u32 = 64;

/// A model on a device, its optimizer state and step count.
pub struct Trainer {
    config: ModelConfig,
    model: ModelGraph,
    executor: GpuExecutor,
    steps: u32,
    learning_rate: f32,
    encoders: Encoders,
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
        for (t, values) in initial_tables(&model.graph, config.seed).iter().enumerate() {
            executor.set_table(t, values)?;
        }
        executor.dispatches_per_step(batch_capacity)?;
        Ok(Trainer {
            encoders: Encoders::new(),
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
            // At one row, a bound on the lookups' buffers per row.
            .chain(lookup_buffers(graph).into_iter().map(|b| b.len))
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

    /// The parameters, tables, optimizer state, step count, learning rate and
    /// encoders, read from the device: resuming from it continues bitwise as if
    /// training had not stopped. Err, and no checkpoint, when the device failed or a
    /// step's loss was non-finite, so a checkpoint always holds a good state.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        self.executor.check_finite()?;
        let params = self.executor.parameters()?;
        check_finite("parameters", &params)?;
        let state = self.executor.optimizer_state()?;
        for s in &state {
            check_finite("optimizer state", s)?;
        }
        let mut tables = Vec::new();
        for (t, table) in self.model.graph.tables().iter().enumerate() {
            let weight = self.executor.table(t)?;
            check_finite(&table.name, &weight)?;
            let state = self.executor.table_state(t)?;
            for s in &state {
                check_finite(&format!("optimizer state of {}", table.name), s)?;
            }
            tables.push(TableState { weight, state });
        }
        Checkpoint::from_state(
            &self.config,
            self.steps,
            self.learning_rate,
            (&self.model.graph, self.executor.plan()),
            (&params, &state),
            &tables,
        )?
        .with_encoders(self.encoders.clone())
    }

    /// Puts the trainer in the state `checkpoint` holds: parameters, tables,
    /// optimizer state, step count, learning rate and encoders; a non-finite loss
    /// seen before is forgotten. The checkpoint's config must equal this trainer's except for the
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
        let (params, state, tables) =
            checkpoint.to_state(&self.model.graph, self.executor.plan())?;
        self.executor.set_parameters(&params)?;
        self.executor.set_optimizer_state(&state)?;
        for (t, table) in tables.iter().enumerate() {
            self.executor.set_table(t, &table.weight)?;
            self.executor.set_table_state(t, &table.state)?;
        }
        self.executor.clear_non_finite()?;
        self.steps = checkpoint.steps();
        self.learning_rate = checkpoint.learning_rate();
        self.encoders = checkpoint.encoders().clone();
        Ok(())
    }

    /// The encoders of the fields' raw values, saved with every checkpoint (empty
    /// unless set).
    pub fn encoders(&self) -> &Encoders {
        &self.encoders
    }

    /// Sets the encoders of the fields' raw values, for the checkpoints to carry:
    /// each must name a field and give IDs within its table.
    pub fn set_encoders(&mut self, encoders: Encoders) -> Result<()> {
        check_encoders(&self.config, &encoders)?;
        self.encoders = encoders;
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

    /// The draws `ε: [gates, rows, experts]` a noisy gate adds (scaled by
    /// `softplus(X · Wn + bn)`) to its logits in training step `step` (1-based) on a
    /// batch of `rows` rows: standard normal, from the config's seed and the step
    /// alone. `None` for a model without gate noise.
    pub fn gate_noise(&self, step: u32, rows: usize) -> Option<Vec<f32>> {
        let id = self.model.gate_noise?;
        let len = self.model.graph.tensor(id).len_at(rows);
        Some(super::noise::draws(self.config.seed, step, len))
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

    /// The values of the parameter called `name` (e.g. `experts.0.weight`), or of
    /// the table called `name` (`embeddings.{field}.weight`).
    pub fn parameter(&self, name: &str) -> Result<Vec<f32>> {
        let graph = &self.model.graph;
        if let Some(t) = graph.tables().iter().position(|t| t.name == name) {
            self.executor.check_finite()?;
            return self.executor.table(t);
        }
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
    /// parameters and tables (optimizer state starts fresh): the ground truth for
    /// tests.
    pub fn reference(&self) -> Result<CpuExecutor> {
        let params: Vec<f64> = self.parameters()?.iter().map(|&p| p as f64).collect();
        let mut cpu = CpuExecutor::new(
            self.model.graph.clone(),
            self.executor.plan().clone(),
            self.config.optimizer,
            &params,
        )?;
        for t in 0..self.model.graph.tables().len() {
            let values = self.executor.table(t)?;
            for (dst, &v) in cpu.table_mut(t).iter_mut().zip(&values) {
                *dst = v as f64;
            }
        }
        Ok(cpu)
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
