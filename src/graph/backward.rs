//! The backward pass of a graph: which kernels run, in which order, and which
//! gradients they overwrite or accumulate into.

use super::{Graph, Op, Role, TensorId};
use crate::{Error, Result};

/// One step of the backward pass. Steps run in the order given; each names the
/// forward node (index into [`Graph::nodes`]) it differentiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackwardStep {
    /// `dW`, `db` of a dense node.
    DenseWeights {
        /// Forward node.
        node: usize,
    },
    /// `dX` of a dense node, added to what later consumers of `X` wrote when
    /// `accumulate`.
    DenseInput {
        /// Forward node.
        node: usize,
        /// Add into `dX` instead of overwriting it.
        accumulate: bool,
    },
    /// `dH`, `dWg`, `dbg` of a gate-mix node, and `dX` when `dx` is `Some(accumulate)`;
    /// for a noisy gate also the gradient of its noise logits, which the noise layer's
    /// own steps (after this one) carry on.
    GateMix {
        /// Forward node.
        node: usize,
        /// Whether `dX` is produced, and if so whether it accumulates.
        dx: Option<bool>,
    },
    /// The compact gradient of the table rows a lookup's batch touched, from its
    /// columns of `dX`; added to what another lookup of the same table wrote when
    /// `accumulate` (lookups of one table sum in reverse node order).
    Embedding {
        /// Forward node.
        node: usize,
        /// Add into the table's gradient instead of overwriting it.
        accumulate: bool,
    },
}

impl BackwardStep {
    /// The forward node this step differentiates.
    pub fn node(&self) -> usize {
        match *self {
            BackwardStep::DenseWeights { node }
            | BackwardStep::DenseInput { node, .. }
            | BackwardStep::GateMix { node, .. }
            | BackwardStep::Embedding { node, .. } => node,
        }
    }
}

/// Whether a gradient flows into each tensor: parameters, inputs that lookups write
/// embeddings into, and activations computed from them.
pub fn needs_grad(graph: &Graph) -> Vec<bool> {
    let mut needs: Vec<bool> = graph
        .tensors()
        .iter()
        .map(|t| t.role == Role::Parameter)
        .collect();
    for op in graph.nodes() {
        if matches!(op, Op::Embedding { .. }) || op.inputs().iter().any(|t| needs[t.0]) {
            for t in op.outputs() {
                needs[t.0] = true;
            }
        }
    }
    needs
}

/// The backward steps of `graph`, last node first. The loss node needs no step: its
/// dispatch writes the gradient of the predictions.
///
/// Each parameter belongs to one node, so parameter gradients are always
/// overwritten; an activation (or an input with lookups) read by several nodes has
/// its gradient overwritten by the first step that reaches it and accumulated by the
/// others, in reverse node order. A table's gradient is overwritten by its last
/// lookup and accumulated by the earlier ones.
pub fn backward_steps(graph: &Graph) -> Result<Vec<BackwardStep>> {
    let needs = needs_grad(graph);
    let activation_needs =
        |t: TensorId| needs[t.0] && matches!(graph.tensor(t).role, Role::Activation | Role::Input);
    let mut written = vec![false; graph.tensors().len()];
    let mut table_written = vec![false; graph.tables().len()];
    let mut steps = Vec::new();
    for (node, op) in graph.nodes().iter().enumerate().rev() {
        match op {
            Op::Embedding { table, x, .. } => {
                if !written[x.0] {
                    return Err(Error::invalid(
                        "graph backward",
                        format!(
                            "no node reads `{}`, the input of a lookup",
                            graph.tensor(*x).name
                        ),
                    ));
                }
                steps.push(BackwardStep::Embedding {
                    node,
                    accumulate: table_written[*table],
                });
                table_written[*table] = true;
            }
            Op::Loss { predictions, .. } => written[predictions.0] = true,
            Op::Dense { x, y, .. } => {
                if !written[y.0] {
                    continue;
                }
                steps.push(BackwardStep::DenseWeights { node });
                if activation_needs(*x) {
                    steps.push(BackwardStep::DenseInput {
                        node,
                        accumulate: written[x.0],
                    });
                    written[x.0] = true;
                }
            }
            Op::GateMix {
                x, wg, h, m, noise, ..
            } => {
                if !written[m.0] {
                    continue;
                }
                if written[h.0] {
                    return Err(Error::invalid(
                        "graph backward",
                        format!(
                            "expert outputs `{}` feed more than one node; the gate-mix backward overwrites their gradient",
                            graph.tensor(*h).name
                        ),
                    ));
                }
                written[h.0] = true;
                if let Some(noise) = noise {
                    written[noise.n.0] = true;
                }
                // A static gate's logits do not depend on its input.
                let dx = (wg.is_some() && activation_needs(*x)).then_some(written[x.0]);
                if dx.is_some() {
                    written[x.0] = true;
                }
                steps.push(BackwardStep::GateMix { node, dx });
            }
        }
    }
    Ok(steps)
}
