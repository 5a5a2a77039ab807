//! Building the GPU executor's dispatches: every node of the graph, forward and
//! backward, as kernel calls over the executor's buffers, once per batch size.

use super::GpuExecutor;
use crate::Result;
use crate::graph::plan::{ScratchKind, max_routes_per_row};
use crate::graph::{BackwardStep, GateNoise, Op, TensorId, at_rows};
use crate::kernels::balance::{BalanceBackward, BalanceForward, BalanceLoad};
use crate::kernels::gate_mix::{ForwardStages, GateMixBackward, GateMixForward, GateMixTopK};
use crate::kernels::grouped_gemm::{
    GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward, RowMap, SlotScratch,
};
use crate::kernels::loss::LossForward;
use crate::kernels::noise::{NoiseBackward, NoiseForward};
use crate::kernels::routing::RoutingForward;
use crate::kernels::{BufferView, Dispatch, Precision};
use crate::shape::{Activation, BalanceLoss, ExpertAccess, InputLayout, RoutingShape};

/// The dispatches of one batch size, built once.
pub(super) struct Recorded {
    /// The training forward pass, gate noise included.
    pub(super) forward: Vec<Dispatch>,
    /// The forward pass without gate noise, for graphs that have some (the
    /// training one serves otherwise).
    pub(super) inference: Option<Vec<Dispatch>>,
    pub(super) loss: Vec<Dispatch>,
    pub(super) backward: Vec<Dispatch>,
}

impl GpuExecutor {
    pub(super) fn build(&self, rows: usize) -> Result<Recorded> {
        let noisy_graph = self.plan.noise_of.iter().any(Option::is_some);
        let mut recorded = Recorded {
            forward: self.build_forward(rows, true)?,
            inference: noisy_graph
                .then(|| self.build_forward(rows, false))
                .transpose()?,
            loss: Vec::new(),
            backward: Vec::new(),
        };
        for op in self.graph.nodes() {
            if let Op::Loss {
                tasks,
                predictions,
                targets,
                loss,
            } = at_rows(op, rows)
            {
                recorded.loss.push(self.loss_kernel.forward(&LossForward {
                    precision: Precision::F32,
                    rows,
                    tasks: &tasks,
                    predictions: self.view(predictions),
                    targets: self.view(targets),
                    loss: self.view(loss),
                    grad: self.grad_view(predictions),
                })?);
            }
        }
        for &step in &self.plan.backward {
            self.build_backward(step, rows, &mut recorded.backward)?;
        }
        Ok(recorded)
    }

