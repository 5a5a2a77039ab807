//! Choosing a grouped GEMM tiling per shape class by measurement (see
//! [`crate::kernels::tune`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{
    GroupedGemm, GroupedGemmBackwardInput, GroupedGemmBackwardWeights, GroupedGemmForward, Pass,
    Tiling,
};
use crate::gpu::TuneMode;
use crate::kernels::Precision;
use crate::kernels::tune::{choose, compile_allowance, compile_bound, proxy_buffer, proxy_rows};
use crate::shape::{Activation, GemmShape};
use crate::{Error, Result};

impl fmt::Display for Tiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Tiling::Naive { wg, wg_rows } => write!(f, "naive-{wg}x{wg_rows}"),
            Tiling::Subgroup {
                wg,
                row_blocks,
                col_groups,
            } => write!(f, "subgroup-wg{wg}-rb{row_blocks}-cn{col_groups}"),
            Tiling::Workgroup {
                wg,
                row_blocks,
                col_groups,
                depth,
            } => write!(
                f,
                "workgroup-wg{wg}-rb{row_blocks}-cn{col_groups}-kt{depth}"
            ),
        }
    }
}

impl FromStr for Tiling {
    type Err = Error;

    /// Parses what [`Display`](fmt::Display) writes.
    fn from_str(s: &str) -> Result<Tiling> {
        let bad = || Error::invalid("grouped GEMM tiling", format!("cannot parse `{s}`"));
        let number = |t: &str, prefix: &str| -> Result<u32> {
            t.strip_prefix(prefix)
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)
        };
        if let Some(rest) = s.strip_prefix("naive-") {
            let (wg, rows) = rest.split_once('x').ok_or_else(bad)?;
            return Ok(Tiling::Naive {
                wg: number(wg, "")?,
                wg_rows: number(rows, "")?,
            });
        }
        let parts: Vec<&str> = s.split('-').collect();
        match parts.as_slice() {
            ["subgroup", wg, rb, cn] => Ok(Tiling::Subgroup {
                wg: number(wg, "wg")?,
                row_blocks: number(rb, "rb")?,
                col_groups: number(cn, "cn")?,
            }),
            ["workgroup", wg, rb, cn, kt] => Ok(Tiling::Workgroup {
                wg: number(wg, "wg")?,
                row_blocks: number(rb, "rb")?,
                col_groups: number(cn, "cn")?,
                depth: number(kt, "kt")?,
            }),
            _ => Err(bad()),
        }
    }
}

impl Tiling {
    /// Relative compile cost: the register tile's size in 8 × 4 blocks. Drivers that
    /// compile to CPU code (lavapipe) spend time roughly in proportion to it.
    pub fn compile_weight(&self) -> u32 {
        match self.tile() {
            None => 1,
            Some((_, row_blocks, col_groups)) => row_blocks * col_groups,
        }
    }

    /// Rows of output a workgroup covers.
    fn rows_per_workgroup(&self) -> usize {
        match (*self, self.tile()) {
            (Tiling::Naive { wg_rows, .. }, _) => wg_rows as usize,
            (_, Some((_, row_blocks, _))) => 8 * row_blocks as usize,
            (_, None) => 1,
        }
    }
}

/// Output rows and columns of a pass: the weight gradient's rows are the inputs (and
/// the bias row), the input gradient's columns are the columns of `X`.
fn output_extent(pass: Pass, shape: &GemmShape, bias: bool) -> (usize, usize) {
    match pass {
        Pass::Forward => (shape.rows, shape.outputs),
        Pass::BackwardInput => (shape.rows, shape.x_columns()),
        Pass::BackwardWeights => (shape.inputs + usize::from(bias), shape.outputs),
    }
}

