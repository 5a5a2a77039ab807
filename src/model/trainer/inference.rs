//! Predictions, evaluations and gate reports over any number of rows, in chunks of
//! the batch capacity, from dense rows or from batches with categorical fields.

use super::Trainer;
use crate::graph::GpuExecutor;
use crate::model::batch::{self, Batch};
use crate::model::config::TaskKind;
use crate::{Error, Result};

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
    /// Mean squared error (regression) or log-loss (classification) per task; for
    /// the CVR task of an ESMM pair, the log-loss of pCTCVR against click ·
    /// conversion over every row, the loss it trains with.
    pub per_task: Vec<f64>,
    /// `Σ_t weight_t · per_task[t]`, the quantity training minimises.
    pub total: f64,
}

/// The rows an inference call runs over.
#[derive(Clone, Copy)]
enum Rows<'a, 'b> {
    /// `[rows, inputs]` of a model without fields.
    Dense(&'a [f32]),
    /// A batch that passed [`batch::check`].
    Batch(&'a Batch<'b>),
}

impl Trainer {
    /// The number of rows of `input`, checked (all of it, before any chunk runs).
    fn inference_rows(&self, ctx: &str, input: Rows<'_, '_>) -> Result<usize> {
        match input {
            Rows::Dense(x) => self.rows_of(ctx, x, false),
            Rows::Batch(b) => {
                batch::check(&self.config, ctx, b, false)?;
                Ok(b.rows)
            }
        }
    }

