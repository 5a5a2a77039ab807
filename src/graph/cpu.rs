//! The CPU executor: runs a graph through [`crate::reference`] in `f64`, the ground
//! truth the GPU executor is tested against. Noisy gates add their noise in passes
//! given draws ([`CpuExecutor::forward_with_noise`]), as the GPU's training passes
//! do, and none in [`CpuExecutor::forward`], as its inference pass. Lookups read the
//! batches fed with [`CpuExecutor::set_lookups`].

mod tables;

use super::{BackwardStep, GateNoise, Graph, Op, Plan, TensorId, at_rows};
use crate::reference;
use crate::shape::{Activation, BalanceLoss, BalanceShape, GateMixShape, OptimizerConfig};
use crate::{Error, Result};

/// A graph's parameters, optimizer state and tensors in `f64` on the host.
#[derive(Clone, Debug)]
pub struct CpuExecutor {
    graph: Graph,
    plan: Plan,
    optimizer: OptimizerConfig,
    params: Vec<f64>,
    grads: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    values: Vec<Vec<f64>>,
    grad_values: Vec<Vec<f64>>,
    rows: usize,
    /// Whether the last forward pass added the gates' noise.
    noisy: bool,
    balance_loss: f64,
    /// Per tensor of gate values: the balancing loss's coefficients at the last
    /// forward pass, and for the load loss the full softmax p (which its backward
    /// uses in place of G).
    balance_coefficients: Vec<Option<BalanceSaved>>,
    tables: tables::Tables,
}

/// What a gate's balancing loss keeps for the backward: its coefficients, and the
/// full softmax for the load loss.
type BalanceSaved = (Vec<f64>, Option<Vec<f64>>);

impl CpuExecutor {
    /// An executor for `graph` starting from the flat `params` (laid out by `plan`).
    pub fn new(
        graph: Graph,
        plan: Plan,
        optimizer: OptimizerConfig,
        params: &[f64],
    ) -> Result<Self> {
        reference::check_len("CpuExecutor::new", "params", params, plan.param_len)?;
        let n = graph.tensors().len();
        Ok(CpuExecutor {
            tables: tables::Tables::new(&graph, &optimizer),
            optimizer,
            params: params.to_vec(),
            grads: vec![0.0; plan.param_len],
            m: vec![0.0; plan.param_len],
            v: vec![0.0; plan.param_len],
            values: vec![Vec::new(); n],
            grad_values: vec![Vec::new(); n],
            rows: 0,
            noisy: false,
            balance_loss: 0.0,
            balance_coefficients: vec![None; n],
            graph,
            plan,
        })
    }

    /// The flat parameters.
    pub fn parameters(&self) -> &[f64] {
        &self.params
    }

    /// The flat parameters, to perturb them (finite differences) or load them.
    pub fn parameters_mut(&mut self) -> &mut [f64] {
        &mut self.params
    }

    /// The load-balancing loss of every gate node at the last forward pass, summed
    /// (0 without one); the gradients include it, the loss tensor does not.
    pub fn balance_loss(&self) -> f64 {
        self.balance_loss
    }

    /// The flat gradients of the last [`backward`](Self::backward).
    pub fn gradients(&self) -> &[f64] {
        &self.grads
    }

    /// The value of a tensor after the last forward pass (parameters included).
    pub fn tensor(&self, id: TensorId) -> &[f64] {
        match self.plan.param_offsets[id.0] {
            Some(offset) => &self.params[offset..offset + self.graph.tensor(id).len()],
            None => &self.values[id.0],
        }
    }

    /// Runs the forward pass on `rows` rows of `inputs` (one slice per input tensor,
    /// in creation order) and, if given, `targets` (one per target tensor), without
    /// gate noise.
    pub fn forward(&mut self, rows: usize, inputs: &[&[f64]], targets: &[&[f64]]) -> Result<()> {
        self.forward_with_noise(rows, inputs, &[], targets)
    }

    /// [`forward`](Self::forward) with the noisy gates' draws `noise` (one slice per
    /// noise tensor, in creation order, as the GPU executor's `write_noise` takes
    /// them) added as noise, as in training; no draws at all: no noise.
    pub fn forward_with_noise(
        &mut self,
        rows: usize,
        inputs: &[&[f64]],
        noise: &[&[f64]],
        targets: &[&[f64]],
    ) -> Result<()> {
        const CTX: &str = "CpuExecutor::forward";
        let mut fed = self.graph.fed_tensors(CTX, rows, inputs, targets)?;
        if !noise.is_empty() {
            fed.extend(self.graph.fed_noise(CTX, rows, noise)?);
        }
        for (id, values) in fed {
            self.values[id.0] = values.to_vec();
        }
        self.rows = rows;
        self.noisy = !noise.is_empty();
        self.balance_loss = 0.0;
        self.balance_coefficients.iter_mut().for_each(|c| *c = None);
        let nodes: Vec<Op> = self
            .graph
            .nodes()
            .iter()
            .map(|op| at_rows(op, rows))
            .collect();
        for op in &nodes {
            if matches!(op, Op::Loss { .. }) && targets.is_empty() {
                continue;
            }
            self.forward_node(op)?;
        }
        Ok(())
    }

