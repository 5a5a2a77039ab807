//! From a [`ModelConfig`] to a [`Graph`], and the seeded initial parameters.

use super::config::{Architecture, Gate, GateKind, Level, ModelConfig};
use super::fields::table_name;
use crate::Result;
use crate::graph::{GateSpec, Graph, Init, Plan, Role, TensorId};
use crate::kernels::LOOP_BUDGET;
use crate::rng::Rng;
use crate::shape::{Activation, ColumnWindows, EmbeddingBounds, ExpertAccess, InputLayout};

/// A model's graph and the tensors the trainer feeds and reads.
#[derive(Clone, Debug)]
pub struct ModelGraph {
    /// The graph.
    pub graph: Graph,
    /// Inputs `[rows, input_width]`: the dense features, then each field's columns
    /// (written by its lookup).
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
/// `towers.{i}` and `heads`, each with `.weight` and `.bias`. Tables:
/// `embeddings.{field}.weight`, one per field with a table of its own, in field
/// order; the lookups ([`Graph::lookups`]) are the fields, in order.
pub fn build(config: &ModelConfig, capacity: usize) -> Result<ModelGraph> {
    config.validate()?;
    let tasks = config.tasks.len();
    let mut graph = Graph::new(capacity)?;
    let x = graph.input("x", config.input_width())?;
    add_lookups(config, &mut graph, x)?;
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
            let windows = config.expert_windows()?;
            let mut h = below;
            for (i, &width) in expert_layers.iter().enumerate() {
                let layout = match (i, windows) {
                    (0, Some(windows)) => InputLayout::Columns(windows),
                    (0, None) => InputLayout::Shared,
                    _ => InputLayout::PerGroup,
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
            let spec = gate_spec(gate, access);
            (graph.gate_mix("gate", below, h, gates, spec)?, gates)
        }
        Architecture::Ple { levels } => (add_levels(&mut graph, levels, tasks, below)?, tasks),
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
    let losses = super::esmm::task_losses(&config.tasks);
    graph.loss("loss", predictions, targets, losses)?;
    let gate_values = graph
        .find("gate.values")
        .or_else(|| graph.find(&format!("{}.values", level_name(config, "gate"))));
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

/// The name of `what` (`experts.{i}`, `gate`) in the last level of `config`: as in
/// MMoE for one level, `levels.{l}.` before it for more.
fn level_name(config: &ModelConfig, what: &str) -> String {
    match &config.architecture {
        Architecture::Ple { levels } if levels.len() > 1 => {
            format!("levels.{}.{what}", levels.len() - 1)
        }
        _ => what.to_string(),
    }
}

/// The gate of a level, or of an MMoE or OMoE, as the graph takes it.
fn gate_spec(gate: &Gate, access: ExpertAccess) -> GateSpec {
    GateSpec {
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
    }
}

/// The extraction levels of a PLE model on `x` (`[rows, d]`), each level's experts
/// one grouped GEMM per layer and its gates one gate + mix; returns the last level's
/// task outputs `[tasks, rows, width]`. A level's output is `[tasks + 1, rows,
/// width]`, the task outputs then the shared one (the last level has no shared
/// output), which is the next level's input blocks ([`InputLayout::Level`]).
///
/// Names: one level is named as MMoE (`experts.{i}`, `gate`); with more, level `l`'s
/// are `levels.{l}.experts.{i}` and `levels.{l}.gate`.
fn add_levels(graph: &mut Graph, levels: &[Level], tasks: usize, x: TensorId) -> Result<TensorId> {
    let mut input = x;
    for (l, level) in levels.iter().enumerate() {
        let prefix = if levels.len() == 1 {
            String::new()
        } else {
            format!("levels.{l}.")
        };
        let last = l + 1 == levels.len();
        let (shared, own) = (level.shared_experts, level.task_experts);
        let experts = level.total_experts(tasks);
        let mut h = input;
        for (i, &width) in level.expert_layers.iter().enumerate() {
            let layout = match (i, l) {
                (0, 0) => InputLayout::Shared,
                (0, _) => InputLayout::Level { tasks, shared, own },
                _ => InputLayout::PerGroup,
            };
            h = graph.dense(
                &format!("{prefix}experts.{i}"),
                h,
                experts,
                width,
                Activation::Relu,
                layout,
            )?;
        }
        let (gates, access) = match (last, own) {
            (_, 0) => (tasks + usize::from(!last), ExpertAccess::All),
            (true, _) => (tasks, ExpertAccess::SharedAndOwn { shared, own }),
            (false, _) => (tasks + 1, ExpertAccess::SharedGate { shared, own, tasks }),
        };
        let spec = gate_spec(&level.gate, access);
        input = graph.gate_mix(&format!("{prefix}gate"), input, h, gates, spec)?;
    }
    Ok(input)
}

/// The ID capacities of field `field` of `config` at batch capacity `B`: it holds at
/// most `B · max_bag` IDs (`B` for a single-valued field) and bags of `max_bag`; its
/// table's batch touches at most `min(vocab, Σ IDs of the table's fields)` rows; an
/// ID occurs at most `min(IDs, 65,533)` times in one field's batch (the kernels'
/// loop budget, less the loop's entry).
pub(super) fn field_bounds(config: &ModelConfig, field: usize, capacity: usize) -> EmbeddingBounds {
    let ids = |f: &super::FieldConfig| capacity.saturating_mul(f.max_bag());
    let f = &config.fields[field];
    let touched: usize = config
        .fields
        .iter()
        .filter(|g| g.table_field() == f.table_field())
        .map(ids)
        .fold(0, usize::saturating_add);
    EmbeddingBounds {
        ids: ids(f),
        longest_bag: f.max_bag(),
        unique: touched.min(f.vocab),
        most_occurrences: ids(f).min(LOOP_BUDGET as usize - 2),
    }
}

/// Each field's lookup into its columns of `x` ([`field_bounds`]), after the tables
/// of the fields that own one.
fn add_lookups(config: &ModelConfig, graph: &mut Graph, x: TensorId) -> Result<()> {
    let capacity = graph.capacity();
    let mut tables = Vec::new();
    for field in config.fields.iter().filter(|f| f.shares.is_none()) {
        let name = table_name(&field.name);
        let t = graph.table(&name, field.vocab, field.dim, config.table_optimizer)?;
        tables.push((field.name.as_str(), t));
    }
    for (i, field) in config.fields.iter().enumerate() {
        let owner = field.table_field();
        let &(_, table) = tables
            .iter()
            .find(|(name, _)| *name == owner)
            .expect("validated: every field's table has an owner");
        let bounds = field_bounds(config, i, capacity);
        let column = config.field_column(i);
        graph.lookup(
            &field.name,
            table,
            x,
            column,
            field.embedding_field(),
            bounds,
        )?;
    }
    Ok(())
}

/// Sub-stream of the model's seed the tables' initial values come from, apart from
/// the parameters' streams (numbered from 0).
const TABLE_STREAM: u64 = 0x7461_626c_6573_5f30; // "tables_0"

/// The initial values of every table of `graph`, `[vocab, dim]` each: standard
/// normal, as PyTorch's `nn.Embedding` starts, each table from its own stream of
/// `seed`.
pub fn initial_tables(graph: &Graph, seed: u64) -> Vec<Vec<f32>> {
    let root = Rng::new(seed).fork(TABLE_STREAM);
    graph
        .tables()
        .iter()
        .enumerate()
        .map(|(t, table)| {
            let mut rng = root.fork(t as u64);
            (0..table.len()).map(|_| rng.normal() as f32).collect()
        })
        .collect()
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
            Init::HeUniformWindows(windows) => {
                let mut rng = root.fork(index as u64);
                he_uniform_windows(
                    &windows,
                    &mut params[offset..offset + tensor.len()],
                    &mut rng,
                );
                continue;
            }
        };
        let mut rng = root.fork(index as u64);
        for p in &mut params[offset..offset + tensor.len()] {
            *p = rng.uniform(-limit, limit) as f32;
        }
    }
    params
}

/// `W: [groups, inputs, outputs]` of a layer on column windows: group `g` He-uniform
/// over its window's width (its fan-in), its padding rows zero. Draws every element
/// in order, so windows of one width start as a plain He-uniform layer would.
fn he_uniform_windows(windows: &ColumnWindows, w: &mut [f32], rng: &mut Rng) {
    let groups = windows.groups();
    let per_group = w.len() / groups.max(1);
    let inputs = windows.max_width();
    let outputs = per_group / inputs.max(1);
    for (g, block) in w.chunks_mut(per_group.max(1)).enumerate().take(groups) {
        let width = windows.window_of(g).1;
        let limit = (6.0 / width as f64).sqrt();
        for (at, p) in block.iter_mut().enumerate() {
            let v = rng.uniform(-limit, limit) as f32;
            *p = if at / outputs.max(1) < width { v } else { 0.0 };
        }
    }
}
