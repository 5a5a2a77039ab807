//! Choosing a gate + mix tiling per shape class by measurement (see
//! [`crate::kernels::tune`]). Only the gate + mix's own dispatch depends on the tiling;
//! the GEMMs it records in the backward pass tune themselves.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{GateMix, GateMixBackward, GateMixForward, GateMixShape, GateMixTiling};
use crate::gpu::TuneMode;
use crate::kernels::Precision;
use crate::kernels::tune::{choose, compile_allowance, compile_bound, proxy_buffer, proxy_rows};
use crate::{Error, Result};

impl fmt::Display for GateMixTiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wg{}-rb{}-cn{}",
            self.wg, self.row_blocks, self.column_groups
        )
    }
}

impl FromStr for GateMixTiling {
    type Err = Error;

    /// Parses what [`Display`](fmt::Display) writes.
    fn from_str(s: &str) -> Result<GateMixTiling> {
        let bad = || Error::invalid("gate_mix tiling", format!("cannot parse `{s}`"));
        let number = |t: &str, prefix: &str| -> Result<u32> {
            t.strip_prefix(prefix)
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)
        };
        match s.split('-').collect::<Vec<_>>().as_slice() {
            [wg, rb, cn] => Ok(GateMixTiling {
                wg: number(wg, "wg")?,
                row_blocks: number(rb, "rb")?,
                column_groups: number(cn, "cn")?,
            }),
            _ => Err(bad()),
        }
    }
}

impl GateMixTiling {
    /// Relative compile cost, ranked as for the GEMM's tilings: row blocks × column
    /// groups. Conservative: only the column groups size the register tile; row blocks
    /// repeat it.
    pub fn compile_weight(&self) -> u32 {
        self.row_blocks * self.column_groups
    }
}

/// Which of the two dispatches with a tiling is tuned.
#[derive(Clone, Copy, Debug)]
pub(super) enum GatePass {
    Forward,
    Backward,
}

/// Work of one gate + mix dispatch: the logits and the mixture (forward), or the
/// mixture's gradients (backward).
fn flops(pass: GatePass, s: &GateMixShape) -> f64 {
    let (b, e, t) = (s.rows as f64, s.experts as f64, s.gates as f64);
    match pass {
        GatePass::Forward => 2.0 * b * t * e * (s.inputs as f64 + s.width as f64),
        GatePass::Backward => 4.0 * b * t * e * s.width as f64,
    }
}

impl GateMix {
    /// The tiling for `pass` on `shape`: tuned on first use of its shape class, the
    /// fixed default with `MMOE_WGPU_TUNE=off`.
    pub(super) fn tuned(
        &self,
        pass: GatePass,
        shape: &GateMixShape,
        precision: Precision,
    ) -> Result<GateMixTiling> {
        let default = self.default_tiling(shape);
        let mode = self.gpu.tune_mode();
        if mode == TuneMode::Off {
            return Ok(default);
        }
        // As for the GEMM: in fast mode on a CPU adapter, only tiles at least as
        // large as the default's that the work repays in compile time.
        let every = mode == TuneMode::Full || !compile_bound(&self.gpu);
        let allowance = compile_allowance(flops(pass, shape));
        let tallest = shape.rows.next_power_of_two().max(8) as u32;
        let mut candidates = vec![default];
        candidates.extend(self.tilings().into_iter().filter(|t| {
            *t != default
                && (every
                    || (t.compile_weight() >= default.compile_weight()
                        && t.compile_weight() <= allowance
                        && 8 * t.row_blocks <= tallest))
        }));
        let rows_class = shape.rows.next_power_of_two().min(1024);
        let key = format!(
            "gate_mix {pass:?} {precision:?} gates={} experts={} rows~{rows_class} inputs={} width={}",
            shape.gates, shape.experts, shape.inputs, shape.width
        );
        let proxy = GateMixShape {
            rows: proxy_rows(shape.rows, flops(pass, shape) / shape.rows as f64, 256),
            ..*shape
        };
        let mut operands: Option<ProxyOperands> = None;
        let valid = self.tilings();
        let chosen = choose(
            &self.gpu,
            key,
            default,
            &candidates,
            &valid,
            |tiling, reps| {
                if operands.is_none() {
                    operands = Some(ProxyOperands::new(self, &proxy, precision)?);
                }
                let ops = operands.as_ref().expect("created above");
                ops.time(self, pass, &proxy, precision, tiling, reps)
            },
        );
        if let Some(ops) = &operands {
            self.gpu
                .forget_bind_groups_of(&ops.buffers.iter().collect::<Vec<_>>());
        }
        chosen
    }
}

/// Buffers for timing candidates; the gate probabilities come from a real forward
/// pass so the backward pass sees a valid softmax.
struct ProxyOperands {
    buffers: Vec<wgpu::Buffer>,
}

impl ProxyOperands {
    fn new(kernels: &GateMix, s: &GateMixShape, precision: Precision) -> Result<Self> {
        let gpu = &kernels.gpu;
        let lens = [
            s.x_len(),
            s.wg_len(),
            s.bg_len(),
            s.h_len(),
            s.g_len(),
            s.m_len(),
            s.m_len(),
            s.h_len(),
            s.g_len(),
            s.wg_len(),
            s.bg_len(),
        ];
        let buffers = lens
            .iter()
            .map(|&n| proxy_buffer(gpu, "tuning", n, precision))
            .collect::<Result<Vec<_>>>()?;
        let ops = ProxyOperands { buffers };
        let forward =
            kernels.forward_with(&ops.forward_args(s, precision), kernels.default_tiling(s))?;
        gpu.time_pass(1, |p| forward.record(p))?;
        Ok(ops)
    }

    fn forward_args(&self, shape: &GateMixShape, precision: Precision) -> GateMixForward<'_> {
        let b = &self.buffers;
        GateMixForward {
            shape: *shape,
            precision,
            x: (&b[0]).into(),
            wg: (&b[1]).into(),
            bg: (&b[2]).into(),
            h: (&b[3]).into(),
            g: (&b[4]).into(),
            m: (&b[5]).into(),
        }
    }

    fn time(
        &self,
        kernels: &GateMix,
        pass: GatePass,
        shape: &GateMixShape,
        precision: Precision,
        tiling: GateMixTiling,
        reps: u32,
    ) -> Result<Duration> {
        let b = &self.buffers;
        let dispatch = match pass {
            GatePass::Forward => {
                kernels.forward_with(&self.forward_args(shape, precision), tiling)?
            }
            GatePass::Backward => kernels
                .backward_with(
                    &GateMixBackward {
                        shape: *shape,
                        precision,
                        x: (&b[0]).into(),
                        wg: (&b[1]).into(),
                        h: (&b[3]).into(),
                        g: (&b[4]).into(),
                        dm: (&b[6]).into(),
                        dh: (&b[7]).into(),
                        dz: (&b[8]).into(),
                        dwg: (&b[9]).into(),
                        dbg: (&b[10]).into(),
                        dx: None,
                        accumulate_dx: false,
                        relu_dh: false,
                    },
                    tiling,
                )?
                .swap_remove(0),
        };
        Ok(kernels.gpu.time_pass(reps, |p| dispatch.record(p))?.total)
    }
}
