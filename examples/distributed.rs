//! Data-parallel training over MPI (feature `mpi`): every process opens its own
//! device, trains the same MMoE on its share of each global batch, and the gradients
//! are summed across processes every step.
//!
//! ```text
//! cargo build --release --features mpi --example distributed
//! mpirun -np 2 target/release/examples/distributed --shape census --steps 20 --bench
//! mpirun -np 4 -H host1:2,host2:2 target/release/examples/distributed --steps 1000
//! target/release/examples/distributed --single --steps 20    # one process, no MPI
//! ```
//!
//! The data is random (normal inputs; targets from a random projection per task), the
//! same on every process: a seeded set of `--data-rows` rows whose global batches
//! ([`GlobalBatches`]) depend on the seed only, so 1, 2 or 4 processes train on the
//! same batches. `--single` trains the same batches with a plain [`Trainer`] in one
//! process, the reference the distributed runs are compared with.
//! `--save FILE` writes the final checkpoint (rank 0), `--checkpoint-at S
//! --checkpoint FILE` one after step `S`, and `--resume FILE` starts from one.
//! `--die-at S` and `--stall-at S` make `--fail-rank` die (SIGKILL) or hang before
//! step `S`: how the other ranks stop is what they test; `--mismatch model|data`
//! gives it another model seed or data set, which the start's check refuses. `--bench` prints the time
//! per step and the part of it spent in communication.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mmoe_wgpu::data::Dataset;
use mmoe_wgpu::distributed::mpi::traits::Communicator;
use mmoe_wgpu::distributed::{DistributedTrainer, Fingerprint, GlobalBatches, open_rank_device};
use mmoe_wgpu::model::{
    Architecture, Checkpoint, Gate, ModelConfig, TaskConfig, TaskKind, Trainer,
};
use mmoe_wgpu::rng::Rng;
use mmoe_wgpu::{Gpu, GpuOptions, StandardShape};

#[derive(Parser, Debug)]
#[command(about = "Data-parallel MMoE training over MPI")]
struct Options {
    /// Model and batch shape: tiny (for tests), paper, census or large.
    #[arg(long, default_value = "tiny")]
    shape: String,
    /// Gate: softmax, or topN (e.g. top2).
    #[arg(long, default_value = "softmax")]
    gate: String,
    /// Width of one shared ReLU layer below the experts (0: none).
    #[arg(long, default_value_t = 0)]
    shared_layer: usize,
    /// Global batch rows (default: the shape's batch).
    #[arg(long)]
    global_batch: Option<usize>,
    /// Rows of the random data set (default: 4 global batches).
    #[arg(long)]
    data_rows: Option<usize>,
    /// Steps to train up to (the step count, counting any resumed steps).
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Seed of the model and of the data.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Train in one process with a plain trainer (no MPI).
    #[arg(long)]
    single: bool,
    /// Write the final checkpoint here (rank 0).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write a checkpoint after this step to --checkpoint.
    #[arg(long, requires = "checkpoint")]
    checkpoint_at: Option<u32>,
    /// Where --checkpoint-at writes.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Resume from this checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// The rank --die-at and --stall-at apply to.
    #[arg(long, default_value_t = 1)]
    fail_rank: usize,
    /// Kill --fail-rank's process (SIGKILL) before this step (1-based).
    #[arg(long)]
    die_at: Option<u32>,
    /// Make --fail-rank hang before this step (1-based).
    #[arg(long)]
    stall_at: Option<u32>,
    /// Make --fail-rank differ from the others at the start: `model` (another
    /// seed) or `data` (another data set); the start's check must refuse.
    #[arg(long)]
    mismatch: Option<String>,
    /// Seconds a rank waits for the others in a collective before giving up.
    #[arg(long)]
    timeout: Option<f64>,
    /// Print the time per step and the communication's part.
    #[arg(long)]
    bench: bool,
}

