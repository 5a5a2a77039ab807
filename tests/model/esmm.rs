//! ESMM pairs on MMoE: the GPU executor against the CPU executor (outputs, every
//! gradient, Adam steps), the CPU model against finite differences, bitwise
//! reproducible training, unclicked rows' conversion labels unread, predictions
//! with the pair's pCTCVR, evaluation, the checkpoint's description, no extra
//! dispatch per step, and configs that do not pair up.

use crate::common::{gpu, random, relative_error, to_f64};
use crate::model::finite_difference_gap;
use mmoe_wgpu::Error;
use mmoe_wgpu::graph::{CpuExecutor, Role};
use mmoe_wgpu::metrics;
use mmoe_wgpu::model::{
    Checkpoint, EsmmPair, HeadKind, ModelConfig, TaskConfig, TaskKind, Trainer,
};
use mmoe_wgpu::rng::Rng;

const ROWS: usize = 19;
const INPUTS: usize = 7;

/// A regression task, the CVR task of an ESMM pair, then its CTR task: the pair is
/// neither first nor in CTR, CVR order, and has another task beside it.
fn tasks() -> Vec<TaskConfig> {
    vec![
        TaskConfig {
            weight: 0.5,
            ..TaskConfig::new("spend", TaskKind::Regression)
        },
        TaskConfig {
            weight: 1.5,
            ..TaskConfig::esmm_cvr("buy", "click")
        },
        TaskConfig::new("click", TaskKind::BinaryClassification),
    ]
}

fn mmoe() -> ModelConfig {
    ModelConfig {
        tower_layers: vec![3],
        seed: 11,
        learning_rate: 0.01,
        ..ModelConfig::mmoe(INPUTS, 3, 5, 3, tasks())
    }
}

/// Inputs and targets `[3, rows]`: spend values; conversions (about half of them on
/// unclicked rows, which the loss must ignore); clicks.
fn batch(rows: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let x = random(&mut rng, rows * INPUTS, 1.0);
    let mut y: Vec<f32> = (0..rows).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    y.extend((0..2 * rows).map(|_| (rng.unit() < 0.5) as u8 as f32));
    (x, y)
}

fn worst_parameter_error(trainer: &Trainer, got: &[f32], want: &[f64]) -> (String, f64) {
    let graph = &trainer.model().graph;
    let plan = trainer.executor().plan();
    graph
        .with_role(Role::Parameter)
        .into_iter()
        .map(|id| {
            let offset = plan.param_offsets[id.0].unwrap();
            let len = graph.tensor(id).len();
            let err = relative_error(&got[offset..offset + len], &want[offset..offset + len]);
            (graph.tensor(id).name.clone(), err)
        })
        .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a })
}

fn cpu_forward_backward(cpu: &mut CpuExecutor, x: &[f32], y: &[f32], rows: usize) {
    cpu.forward(rows, &[&to_f64(x)], &[&to_f64(y)]).unwrap();
    cpu.backward().unwrap();
}

#[test]
fn esmm_on_mmoe_gpu_and_cpu_executors_agree() {
    let config = mmoe();
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    let mut cpu = trainer.reference().unwrap();
    for rows in [ROWS, 4] {
        let (x, y) = batch(rows, 5);
        let got = trainer.gradients(&x, &y).unwrap();
        cpu_forward_backward(&mut cpu, &x, &y, rows);
        let preds = trainer
            .executor()
            .read(trainer.model().predictions, rows)
            .unwrap();
        let err = relative_error(&preds, cpu.tensor(trainer.model().predictions));
        assert!(err <= 1e-4, "{rows} rows: predictions differ by {err:.2e}");
        let loss = trainer.executor().loss().unwrap();
        let loss_id = trainer.model().graph.find("loss").unwrap();
        let err = relative_error(&loss, cpu.tensor(loss_id));
        assert!(err <= 1e-5, "{rows} rows: losses differ by {err:.2e}");
        let (worst, err) = worst_parameter_error(&trainer, &got, cpu.gradients());
        assert!(
            err <= 1e-4,
            "{rows} rows: gradient of `{worst}` differs by {err:.2e}"
        );
    }
    for step in 1..=3 {
        let (x, y) = batch(ROWS, 100 + step as u64);
        trainer.step(&x, &y).unwrap();
        cpu_forward_backward(&mut cpu, &x, &y, ROWS);
        cpu.optimizer_step(step, config.learning_rate as f64)
            .unwrap();
    }
    let params = trainer.parameters().unwrap();
    let (worst, err) = worst_parameter_error(&trainer, &params, cpu.parameters());
    assert!(
        err <= 1e-3,
        "after 3 Adam steps `{worst}` differs by {err:.2e}"
    );
}

