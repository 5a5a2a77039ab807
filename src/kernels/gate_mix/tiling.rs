//! The gate + mix kernels' tilings: how rows and logit columns map to invocations,
//! the untuned default and the candidates the tuner measures. Every tiling gives
//! bitwise equal results.

use super::GateMix;
use crate::gpu::Gpu;
use crate::kernels::div_ceil;
use crate::shape::GateMixShape;
use crate::{Error, Result};

/// How the gate + mix kernels map work to invocations. Every tiling gives bitwise
/// equal results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GateMixTiling {
    /// Invocations per workgroup.
    pub wg: u32,
    /// Blocks of 8 rows per workgroup, 1 to 16.
    pub row_blocks: u32,
    /// Groups of 4 logit columns (gate, expert pairs) per invocation, 1 or 2.
    pub column_groups: u32,
}

impl GateMixTiling {
    pub(super) fn validate(&self, gpu: &Gpu, kernel: &str) -> Result<()> {
        let max = gpu.limits().max_compute_invocations_per_workgroup;
        if self.wg == 0
            || self.wg > max
            || !(1..=16).contains(&self.row_blocks)
            || !(1..=2).contains(&self.column_groups)
        {
            return Err(Error::invalid(
                format!("{kernel} tiling"),
                format!(
                    "{self:?}: wg must be 1..={max}, row_blocks 1..=16 and column_groups 1..=2"
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn constants(&self) -> [(&'static str, u32); 3] {
        [
            ("WG", self.wg),
            ("RB", self.row_blocks),
            ("CN", self.column_groups),
        ]
    }

    pub(super) fn row_workgroups(&self, rows: usize) -> u32 {
        div_ceil(rows, 8 * self.row_blocks as usize)
    }
}

impl GateMix {
    /// The tiling used when none is given: 8 invocations and up to 32 rows per
    /// workgroup, 8 logit columns per invocation where there are that many (the
    /// fastest forward on lavapipe at every standard shape, the backward within 3%).
    /// Rows per workgroup only change how often the invocations' loops run, not their
    /// register tiles, so the compile time does not grow with them.
    pub fn default_tiling(&self, shape: &GateMixShape) -> GateMixTiling {
        GateMixTiling {
            wg: 8,
            row_blocks: shape.rows.div_ceil(8).clamp(1, 4) as u32,
            column_groups: if shape.gates * shape.experts > 4 {
                2
            } else {
                1
            },
        }
    }

    /// Every tiling worth trying.
    pub fn tilings(&self) -> Vec<GateMixTiling> {
        [(8, 1, 1), (8, 2, 2), (8, 4, 2), (32, 2, 2), (64, 8, 1)]
            .into_iter()
            .map(|(wg, row_blocks, column_groups)| GateMixTiling {
                wg,
                row_blocks,
                column_groups,
            })
            .collect()
    }
}
