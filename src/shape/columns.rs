//! Column windows: expert groups that each read their own columns of one input
//! (experts allocated by features).

use crate::{Error, Result};

/// Most distinct windows one grouped GEMM takes: they travel in the kernel's
/// parameter block, which every dispatch rewrites.
pub const MAX_COLUMN_WINDOWS: usize = 8;

/// A run of consecutive groups reading the same columns `offset..offset + width`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ColumnWindow {
    /// Groups in the run.
    pub groups: usize,
    /// First column they read.
    pub offset: usize,
    /// Columns they read (the reduction length of their product).
    pub width: usize,
}

/// Which columns of a shared `X: [rows, columns]` each group of a grouped GEMM reads:
/// runs of consecutive groups, each run one window of columns. Windows may overlap,
/// coincide, or leave columns unread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ColumnWindows {
    columns: usize,
    len: usize,
    runs: [ColumnWindow; MAX_COLUMN_WINDOWS],
}

impl ColumnWindows {
    /// Windows of an input `columns` wide. Errors, naming the run: no run, more than
    /// [`MAX_COLUMN_WINDOWS`], a run of no groups, an empty window, or a window past
    /// the input's last column.
    pub fn new(columns: usize, runs: &[ColumnWindow]) -> Result<Self> {
        const CTX: &str = "column windows";
        if runs.is_empty() || runs.len() > MAX_COLUMN_WINDOWS {
            return Err(Error::invalid(
                CTX,
                format!(
                    "{} windows; a grouped GEMM takes 1 to {MAX_COLUMN_WINDOWS}",
                    runs.len()
                ),
            ));
        }
        for (i, run) in runs.iter().enumerate() {
            if run.groups == 0 {
                return Err(Error::invalid(CTX, format!("window {i} has no groups")));
            }
            if run.width == 0 {
                return Err(Error::invalid(
                    CTX,
                    format!("window {i} is empty (width 0 at column {})", run.offset),
                ));
            }
            if run
                .offset
                .checked_add(run.width)
                .is_none_or(|end| end > columns)
            {
                return Err(Error::invalid(
                    CTX,
                    format!(
                        "window {i} (columns {}..{}) lies outside the input's {columns} columns",
                        run.offset,
                        run.offset.saturating_add(run.width)
                    ),
                ));
            }
        }
        let mut all = [ColumnWindow::default(); MAX_COLUMN_WINDOWS];
        all[..runs.len()].copy_from_slice(runs);
        Ok(ColumnWindows {
            columns,
            len: runs.len(),
            runs: all,
        })
    }

    /// Columns of the input (its row length).
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The runs, in group order.
    pub fn runs(&self) -> &[ColumnWindow] {
        &self.runs[..self.len]
    }

    /// Groups over all runs.
    pub fn groups(&self) -> usize {
        self.runs().iter().map(|r| r.groups).sum()
    }

    /// The widest window: the reduction length (rows of `W`) of the product; a
    /// narrower window's rows of `W` past its width are padding, never read.
    pub fn max_width(&self) -> usize {
        self.runs().iter().map(|r| r.width).max().unwrap_or(0)
    }

    /// `(offset, width)` of the window group `g` reads (the last run's past the end).
    pub fn window_of(&self, g: usize) -> (usize, usize) {
        let mut first = 0;
        for run in self.runs() {
            if g < first + run.groups {
                return (run.offset, run.width);
            }
            first += run.groups;
        }
        self.runs().last().map_or((0, 0), |r| (r.offset, r.width))
    }
}