#[test]
fn esmm_on_mmoe_gradients_match_finite_differences() {
    let trainer = Trainer::new(gpu(), mmoe(), 5).unwrap();
    let (x, y) = batch(5, 9);
    let (analytic, worst) = finite_difference_gap(&trainer, 5, &x, &y);
    let scale = analytic.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    assert!(
        worst < 1e-6,
        "finite differences differ by {worst:.2e} of the largest gradient"
    );
    // The CVR head learns through the product: its gradient is not zero.
    let graph = &trainer.model().graph;
    let heads = graph.find("heads.weight").unwrap();
    let offset = trainer.executor().plan().param_offsets[heads.0].unwrap();
    let per_task = graph.tensor(heads).len() / 3;
    let cvr = &analytic[offset + per_task..offset + 2 * per_task];
    assert!(cvr.iter().any(|g| g.abs() > 1e-3 * scale), "{cvr:?}");
}

#[test]
fn esmm_training_is_bitwise_reproducible() {
    let train = || {
        let mut trainer = Trainer::new(gpu(), mmoe(), ROWS).unwrap();
        for step in 0..5 {
            let (x, y) = batch(ROWS, 40 + step);
            trainer.step(&x, &y).unwrap();
        }
        trainer.parameters().unwrap()
    };
    let (a, b) = (train(), train());
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
}