    /// The forward pass up to the loss, with gate noise (`noisy`, the training pass)
    /// or without.
    fn build_forward(&self, rows: usize, noisy: bool) -> Result<Vec<Dispatch>> {
        let mut forward = Vec::new();
        for (node, op) in self.graph.nodes().iter().enumerate() {
            match at_rows(op, rows) {
                // Sparse experts run inside their gate's forward, below.
                Op::Dense { .. } if self.plan.routed_by[node].is_some() => {}
                Op::Dense { .. } if !noisy && self.plan.noise_of[node].is_some() => {}
                Op::Dense {
                    shape,
                    activation,
                    x,
                    w,
                    b,
                    y,
                } => forward.push(self.gemm.forward(&GroupedGemmForward {
                    precision: Precision::F32,
                    shape,
                    activation,
                    x: self.view(x),
                    w: self.view(w),
                    bias: b.map(|b| self.view(b)),
                    y: self.view(y),
                })?),
                Op::GateMix {
                    shape,
                    k,
                    access,
                    selection,
                    balance_weight,
                    balance_loss,
                    x,
                    wg,
                    bg,
                    h,
                    g,
                    m,
                    noise,
                } => {
                    // The load loss averages the full softmax, which the gate phase
                    // writes next to G.
                    let full_softmax = (balance_weight > 0.0 && balance_loss == BalanceLoss::Load)
                        .then(|| self.scratch_view(node, ScratchKind::FullSoftmax));
                    let experts: Vec<usize> = (0..node)
                        .filter(|&e| self.plan.routed_by[e] == Some(node))
                        .collect();
                    let noise = noise.filter(|_| noisy);
                    if let Some(GateNoise { n, eps }) = noise {
                        forward.push(self.noise.forward(&NoiseForward {
                            shape: shape.into(),
                            precision: Precision::F32,
                            n: self.view(n),
                            eps: self.view(eps),
                            offset: self.scratch_view(node, ScratchKind::LogitOffset),
                        })?);
                    }
                    let args = GateMixForward {
                        precision: Precision::F32,
                        shape,
                        x: self.view(x),
                        wg: self.gate_weights(node, wg),
                        bg: self.view(bg),
                        h: self.view(h),
                        g: self.view(g),
                        m: self.view(m),
                    };
                    let gate = |stages| {
                        let top_k = GateMixTopK {
                            k,
                            access,
                            selection,
                            stages,
                            logit_offset: noise
                                .map(|_| self.scratch_view(node, ScratchKind::LogitOffset)),
                            full_softmax,
                        };
                        self.gate_mix.forward_top_k(&args, &top_k)
                    };
                    if k == shape.experts
                        && access == ExpertAccess::All
                        && noise.is_none()
                        && full_softmax.is_none()
                    {
                        // The paper's gate, under its own name in profiles.
                        forward.push(self.gate_mix.forward(&args)?);
                    } else if experts.is_empty() {
                        forward.push(gate(ForwardStages::Both)?);
                    } else {
                        // Gate values first, so each expert runs on its routed rows
                        // only; then the mixtures.
                        forward.push(gate(ForwardStages::GateOnly)?);
                        let routes = self.scratch_view(node, ScratchKind::RowMap);
                        forward.push(self.routing.forward(&RoutingForward {
                            shape: RoutingShape {
                                gates: shape.gates,
                                rows,
                                experts: shape.experts,
                            },
                            precision: Precision::F32,
                            g: self.view(g),
                            routes,
                        })?);
                        for expert in experts {
                            forward.push(self.expert_forward(expert, rows)?);
                        }
                        forward.push(gate(ForwardStages::MixOnly)?);
                    }
                    if let Some(p) = full_softmax {
                        forward.push(self.balance.forward_load(
                            &BalanceForward {
                                shape: shape.into(),
                                weight: balance_weight,
                                precision: Precision::F32,
                                g: self.view(g),
                                stats: self.scratch_view(node, ScratchKind::BalanceStats),
                            },
                            &BalanceLoad {
                                k,
                                seen: access.visible(&shape),
                                p,
                            },
                        )?);
                    } else if balance_weight > 0.0 {
                        forward.push(self.balance.forward(&BalanceForward {
                            shape: shape.into(),
                            weight: balance_weight,
                            precision: Precision::F32,
                            g: self.view(g),
                            stats: self.scratch_view(node, ScratchKind::BalanceStats),
                        })?);
                    }
                }
                Op::Embedding { .. } => forward.extend(self.lookup_forward(node, rows)?),
                Op::Loss { .. } => {}
            }
        }
        Ok(forward)
    }

    /// The activation a dense node's backward applies: the identity where the gate
    /// + mix reading its output already stored the gradient at the ReLU's input.
    fn backward_activation(&self, activation: Activation, y: TensorId) -> Activation {
        if self.plan.relu_applied[y.0] {
            Activation::Identity
        } else {
            activation
        }
    }

