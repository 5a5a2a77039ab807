//! A recommender-shaped model on categorical fields: 13 dense features and 8
//! fields of 16-wide embeddings (a user table of 10^7 rows, item, category, city,
//! device, publisher and campaign tables of 10^4–10^5, and bags of about 20 recently
//! seen items looked up in the item table), MMoE with 8 experts of 64 and 2 tasks,
//! towers of 32, batches of 4,096 rows, tables trained by lazy Adam.
//!
//! ```text
//! cargo bench --bench embedding [-- quick]      (or MMOE_BENCH_QUICK=1)
//! ```
//!
//! It builds the model twice, with the user table at 10^7 rows (640 MB, more than a
//! 128 MiB binding holds) and at 10^4, and reports for each: the time to build the
//! trainer (tables initialised and uploaded), device memory (table bytes and every
//! buffer), the whole training step (one submission, host-side batch preparation
//! included) in rounds interleaved between the two models, and where a step's time
//! goes (forward, loss, backward, the dense optimizer, the tables' sparse updates),
//! dispatch by dispatch. Then it checks that the large table trained: the rows one
//! step touched changed, and no other row did. It starts with the device's ceiling
//! (the FMA-only and streaming-copy probes) and gives the dense optimizer's GB/s, a
//! pure streaming pass, as a fraction of the copy probe. Quick mode uses a 3·10^6-row user
//! table (192 MB, still past one binding), 1,024-row batches and fewer rounds.

use std::time::{Duration, Instant};

use mmoe_wgpu::graph::StepPhase;
use mmoe_wgpu::model::{
    Architecture, Batch, FieldConfig, Gate, ModelConfig, Pooling, TableOptimizer, TaskConfig,
    TaskKind, Trainer, initial_tables,
};
use mmoe_wgpu::rng::Rng;

mod common;
use common::{ceiling, fresh_gpu, gbps};
use mmoe_wgpu::kernels::ceiling_probe::Ceiling;

const DENSE: usize = 13;
const DIM: usize = 16;
/// Mean IDs per bag of `recent_items`; bags hold `BAG - 5 ..= BAG + 5`.
const BAG: usize = 20;
const MAX_BAG: usize = 32;
const SMALL_USERS: usize = 10_000;

/// Run sizes: full, or quick.
struct Sizes {
    users: usize,
    batch: usize,
    rounds: usize,
    steps_per_round: usize,
}

fn sizes() -> Sizes {
    let quick = std::env::args().any(|a| a == "quick")
        || std::env::var_os("MMOE_BENCH_QUICK").is_some_and(|v| v != "0");
    if quick {
        Sizes {
            users: 3_000_000,
            batch: 1024,
            rounds: 5,
            steps_per_round: 2,
        }
    } else {
        Sizes {
            users: 10_000_000,
            batch: 4096,
            rounds: 5,
            steps_per_round: 3,
        }
    }
}

/// The fields: name, rows, one ID or a bag. `recent_items` shares `item_id`'s table.
fn fields(users: usize) -> Vec<FieldConfig> {
    vec![
        FieldConfig::single("user_id", users, DIM),
        FieldConfig::single("item_id", 100_000, DIM),
        FieldConfig::multi("recent_items", 100_000, DIM, Pooling::Mean, MAX_BAG).sharing("item_id"),
        FieldConfig::single("item_category", 10_000, DIM),
        FieldConfig::single("user_city", 30_000, DIM),
        FieldConfig::single("device", 10_000, DIM),
        FieldConfig::single("publisher", 50_000, DIM),
        FieldConfig::single("campaign", 100_000, DIM),
    ]
}

fn config(users: usize) -> ModelConfig {
    let tasks = vec![
        TaskConfig::new("click", TaskKind::BinaryClassification),
        TaskConfig::new("conversion", TaskKind::BinaryClassification),
    ];
    ModelConfig {
        fields: fields(users),
        architecture: Architecture::Mmoe {
            experts: 8,
            expert_layers: vec![64],
            gate: Gate::SOFTMAX,
            task_experts: 0,
        },
        table_optimizer: TableOptimizer::LAZY_ADAM,
        ..ModelConfig::mmoe(DENSE, 8, 64, 32, tasks)
    }
}

/// One batch's data, owned: dense values, per field its IDs (and offsets for bags),
/// targets. IDs are uniform over each table, the large one's included: the most
/// rows a batch can touch.
struct Owned {
    rows: usize,
    dense: Vec<f32>,
    ids: Vec<Vec<u32>>,
    offsets: Vec<Option<Vec<u32>>>,
    targets: Vec<f32>,
}

