//! The data-partitioned start of the experts: [`Trainer::start_experts`] and its
//! settings, [`ExpertStart`].

use std::ops::Range;

use super::config::{Architecture, GateKind, ModelConfig};
use super::partition::{self, Clustering};
use super::trainer::Trainer;
use crate::rng::Rng;
use crate::{Error, Result};

/// What the rows are clustered on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PartitionOn {
    /// The input columns alone.
    Input,
    /// The input columns followed by every task's target, standardised (mean 0,
    /// standard deviation 1 over the rows) and multiplied by `target_weight`, or by
    /// `√(inputs / tasks)` when `None`: the weight at which the targets' block holds
    /// as much variance as the inputs' when the inputs are standardised.
    InputOutput {
        /// The targets' weight against the inputs.
        target_weight: Option<f32>,
    },
}

/// How [`Trainer::start_experts`] starts the experts on their clusters.
///
/// The classical mixture-of-experts start: partition the training rows into as many
/// clusters as there are experts, then start each expert on its own cluster
/// ([`Trainer::start_experts`]).
///
/// Two things start each expert on its cluster, and a start does both by default:
///
/// - **Pre-training** ([`ExpertStart::pretrain_steps`]): expert `k`, with a temporary
///   linear head per task, is trained on the rows of cluster `k` alone for a set
///   number of steps (the experts' own layers only: a shared-bottom model whose bottom
///   is the expert, through the ordinary [`Trainer`]), and its weights are copied
///   back. So each expert starts as a regressor of the targets on its part of the
///   data: the experts differ from the first step for a reason, not only by their
///   random draws. The heads are thrown away: the model's towers and heads start as
///   they were drawn.
/// - **Routing gates** ([`ExpertStart::gate_scale`]): every gate starts so that it
///   sends each cluster to its expert. A linear gate with `w_k = s · c_k` and
///   `b_k = −s · ‖c_k‖² / 2` (`c_k` the centroid's input part) has logits
///   `−s · ‖x − c_k‖² / 2` plus a term common to all experts, so its softmax is the
///   posterior of a mixture of equal Gaussians of variance `1/s` around the centroids:
///   nearest-centroid routing, softened by the scale (1, the default, for unit-variance
///   standardised inputs). Without it the pre-trained experts would meet random gates
///   that mix them evenly, and the first steps would undo the specialisation.
///
/// The partition is k-means ([`partition::kmeans`](super::partition::kmeans), on the
/// GPU) on the input alone ([`PartitionOn::Input`]), or on the input joined with the
/// targets, each standardised over the rows and weighted so that the targets' block
/// carries as much variance as the inputs' ([`PartitionOn::InputOutput`]): there the
/// clusters follow the input–output relationship, not only where the inputs lie.
/// The gates see the input only, so they route on the centroids' input part.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertStart {
    /// What the rows are clustered on.
    pub on: PartitionOn,
    /// k-means runs on a seeded sample of at most this many rows (every row when
    /// there are fewer); every row is then assigned to its nearest centroid.
    pub max_rows: usize,
    /// Lloyd iterations at most (k-means stops at the first that moves no row).
    pub iterations: usize,
    /// Steps of pre-training of each expert on its cluster's rows (0: none).
    pub pretrain_steps: usize,
    /// Rows per pre-training step (fewer when the cluster has fewer).
    pub pretrain_batch: usize,
    /// Learning rate of the pre-training; `None`: the model's.
    pub pretrain_learning_rate: Option<f32>,
    /// Scale `s` of the gates' start from the centroids (0: the gates keep their
    /// random start). Gates whose logits do not depend on the input (static) are
    /// left as they are.
    pub gate_scale: f32,
}