impl GroupedGemm {
    /// The tilings tuning tries for `pass` on `shape`, the default first: register
    /// tiles, never the naive kernels, which are 10-30x slower and take minutes per
    /// dispatch at the large shape. In [`TuneMode::Full`], and in fast mode on a GPU:
    /// every register tile of either kind (subgroup broadcast or workgroup memory). In
    /// [`TuneMode::Fast`] on a CPU adapter: tiles of the default's kind at least as
    /// large as the default (smaller ones load more per multiply-add) and no larger
    /// than the work can repay in compile time, nor taller than the output. There the
    /// other kind never pays its compile time: on lavapipe the workgroup-memory tiles
    /// ran at 0.2-0.7 of the subgroup tiles of the same shape in every pass at every
    /// standard shape. Tilings whose loops would exceed lavapipe's budget on this
    /// (dense) shape are left out.
    fn candidates(
        &self,
        pass: Pass,
        shape: &GemmShape,
        bias: bool,
        default: Tiling,
    ) -> Vec<Tiling> {
        let (out_rows, _) = output_extent(pass, shape, bias);
        let mut out = vec![default];
        let allowance = compile_allowance(shape.forward_flops());
        let tallest = out_rows.next_power_of_two().max(8);
        let compile_bound = compile_bound(&self.gpu);
        let keep = |t: &Tiling| {
            let tiled = t.tile().is_some() || default.tile().is_none();
            let fits = pass
                .check_loop_budget(&self.gpu, "", shape, (false, t))
                .is_ok();
            tiled
                && fits
                && match self.gpu.tune_mode() {
                    TuneMode::Off => false,
                    TuneMode::Full => true,
                    TuneMode::Fast if !compile_bound => true,
                    TuneMode::Fast => {
                        std::mem::discriminant(t) == std::mem::discriminant(&default)
                            && t.compile_weight() >= default.compile_weight()
                            && t.compile_weight() <= allowance
                            && t.rows_per_workgroup() <= tallest
                    }
                }
        };
        out.extend(
            self.tilings()
                .into_iter()
                .filter(|t| *t != default && keep(t)),
        );
        out
    }

    /// The tiling for `pass` on `shape`: tuned on first use of its shape class (see
    /// [`crate::kernels::tune`]), the fixed default with `MMOE_WGPU_TUNE=off`.
    pub(super) fn tuned(
        &self,
        pass: Pass,
        shape: &GemmShape,
        activation: Activation,
        bias: bool,
        precision: Precision,
    ) -> Result<Tiling> {
        let (out_rows, out_cols) = output_extent(pass, shape, bias);
        let default = self.default_for(pass, shape, out_rows, out_cols);
        if self.gpu.tune_mode() == TuneMode::Off {
            return Ok(default);
        }
        // Rows only change the number of workgroups once there are a few hundred.
        let rows_class = shape.rows.next_power_of_two().min(1024);
        let key = format!(
            "grouped_gemm {pass:?} {precision:?} groups={} rows~{rows_class} inputs={} outputs={} {:?} {activation:?} bias={bias}",
            shape.groups, shape.inputs, shape.outputs, shape.input
        );
        let candidates = self.candidates(pass, shape, bias, default);
        let flops_per_row = shape.forward_flops() / shape.rows as f64;
        let proxy = GemmShape {
            rows: proxy_rows(shape.rows, flops_per_row, 256),
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
                let problem = Problem {
                    pass,
                    shape: proxy,
                    activation,
                    bias,
                    precision,
                };
                ops.time(self, &problem, tiling, reps)
            },
        );
        if let Some(ops) = &operands {
            ops.release(&self.gpu);
        }
        chosen
    }
}

/// What a candidate is timed on.
struct Problem {
    pass: Pass,
    shape: GemmShape,
    activation: Activation,
    bias: bool,
    precision: Precision,
}

/// Buffers for timing candidates, filled by [`proxy_buffer`].
struct ProxyOperands {
    x: wgpu::Buffer,
    w: wgpu::Buffer,
    b: wgpu::Buffer,
    y: wgpu::Buffer,
    dy: wgpu::Buffer,
    dx: wgpu::Buffer,
    dw: wgpu::Buffer,
    db: wgpu::Buffer,
}

impl ProxyOperands {
    /// Lets the bind group cache drop its hold on these buffers.
    fn release(&self, gpu: &crate::Gpu) {
        gpu.forget_bind_groups_of(&[
            &self.x, &self.w, &self.b, &self.y, &self.dy, &self.dx, &self.dw, &self.db,
        ]);
    }