    /// Runs the forward pass over `input` in chunks of the batch capacity, handing
    /// each chunk's row range to `visit`.
    fn for_each_chunk(
        &mut self,
        ctx: &str,
        input: Rows<'_, '_>,
        mut visit: impl FnMut(&GpuExecutor, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let rows = self.inference_rows(ctx, input)?;
        self.executor.check_finite()?;
        let (inputs, capacity) = (self.config.inputs, self.batch_capacity());
        for start in (0..rows).step_by(capacity) {
            let end = (start + capacity).min(rows);
            match input {
                Rows::Dense(x) => {
                    let x = &x[start * inputs..end * inputs];
                    self.executor.write_batch(end - start, &[x], &[])?;
                }
                Rows::Batch(b) => {
                    let chunk = batch::prepare(&self.config, ctx, b, start..end, capacity)?;
                    self.executor.write_lookups(chunk.rows, &chunk.lookups)?;
                    self.executor.write_batch(chunk.rows, &[&chunk.x], &[])?;
                }
            }
            self.executor.forward(end - start, false)?;
            visit(&self.executor, start..end)?;
        }
        Ok(())
    }

    /// Predictions for `x` (`[rows, inputs]`, any number of rows) as `[outputs, rows]`,
    /// output-major: first each task's, the value for regression tasks, the
    /// probability for classification (pCTR and pCVR for an ESMM pair's tasks); then
    /// one output per ESMM pair, its pCTCVR `pCTR · pCVR`, in the order of
    /// [`ModelConfig::esmm_pairs`](crate::model::ModelConfig::esmm_pairs). So a model
    /// without ESMM pairs gives `[tasks, rows]`;
    /// [`ModelConfig::output_names`](crate::model::ModelConfig::output_names) names
    /// the outputs.
    /// Noisy gates add no noise here (nor in [`evaluate`](Self::evaluate) and
    /// [`gate_report`](Self::gate_report)). A model with categorical fields takes
    /// [`predict_batch`](Self::predict_batch) instead.
    pub fn predict(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        self.predict_rows("Trainer::predict", Rows::Dense(x))
    }

    /// Predictions for `batch` (dense values and every field's IDs, any number of
    /// rows; its targets, if any, are not read) as `[outputs, rows]`, as
    /// [`predict`](Self::predict) gives them.
    pub fn predict_batch(&mut self, batch: &Batch<'_>) -> Result<Vec<f32>> {
        self.predict_rows("Trainer::predict_batch", Rows::Batch(batch))
    }

    fn predict_rows(&mut self, ctx: &str, input: Rows<'_, '_>) -> Result<Vec<f32>> {
        let rows = self.inference_rows(ctx, input)?;
        let tasks = self.tasks();
        let kinds: Vec<TaskKind> = self.config.tasks.iter().map(|t| t.kind).collect();
        let predictions = self.model.predictions;
        let pairs = self.config.esmm_pairs();
        let mut out = vec![0.0f32; (tasks + pairs.len()) * rows];
        self.for_each_chunk(ctx, input, |executor, range| {
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
        // pCTCVR, in f64 from the two probabilities: a product rounds, but only
        // its logarithm (in the loss) could not take that.
        for (i, pair) in pairs.iter().enumerate() {
            for b in 0..rows {
                let ctr = out[pair.ctr * rows + b] as f64;
                let cvr = out[pair.cvr * rows + b] as f64;
                out[(tasks + i) * rows + b] = (ctr * cvr) as f32;
            }
        }
        Ok(out)
    }

    /// Mean loss per task over `x` and `targets` (`[tasks, rows]`), any number of rows.
    pub fn evaluate(&mut self, x: &[f32], targets: &[f32]) -> Result<Evaluation> {
        let rows = self.rows_of("Trainer::evaluate", x, false)?;
        self.check_targets("Trainer::evaluate", rows, targets)?;
        let predictions = self.predict(x)?;
        Ok(self.losses(rows, &predictions, targets))
    }

    /// Mean loss per task over `batch` and its targets, any number of rows.
    pub fn evaluate_batch(&mut self, batch: &Batch<'_>) -> Result<Evaluation> {
        const CTX: &str = "Trainer::evaluate_batch";
        batch::check(&self.config, CTX, batch, true)?;
        let targets = batch.targets.unwrap_or_default();
        let predictions = self.predict_rows(CTX, Rows::Batch(batch))?;
        Ok(self.losses(batch.rows, &predictions, targets))
    }

    fn losses(&self, rows: usize, predictions: &[f32], targets: &[f32]) -> Evaluation {
        let mut per_task = Vec::new();
        let tasks = self.config.tasks.len();
        let pairs = self.config.esmm_pairs();
        let block = |values: &'_ [f32], t: usize| values[t * rows..(t + 1) * rows].to_vec();
        for (t, task) in self.config.tasks.iter().enumerate() {
            let (p, y) = match pairs.iter().position(|pair| pair.cvr == t) {
                // An ESMM CVR task: pCTCVR against click · conversion.
                Some(i) => {
                    let click = block(targets, pairs[i].ctr);
                    let conversion = block(targets, t);
                    let y = conversion.iter().zip(&click).map(|(v, c)| v * c);
                    (block(predictions, tasks + i), y.collect())
                }
                None => (block(predictions, t), block(targets, t)),
            };
            let sum: f64 = p
                .iter()
                .zip(&y)
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
        Evaluation { per_task, total }
    }

    /// The mean gate weight of each task on each expert over `x`. Under OMoE every
    /// task shows the one shared gate. Err for shared-bottom (no gates).
    pub fn gate_report(&mut self, x: &[f32]) -> Result<GateReport> {
        self.gate_report_rows("Trainer::gate_report", Rows::Dense(x))
    }

    /// [`gate_report`](Self::gate_report) over `batch`.
    pub fn gate_report_batch(&mut self, batch: &Batch<'_>) -> Result<GateReport> {
        self.gate_report_rows("Trainer::gate_report_batch", Rows::Batch(batch))
    }

    fn gate_report_rows(&mut self, ctx: &str, input: Rows<'_, '_>) -> Result<GateReport> {
        let Some(values) = self.model.gate_values else {
            return Err(Error::invalid(
                ctx,
                "this model has no gates (shared-bottom)",
            ));
        };
        let rows = self.inference_rows(ctx, input)?;
        let gates = self.model.gates;
        let experts = self.model.graph.tensor(values).shape[2];
        let mut sums = vec![vec![0.0f64; experts]; gates];
        let mut counts = vec![vec![0usize; experts]; gates];
        let mut routed = vec![0usize; experts];
        self.for_each_chunk(ctx, input, |executor, range| {
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
}

fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}
