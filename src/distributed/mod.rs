//! Data-parallel training over MPI (feature `mpi`): one process per device, on one
//! machine or many, each holding the whole model.
//!
//! Every process (rank) opens its own device ([`open_rank_device`]), builds the same
//! model from the same config and seed (or loads the same checkpoint), and
//! [`DistributedTrainer::new`] checks that all of them hold the same config,
//! parameters, optimizer state and data (fingerprints gathered from every rank),
//! failing with an [`Error::Distributed`] naming the ranks that differ. Each step,
//! every rank runs the forward and backward pass on its share of the global batch
//! ([`shard`]), reads its flat gradient back, scales it by its share of the rows and
//! sums it with the others' in one all-reduce (chunked beyond
//! [`ALL_REDUCE_CHUNK`] values), together with the loss and a failure flag; every
//! rank then writes the sum (the gradient of the global batch) back and applies the
//! same optimizer update. The parameters stay the same on every rank, so any rank's
//! checkpoint is the job's; rank 0 writes it ([`DistributedTrainer::save_checkpoint`])
//! and it resumes on any number of ranks.
//!
//! Failures: a rank whose step fails still joins the step's all-reduce, with a flag,
//! so every rank returns an error for that step; a rank that dies or hangs leaves the
//! others waiting in a collective, which a watchdog thread bounds
//! ([`DistributedTrainer::set_timeout`], [`TIMEOUT_ENV`]): past it the waiting
//! process prints what it waited for and exits with status [`WATCHDOG_EXIT_CODE`],
//! and the launcher ends the job. (`mpirun` also ends the job as soon as a process
//! dies.)
//!
//! Not yet: models with categorical fields (their tables' touched rows would have to
//! be exchanged too) are an error here (a plain [`Trainer`] trains them), and gates
//! with a load-balancing loss (a function of the whole batch's gate statistics, not
//! a sum over rows) are an error on more than one rank.

mod batches;
mod check;
mod device;
mod watchdog;

use std::time::{Duration, Instant};

pub use batches::{GlobalBatches, shard};
pub use check::Fingerprint;
pub use device::{RANK_ADAPTER_ENV, local_rank, open_rank_device};
/// The rsmpi crate this module runs on, for initialising MPI with the same version.
pub use mpi;
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
pub use watchdog::WATCHDOG_EXIT_CODE;

use crate::model::{Checkpoint, ModelConfig, Trainer};
use crate::{Error, Gpu, Result};

/// Values per all-reduce call: larger gradients go in several (MPI counts are
/// 32-bit, and very large messages help no transport).
pub const ALL_REDUCE_CHUNK: usize = 1 << 24;

/// Environment variable with the watchdog's timeout in seconds (default
/// [`DEFAULT_TIMEOUT`]).
pub const TIMEOUT_ENV: &str = "MMOE_WGPU_MPI_TIMEOUT";

/// How long a rank waits in a collective for the others before it gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the time of the steps went, summed since the trainer was made.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimes {
    /// Steps timed.
    pub steps: u32,
    /// Writing the share, forward and backward pass, and reading the gradient back.
    pub gradients: Duration,
    /// The all-reduce (including waiting for the slowest rank).
    pub communication: Duration,
    /// Writing the summed gradient and submitting the update.
    pub update: Duration,
}

impl StepTimes {
    /// All of it.
    pub fn total(&self) -> Duration {
        self.gradients + self.communication + self.update
    }
}

/// A [`Trainer`] on each rank of an MPI job, stepping together on global batches.
pub struct DistributedTrainer {
    trainer: Trainer,
    world: SimpleCommunicator,
    global_batch: usize,
    loss: Vec<f32>,
    times: StepTimes,
    watchdog: watchdog::Watchdog,
}

impl DistributedTrainer {
    /// Builds `config` on `gpu` for global batches of up to `global_batch` rows (each
    /// rank's trainer holds its share), then checks that every rank of `world` has the
    /// same config, initial state and `data` fingerprint (e.g. a [`Fingerprint`] of
    /// the training set): Err naming the ranks that differ. Every rank must call it.
    pub fn new(
        world: SimpleCommunicator,
        gpu: &Gpu,
        config: ModelConfig,
        global_batch: usize,
        data: u64,
    ) -> Result<DistributedTrainer> {
        let ranks = world.size() as usize;
        check_supported(&world, &config, global_batch)?;
        let trainer = Trainer::new(gpu, config, global_batch.div_ceil(ranks))?;
        Self::start(world, trainer, global_batch, data)
    }

    /// As [`new`](Self::new), in the state `checkpoint` holds (written by any number
    /// of ranks).
    pub fn from_checkpoint(
        world: SimpleCommunicator,
        gpu: &Gpu,
        checkpoint: &Checkpoint,
        global_batch: usize,
        data: u64,
    ) -> Result<DistributedTrainer> {
        let ranks = world.size() as usize;
        check_supported(&world, checkpoint.config(), global_batch)?;
        let trainer = Trainer::from_checkpoint(gpu, checkpoint, global_batch.div_ceil(ranks))?;
        Self::start(world, trainer, global_batch, data)
    }

