//! Which tensors a checkpoint of a config holds, with their names and shapes.

use crate::graph::{Graph, Role};
use crate::model::{Architecture, ModelConfig, build};
use crate::shape::{OptimizerConfig, TableOptimizer};
use crate::{Error, Result};

/// The optimizer state tensors kept per parameter, by the names PyTorch's
/// optimizers use in their `state` dicts.
pub fn state_names(optimizer: &OptimizerConfig) -> &'static [&'static str] {
    match optimizer {
        OptimizerConfig::Sgd { .. } => &["momentum_buffer"],
        OptimizerConfig::Adam { .. } | OptimizerConfig::AdamW { .. } => &["exp_avg", "exp_avg_sq"],
    }
}

/// The optimizer state tensors kept per embedding table of a model trained with
/// `dense` and `tables`: PyTorch's `SparseAdam` (`exp_avg`, `exp_avg_sq`) and
/// `Adagrad` (`sum`) names, or the dense optimizer's ([`state_names`]) for tables it
/// trains.
pub fn table_state_names(
    dense: &OptimizerConfig,
    tables: &TableOptimizer,
) -> &'static [&'static str] {
    match tables {
        TableOptimizer::Dense => state_names(dense),
        TableOptimizer::LazyAdam { .. } => &["exp_avg", "exp_avg_sq"],
        TableOptimizer::Adagrad { .. } => &["sum"],
    }
}

/// The name of state tensor `state` (see [`state_names`]) of `parameter`.
pub fn state_tensor_name(state: &str, parameter: &str) -> String {
    format!("optimizer.{state}.{parameter}")
}

/// Every tensor of a checkpoint of `config`, in order: the parameters, the tables,
/// then each optimizer state in [`state_names`] order for every parameter, then each
/// table's state in [`table_state_names`] order.
pub(crate) fn layout(config: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
    check_dimensions(config, 1)?;
    Ok(graph_layout(config, &build(config, 1)?.graph))
}

/// [`layout`] of `config`'s graph.
pub(crate) fn graph_layout(config: &ModelConfig, graph: &Graph) -> Vec<(String, Vec<usize>)> {
    let parameters: Vec<(String, Vec<usize>)> = graph
        .with_role(Role::Parameter)
        .into_iter()
        .map(|id| {
            (
                graph.tensor(id).name.clone(),
                graph.tensor(id).shape.clone(),
            )
        })
        .collect();
    let tables: Vec<(String, Vec<usize>)> = graph
        .tables()
        .iter()
        .map(|t| (t.name.clone(), vec![t.vocab, t.dim]))
        .collect();
    let mut all = parameters.clone();
    all.extend(tables.iter().cloned());
    for state in state_names(&config.optimizer) {
        all.extend(
            parameters
                .iter()
                .map(|(name, shape)| (state_tensor_name(state, name), shape.clone())),
        );
    }
    for state in table_state_names(&config.optimizer, &config.table_optimizer) {
        all.extend(
            tables
                .iter()
                .map(|(name, shape)| (state_tensor_name(state, name), shape.clone())),
        );
    }
    all
}

/// Errs when the sizes in `config` at `capacity` rows are so large that a tensor's
/// element count (a product of at most three of them) would overflow `usize`: such
/// a config can only come from a damaged or hostile file, and refusing it up front
/// keeps the graph builder's arithmetic exact.
pub(crate) fn check_dimensions(config: &ModelConfig, capacity: usize) -> Result<()> {
    let mut dims: Vec<usize> = vec![
        config.inputs,
        config.input_width(),
        config.tasks.len(),
        capacity,
    ];
    for f in &config.fields {
        dims.extend([f.vocab, f.dim, f.max_bag()]);
    }
    dims.extend(&config.shared_layers);
    dims.extend(&config.tower_layers);
    match &config.architecture {
        Architecture::Mmoe {
            experts,
            expert_layers,
            task_experts,
            ..
        } => {
            dims.extend([*experts, *task_experts]);
            // The experts of every task together.
            dims.push(experts.saturating_add(task_experts.saturating_mul(config.tasks.len())));
            dims.extend(expert_layers);
        }
        Architecture::Omoe {
            experts,
            expert_layers,
            ..
        } => {
            dims.push(*experts);
            dims.extend(expert_layers);
        }
        Architecture::SharedBottom { bottom_layers } => dims.extend(bottom_layers),
        Architecture::Ple { levels } => {
            for level in levels {
                dims.extend([level.shared_experts, level.task_experts]);
                dims.push(level.total_experts(config.tasks.len()));
                dims.extend(&level.expert_layers);
            }
        }
    }
    dims.sort_unstable_by(|a, b| b.cmp(a));
    let product = dims
        .iter()
        .take(3)
        .fold(1u128, |p, &d| p.saturating_mul(d as u128));
    if product > usize::MAX as u128 {
        return Err(Error::invalid(
            "model config",
            format!(
                "sizes {:?} make tensors of over {} elements",
                &dims[..3],
                usize::MAX
            ),
        ));
    }
    Ok(())
}
