//! Multi-level models (PLE, Tang et al. 2020): CGC, PLE of two levels and stacked
//! MMoE, the GPU executor against the CPU executor, the CPU model against finite
//! differences, the dispatches of a step, and bad level settings.

use crate::common::gpu;
use crate::model::{
    assert_executors_agree, assert_reference_matches_finite_differences, batch, tasks,
};
use mmoe_wgpu::Error;
use mmoe_wgpu::model::{Architecture, Checkpoint, Gate, Level, ModelConfig, Trainer};

const ROWS: usize = 19;
const INPUTS: usize = 7;

fn ple(levels: Vec<Level>, task_count: usize) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Ple { levels },
        tower_layers: vec![3],
        seed: 13,
        learning_rate: 0.01,
        ..ModelConfig::mmoe(INPUTS, 1, 1, 3, tasks(task_count))
    }
}

/// The multi-level configs the issue asks for, small and with awkward widths.
fn configs() -> Vec<(&'static str, ModelConfig)> {
    let two_layer = |shared, own, widths: Vec<usize>, gate| Level {
        shared_experts: shared,
        task_experts: own,
        expert_layers: widths,
        gate,
    };
    vec![
        ("cgc", ple(vec![Level::new(2, 1, 5)], 2)),
        (
            "ple: 2 levels, 3 tasks, two-layer experts, a top-2 level",
            ple(
                vec![
                    two_layer(2, 1, vec![6, 5], Gate::top_k(2)),
                    two_layer(1, 2, vec![4, 3], Gate::SOFTMAX),
                ],
                3,
            ),
        ),
        (
            "mmoe stacked in 2 levels",
            ple(vec![Level::new(3, 0, 5), Level::new(2, 0, 4)], 2),
        ),
        (
            "ple: a static level of task experts only, then a top-1 level",
            ple(
                vec![
                    two_layer(0, 2, vec![5], Gate::STATIC),
                    two_layer(2, 1, vec![3], Gate::top_k(1)),
                ],
                2,
            ),
        ),
    ]
}

#[test]
fn gpu_and_cpu_executors_agree_on_multi_level_models() {
    for (name, config) in configs() {
        assert_executors_agree(name, &config);
    }
}

#[test]
fn multi_level_reference_gradients_match_finite_differences() {
    for (name, config) in configs() {
        assert_reference_matches_finite_differences(name, &config);
    }
}

/// A one-level PLE is the MMoE with task experts of earlier versions: same tensor
/// names, same initial values, same predictions bit for bit.
#[test]
fn cgc_is_mmoe_with_task_experts() {
    let cgc = ple(vec![Level::new(2, 1, 5)], 2);
    let mmoe = ModelConfig {
        architecture: Architecture::Mmoe {
            experts: 2,
            expert_layers: vec![5],
            gate: Gate::SOFTMAX,
            task_experts: 1,
        },
        ..cgc.clone()
    };
    let (x, _) = batch(&cgc, ROWS, 3);
    let mut a = Trainer::new(gpu(), cgc, ROWS).unwrap();
    let mut b = Trainer::new(gpu(), mmoe, ROWS).unwrap();
    let names = |t: &Trainer| {
        let g = &t.model().graph;
        g.tensors()
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b));
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(a.parameters().unwrap()), bits(b.parameters().unwrap()));
    assert_eq!(bits(a.predict(&x).unwrap()), bits(b.predict(&x).unwrap()));
}

#[test]
fn multi_level_names_are_level_indexed() {
    let config = ple(vec![Level::new(2, 1, 5), Level::new(1, 1, 4)], 2);
    let trainer = Trainer::new(gpu(), config, 4).unwrap();
    let graph = &trainer.model().graph;
    for name in [
        "levels.0.experts.0.weight",
        "levels.0.gate.weight",
        "levels.1.experts.0.bias",
        "levels.1.gate.bias",
        "towers.0.weight",
    ] {
        assert!(graph.find(name).is_some(), "no tensor `{name}`");
    }
    // Level 0 has a shared gate (3 gates over 2 + 2·1 experts), level 1 does not.
    let shape = |n: &str| graph.tensor(graph.find(n).unwrap()).shape.clone();
    assert_eq!(shape("levels.0.gate.weight"), [3, INPUTS, 4]);
    assert_eq!(shape("levels.1.gate.weight"), [2, 5, 3]);
    assert_eq!(shape("levels.1.experts.0.weight"), [3, 5, 4]);
}