    fn start(
        world: SimpleCommunicator,
        trainer: Trainer,
        global_batch: usize,
        data: u64,
    ) -> Result<DistributedTrainer> {
        let timeout = match std::env::var(TIMEOUT_ENV) {
            Ok(s) => Duration::from_secs_f64(
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|t| *t > 0.0)
                    .ok_or_else(|| {
                        Error::invalid(
                            TIMEOUT_ENV,
                            format!("`{s}`: not a positive number of seconds"),
                        )
                    })?,
            ),
            Err(_) => DEFAULT_TIMEOUT,
        };
        let watchdog =
            watchdog::Watchdog::start(world.rank() as usize, world.size() as usize, timeout);
        let mine = [
            check::config_fingerprint(&trainer, global_batch),
            check::state_fingerprint(&trainer)?,
            data,
        ];
        // Building the model compiles its kernels, which may take one rank much
        // longer than another: the first check waits longer.
        watchdog.set_timeout(timeout.max(Duration::from_secs(120)));
        let checked = check::check_same(
            &world,
            &watchdog,
            "at the start",
            &["config", "parameters and optimizer state", "data"],
            &mine,
        );
        watchdog.set_timeout(timeout);
        checked?;
        Ok(DistributedTrainer {
            loss: Vec::new(),
            trainer,
            world,
            global_batch,
            times: StepTimes::default(),
            watchdog,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    /// Processes in the job.
    pub fn ranks(&self) -> usize {
        self.world.size() as usize
    }

    /// The communicator.
    pub fn world(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// This rank's trainer: every rank's holds the same parameters after each step,
    /// so predictions and evaluations can run on any of them.
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Largest global batch a step takes.
    pub fn global_batch(&self) -> usize {
        self.global_batch
    }

    /// Sets how long a rank waits in a collective for the others before it ends its
    /// process (see the module docs).
    pub fn set_timeout(&self, timeout: Duration) {
        self.watchdog.set_timeout(timeout);
    }

    /// Where the steps' time went so far.
    pub fn times(&self) -> StepTimes {
        self.times
    }

    /// The per-task loss of the last step on the whole global batch (the ranks'
    /// losses weighted by their rows), the same on every rank.
    pub fn loss(&self) -> &[f32] {
        &self.loss
    }

    /// One step on the global batch `x: [rows, inputs]`, `targets: [tasks, rows]`
    /// (task-major), the same on every rank: each rank trains on its
    /// [`shard`] of the rows. See [`step_shard`](Self::step_shard).
    pub fn step(&mut self, x: &[f32], targets: &[f32]) -> Result<()> {
        let inputs = self.trainer.config().inputs.max(1);
        let rows = x.len() / inputs;
        let tasks = self.trainer.config().tasks.len();
        if x.len() != rows * inputs || targets.len() != rows * tasks {
            return Err(Error::shape(
                "DistributedTrainer::step",
                "x, targets",
                format!("[rows, {inputs}] and [{tasks}, rows]"),
                format!("{} and {} values", x.len(), targets.len()),
            ));
        }
        let mine = shard(rows, self.rank(), self.ranks());
        let x_shard = &x[mine.start * inputs..mine.end * inputs];
        let targets_shard: Vec<f32> = (0..tasks)
            .flat_map(|t| &targets[t * rows + mine.start..t * rows + mine.end])
            .copied()
            .collect();
        self.step_shard(x_shard, &targets_shard, rows)
    }

    /// One step on a global batch of `global_rows` rows of which this rank holds
    /// its [`shard`]: `x: [share, inputs]`, `targets: [tasks, share]`. Every rank
    /// must call it with the same `global_rows`; the update is the one a single
    /// process would make on the whole batch (up to the order of the sums). A
    /// failure on any rank is an error on every rank, for the same step.
    pub fn step_shard(&mut self, x: &[f32], targets: &[f32], global_rows: usize) -> Result<()> {
        let (rank, ranks) = (self.rank(), self.ranks());
        let step = self.trainer.steps() + 1;
        let started = Instant::now();
        let local = self.local_gradients(x, targets, global_rows);
        let params = self.trainer.executor().plan().param_len;
        let tasks = self.trainer.config().tasks.len();
        // The gradient, the loss and the count of ranks that failed, in one buffer.
        let mut send = vec![0.0f32; params + tasks + 1];
        let local_error = match local {
            Ok((grads, loss)) => {
                let share = shard(global_rows, rank, ranks).len() as f64 / global_rows as f64;
                let share = share as f32;
                for (dst, g) in send.iter_mut().zip(grads.iter().chain(&loss)) {
                    *dst = g * share;
                }
                None
            }
            Err(e) => {
                send[params + tasks] = 1.0;
                Some(e)
            }
        };
        let computed = Instant::now();
        let mut sum = vec![0.0f32; send.len()];
        for (chunk, (src, dst)) in send
            .chunks(ALL_REDUCE_CHUNK)
            .zip(sum.chunks_mut(ALL_REDUCE_CHUNK))
            .enumerate()
        {
            self.watchdog.guard(
                || format!("the gradient all-reduce (chunk {chunk}) of step {step}"),
                || self.world.all_reduce_into(src, dst, SystemOperation::sum()),
            );
        }
        let reduced = Instant::now();
        self.times.gradients += computed - started;
        self.times.communication += reduced - computed;
        if let Some(e) = local_error {
            return Err(e);
        }
        let failed = sum[params + tasks];
        if failed > 0.0 {
            return Err(Error::Distributed {
                rank,
                ranks,
                message: format!(
                    "{failed} other rank(s) failed in step {step} (their own errors say how); \
                     this rank stops too, its parameters as after step {}",
                    step - 1
                ),
            });
        }
        self.loss = sum[params..params + tasks].to_vec();
        self.trainer.apply_gradients(&sum[..params], &self.loss)?;
        self.times.update += reduced.elapsed();
        self.times.steps += 1;
        Ok(())
    }

    /// This rank's gradient and loss on its share, with its rows of the step's gate
    /// noise.
    fn local_gradients(
        &mut self,
        x: &[f32],
        targets: &[f32],
        global_rows: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (rank, ranks) = (self.rank(), self.ranks());
        if global_rows < ranks || global_rows > self.global_batch {
            return Err(Error::invalid(
                "DistributedTrainer::step",
                format!(
                    "global batch of {global_rows} rows on {ranks} ranks; 1 row per rank \
                     to {} rows in all",
                    self.global_batch
                ),
            ));
        }
        let mine = shard(global_rows, rank, ranks);
        let noise = self.noise_of(mine.clone(), global_rows);
        self.trainer.shard_gradients(x, targets, noise.as_deref())
    }

    /// The next step's gate noise of rows `mine` of a global batch of `rows` rows:
    /// the draws a single process would add to those rows.
    fn noise_of(&self, mine: std::ops::Range<usize>, rows: usize) -> Option<Vec<f32>> {
        let all = self.trainer.gate_noise(self.trainer.steps() + 1, rows)?;
        let id = self.trainer.model().gate_noise?;
        let gates = self.trainer.model().graph.tensor(id).shape[0];
        let per_row = all.len() / (gates * rows);
        Some(
            all.chunks(rows * per_row)
                .flat_map(|gate| &gate[mine.start * per_row..mine.end * per_row])
                .copied()
                .collect(),
        )
    }

    /// Err naming the ranks whose parameters and optimizer state differ from rank
    /// 0's: a check that the replicas stayed together (every rank must call it).
    pub fn check_replicas(&self) -> Result<()> {
        let state = check::state_fingerprint(&self.trainer)?;
        let when = format!("after step {}", self.trainer.steps());
        check::check_same(
            &self.world,
            &self.watchdog,
            &when,
            &["parameters and optimizer state"],
            &[state],
        )
    }

    /// Checks the replicas agree, then rank 0 writes the checkpoint to `path`
    /// (atomically, as [`Checkpoint::save`]); every rank must call it, and every rank
    /// returns rank 0's error if the write failed.
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        self.check_replicas()?;
        let mut failed = 0u8;
        let mut result = Ok(());
        if self.rank() == 0 {
            result = self.trainer.checkpoint().and_then(|c| c.save(path));
            failed = u8::from(result.is_err());
        }
        self.watchdog.guard(
            || format!("the checkpoint at step {}", self.trainer.steps()),
            || self.world.process_at_rank(0).broadcast_into(&mut failed),
        );
        match (result, failed) {
            (Err(e), _) => Err(e),
            (Ok(()), 0) => Ok(()),
            (Ok(()), _) => Err(Error::Distributed {
                rank: self.rank(),
                ranks: self.ranks(),
                message: format!("rank 0 could not write the checkpoint `{}`", path.display()),
            }),
        }
    }

    /// Prints `error` as this rank's and ends every process of the job
    /// (`MPI_Abort`): for an error the other ranks cannot learn of in a step.
    pub fn abort(&self, error: &Error) -> ! {
        eprintln!(
            "mmoe-wgpu distributed training, rank {} of {}: {error}; ending the job",
            self.rank(),
            self.ranks()
        );
        self.world.abort(1)
    }
}

/// Err for what data-parallel training cannot do yet on more than one rank.
fn check_supported(
    world: &SimpleCommunicator,
    config: &ModelConfig,
    global_batch: usize,
) -> Result<()> {
    let ranks = world.size() as usize;
    let error = |message: String| {
        Err(Error::Distributed {
            rank: world.rank() as usize,
            ranks,
            message,
        })
    };
    if global_batch < ranks {
        return error(format!(
            "a global batch of {global_batch} rows cannot give each of {ranks} ranks a row"
        ));
    }
    if !config.fields.is_empty() {
        return error(
            "models with categorical fields do not train data-parallel yet (their tables' \
             touched rows are not exchanged): train them with a plain `Trainer`"
                .into(),
        );
    }
    if ranks == 1 {
        return Ok(());
    }
    if config
        .architecture
        .gate()
        .is_some_and(|g| g.balance_weight > 0.0)
    {
        return error(
            "a load-balancing loss depends on the whole batch's gate statistics, which the \
             ranks do not exchange: train it on one rank, or without the balancing loss"
                .into(),
        );
    }
    Ok(())
}
