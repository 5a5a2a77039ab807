//! The load-balancing loss's vocabulary: its shape, the layout of its stats, and
//! which loss a gate carries.

use std::ops::Range;

use super::{GateMixShape, check_elements, check_nonzero};
use crate::error::check_len;
use crate::{Error, Result};

/// Shape of the balance loss: `G` and `dz` are `[gates, rows, experts]`, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BalanceShape {
    /// Number of gates `T`.
    pub gates: usize,
    /// Batch rows `B`.
    pub rows: usize,
    /// Number of experts `E`.
    pub experts: usize,
}

impl From<GateMixShape> for BalanceShape {
    fn from(s: GateMixShape) -> Self {
        BalanceShape {
            gates: s.gates,
            rows: s.rows,
            experts: s.experts,
        }
    }
}

impl BalanceShape {
    /// Checks every dimension is non-zero and every tensor fits the 32-bit indexing
    /// the shader uses.
    pub fn validate(&self, context: &str) -> Result<()> {
        let (t, b, e) = (self.gates, self.rows, self.experts);
        check_nonzero(context, &[("gates", t), ("rows", b), ("experts", e)])?;
        check_elements(
            context,
            &[("G", &[t, b, e]), ("the stats", &[3 * t * e + t])],
        )
    }

    /// Elements of `G` (and of `dz`).
    pub fn g_len(&self) -> usize {
        self.gates * self.rows * self.experts
    }

    /// f32 values of the stats buffer: importance, load and coefficients
    /// (`gates × experts` each), then the loss (`gates`).
    pub fn stats_len(&self) -> usize {
        3 * self.gates * self.experts + self.gates
    }

    /// Bytes of the stats buffer: [`stats_len`](Self::stats_len) f32.
    pub fn stats_bytes(&self) -> u64 {
        4 * self.stats_len() as u64
    }

    /// Where the importances `I: [gates, experts]` sit in the stats.
    pub fn importance_range(&self) -> Range<usize> {
        self.section(0)
    }

    /// Where the loads `L: [gates, experts]` sit in the stats: counts of rows with a
    /// nonzero gate value, as f32 (exact up to 2^24 rows).
    pub fn load_range(&self) -> Range<usize> {
        self.section(1)
    }

    /// Where the coefficients `a: [gates, experts]`, `w · ∂CV²/∂I`, sit in the stats.
    pub fn coefficient_range(&self) -> Range<usize> {
        self.section(2)
    }

    /// Where the losses `aux: [gates]` sit in the stats.
    pub fn aux_range(&self) -> Range<usize> {
        let start = 3 * self.gates * self.experts;
        start..start + self.gates
    }

    fn section(&self, i: usize) -> Range<usize> {
        let n = self.gates * self.experts;
        i * n..(i + 1) * n
    }
}

/// The stats buffer split into its sections (`f32` read back from the GPU, `f64`
/// from the reference).
#[derive(Clone, Debug, PartialEq)]
pub struct BalanceStats<T> {
    /// `I: [gates, experts]`, `Σ_b G[t, b, e]`.
    pub importance: Vec<T>,
    /// `L: [gates, experts]`, `#{b : G[t, b, e] ≠ 0}`: the per-expert load report.
    pub load: Vec<T>,
    /// `a: [gates, experts]`, `w · ∂CV²(I[t, :])/∂I[t, e]`.
    pub coefficients: Vec<T>,
    /// `aux: [gates]`, `w · CV²(I[t, :])`.
    pub aux: Vec<T>,
}

impl<T: Copy> BalanceStats<T> {
    /// Splits `stats` ([`BalanceShape::stats_len`] values) into its sections.
    pub fn split(shape: &BalanceShape, stats: &[T]) -> Result<Self> {
        check_len("BalanceStats::split", "stats", stats, shape.stats_len())?;
        Ok(BalanceStats {
            importance: stats[shape.importance_range()].to_vec(),
            load: stats[shape.load_range()].to_vec(),
            coefficients: stats[shape.coefficient_range()].to_vec(),
            aux: stats[shape.aux_range()].to_vec(),
        })
    }

    /// The sections one after the other, as the stats buffer holds them.
    pub fn concat(&self) -> Vec<T> {
        [
            &self.importance[..],
            &self.load,
            &self.coefficients,
            &self.aux,
        ]
        .concat()
    }
}

/// Which load-balancing loss a gate carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BalanceLoss {
    /// `w · CV²` of each gate's importance `Σ_b G` ([`Balance::forward`](crate::kernels::Balance::forward)): reaches
    /// only the logits a top-k gate selected.
    #[default]
    Importance,
    /// The Switch Transformer / GShard load loss `w · E · Σ_e f · P`
    /// ([`Balance::forward_load`](crate::kernels::Balance::forward_load)): reaches every logit the gate sees.
    Load,
}

/// Checks the loss weight (the kernel's f32 or the reference's f64) is finite and
/// ≥ 0.
pub(crate) fn check_weight<W>(ctx: &str, weight: W) -> Result<()>
where
    W: Into<f64> + std::fmt::Display + Copy,
{
    let value: f64 = weight.into();
    if !value.is_finite() {
        return Err(Error::NonFinite {
            what: format!("{ctx}: the loss weight"),
            index: 0,
            value: value as f32,
        });
    }
    if value < 0.0 {
        return Err(Error::invalid(
            format!("{ctx} weight"),
            format!("{weight} is negative; the loss weight must be ≥ 0"),
        ));
    }
    Ok(())
}

/// Checks the load loss's `1 ≤ k ≤ seen ≤ experts`.
pub(crate) fn check_load_k(ctx: &str, s: &BalanceShape, k: usize, seen: usize) -> Result<()> {
    if !(1..=s.experts).contains(&seen) {
        return Err(Error::invalid(
            format!("{ctx} seen"),
            format!(
                "{seen} experts seen per gate, but the shape has {} experts (1 ≤ seen ≤ experts)",
                s.experts
            ),
        ));
    }
    if !(1..=seen).contains(&k) {
        return Err(Error::invalid(
            format!("{ctx} k"),
            format!("k = {k}, but a gate that sees {seen} experts needs 1 ≤ k ≤ {seen}"),
        ));
    }
    Ok(())
}