#[test]
fn conversions_of_unclicked_rows_change_nothing() {
    let mut trainer = Trainer::new(gpu(), mmoe(), ROWS).unwrap();
    let (x, y) = batch(ROWS, 3);
    let grads = trainer.gradients(&x, &y).unwrap();
    let mut flipped = y.clone();
    for b in 0..ROWS {
        if y[2 * ROWS + b] == 0.0 {
            flipped[ROWS + b] = 1.0 - flipped[ROWS + b];
        }
    }
    assert_ne!(flipped, y);
    let again = trainer.gradients(&x, &flipped).unwrap();
    assert!(
        grads
            .iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

#[test]
fn predictions_add_the_pairs_pctcvr_and_evaluation_its_loss() {
    let config = mmoe();
    assert_eq!(config.esmm_pairs(), vec![EsmmPair { ctr: 2, cvr: 1 }]);
    assert_eq!(
        config.output_names(),
        ["spend", "buy", "click", "click_and_buy"]
    );
    let mut trainer = Trainer::new(gpu(), config, 8).unwrap();
    // More rows than the capacity: predictions run in chunks.
    let rows = 21;
    let (x, y) = batch(rows, 8);
    let p = trainer.predict(&x).unwrap();
    assert_eq!(p.len(), 4 * rows);
    let column = |v: &[f32], t: usize| v[t * rows..(t + 1) * rows].to_vec();
    let (cvr, ctr, ctcvr) = (column(&p, 1), column(&p, 2), column(&p, 3));
    for b in 0..rows {
        let product = ctr[b] as f64 * cvr[b] as f64;
        assert!(
            (ctcvr[b] as f64 - product).abs() <= 1e-7 * product,
            "row {b}"
        );
        assert!((0.0..=1.0).contains(&cvr[b]) && (0.0..=1.0).contains(&ctr[b]));
    }
    let evaluation = trainer.evaluate(&x, &y).unwrap();
    let click = column(&y, 2);
    let converted: Vec<f32> = column(&y, 1)
        .iter()
        .zip(&click)
        .map(|(v, c)| v * c)
        .collect();
    let log_loss = |p: &[f32], y: &[f32]| {
        let logits: Vec<f32> = p.iter().map(|&p| (p / (1.0 - p)).ln()).collect();
        metrics::log_loss(&logits, y).unwrap()
    };
    let want = log_loss(&ctcvr, &converted);
    assert!(
        (evaluation.per_task[1] - want).abs() < 1e-5 * want,
        "{evaluation:?} vs {want}"
    );
    let want = log_loss(&ctr, &click);
    assert!(
        (evaluation.per_task[2] - want).abs() < 1e-5 * want,
        "{evaluation:?} vs {want}"
    );
}

#[test]
fn the_head_kind_is_in_the_checkpoint_and_round_trips() {
    let mut trainer = Trainer::new(gpu(), mmoe(), ROWS).unwrap();
    let (x, y) = batch(ROWS, 1);
    trainer.step(&x, &y).unwrap();
    let bytes = trainer.checkpoint().unwrap().to_bytes().unwrap();
    let text = String::from_utf8_lossy(&bytes);
    // The description is JSON inside the safetensors header's JSON string.
    assert!(
        text.contains(r#"\"head\":{\"kind\":\"esmm_cvr\",\"ctr\":\"click\"}"#),
        "{text}"
    );
    // Only the ESMM task has a head member: the others read as files without it.
    assert_eq!(text.matches(r#"\"head\""#).count(), 1);
    let loaded = Checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.config(), &mmoe());
    let mut resumed = Trainer::from_checkpoint(gpu(), &loaded, ROWS).unwrap();
    let (x, y) = batch(ROWS, 2);
    trainer.step(&x, &y).unwrap();
    resumed.step(&x, &y).unwrap();
    let (a, b) = (trainer.parameters().unwrap(), resumed.parameters().unwrap());
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    // A trainer of the same model without the pair refuses the file, naming it.
    let plain = ModelConfig {
        tasks: tasks()
            .into_iter()
            .map(|t| TaskConfig {
                head: HeadKind::Own,
                ..t
            })
            .collect(),
        ..mmoe()
    };
    let mut other = Trainer::new(gpu(), plain, ROWS).unwrap();
    let e = other.restore(&loaded).unwrap_err();
    assert!(e.to_string().contains("head"), "{e}");
}

#[test]
fn bad_esmm_configs_are_errors_that_say_which() {
    let with = |tasks: Vec<TaskConfig>| ModelConfig { tasks, ..mmoe() };
    let click = || TaskConfig::new("click", TaskKind::BinaryClassification);
    let cases: Vec<(ModelConfig, &[&str])> = vec![
        (
            with(vec![
                TaskConfig::new("click", TaskKind::Regression),
                TaskConfig::esmm_cvr("buy", "click"),
            ]),
            &["CVR task `buy`", "task `click` is Regression", "binary"],
        ),
        (
            with(vec![
                click(),
                TaskConfig {
                    kind: TaskKind::Regression,
                    ..TaskConfig::esmm_cvr("buy", "click")
                },
            ]),
            &["CVR task `buy`", "task `buy` is Regression"],
        ),
        (
            with(vec![click(), TaskConfig::esmm_cvr("buy", "clicks")]),
            &["CVR task `buy`", "CTR task `clicks` is not a task"],
        ),
        (
            with(vec![click(), TaskConfig::esmm_cvr("buy", "buy")]),
            &["CVR task `buy`", "names itself"],
        ),
        (
            with(vec![click(), click(), TaskConfig::esmm_cvr("buy", "click")]),
            &["CVR task `buy`", "2 tasks are called `click`"],
        ),
        (
            with(vec![
                click(),
                TaskConfig::esmm_cvr("buy", "click"),
                TaskConfig::esmm_cvr("cart", "click"),
            ]),
            &[
                "CVR task `cart`",
                "task `click` is already in the pair of CVR task `buy`",
            ],
        ),
        (
            // A chain: `buy` is a CVR task and the CTR task of `review`.
            with(vec![
                click(),
                TaskConfig::esmm_cvr("buy", "click"),
                TaskConfig::esmm_cvr("review", "buy"),
            ]),
            &["CVR task `review`", "task `buy` is already in the pair"],
        ),
    ];
    for (config, needles) in cases {
        let e = match Trainer::new(gpu(), config.clone(), 8) {
            Err(e) => e,
            Ok(_) => panic!("{config:?} was accepted"),
        };
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        let msg = e.to_string();
        for needle in needles {
            assert!(msg.contains(needle), "`{msg}` does not say `{needle}`");
        }
        assert!(config.validate().is_err());
    }
}

#[test]
fn the_pair_adds_no_dispatch_to_a_training_step() {
    let plain = ModelConfig {
        tasks: tasks()
            .into_iter()
            .map(|t| TaskConfig {
                head: HeadKind::Own,
                ..t
            })
            .collect(),
        ..mmoe()
    };
    let count = |config| {
        Trainer::new(gpu(), config, 8)
            .unwrap()
            .dispatches_per_step()
            .unwrap()
    };
    assert_eq!(count(mmoe()), count(plain));
}