    fn build_backward(
        &self,
        step: BackwardStep,
        rows: usize,
        out: &mut Vec<Dispatch>,
    ) -> Result<()> {
        let node = step.node();
        match (step, at_rows(&self.graph.nodes()[node], rows)) {
            (
                BackwardStep::DenseWeights { .. },
                Op::Dense {
                    shape,
                    activation,
                    x,
                    w,
                    b,
                    y,
                },
            ) => {
                let activation = self.backward_activation(activation, y);
                let args = GroupedGemmBackwardWeights {
                    precision: Precision::F32,
                    shape,
                    activation,
                    x: self.view(x),
                    dy: self.grad_view(y),
                    y: (activation == Activation::Relu).then(|| self.view(y)),
                    dw: self.grad_view(w),
                    db: b.map(|b| self.grad_view(b)),
                };
                out.push(match self.plan.routed_by[node] {
                    Some(gate) => self
                        .gemm
                        .backward_weights_ragged(&args, self.row_map(gate))?,
                    None => self.gemm.backward_weights(&args)?,
                });
            }
            (
                BackwardStep::DenseInput { accumulate, .. },
                Op::Dense {
                    shape,
                    activation,
                    x,
                    w,
                    y,
                    ..
                },
            ) => {
                let activation = self.backward_activation(activation, y);
                let args = GroupedGemmBackwardInput {
                    precision: Precision::F32,
                    shape,
                    activation,
                    dy: self.grad_view(y),
                    y: (activation == Activation::Relu).then(|| self.view(y)),
                    w: self.view(w),
                    dx: self.grad_view(x),
                    accumulate,
                };
                match self.plan.routed_by[node] {
                    // Only the rows the gate routed to each expert. Column windows take
                    // the dense pass: after a ragged ReLU forward dZ is zero on the
                    // unrouted rows, so it gives the same gradient.
                    Some(gate) if !matches!(shape.input, InputLayout::Columns(_)) => {
                        let scratch = (shape.input == InputLayout::Shared).then(|| {
                            SlotScratch::new(
                                self.scratch_view(node, ScratchKind::InputGradSlots),
                                max_routes_per_row(&self.graph, gate),
                            )
                        });
                        out.extend(self.gemm.backward_input_ragged(
                            &args,
                            self.row_map(gate),
                            scratch,
                        )?);
                    }
                    _ => out.push(self.gemm.backward_input(&args)?),
                }
            }
            (
                BackwardStep::GateMix { dx, .. },
                Op::GateMix {
                    shape,
                    x,
                    wg,
                    bg,
                    h,
                    g,
                    m,
                    balance_weight,
                    balance_loss,
                    noise,
                    ..
                },
            ) => {
                let mut dispatches = self.gate_mix.backward(&GateMixBackward {
                    precision: Precision::F32,
                    shape,
                    x: self.view(x),
                    wg: self.gate_weights(node, wg),
                    h: self.view(h),
                    g: self.view(g),
                    dm: self.grad_view(m),
                    dh: self.grad_view(h),
                    dz: self.scratch_view(node, ScratchKind::LogitGrad),
                    dwg: match wg {
                        Some(wg) => self.grad_view(wg),
                        None => self.scratch_view(node, ScratchKind::WeightGradSink),
                    },
                    dbg: self.grad_view(bg),
                    dx: dx.map(|_| self.grad_view(x)),
                    accumulate_dx: dx == Some(true),
                    relu_dh: self.plan.relu_applied[h.0],
                })?;
                // The balancing loss adds to dz after the gate writes it, before the
                // GEMMs read it.
                if balance_weight > 0.0 {
                    // The load loss's gradient is the importance loss's with the full
                    // softmax in place of G.
                    let balance = self.balance.backward(&BalanceBackward {
                        shape: shape.into(),
                        precision: Precision::F32,
                        g: match balance_loss {
                            BalanceLoss::Importance => self.view(g),
                            BalanceLoss::Load => self.scratch_view(node, ScratchKind::FullSoftmax),
                        },
                        stats: self.scratch_view(node, ScratchKind::BalanceStats),
                        dz: self.scratch_view(node, ScratchKind::LogitGrad),
                    })?;
                    dispatches.insert(1, balance);
                }
                // dn reads the final dz: after the balancing loss added its share.
                if let Some(GateNoise { n, eps }) = noise {
                    dispatches.push(self.noise.backward(&NoiseBackward {
                        shape: shape.into(),
                        precision: Precision::F32,
                        n: self.view(n),
                        eps: self.view(eps),
                        dz: self.scratch_view(node, ScratchKind::LogitGrad),
                        dn: self.grad_view(n),
                    })?);
                }
                out.extend(dispatches);
            }
            (BackwardStep::Embedding { accumulate, .. }, Op::Embedding { .. }) => {
                out.push(self.lookup_backward(node, rows, accumulate)?);
            }
            (step, op) => unreachable!("backward step {step:?} does not match node {op:?}"),
        }
        Ok(())
    }

    /// The forward of expert layer `node` on the rows its sparse gate routes to it.
    fn expert_forward(&self, node: usize, rows: usize) -> Result<Dispatch> {
        let Op::Dense {
            shape,
            activation,
            x,
            w,
            b,
            y,
        } = at_rows(&self.graph.nodes()[node], rows)
        else {
            unreachable!("routed nodes are dense");
        };
        let gate = self.plan.routed_by[node].expect("a routed node");
        self.gemm.forward_ragged(
            &GroupedGemmForward {
                precision: Precision::F32,
                shape,
                activation,
                x: self.view(x),
                w: self.view(w),
                bias: b.map(|b| self.view(b)),
                y: self.view(y),
            },
            self.row_map(gate),
        )
    }

    /// The row map sparse gate `gate` writes.
    fn row_map(&self, gate: usize) -> RowMap<'_> {
        RowMap {
            routes: self.scratch_view(gate, ScratchKind::RowMap),
        }
    }

    /// A gate's weights: its parameter, or a static gate's zeros.
    fn gate_weights(&self, node: usize, wg: Option<TensorId>) -> BufferView<'_> {
        match wg {
            Some(wg) => self.view(wg),
            None => self.scratch_view(node, ScratchKind::ZeroWeights),
        }
    }
}
