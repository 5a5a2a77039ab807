//! From a [`ModelConfig`] to a [`Graph`], and the seeded initial parameters.

use super::config::{Architecture, GateKind, ModelConfig};
use crate::Result;
use crate::graph::{GateSpec, Graph, Init, Plan, Role, TensorId};
use crate::rng::Rng;
use crate::shape::{Activation, ExpertAccess, InputLayout, TaskLoss};

/// A model's graph and the tensors the trainer feeds and reads.
#[derive(Clone, Debug)]
pub struct ModelGraph {
    /// The graph.
    pub graph: Graph,
    /// Inputs `[rows, inputs]`.
    pub x: TensorId,
    /// Targets `[tasks, rows]`.
    pub targets: TensorId,
    /// Head outputs `[tasks, rows, 1]` (logits for classification tasks).
    pub predictions: TensorId,
    /// Gate values `[gates, rows, experts]`, for models with gates.
    pub gate_values: Option<TensorId>,
    /// The draws `ε: [gates, rows, experts]` of a noisy gate's training steps.
    pub gate_noise: Option<TensorId>,
    /// Number of gates: tasks for MMoE, 1 for OMoE, 0 for shared-bottom.
    pub gates: usize,
}

/// Builds the graph of `config` for batches of up to `capacity` rows.
///
/// Parameter names: `shared.{i}`, `experts.{i}` (all experts of layer `i` as one
/// `[experts, in, out]` tensor), `bottom.{i}`, `gate`, `gate.noise` (noisy gates),
/// `towers.{i}` and `heads`, each with `.weight` and `.bias`.
pub fn build(config: &ModelConfig, capacity: usize) -> Result<ModelGraph> {
    config.validate()?;
    let tasks = config.tasks.len();
    let mut graph = Graph::new(capacity)?;
    let x = graph.input("x", config.inputs)?;
    let relu = Activation::Relu;
    let mut below = x;
    for (i, &width) in config.shared_layers.iter().enumerate() {
        below = graph.dense(
            &format!("shared.{i}"),
            below,
            1,
            width,
            relu,
            InputLayout::Shared,
        )?;
    }
    let (mixture, gates) = match &config.architecture {
        Architecture::Mmoe {
            expert_layers,
            gate,
            ..
        }
        | Architecture::Omoe {
            expert_layers,
            gate,
            ..
        } => {
            let experts = config.architecture.total_experts(tasks);
            let mut h = below;
            for (i, &width) in expert_layers.iter().enumerate() {
                let layout = if i == 0 {
                    InputLayout::Shared
                } else {
                    InputLayout::PerGroup
                };
                h = graph.dense(&format!("experts.{i}"), h, experts, width, relu, layout)?;
            }
            let (gates, access) = match config.architecture {
                Architecture::Mmoe {
                    experts: shared,
                    task_experts,
                    ..
                } if task_experts > 0 => (
                    tasks,
                    ExpertAccess::SharedAndOwn {
                        shared,
                        own: task_experts,
                    },
                ),
                Architecture::Mmoe { .. } => (tasks, ExpertAccess::All),
                _ => (1, ExpertAccess::All),
            };
            let spec = GateSpec {
                k: match gate.kind {
                    GateKind::TopK { k } => Some(k),
                    GateKind::Softmax | GateKind::Static => None,
                },
                access,
                selection: gate.selection,
                input_dependent: gate.kind != GateKind::Static,
                balance_weight: gate.balance_weight,
                balance_loss: gate.balance_loss,
                noisy: gate.noisy,
            };
            (graph.gate_mix("gate", below, h, gates, spec)?, gates)
        }
        Architecture::SharedBottom { bottom_layers } => {
            let mut b = below;
            for (i, &width) in bottom_layers.iter().enumerate() {
                b = graph.dense(
                    &format!("bottom.{i}"),
                    b,
                    1,
                    width,
                    relu,
                    InputLayout::Shared,
                )?;
            }
            (b, 0)
        }
    };
    // Towers read their own mixture under MMoE, the one shared output otherwise.
    let mut layout = if gates == tasks {
        InputLayout::PerGroup
    } else {
        InputLayout::Shared
    };
    let mut top = mixture;
    for (i, &width) in config.tower_layers.iter().enumerate() {
        top = graph.dense(&format!("towers.{i}"), top, tasks, width, relu, layout)?;
        layout = InputLayout::PerGroup;
    }
    let predictions = graph.dense("heads", top, tasks, 1, Activation::Identity, layout)?;
    let targets = graph.target("targets", tasks)?;
    let losses = config
        .tasks
        .iter()
        .map(|t| TaskLoss {
            kind: t.kind.loss(),
            weight: t.weight,
        })
        .collect();
    graph.loss("loss", predictions, targets, losses)?;
    let gate_values = graph.find("gate.values");
    let gate_noise = graph.find("gate.noise.eps");
    Ok(ModelGraph {
        graph,
        x,
        targets,
        predictions,
        gate_values,
        gate_noise,
        gates,
    })
}

/// The flat initial parameters of `graph` laid out by `plan`: each parameter drawn
/// from its own stream of `seed`, so adding a layer leaves the others' draws alone
/// and every expert starts different.
pub fn initial_parameters(graph: &Graph, plan: &Plan, seed: u64) -> Vec<f32> {
    let root = Rng::new(seed);
    let mut params = vec![0.0f32; plan.param_len];
    for (index, id) in graph.with_role(Role::Parameter).into_iter().enumerate() {
        let tensor = graph.tensor(id);
        let offset = plan.param_offsets[id.0].expect("parameters have offsets");
        let limit = match tensor.init.expect("parameters have an init") {
            Init::Zeros => continue,
            Init::HeUniform { fan_in } => (6.0 / fan_in as f64).sqrt(),
            Init::GlorotUniform { fan_in, fan_out } => (6.0 / (fan_in + fan_out) as f64).sqrt(),
        };
        let mut rng = root.fork(index as u64);
        for p in &mut params[offset..offset + tensor.len()] {
            *p = rng.uniform(-limit, limit) as f32;
        }
    }
    params
}