impl ExpertStart {
    /// Clustering on `on`, 8,192 rows at most, 50 iterations at most, 100 steps of
    /// pre-training per expert in batches of 128 at the model's learning rate, gates
    /// at scale 1.
    pub fn new(on: PartitionOn) -> Self {
        ExpertStart {
            on,
            max_rows: 8192,
            iterations: 50,
            pretrain_steps: 100,
            pretrain_batch: 128,
            pretrain_learning_rate: None,
            gate_scale: 1.0,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::invalid("expert start", message));
        if self.max_rows == 0 {
            return bad("max_rows is 0: k-means needs rows".into());
        }
        if self.iterations == 0 {
            return bad("iterations is 0: k-means needs at least one".into());
        }
        if self.pretrain_steps > 0 && self.pretrain_batch == 0 {
            return bad("pretrain_batch is 0".into());
        }
        if let Some(lr) = self.pretrain_learning_rate
            && !(lr.is_finite() && lr >= 0.0)
        {
            return bad(format!("pre-training learning rate {lr}"));
        }
        if !(self.gate_scale.is_finite() && self.gate_scale >= 0.0) {
            return bad(format!(
                "gate scale {}: a finite number ≥ 0",
                self.gate_scale
            ));
        }
        if let PartitionOn::InputOutput {
            target_weight: Some(w),
        } = self.on
            && !(w.is_finite() && w > 0.0)
        {
            return bad(format!("target weight {w}: a finite number > 0"));
        }
        Ok(())
    }
}

/// What [`Trainer::start_experts`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertStartReport {
    /// The k-means partition of the sample the clustering ran on (its centroids in
    /// the clustered columns: inputs, then the weighted standardised targets).
    pub clustering: Clustering,
    /// Training rows per expert (each row's nearest centroid).
    pub rows_per_expert: Vec<usize>,
    /// Per expert, each task's loss at the last pre-training step, or `None` when it
    /// was not pre-trained (no steps, or an empty cluster).
    pub pretrain_loss: Vec<Option<Vec<f32>>>,
}

