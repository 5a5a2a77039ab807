//! Which tensors a checkpoint of a config holds, with their names and shapes.

use crate::graph::Role;
use crate::model::{Architecture, ModelConfig, build};
use crate::shape::OptimizerConfig;
use crate::{Error, Result};

/// The optimizer state tensors kept per parameter, by the names PyTorch's
/// optimizers use in their `state` dicts.
pub fn state_names(optimizer: &OptimizerConfig) -> &'static [&'static str] {
    match optimizer {
        OptimizerConfig::Sgd { .. } => &["momentum_buffer"],
        OptimizerConfig::Adam { .. } | OptimizerConfig::AdamW { .. } => &["exp_avg", "exp_avg_sq"],
    }
}

/// The name of state tensor `state` (see [`state_names`]) of `parameter`.
pub fn state_tensor_name(state: &str, parameter: &str) -> String {
    format!("optimizer.{state}.{parameter}")
}

/// Every tensor of a checkpoint of `config`, in order: the parameters, then each
/// optimizer state in [`state_names`] order for every parameter.
pub(crate) fn layout(config: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
    check_dimensions(config, 1)?;
    let model = build(config, 1)?;
    let graph = &model.graph;
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
    let mut all = parameters.clone();
    for state in state_names(&config.optimizer) {
        all.extend(
            parameters
                .iter()
                .map(|(name, shape)| (state_tensor_name(state, name), shape.clone())),
        );
    }
    Ok(all)
}

/// Errs when the sizes in `config` at `capacity` rows are so large that a tensor's
/// element count (a product of at most three of them) would overflow `usize`: such
/// a config can only come from a damaged or hostile file, and refusing it up front
/// keeps the graph builder's arithmetic exact.
pub(crate) fn check_dimensions(config: &ModelConfig, capacity: usize) -> Result<()> {
    let mut dims: Vec<usize> = vec![config.inputs, config.tasks.len(), capacity];
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