    fn new(gemm: &GroupedGemm, s: &GemmShape, precision: Precision) -> Result<Self> {
        let gpu = &gemm.gpu;
        let fill = |name: &str, n: usize| proxy_buffer(gpu, name, n, precision);
        Ok(ProxyOperands {
            x: fill("tuning x", s.x_len())?,
            w: fill("tuning w", s.w_len())?,
            b: fill("tuning b", s.b_len())?,
            y: fill("tuning y", s.y_len())?,
            dy: fill("tuning dy", s.y_len())?,
            dx: gpu.storage_buffer("tuning dx", 4 * s.x_len() as u64)?,
            dw: gpu.storage_buffer("tuning dw", 4 * s.w_len() as u64)?,
            db: gpu.storage_buffer("tuning db", 4 * s.b_len() as u64)?,
        })
    }

    fn time(
        &self,
        gemm: &GroupedGemm,
        problem: &Problem,
        tiling: Tiling,
        reps: u32,
    ) -> Result<Duration> {
        let Problem {
            pass,
            shape,
            activation,
            bias,
            precision,
        } = *problem;
        let dispatch = match pass {
            Pass::Forward => gemm.forward_with(
                &GroupedGemmForward {
                    precision,
                    shape,
                    activation,
                    x: (&self.x).into(),
                    w: (&self.w).into(),
                    bias: bias.then(|| (&self.b).into()),
                    y: (&self.y).into(),
                },
                tiling,
            )?,
            Pass::BackwardInput => gemm.backward_input_with(
                &GroupedGemmBackwardInput {
                    precision,
                    shape,
                    activation,
                    dy: (&self.dy).into(),
                    y: Some((&self.y).into()),
                    w: (&self.w).into(),
                    dx: (&self.dx).into(),
                    accumulate: false,
                },
                tiling,
            )?,
            Pass::BackwardWeights => gemm.backward_weights_with(
                &GroupedGemmBackwardWeights {
                    precision,
                    shape,
                    activation,
                    x: (&self.x).into(),
                    dy: (&self.dy).into(),
                    y: Some((&self.y).into()),
                    dw: (&self.dw).into(),
                    db: bias.then(|| (&self.db).into()),
                },
                tiling,
            )?,
        };
        Ok(gemm.gpu.time_pass(reps, |p| dispatch.record(p))?.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::InputLayout;
    use crate::{Gpu, StandardShape};

    fn default(gemm: &GroupedGemm, pass: Pass, shape: &GemmShape) -> Tiling {
        let (rows, cols) = output_extent(pass, shape, true);
        gemm.default_for(pass, shape, rows, cols)
    }

    /// The largest tile where the output and the reduction fill it (every expert
    /// pass at every standard shape), small ones where either is short: the census
    /// towers' input gradient sums 32 products per output. Subgroup tiles where the
    /// device has subgroups, workgroup-memory tiles of the same shape otherwise.
    #[test]
    fn the_largest_tile_is_the_default_only_where_it_pays() {
        let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
        let plain = Gpu::with_options(&crate::GpuOptions {
            withheld_features: wgpu::Features::SUBGROUP,
            ..crate::GpuOptions::from_env()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!plain.capabilities().subgroups);
        check_defaults(
            &GroupedGemm::new(&plain),
            &Tiling::Workgroup {
                wg: 8,
                row_blocks: 8,
                col_groups: 2,
                depth: super::super::tiling::DEFAULT_DEPTH,
            },
        );
        if gpu.capabilities().subgroups {
            check_defaults(
                &GroupedGemm::new(&gpu),
                &Tiling::Subgroup {
                    wg: 8,
                    row_blocks: 8,
                    col_groups: 2,
                },
            );
        }
    }

    fn check_defaults(gemm: &GroupedGemm, largest: &Tiling) {
        let kind = std::mem::discriminant(largest);
        for standard in StandardShape::ALL {
            let experts = standard.expert_gemm();
            for pass in [Pass::Forward, Pass::BackwardInput, Pass::BackwardWeights] {
                assert_eq!(
                    default(gemm, pass, &experts),
                    *largest,
                    "{} {pass:?}",
                    standard.name
                );
            }
        }
        let census_towers = GemmShape {
            groups: 2,
            rows: 1024,
            inputs: 64,
            outputs: 32,
            input: InputLayout::PerGroup,
        };
        for pass in [Pass::Forward, Pass::BackwardInput, Pass::BackwardWeights] {
            let chosen = default(gemm, pass, &census_towers);
            assert!(
                chosen.compile_weight() <= 2 && std::mem::discriminant(&chosen) == kind,
                "census towers {pass:?}: {chosen}"
            );
        }
    }
}