impl Trainer {
    /// Starts each expert on its own part of the training rows `x` (`[rows, inputs]`)
    /// and `targets` (`[tasks, rows]`, task-major): partitions the rows into as many
    /// clusters as experts, pre-trains expert `k` on cluster `k` and starts the gates
    /// routing cluster `k` to expert `k`, as `start` says (see
    /// [`ExpertStart`]). Call before the first step; then train as usual. The
    /// same data, config and seed give the same bits.
    ///
    /// Errors: a model without experts (shared-bottom), with experts of the tasks'
    /// own, with categorical fields or shared layers below the experts (their input
    /// is not the rows' input); a trainer that has stepped; data of the wrong length
    /// or non-finite; more experts than rows; a bad `start`.
    pub fn start_experts(
        &mut self,
        x: &[f32],
        targets: &[f32],
        start: &ExpertStart,
    ) -> Result<ExpertStartReport> {
        const CTX: &str = "Trainer::start_experts";
        start.validate()?;
        let config = self.config().clone();
        let (experts, expert_layers) = experts_of(&config)?;
        if self.steps() > 0 {
            return Err(Error::invalid(
                CTX,
                format!(
                    "the trainer has taken {} steps; start the experts before the first",
                    self.steps()
                ),
            ));
        }
        let (inputs, tasks) = (config.inputs, config.tasks.len());
        let rows = partition::check_points(&format!("{CTX}: x"), x, inputs, experts)?;
        if targets.len() != tasks * rows {
            return Err(Error::shape(
                CTX,
                "targets",
                format!("{} values ({tasks} tasks × {rows} rows)", tasks * rows),
                format!("{} values", targets.len()),
            ));
        }
        if let Some(i) = targets.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("{CTX}: targets of task {} row {}", i / rows, i % rows),
                index: i,
                value: targets[i],
            });
        }
        let points = clustered_columns(start.on, x, targets, (rows, inputs, tasks));
        let cols = points.len() / rows;
        let seed = Rng::new(config.seed).fork(0x6b6d_6561_6e73); // "kmeans"
        let sample = sample_rows(rows, start.max_rows, &mut seed.fork(0));
        let gathered: Vec<f32> = sample
            .iter()
            .flat_map(|&r| &points[r * cols..(r + 1) * cols])
            .copied()
            .collect();
        let gpu = self.executor().gpu().clone();
        let clustering = partition::kmeans(
            &gpu,
            &gathered,
            cols,
            experts,
            start.iterations,
            seed.fork(1).next_u64(),
        )?;
        let assignment = if sample.len() == rows {
            clustering.assignment.clone()
        } else {
            partition::nearest_centroids(&gpu, &points, cols, &clustering.centroids)?
        };
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); experts];
        for (r, &k) in assignment.iter().enumerate() {
            members[k as usize].push(r);
        }

        let mut params = self.parameters()?;
        let mut pretrain_loss = vec![None; experts];
        if start.pretrain_steps > 0 {
            for (k, rows_k) in members.iter().enumerate() {
                if rows_k.is_empty() {
                    continue;
                }
                let data = (x, targets, rows);
                let loss = self.pretrain_expert(
                    &mut params,
                    (k, expert_layers.len()),
                    rows_k,
                    data,
                    (start, &seed),
                )?;
                pretrain_loss[k] = Some(loss);
            }
        }
        if start.gate_scale > 0.0
            && config
                .architecture
                .gate()
                .is_some_and(|g| g.kind != GateKind::Static)
        {
            let centroids: Vec<&[f32]> = clustering
                .centroids
                .chunks(cols)
                .map(|c| &c[..inputs])
                .collect();
            self.route_gates(&mut params, &centroids, start.gate_scale)?;
        }
        self.set_parameters(&params)?;
        Ok(ExpertStartReport {
            clustering,
            rows_per_expert: members.iter().map(Vec::len).collect(),
            pretrain_loss,
        })
    }

    /// Where the parameter `name` lies in the flat parameters.
    fn parameter_range(&self, name: &str) -> Result<Range<usize>> {
        let graph = &self.model().graph;
        let id = graph.find(name);
        let offset = id.and_then(|id| self.executor().plan().param_offsets[id.0]);
        match (id, offset) {
            (Some(id), Some(at)) => Ok(at..at + graph.tensor(id).len()),
            _ => Err(Error::invalid(
                "expert start",
                format!("no parameter `{name}`"),
            )),
        }
    }

    /// Trains expert `k` (of `layers` layers), copied out of `params`, with linear
    /// heads on the rows `members`, and writes it back; returns the last step's loss.
    fn pretrain_expert(
        &self,
        params: &mut [f32],
        (k, layers): (usize, usize),
        members: &[usize],
        (x, targets, rows): (&[f32], &[f32], usize),
        (start, seed): (&ExpertStart, &Rng),
    ) -> Result<Vec<f32>> {
        let config = self.config();
        let (inputs, tasks) = (config.inputs, config.tasks.len());
        let (_, expert_layers) = experts_of(config)?;
        let temporary = ModelConfig {
            architecture: Architecture::SharedBottom {
                bottom_layers: expert_layers.to_vec(),
            },
            tower_layers: Vec::new(),
            learning_rate: start.pretrain_learning_rate.unwrap_or(config.learning_rate),
            seed: seed.fork(2 + k as u64).next_u64(),
            ..config.clone()
        };
        let batch = start.pretrain_batch.min(members.len());
        let mut trainer = Trainer::new(self.executor().gpu(), temporary, batch)?;
        // The expert's slice of each of its tensors, `[experts, ..]`, is the bottom.
        let mut copied = trainer.parameters()?;
        let mut pairs = Vec::new();
        for i in 0..layers {
            for part in ["weight", "bias"] {
                let expert = self.parameter_range(&format!("experts.{i}.{part}"))?;
                let bottom = trainer.parameter_range(&format!("bottom.{i}.{part}"))?;
                let len = bottom.len();
                let slice = expert.start + k * len..expert.start + (k + 1) * len;
                copied[bottom.clone()].copy_from_slice(&params[slice.clone()]);
                pairs.push((slice, bottom));
            }
        }
        trainer.set_parameters(&copied)?;
        let mut rng = seed.fork(1_000 + k as u64);
        let mut order = members.to_vec();
        rng.shuffle(&mut order);
        let mut at = 0;
        let (mut bx, mut by) = (Vec::new(), Vec::new());
        for _ in 0..start.pretrain_steps {
            if at + batch > order.len() {
                rng.shuffle(&mut order);
                at = 0;
            }
            let picked = &order[at..at + batch];
            at += batch;
            bx.clear();
            by.clear();
            for &r in picked {
                bx.extend_from_slice(&x[r * inputs..(r + 1) * inputs]);
            }
            for t in 0..tasks {
                by.extend(picked.iter().map(|&r| targets[t * rows + r]));
            }
            trainer.step(&bx, &by)?;
        }
        let loss = trainer.loss()?;
        let trained = trainer.parameters()?;
        for (slice, bottom) in pairs {
            params[slice].copy_from_slice(&trained[bottom]);
        }
        Ok(loss)
    }

    /// Starts every gate routing by nearest centroid: `w_k = s · c_k`,
    /// `b_k = −s · ‖c_k‖² / 2` for each expert `k`.
    fn route_gates(&self, params: &mut [f32], centroids: &[&[f32]], scale: f32) -> Result<()> {
        let weight = self.parameter_range("gate.weight")?;
        let bias = self.parameter_range("gate.bias")?;
        let experts = centroids.len();
        let inputs = self.config().inputs;
        let gates = bias.len() / experts;
        let s = scale as f64;
        for g in 0..gates {
            for (k, c) in centroids.iter().enumerate() {
                for (i, &v) in c.iter().enumerate() {
                    params[weight.start + (g * inputs + i) * experts + k] = (s * v as f64) as f32;
                }
                let norm: f64 = c.iter().map(|&v| (v as f64).powi(2)).sum();
                params[bias.start + g * experts + k] = (-s * norm / 2.0) as f32;
            }
        }
        Ok(())
    }
}