impl Owned {
    fn new(config: &ModelConfig, rows: usize, rng: &mut Rng) -> Owned {
        let dense = (0..rows * DENSE).map(|_| rng.normal() as f32).collect();
        let mut ids = Vec::new();
        let mut offsets = Vec::new();
        for field in &config.fields {
            let vocab = field.vocab as u64;
            if field.max_bag() == 1 {
                ids.push((0..rows).map(|_| rng.below(vocab) as u32).collect());
                offsets.push(None);
            } else {
                let mut o = vec![0u32];
                let mut bag_ids = Vec::new();
                for _ in 0..rows {
                    let n = BAG - 5 + rng.below(11) as usize;
                    bag_ids.extend((0..n).map(|_| rng.below(vocab) as u32));
                    o.push(bag_ids.len() as u32);
                }
                ids.push(bag_ids);
                offsets.push(Some(o));
            }
        }
        let targets = (0..2 * rows).map(|_| rng.below(2) as f32).collect();
        Owned {
            rows,
            dense,
            ids,
            offsets,
            targets,
        }
    }

    fn batch<'a>(&'a self, config: &'a ModelConfig) -> Batch<'a> {
        let mut batch = Batch::new(self.rows, &self.dense);
        for ((field, ids), offsets) in config.fields.iter().zip(&self.ids).zip(&self.offsets) {
            batch = match offsets {
                None => batch.ids(&field.name, ids),
                Some(o) => batch.bags(&field.name, o, ids),
            };
        }
        batch.targets(&self.targets)
    }
}

