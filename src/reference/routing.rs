//! Reference routing: for every expert, the rows some gate sends to it, as the row map
//! of [`kernels::routing`](crate::kernels::routing) (layout in
//! [`RowMap`](crate::kernels::grouped_gemm::RowMap)).

use super::check_len;
use crate::shape::RoutingShape;
use crate::{Error, Result};

/// The row map of `g: [gates, rows, experts]`: `experts` counts, then per expert its
/// routed rows (`g[t, row, e] != 0` for some `t`) ascending, then the others ascending.
pub fn route(shape: &RoutingShape, g: &[f64]) -> Result<Vec<u32>> {
    const CTX: &str = "reference routing";
    shape.validate(CTX)?;
    check_len(CTX, "g", g, shape.g_len())?;
    let &RoutingShape {
        gates,
        rows,
        experts,
    } = shape;
    let mut counts = Vec::with_capacity(experts);
    let mut lists = Vec::with_capacity(experts * rows);
    for e in 0..experts {
        let chosen = |r: usize| (0..gates).any(|t| g[(t * rows + r) * experts + e] != 0.0);
        let (routed, unrouted): (Vec<usize>, Vec<usize>) = (0..rows).partition(|&r| chosen(r));
        counts.push(routed.len() as u32);
        lists.extend(routed.into_iter().chain(unrouted).map(|r| r as u32));
    }
    counts.extend(lists);
    Ok(counts)
}

/// The rows routed to each of `groups` groups by the row map `routes` over `rows`
/// rows, after checking the map: its length, counts of at most `rows`, and each list
/// a permutation of `0..rows`.
pub fn routed_rows(routes: &[u32], groups: usize, rows: usize) -> Result<Vec<&[u32]>> {
    const CTX: &str = "row map";
    let len = groups * (rows + 1);
    if routes.len() != len {
        return Err(Error::shape(
            CTX,
            "routes",
            format!("{len} values ({groups} groups of {rows} rows, plus the counts)"),
            format!("{} values", routes.len()),
        ));
    }
    let (counts, lists) = routes.split_at(groups);
    let mut out = Vec::with_capacity(groups);
    for (g, (&count, list)) in counts.iter().zip(lists.chunks(rows)).enumerate() {
        if count as usize > rows {
            return Err(Error::invalid(
                format!("{CTX} count of group {g}"),
                format!("{count} rows routed, but there are {rows} rows"),
            ));
        }
        let mut seen = vec![false; rows];
        for &r in list {
            match seen.get_mut(r as usize) {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(Error::invalid(
                        format!("{CTX} list of group {g}"),
                        format!("row {r} is out of range or listed twice"),
                    ));
                }
            }
        }
        out.push(&list[..count as usize]);
    }
    Ok(out)
}