fn main() -> ExitCode {
    let options = Options::parse();
    let result = if options.single {
        single(&options)
    } else {
        distributed(&options)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The model and the global batch of `--shape`.
fn model(options: &Options) -> Result<(ModelConfig, usize), String> {
    let shape = match options.shape.as_str() {
        "tiny" => StandardShape {
            name: "tiny",
            batch: 64,
            inputs: 12,
            experts: 4,
            expert_width: 8,
            tasks: 2,
            tower_width: 4,
        },
        name => *StandardShape::ALL
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("unknown shape `{name}`"))?,
    };
    let tasks = (0..shape.tasks)
        .map(|t| TaskConfig::new(format!("task{t}"), TaskKind::BinaryClassification))
        .collect();
    let mut config = ModelConfig::mmoe(
        shape.inputs,
        shape.experts,
        shape.expert_width,
        shape.tower_width,
        tasks,
    );
    config.seed = options.seed;
    if options.shared_layer > 0 {
        config.shared_layers = vec![options.shared_layer];
    }
    let gate = match options.gate.as_str() {
        "softmax" => Gate::SOFTMAX,
        top => Gate::top_k(
            top.strip_prefix("top")
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| format!("unknown gate `{top}`: softmax or topN"))?,
        ),
    };
    if let Architecture::Mmoe { gate: g, .. } = &mut config.architecture {
        *g = gate;
    }
    Ok((config, options.global_batch.unwrap_or(shape.batch)))
}

/// Normal inputs; task `t`'s target is 1 where a random projection of the row is
/// positive.
fn data(config: &ModelConfig, rows: usize, seed: u64) -> Result<Dataset, String> {
    let (inputs, tasks) = (config.inputs, config.tasks.len());
    let mut rng = Rng::new(seed).fork(0xda7a);
    let x: Vec<f32> = (0..rows * inputs).map(|_| rng.normal() as f32).collect();
    let mut y = Vec::with_capacity(rows * tasks);
    for _ in 0..tasks {
        let w: Vec<f32> = (0..inputs).map(|_| rng.normal() as f32).collect();
        y.extend((0..rows).map(|r| {
            let dot: f32 = x[r * inputs..(r + 1) * inputs]
                .iter()
                .zip(&w)
                .map(|(a, b)| a * b)
                .sum();
            f32::from(dot > 0.0)
        }));
    }
    Dataset::new(inputs, tasks, rows, x, y).map_err(|e| e.to_string())
}