    fn forward_node(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::Dense {
                shape,
                activation,
                x,
                w,
                b,
                y,
            } => {
                let bias = b.map(|b| self.tensor(b).to_vec());
                self.values[y.0] = reference::grouped_gemm::forward(
                    shape,
                    *activation,
                    self.tensor(*x),
                    self.tensor(*w),
                    bias.as_deref(),
                )?;
            }
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
                let wg = self.gate_weights(shape, *wg);
                let noise = noise.filter(|_| self.noisy);
                let load = *balance_weight > 0.0 && *balance_loss == BalanceLoss::Load;
                // The logits the selection uses, noise included; the load loss reads
                // them too.
                let mut z =
                    reference::gate_topk::logits(shape, self.tensor(*x), &wg, self.tensor(*bg))?;
                if let Some(GateNoise { n, eps }) = noise {
                    let offset = reference::noise::forward(
                        &(*shape).into(),
                        self.tensor(n),
                        self.tensor(eps),
                    )?;
                    z.iter_mut().zip(&offset).for_each(|(z, o)| *z += o);
                }
                let (gv, mv) = if noise.is_none() && *k == shape.experts {
                    // The dense gate through its own reference.
                    reference::gate_mix::forward(
                        shape,
                        self.tensor(*x),
                        &wg,
                        self.tensor(*bg),
                        self.tensor(*h),
                    )?
                } else {
                    reference::gate_topk::forward_logits_selecting(
                        shape,
                        *k,
                        *access,
                        *selection,
                        &z,
                        self.tensor(*h),
                    )?
                };
                if load {
                    let p = reference::gate_topk::full_softmax(shape, *access, &z)?;
                    let stats = reference::balance::forward_load(
                        &BalanceShape::from(*shape),
                        *balance_weight as f64,
                        *k,
                        access.visible(shape),
                        &gv,
                        &p,
                    )?;
                    self.balance_loss += stats.aux.iter().sum::<f64>();
                    self.balance_coefficients[g.0] = Some((stats.coefficients, Some(p)));
                } else if *balance_weight > 0.0 {
                    let balance = BalanceShape::from(*shape);
                    let stats = reference::balance::forward(&balance, *balance_weight as f64, &gv)?;
                    self.balance_loss += stats.aux.iter().sum::<f64>();
                    self.balance_coefficients[g.0] = Some((stats.coefficients, None));
                }
                self.values[g.0] = gv;
                self.values[m.0] = mv;
            }
            Op::Embedding {
                lookup,
                table,
                shape,
                x,
            } => self.lookup_forward(*lookup, *table, shape, x.0)?,
            Op::Loss {
                tasks,
                predictions,
                targets,
                loss,
            } => {
                let kinds: Vec<_> = tasks.iter().map(|t| (t.kind, t.weight as f64)).collect();
                let (l, grad) = reference::loss::forward(
                    &kinds,
                    self.rows,
                    self.tensor(*predictions),
                    self.tensor(*targets),
                )?;
                self.values[loss.0] = l;
                self.grad_values[predictions.0] = grad;
            }
        }
        Ok(())
    }

    /// Runs the backward pass of the last forward pass (which must have had targets).
    pub fn backward(&mut self) -> Result<()> {
        if self.rows == 0 {
            return Err(Error::invalid(
                "CpuExecutor::backward",
                "no forward pass ran yet",
            ));
        }
        for step in self.plan.backward.clone() {
            self.backward_step(step)?;
        }
        Ok(())
    }

    fn backward_step(&mut self, step: BackwardStep) -> Result<()> {
        if let BackwardStep::Embedding { node, accumulate } = step {
            return self.lookup_backward(node, accumulate);
        }
        let node = step.node();
        match at_rows(&self.graph.nodes()[node], self.rows) {
            Op::Dense {
                shape,
                activation,
                x,
                w,
                b,
                y,
            } => {
                let saved = match activation {
                    Activation::Identity => vec![1.0; shape.y_len()],
                    Activation::Relu => self.values[y.0].clone(),
                };
                let grads = reference::grouped_gemm::backward(
                    &shape,
                    activation,
                    self.tensor(x),
                    self.tensor(w),
                    &saved,
                    &self.grad_values[y.0],
                )?;
                match step {
                    BackwardStep::DenseWeights { .. } => {
                        self.set_param_grad(w, &grads.dw);
                        if let Some(b) = b {
                            self.set_param_grad(b, &grads.db);
                        }
                    }
                    BackwardStep::DenseInput { accumulate, .. } => {
                        self.set_grad(x, grads.dx, accumulate)
                    }
                    BackwardStep::GateMix { .. } | BackwardStep::Embedding { .. } => {
                        unreachable!("a gate-mix or embedding step names its own kind of node")
                    }
                }
            }
            Op::GateMix {
                shape,
                x,
                wg,
                bg,
                h,
                g,
                m,
                noise,
                ..
            } => {
                let weights = self.gate_weights(&shape, wg);
                // The top-k backward is the dense one too, and it gives dz, which a
                // noisy gate's noise needs.
                let mut grads = reference::gate_topk::backward(
                    &shape,
                    self.tensor(x),
                    &weights,
                    self.tensor(h),
                    &self.values[g.0],
                    &self.grad_values[m.0],
                )?;
                if let Some((coefficients, p)) = &self.balance_coefficients[g.0] {
                    // The balancing loss's share of dz, carried through the logits GEMM
                    // (linear, so adding it afterwards is adding it to dz). The load
                    // loss's is the importance loss's with p in place of G.
                    let g = p.as_ref().unwrap_or(&self.values[g.0]);
                    let mut dz = vec![0.0; shape.g_len()];
                    reference::balance::backward(&shape.into(), g, coefficients, &mut dz)?;
                    grads.dz.iter_mut().zip(&dz).for_each(|(s, a)| *s += a);
                    let logits = reference::grouped_gemm::backward(
                        &shape.logits_gemm(),
                        Activation::Identity,
                        self.tensor(x),
                        &weights,
                        &dz,
                        &dz,
                    )?;
                    for (sum, add) in [
                        (&mut grads.dwg, &logits.dw),
                        (&mut grads.dbg, &logits.db),
                        (&mut grads.dx, &logits.dx),
                    ] {
                        sum.iter_mut().zip(add).for_each(|(s, a)| *s += a);
                    }
                }
                if let Some(GateNoise { n, eps }) = noise {
                    // The offset adds to the logits, so its gradient is dz; without
                    // noise in the forward pass, the noise layer had no effect.
                    let dn = if self.noisy {
                        reference::noise::backward(
                            &shape.into(),
                            self.tensor(n),
                            self.tensor(eps),
                            &grads.dz,
                        )?
                    } else {
                        vec![0.0; shape.g_len()]
                    };
                    self.set_grad(n, dn, false);
                }
                if let Some(wg) = wg {
                    self.set_param_grad(wg, &grads.dwg);
                }
                self.set_param_grad(bg, &grads.dbg);
                self.set_grad(h, grads.dh, false);
                if let BackwardStep::GateMix {
                    dx: Some(accumulate),
                    ..
                } = step
                {
                    self.set_grad(x, grads.dx, accumulate);
                }
            }
            Op::Loss { .. } | Op::Embedding { .. } => {
                unreachable!("the loss has no backward step; lookups were handled above")
            }
        }
        Ok(())
    }

    /// A gate's weights: its parameter, or a static gate's zeros.
    fn gate_weights(&self, shape: &GateMixShape, wg: Option<TensorId>) -> Vec<f64> {
        match wg {
            Some(wg) => self.tensor(wg).to_vec(),
            None => vec![0.0; shape.wg_len()],
        }
    }

    fn set_param_grad(&mut self, id: TensorId, grad: &[f64]) {
        let offset = self.plan.param_offsets[id.0].expect("a parameter");
        self.grads[offset..offset + grad.len()].copy_from_slice(grad);
    }

    fn set_grad(&mut self, id: TensorId, grad: Vec<f64>, accumulate: bool) {
        let slot = &mut self.grad_values[id.0];
        if accumulate {
            slot.iter_mut().zip(&grad).for_each(|(s, g)| *s += g);
        } else {
            *slot = grad;
        }
    }

    /// One optimizer step (1-based `step`) with learning rate `learning_rate`, on the
    /// flat parameters and on every table (at the tables' own learning rate, if they
    /// have one).
    pub fn optimizer_step(&mut self, step: u32, learning_rate: f64) -> Result<()> {
        let v = self
            .optimizer
            .needs_second_moment()
            .then_some(&mut self.v[..]);
        reference::optimizer::step(
            self.optimizer,
            step,
            learning_rate,
            &mut self.params,
            &self.grads,
            &mut self.m,
            v,
        )?;
        self.tables_step(step, learning_rate)
    }
}
