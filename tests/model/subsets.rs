//! Experts on feature subsets (`ModelConfig::expert_inputs`): the GPU executor
//! against the CPU executor, the CPU model against finite differences, the padding
//! of narrow windows staying zero, checkpoints, and bad subsets.

use crate::common::gpu;
use crate::model::{
    assert_executors_agree, assert_reference_matches_finite_differences, batch, tasks,
};
use mmoe_wgpu::model::{Architecture, Checkpoint, ExpertInput, Gate, ModelConfig, Trainer};

const ROWS: usize = 19;
const INPUTS: usize = 7;

fn mmoe(architecture: Architecture, expert_inputs: Vec<ExpertInput>) -> ModelConfig {
    ModelConfig {
        architecture,
        expert_inputs,
        tower_layers: vec![3],
        seed: 23,
        learning_rate: 0.01,
        ..ModelConfig::mmoe(INPUTS, 1, 1, 3, tasks(2))
    }
}

/// Disjoint halves of unequal width (3 and 4: the narrow one padded) under two-layer
/// experts; overlapping runs (one reading everything) under a top-2 gate, whose
/// expert layer runs ragged; columns no expert reads.
fn configs() -> Vec<(&'static str, ModelConfig)> {
    vec![
        (
            "mmoe, disjoint halves, two-layer experts",
            mmoe(
                Architecture::Mmoe {
                    experts: 4,
                    expert_layers: vec![5, 4],
                    gate: Gate::SOFTMAX,
                    task_experts: 0,
                },
                vec![ExpertInput::columns(2, 0..3), ExpertInput::columns(2, 3..7)],
            ),
        ),
        (
            "omoe, overlapping windows, top-2",
            mmoe(
                Architecture::Omoe {
                    experts: 4,
                    expert_layers: vec![6],
                    gate: Gate::top_k(2),
                },
                vec![
                    ExpertInput::columns(1, 0..7),
                    ExpertInput::columns(2, 2..5),
                    ExpertInput::columns(1, 4..6),
                ],
            ),
        ),
    ]
}

#[test]
fn gpu_and_cpu_executors_agree_on_experts_on_feature_subsets() {
    for (name, config) in configs() {
        assert_executors_agree(name, &config);
    }
}

#[test]
fn feature_subset_reference_gradients_match_finite_differences() {
    for (name, config) in configs() {
        assert_reference_matches_finite_differences(name, &config);
    }
}

/// The first layer's weights are `[experts, widest window, width]`; a narrower
/// window's rows past its width start at zero and stay there through training.
#[test]
fn the_padding_of_narrow_windows_stays_zero() {
    let (_, config) = configs().swap_remove(0);
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    let shape = |t: &Trainer| {
        let g = &t.model().graph;
        g.tensor(g.find("experts.0.weight").unwrap()).shape.clone()
    };
    assert_eq!(shape(&trainer), [4, 4, 5]);
    for step in 0..5 {
        let (x, y) = batch(&config, ROWS, 40 + step);
        trainer.step(&x, &y).unwrap();
    }
    let id = trainer.model().graph.find("experts.0.weight").unwrap();
    let offset = trainer.executor().plan().param_offsets[id.0].unwrap();
    let w = &trainer.parameters().unwrap()[offset..offset + 80];
    for expert in 0..4 {
        let rows = &w[expert * 20..(expert + 1) * 20];
        let (live, padding) = rows.split_at(if expert < 2 { 15 } else { 20 });
        assert!(
            padding.iter().all(|&v| v.to_bits() == 0),
            "expert {expert}: {padding:?}"
        );
        assert!(live.iter().all(|&v| v != 0.0), "expert {expert}: {live:?}");
    }
}

/// The subsets travel in the checkpoint's description; the file loads back to the
/// same config and resumes bitwise.
#[test]
fn feature_subset_checkpoints_round_trip_and_resume_bitwise() {
    let (_, config) = configs().swap_remove(1);
    let mut trainer = Trainer::new(gpu(), config.clone(), ROWS).unwrap();
    let (x, y) = batch(&config, ROWS, 61);
    trainer.step(&x, &y).unwrap();
    let bytes = trainer.checkpoint().unwrap().to_bytes().unwrap();
    let description = String::from_utf8_lossy(&bytes).replace("\\\"", "\"");
    assert!(
        description.contains(
            r#""expert_inputs":[{"experts":1,"columns":[0,7]},{"experts":2,"columns":[2,5]}"#
        ),
        "{description}"
    );
    let loaded = Checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.config(), &config);
    let mut resumed = Trainer::from_checkpoint(gpu(), &loaded, ROWS).unwrap();
    let (x, y) = batch(&config, ROWS, 62);
    trainer.step(&x, &y).unwrap();
    resumed.step(&x, &y).unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(
        bits(trainer.parameters().unwrap()),
        bits(resumed.parameters().unwrap())
    );
}

/// Subsets outside the input, empty ones, counts that do not add up, fields the
/// model lacks or that are not adjacent, and models whose experts do not read the
/// input are errors that name the run.
#[test]
fn bad_feature_subsets_are_errors() {
    let experts = |n| Architecture::Mmoe {
        experts: n,
        expert_layers: vec![4],
        gate: Gate::SOFTMAX,
        task_experts: 0,
    };
    let cases = [
        (
            mmoe(
                experts(2),
                vec![ExpertInput::columns(1, 0..3), ExpertInput::columns(1, 5..9)],
            ),
            "run 1 reads columns 5..9, past the input's 7 columns",
        ),
        (
            mmoe(experts(2), vec![ExpertInput::columns(2, 4..4)]),
            "run 0 reads an empty subset",
        ),
        (
            mmoe(experts(3), vec![ExpertInput::columns(2, 0..4)]),
            "the runs list 2 experts but the model has 3",
        ),
        (
            mmoe(
                experts(2),
                vec![ExpertInput::columns(0, 0..4), ExpertInput::columns(2, 0..4)],
            ),
            "run 0 has no experts",
        ),
        (
            mmoe(experts(1), vec![ExpertInput::fields(1, ["user"])]),
            "run 0 names field `user`, which the model lacks",
        ),
        (
            ModelConfig {
                shared_layers: vec![4],
                ..mmoe(experts(1), vec![ExpertInput::columns(1, 0..4)])
            },
            "the experts read the shared layers' output",
        ),
        (
            mmoe(
                Architecture::SharedBottom {
                    bottom_layers: vec![4],
                },
                vec![ExpertInput::columns(1, 0..4)],
            ),
            "feature subsets are for the experts of MMoE and OMoE",
        ),
    ];
    for (config, want) in cases {
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(want), "wanted `{want}` in: {err}");
        let Err(err) = Trainer::new(gpu(), config, 4) else {
            panic!("a trainer for a bad config: {want}");
        };
        let err = err.to_string();
        assert!(err.contains(want), "wanted `{want}` in: {err}");
    }
}