/// The experts and their layer widths of a model a start applies to.
fn experts_of(config: &ModelConfig) -> Result<(usize, &[usize])> {
    let bad = |message: &str| Err(Error::invalid("expert start", message));
    if !config.fields.is_empty() {
        return bad("the model has categorical fields; a start clusters dense inputs only");
    }
    if !config.shared_layers.is_empty() {
        return bad("the experts read shared layers, not the input the rows are clustered on");
    }
    if !config.expert_inputs.is_empty() {
        return bad(
            "the experts read subsets of the input (expert_inputs), not the whole rows the \
             clusters are drawn on",
        );
    }
    match &config.architecture {
        Architecture::Mmoe {
            task_experts: 0,
            experts,
            expert_layers,
            ..
        }
        | Architecture::Omoe {
            experts,
            expert_layers,
            ..
        } => Ok((*experts, expert_layers)),
        Architecture::Mmoe { .. } => {
            bad("the tasks have experts of their own, which a partition of the rows cannot assign")
        }
        Architecture::SharedBottom { .. } => bad("a shared-bottom model has no experts to start"),
        Architecture::Ple { .. } => bad(
            "a CGC or PLE model has experts of the tasks' own and levels, which a partition of the rows cannot assign",
        ),
    }
}

/// The rows as clustered: `x`, or `x` joined with the weighted standardised targets.
fn clustered_columns(
    on: PartitionOn,
    x: &[f32],
    targets: &[f32],
    (rows, inputs, tasks): (usize, usize, usize),
) -> Vec<f32> {
    let PartitionOn::InputOutput { target_weight } = on else {
        return x.to_vec();
    };
    let weight = target_weight.map_or((inputs as f64 / tasks as f64).sqrt(), f64::from);
    let scaled: Vec<Vec<f32>> = targets
        .chunks(rows)
        .map(|y| {
            let mean = y.iter().map(|&v| v as f64).sum::<f64>() / rows as f64;
            let var = y.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / rows as f64;
            // A constant target standardises to zeros.
            let std = if var > 0.0 { var.sqrt() } else { 1.0 };
            y.iter()
                .map(|&v| ((v as f64 - mean) / std * weight) as f32)
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(rows * (inputs + tasks));
    for (r, row) in x.chunks(inputs).enumerate() {
        out.extend_from_slice(row);
        out.extend(scaled.iter().map(|y| y[r]));
    }
    out
}

/// All rows in order, or `limit` of them drawn without replacement, in order.
fn sample_rows(rows: usize, limit: usize, rng: &mut Rng) -> Vec<usize> {
    let mut all: Vec<usize> = (0..rows).collect();
    if rows > limit {
        rng.shuffle(&mut all);
        all.truncate(limit);
        all.sort_unstable();
    }
    all
}