/// Each level's experts are one grouped GEMM per layer and its gates one gate + mix,
/// so the dispatches of a step follow the levels and layers, not the experts or tasks.
#[test]
fn dispatches_per_step_do_not_grow_with_experts_or_tasks() {
    for levels in [1, 2] {
        let mut counts = Vec::new();
        for (shared, own) in [(1, 1), (4, 3)] {
            for task_count in [1, 2, 4] {
                let config = ple(vec![Level::new(shared, own, 4); levels], task_count);
                let mut trainer = Trainer::new(gpu(), config, 8).unwrap();
                let n = trainer.dispatches_per_step().unwrap();
                eprintln!("{levels} levels, {shared} + {own}, T={task_count}: {n} dispatches");
                counts.push(n);
            }
        }
        assert!(
            counts.iter().all(|&n| n == counts[0]),
            "{levels} levels: dispatches per step vary: {counts:?}"
        );
    }
}

#[test]
fn bad_levels_are_errors_that_say_which() {
    for (levels, want) in [
        (Vec::new(), "at least one level"),
        (
            vec![Level::new(2, 1, 5), Level::new(0, 0, 5)],
            "level 1 has no experts",
        ),
        (
            vec![Level {
                gate: Gate::top_k(4),
                ..Level::new(2, 1, 5)
            }],
            "level 0: top-k gate with k = 4, but each task's gate sees 3 experts",
        ),
        (
            vec![
                Level::new(2, 1, 5),
                Level {
                    expert_layers: vec![3, 0],
                    ..Level::new(2, 1, 5)
                },
            ],
            "level 1: expert_layers[1] has width 0",
        ),
        (
            vec![Level {
                gate: Gate::top_k(1).balanced(0.1),
                ..Level::new(2, 1, 5)
            }],
            "level 0: gate noise, balancing losses and shared selections",
        ),
    ] {
        match Trainer::new(gpu(), ple(levels.clone(), 2), 4) {
            Err(e @ Error::Invalid { .. }) => {
                assert!(e.to_string().contains(want), "{e} should say {want}")
            }
            Err(e) => panic!("{levels:?}: wrong error {e}"),
            Ok(_) => panic!("{levels:?} accepted"),
        }
    }
}

/// A PLE checkpoint holds the levels in its description and level-indexed tensors;
/// it loads back to the same config and bits, and training resumes bitwise.
#[test]
fn ple_checkpoints_round_trip_and_resume_bitwise() {
    let (_, config) = configs().swap_remove(1);
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    for step in 0..2 {
        let (x, y) = batch(&config, ROWS, 60 + step);
        trainer.step(&x, &y).unwrap();
    }
    let saved = trainer.checkpoint().unwrap();
    let bytes = saved.to_bytes().unwrap();
    let text = String::from_utf8_lossy(&bytes);
    // The description is JSON inside the safetensors header's JSON: quotes escaped.
    let description = text.replace("\\\"", "\"");
    assert!(description.contains(r#""kind":"ple","levels":[{"shared_experts":2,"task_experts":1"#));
    assert!(text.contains("levels.1.gate.weight"));
    let loaded = Checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.config(), &config);
    assert_eq!(loaded.to_bytes().unwrap(), bytes);
    let mut resumed = Trainer::from_checkpoint(gpu(), &loaded, ROWS).unwrap();
    let (x, y) = batch(&config, ROWS, 99);
    trainer.step(&x, &y).unwrap();
    resumed.step(&x, &y).unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(
        bits(trainer.parameters().unwrap()),
        bits(resumed.parameters().unwrap())
    );
}