fn single(options: &Options) -> Result<(), String> {
    let (config, global_batch) = model(options)?;
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let mut trainer = match &options.resume {
        Some(path) => {
            let checkpoint = Checkpoint::load(path).map_err(|e| e.to_string())?;
            Trainer::from_checkpoint(&gpu, &checkpoint, global_batch)
        }
        None => Trainer::new(&gpu, config.clone(), global_batch),
    }
    .map_err(|e| e.to_string())?;
    let data = data(
        &config,
        options.data_rows.unwrap_or(4 * global_batch),
        options.seed,
    )?;
    let mut batches =
        GlobalBatches::new(options.seed, data.rows, global_batch).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let first = trainer.steps();
    while trainer.steps() < options.steps {
        let rows = batches.rows_of_step(trainer.steps() as u64);
        let (x, y) = data.gather(rows).map_err(|e| e.to_string())?;
        trainer.step(&x, &y).map_err(|e| e.to_string())?;
        if Some(trainer.steps()) == options.checkpoint_at
            && let Some(path) = &options.checkpoint
        {
            let checkpoint = trainer.checkpoint().map_err(|e| e.to_string())?;
            checkpoint.save(path).map_err(|e| e.to_string())?;
        }
    }
    let loss = trainer.loss().map_err(|e| e.to_string())?;
    let per_step = started.elapsed() / (options.steps - first).max(1);
    println!("single process: {} steps, loss {loss:?}", trainer.steps());
    if options.bench {
        println!(
            "bench ranks 1 (single process): {:.2} ms per step",
            ms(per_step)
        );
    }
    if let Some(path) = &options.save {
        let checkpoint = trainer.checkpoint().map_err(|e| e.to_string())?;
        checkpoint.save(path).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn distributed(options: &Options) -> Result<(), String> {
    let universe =
        mmoe_wgpu::distributed::mpi::initialize().ok_or("MPI was initialised already")?;
    let world = universe.world();
    let (rank, ranks) = (world.rank() as usize, world.size() as usize);
    let (mut config, global_batch) = model(options)?;
    let mut data_seed = options.seed;
    match (options.mismatch.as_deref(), rank == options.fail_rank) {
        (None, _) | (Some(_), false) => {}
        (Some("model"), true) => config.seed += 1,
        (Some("data"), true) => data_seed += 1,
        (Some(other), true) => return Err(format!("--mismatch {other}: model or data")),
    }
    let (gpu, adapter) =
        open_rank_device(&world, &GpuOptions::from_env()).map_err(|e| e.to_string())?;
    eprintln!(
        "rank {rank} of {ranks}: adapter {adapter} ({})",
        gpu.report().adapter.name
    );
    let data = data(
        &config,
        options.data_rows.unwrap_or(4 * global_batch),
        data_seed,
    )?;
    let mut fingerprint = Fingerprint::default();
    fingerprint.add_f32(&data.x).add_f32(&data.y);
    let mut trainer = match &options.resume {
        Some(path) => {
            let checkpoint = Checkpoint::load(path).map_err(|e| e.to_string())?;
            DistributedTrainer::from_checkpoint(
                world,
                &gpu,
                &checkpoint,
                global_batch,
                fingerprint.value(),
            )
        }
        None => DistributedTrainer::new(world, &gpu, config, global_batch, fingerprint.value()),
    }
    .map_err(|e| e.to_string())?;
    if let Some(seconds) = options.timeout {
        trainer.set_timeout(Duration::from_secs_f64(seconds));
    }
    let mut batches =
        GlobalBatches::new(options.seed, data.rows, global_batch).map_err(|e| e.to_string())?;
    let first = trainer.trainer().steps();
    let started = Instant::now();
    while trainer.trainer().steps() < options.steps {
        let step = trainer.trainer().steps() + 1;
        if rank == options.fail_rank {
            if options.die_at == Some(step) {
                eprintln!("rank {rank}: killing itself before step {step}, as asked (--die-at)");
                // SIGKILL, as an out-of-memory killer or a lost machine would end it;
                // abort (SIGABRT) where there is no `kill` to run.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &std::process::id().to_string()])
                    .status();
                std::process::abort();
            }
            if options.stall_at == Some(step) {
                eprintln!("rank {rank}: hanging before step {step}, as asked (--stall-at)");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
        let rows = batches.rows_of_step(step as u64 - 1);
        let (x, y) = data.gather(rows).map_err(|e| e.to_string())?;
        trainer.step(&x, &y).map_err(|e| e.to_string())?;
        if Some(step) == options.checkpoint_at
            && let Some(path) = &options.checkpoint
        {
            trainer.save_checkpoint(path).map_err(|e| e.to_string())?;
        }
    }
    trainer.check_replicas().map_err(|e| e.to_string())?;
    if rank == 0 {
        println!(
            "{ranks} ranks: {} steps, loss {:?}",
            trainer.trainer().steps(),
            trainer.loss()
        );
    }
    if options.bench {
        let times = trainer.times();
        let wall = started.elapsed() / (trainer.trainer().steps() - first).max(1);
        let per = |d: Duration| ms(d / times.steps.max(1));
        println!(
            "bench ranks {ranks} rank {rank}: {:.2} ms per step (wall), gradients {:.2} ms, \
             all-reduce {:.2} ms ({:.1}% of the step), update {:.2} ms; {} gradient values",
            ms(wall),
            per(times.gradients),
            per(times.communication),
            100.0 * times.communication.as_secs_f64() / times.total().as_secs_f64().max(1e-12),
            per(times.update),
            trainer.trainer().executor().plan().param_len,
        );
    }
    if options.bench {
        bench_all_reduce(&trainer);
    }
    if let Some(path) = &options.save {
        trainer.save_checkpoint(path).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The all-reduce of the step's buffer alone (gradient, loss, flag), the ranks
/// lined up by a barrier first: the communication's cost without the wait for the
/// slowest rank that the steps' all-reduce time includes.
fn bench_all_reduce(trainer: &DistributedTrainer) {
    use mmoe_wgpu::distributed::mpi::collective::SystemOperation;
    use mmoe_wgpu::distributed::mpi::traits::CommunicatorCollectives;
    let world = trainer.world();
    let len =
        trainer.trainer().executor().plan().param_len + trainer.trainer().config().tasks.len() + 1;
    let send = vec![1.0f32; len];
    let mut sum = vec![0.0f32; len];
    let rounds = 10;
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        world.barrier();
        let started = Instant::now();
        for (src, dst) in send
            .chunks(mmoe_wgpu::distributed::ALL_REDUCE_CHUNK)
            .zip(sum.chunks_mut(mmoe_wgpu::distributed::ALL_REDUCE_CHUNK))
        {
            world.all_reduce_into(src, dst, SystemOperation::sum());
        }
        total += started.elapsed();
    }
    println!(
        "bench ranks {} rank {}: all-reduce of {} values ({:.2} MB) alone: {:.2} ms",
        trainer.ranks(),
        trainer.rank(),
        len,
        4.0 * len as f64 / 1e6,
        ms(total / rounds)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