/// A model under test: its trainer and batches.
struct Case {
    name: String,
    config: ModelConfig,
    trainer: Trainer,
    batches: Vec<Owned>,
    steps: Vec<Duration>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn build(gpu: &mmoe_wgpu::Gpu, users: usize, s: &Sizes) -> Case {
    let config = config(users);
    let start = Instant::now();
    let trainer = Trainer::new(gpu, config.clone(), s.batch).unwrap_or_else(|e| panic!("{e}"));
    let built = start.elapsed();
    // The host's share of that: drawing the tables' initial values again.
    let start = Instant::now();
    let tables = initial_tables(&trainer.model().graph, config.seed);
    let drawn = start.elapsed();
    // And uploading them again.
    let start = Instant::now();
    for (t, values) in tables.iter().enumerate() {
        trainer
            .executor()
            .set_table(t, values)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let uploaded = start.elapsed();
    drop(tables);
    let mut rng = Rng::new(7);
    let batches = (0..3)
        .map(|_| Owned::new(&config, s.batch, &mut rng))
        .collect();
    let table_bytes: usize = config
        .fields
        .iter()
        .filter(|f| f.shares.is_none())
        .map(|f| f.vocab * f.dim * 4)
        .sum();
    let memory = trainer.memory();
    println!(
        "user table {users} rows: trainer built in {:.2} s (drawing the tables' initial \
         values {:.2} s of it, uploading them {:.2} s); tables {:.1} MiB of values \
         ({:.1} MiB with lazy Adam's two moments); every buffer {:.1} MiB \
         (parameters {:.2}, activations {:.1}, activation gradients {:.1}, inputs {:.1}, \
         scratch {:.1}, tables {:.1})",
        built.as_secs_f64(),
        drawn.as_secs_f64(),
        uploaded.as_secs_f64(),
        mib(table_bytes as u64),
        mib(3 * table_bytes as u64),
        mib(memory.total()),
        mib(memory.parameters),
        mib(memory.activations),
        mib(memory.activation_gradients),
        mib(memory.inputs),
        mib(memory.scratch),
        mib(memory.tables),
    );
    Case {
        name: format!("user table {users} rows"),
        config,
        trainer,
        batches,
        steps: Vec::new(),
    }
}

/// `n` training steps, then a read of the loss (the wait for the device): the time
/// per step.
fn timed_steps(case: &mut Case, n: usize, first: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let b = &case.batches[(first + i) % case.batches.len()];
        case.trainer
            .step_batch(&b.batch(&case.config))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    case.trainer.loss().unwrap_or_else(|e| panic!("{e}"));
    start.elapsed() / n as u32
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Where one step's time goes, by phase, and the slowest dispatches; the dense
/// optimizer's bandwidth against the copy probe.
fn profile(case: &mut Case, ceiling: &Ceiling) {
    let b = &case.batches[0];
    let phases = case
        .trainer
        .profile_step_batch(&b.batch(&case.config))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut line = format!("{}: one step dispatch by dispatch:", case.name);
    let mut total = Duration::ZERO;
    for (phase, times) in &phases {
        let sum: Duration = times.iter().map(|(_, t)| *t).sum();
        total += sum;
        let name = match phase {
            StepPhase::Forward => "forward",
            StepPhase::Loss => "loss",
            StepPhase::Backward => "backward",
            StepPhase::Optimizer => "dense optimizer",
            StepPhase::TableUpdate => "sparse table update",
        };
        line.push_str(&format!(
            " {name} {:.1} ms ({} dispatches);",
            ms(sum),
            times.len()
        ));
    }
    println!("{line} sum {:.1} ms", ms(total));
    // The dense optimizer reads the parameters, gradients and moments and writes the
    // parameters and moments back.
    let memory = case.trainer.memory();
    let moved = 2 * memory.parameters + memory.gradients + 2 * memory.optimizer_state;
    let optimizer: Duration = phases
        .iter()
        .filter(|(phase, _)| *phase == StepPhase::Optimizer)
        .flat_map(|(_, times)| times.iter().map(|(_, t)| *t))
        .sum();
    println!(
        "    dense optimizer: {:.2} MiB moved in {:.2} ms, {}",
        mib(moved),
        ms(optimizer),
        gbps(ceiling, moved as f64, optimizer.as_secs_f64())
    );
    for (phase, times) in &phases {
        if matches!(
            phase,
            StepPhase::Forward | StepPhase::Backward | StepPhase::TableUpdate
        ) {
            let embedding: Duration = times
                .iter()
                .filter(|(label, _)| label.starts_with("embedding"))
                .map(|(_, t)| *t)
                .sum();
            println!("    {phase:?}: embedding kernels {:.1} ms", ms(embedding));
        }
    }
}

/// After one step on a fresh batch: the large table's rows that batch touched all
/// changed, and no other row did.
fn check_large_table_trains(case: &mut Case, rng: &mut Rng) {
    let executor = case.trainer.executor();
    let before = executor.table(0).unwrap_or_else(|e| panic!("{e}"));
    let fresh = Owned::new(&case.config, case.batches[0].rows, rng);
    case.trainer
        .step_batch(&fresh.batch(&case.config))
        .unwrap_or_else(|e| panic!("{e}"));
    let loss = case.trainer.loss().unwrap_or_else(|e| panic!("{e}"));
    let after = case
        .trainer
        .executor()
        .table(0)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut touched = vec![false; case.config.fields[0].vocab];
    for &id in &fresh.ids[0] {
        touched[id as usize] = true;
    }
    let (mut changed, mut stray) = (0usize, 0usize);
    for (row, was_touched) in touched.iter().enumerate() {
        let moved = before[row * DIM..(row + 1) * DIM] != after[row * DIM..(row + 1) * DIM];
        match (was_touched, moved) {
            (true, true) => changed += 1,
            (false, true) => stray += 1,
            _ => {}
        }
    }
    let count = touched.iter().filter(|&&t| t).count();
    println!(
        "{}: {:.0} MiB table; one step touched {count} rows, {changed} of them changed, \
         {stray} untouched rows changed; loss {:.4} {:.4}",
        case.name,
        mib((case.config.fields[0].vocab * DIM * 4) as u64),
        loss[0],
        loss[1]
    );
    assert_eq!(
        changed, count,
        "a touched row of the large table did not train"
    );
    assert_eq!(stray, 0, "an untouched row of the large table changed");
}

fn main() {
    let s = sizes();
    let gpu = fresh_gpu();
    let ceiling = ceiling(&gpu);
    println!(
        "batch {} rows, {} dense features, 8 fields of {DIM} (bags of {}-{} IDs in \
         `recent_items`), MMoE 8 experts of 64, towers of 32, 2 tasks, lazy Adam on the tables",
        s.batch,
        DENSE,
        BAG - 5,
        BAG + 5
    );
    let mut cases = [build(&gpu, SMALL_USERS, &s), build(&gpu, s.users, &s)];
    // Pipelines compile and kernels tune on the first steps.
    for case in cases.iter_mut() {
        let warm = Instant::now();
        timed_steps(case, 2, 0);
        println!(
            "{}: first 2 steps {:.2} s",
            case.name,
            warm.elapsed().as_secs_f64()
        );
    }
    for round in 0..s.rounds {
        for case in cases.iter_mut() {
            let t = timed_steps(case, s.steps_per_round, round);
            case.steps.push(t);
        }
    }
    for case in &cases {
        let all: Vec<String> = case
            .steps
            .iter()
            .map(|t| format!("{:.1}", ms(*t)))
            .collect();
        println!(
            "{}: step {:.1} ms median of {} rounds of {} steps ({} ms)",
            case.name,
            ms(median(&case.steps)),
            s.rounds,
            s.steps_per_round,
            all.join(", ")
        );
    }
    let ratio = median(&cases[1].steps).as_secs_f64() / median(&cases[0].steps).as_secs_f64();
    println!(
        "step time, user table {} rows / {SMALL_USERS} rows: {ratio:.3} (bound 1.3: {})",
        s.users,
        if ratio <= 1.3 { "within" } else { "OVER" }
    );
    for case in cases.iter_mut() {
        profile(case, &ceiling);
    }
    let mut rng = Rng::new(99);
    check_large_table_trains(&mut cases[1], &mut rng);
}
