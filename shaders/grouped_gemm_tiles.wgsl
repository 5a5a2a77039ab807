// The register tiles both tiled kernel kinds share; extends grouped_gemm.wgsl and is
// extended by grouped_gemm_subgroup.wgsl (the left operand shared by subgroup
// broadcast) or grouped_gemm_workgroup.wgsl (shared through workgroup memory).
//
// A workgroup computes RB blocks of 8 output rows × (WG · CN · 4) output columns; each
// invocation owns CN groups of 4 columns for all the workgroup's rows. Loads, not
// arithmetic, bound GEMM on most drivers, so each loaded value must feed many fmas:
// each invocation loads its own 4·CN values of the right operand per reduction step,
// and the RB · 8 values of the left operand are loaded once per workgroup and shared.
// Every output is the same fma chain as in the naive kernels, step by step.

// The (group, first column) an invocation owns. Normally a workgroup covers columns of
// one group (workgroup_id.z). With FLAG_PACK_GROUPS (shared X, 4·CN-aligned widths)
// columns run over all groups' columns one after another, so narrow groups (experts
// of 16) still fill every invocation; X being shared, the shared rows serve every group
// alike. Invocations past the last group get a column past the end: their
// loads clamp and their stores are masked.
fn column_of(wg: vec3<u32>, lid: u32) -> vec2<u32> {
    let first = (wg.x * WG + lid) * CN * 4u;
    if ((P.flags & FLAG_PACK_GROUPS) == 0u) {
        return vec2(wg.z, first);
    }
    let g = first / P.outputs;
    if (g >= P.groups) {
        return vec2(P.groups - 1u, P.outputs);
    }
    return vec2(g, first % P.outputs);
}

// The left operand of one reduction step for the 8 rows of a block, as every
// invocation of the workgroup gets it (by subgroup broadcast, or from workgroup memory).
struct Rows8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn tile_step(t: ptr<function, Tile>, a: Rows8, b: vec4<f32>) {
    (*t).r0 = fma(vec4(a.lo.x), b, (*t).r0);
    (*t).r1 = fma(vec4(a.lo.y), b, (*t).r1);
    (*t).r2 = fma(vec4(a.lo.z), b, (*t).r2);
    (*t).r3 = fma(vec4(a.lo.w), b, (*t).r3);
    (*t).r4 = fma(vec4(a.hi.x), b, (*t).r4);
    (*t).r5 = fma(vec4(a.hi.y), b, (*t).r5);
    (*t).r6 = fma(vec4(a.hi.z), b, (*t).r6);
    (*t).r7 = fma(vec4(a.hi.w), b, (*t).r7);
}

// One reduction step for a row block, on both column groups.
fn block_step_rows(t: ptr<function, Tile>, u: ptr<function, Tile>, rows: Rows8, b0: vec4<f32>, b1: vec4<f32>) {
    tile_step(t, rows, b0);
    if (CN > 1u) {
        tile_step(u, rows, b1);
    }
}

fn block_store_forward(g: u32, row0: u32, col: u32, t: Tile, u: Tile) {
    store_tile_forward(g, row0, col, t);
    if (CN > 1u) {
        store_tile_forward(g, row0, col + 4u, u);
    }
}

fn block_store_dx(g: u32, row0: u32, base: u32, col: u32, t: Tile, u: Tile) {
    store_tile_dx(g, row0, base, col, t);
    if (CN > 1u) {
        store_tile_dx(g, row0, base, col + 4u, u);
    }
}

fn block_store_dw(g: u32, row0: u32, col: u32, t: Tile, u: Tile) {
    store_tile_dw(g, row0, col, t);
    if (CN > 1u) {
        store_tile_dw(g, row0, col + 4u, u);
    }
}

// Whether a weight-gradient workgroup sums db apart (FLAG_DB_APART): the first row
// block's, uniform over the workgroup.
fn sums_db(wg: vec3<u32>) -> bool {
    return wg.y == 0u && (P.flags & (FLAG_BIAS | FLAG_DB_APART)) == (FLAG_BIAS | FLAG_DB_APART);
}

fn block_store_db(g: u32, col: u32, d0: vec4<f32>, d1: vec4<f32>) {
    store_db_apart(g, col, d0);
    if (CN > 1u) {
        store_db_apart(g, col + 4u, d1);
    }
}

// Ragged forward, a workgroup whose slots all lie past its group's count (a uniform
// branch: in ragged mode a workgroup holds one group): only the zeros of those rows,
// without the bias loads and register tiles of the full epilogue.
fn store_zero_rows(g: u32, row0: u32, col: u32) {
    for (var i = 0u; i < RB * 8u && row0 + i < P.rows; i++) {
        let at = P.y_base + (g * P.rows + row_of(g, row0 + i)) * P.outputs;
        for (var c = col; c < min(col + CN * 4u, P.outputs); c++) {
            y[at + c] = Elem(0.0);
        }
    }
}

// Ragged input gradient, a workgroup whose slots all lie past its group's count: the
// zeros of those rows of dX_g (X per group, overwriting); nothing to store with
// FLAG_ACCUMULATE (the rows stay as they were) or FLAG_COMPACT_DX (no scratch rows).
fn store_zero_dx_rows(g: u32, row0: u32, col: u32) {
    if ((P.flags & (FLAG_ACCUMULATE | FLAG_COMPACT_DX)) != 0u) {
        return;
    }
    for (var i = 0u; i < RB * 8u && row0 + i < P.rows; i++) {
        let at = P.dx_base + g * P.x_group_stride + row_of(g, row0 + i) * P.x_columns;
        for (var c = col; c < min(col + CN * 4u, P.x_columns); c++) {
            dx[at + c] = Elem(0.0);
        }
    }
}
