// Register-tiled grouped GEMM kernels; extends grouped_gemm.wgsl (compiled after it).
//
// A workgroup computes RB blocks of 8 output rows × (WG · CN · 4) output columns; each
// invocation owns CN groups of 4 columns for all the workgroup's rows. Loads, not
// arithmetic, bound GEMM on most drivers, so each loaded value must feed many fmas:
// the left operand of an 8-row block is loaded once per subgroup (invocation s of
// each 8 loads row s) and handed to every invocation with subgroupBroadcast.
// Needs a subgroup size of at least 8 and WG a multiple of 8; the host only builds
// these kernels where both hold.

// The (group, first column) an invocation owns. Normally a workgroup covers columns of
// one group (workgroup_id.z). With FLAG_PACK_GROUPS (shared X, 4·CN-aligned widths)
// columns run over all groups' columns one after another, so narrow groups (experts
// of 16) still fill every invocation; X being shared, the broadcast rows serve every
// group alike. Invocations past the last group get a column past the end: their
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

fn broadcast_rows(a: vec4<f32>) -> Tile {
    return Tile(
        subgroupBroadcast(a, 0u),
        subgroupBroadcast(a, 1u),
        subgroupBroadcast(a, 2u),
        subgroupBroadcast(a, 3u),
        subgroupBroadcast(a, 4u),
        subgroupBroadcast(a, 5u),
        subgroupBroadcast(a, 6u),
        subgroupBroadcast(a, 7u),
    );
}

// One reduction step of 4 for a row block, on both column groups.
fn block_step(t: ptr<function, Tile>, u: ptr<function, Tile>, a: Tile, b0: mat4x4<f32>, b1: mat4x4<f32>) {
    tile_step(t, a, b0);
    if (CN > 1u) {
        tile_step(u, a, b1);
    }
}

fn block_store_forward(g: u32, row0: u32, col: u32, t: Tile, u: Tile) {
    store_tile_forward(g, row0, col, t);
    if (CN > 1u) {
        store_tile_forward(g, row0, col + 4u, u);
    }
}

fn block_store_dx(g: u32, row0: u32, col: u32, t: Tile, u: Tile) {
    store_tile_dx(g, row0, col, t);
    if (CN > 1u) {
        store_tile_dx(g, row0, col + 4u, u);
    }
}

fn block_store_dw(g: u32, row0: u32, col: u32, t: Tile, u: Tile) {
    store_tile_dw(g, row0, col, t);
    if (CN > 1u) {
        store_tile_dw(g, row0, col + 4u, u);
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

@compute @workgroup_size(WG)
fn forward_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let owned = column_of(wg, lid);
    let g = owned.x;
    let col = owned.y;
    let row0 = wg.y * RB * 8u;
    if (row0 >= live_slots(wg.z)) {
        store_zero_rows(g, row0, col);
        return;
    }
    let src = row0 + lane % 8u;
    // The rows each lane loads, looked up in the ragged map once, not per step.
    let x0 = row_of(g, src);
    let x1 = row_of(g, src + 8u);
    let x2 = row_of(g, src + 16u);
    let x3 = row_of(g, src + 24u);
    let x4 = row_of(g, src + 32u);
    let x5 = row_of(g, src + 40u);
    let x6 = row_of(g, src + 48u);
    let x7 = row_of(g, src + 56u);
    var t0: Tile; var t1: Tile; var t2: Tile; var t3: Tile;
    var t4: Tile; var t5: Tile; var t6: Tile; var t7: Tile;
    var u0: Tile; var u1: Tile; var u2: Tile; var u3: Tile;
    var u4: Tile; var u5: Tile; var u6: Tile; var u7: Tile;
    for (var k = 0u; k < P.inputs; k += 4u) {
        let b0 = fetch_w_block(g, k, col);
        var b1 = b0;
        if (CN > 1u) {
            b1 = fetch_w_block(g, k, col + 4u);
        }
        block_step(&t0, &u0, broadcast_rows(fetch_x_k4(g, x0, k)), b0, b1);
        if (RB > 1u) { block_step(&t1, &u1, broadcast_rows(fetch_x_k4(g, x1, k)), b0, b1); }
        if (RB > 2u) { block_step(&t2, &u2, broadcast_rows(fetch_x_k4(g, x2, k)), b0, b1); }
        if (RB > 3u) { block_step(&t3, &u3, broadcast_rows(fetch_x_k4(g, x3, k)), b0, b1); }
        if (RB > 4u) { block_step(&t4, &u4, broadcast_rows(fetch_x_k4(g, x4, k)), b0, b1); }
        if (RB > 5u) { block_step(&t5, &u5, broadcast_rows(fetch_x_k4(g, x5, k)), b0, b1); }
        if (RB > 6u) { block_step(&t6, &u6, broadcast_rows(fetch_x_k4(g, x6, k)), b0, b1); }
        if (RB > 7u) { block_step(&t7, &u7, broadcast_rows(fetch_x_k4(g, x7, k)), b0, b1); }
    }
    block_store_forward(g, row0, col, t0, u0);
    if (RB > 1u) { block_store_forward(g, row0 + 8u, col, t1, u1); }
    if (RB > 2u) { block_store_forward(g, row0 + 16u, col, t2, u2); }
    if (RB > 3u) { block_store_forward(g, row0 + 24u, col, t3, u3); }
    if (RB > 4u) { block_store_forward(g, row0 + 32u, col, t4, u4); }
    if (RB > 5u) { block_store_forward(g, row0 + 40u, col, t5, u5); }
    if (RB > 6u) { block_store_forward(g, row0 + 48u, col, t6, u6); }
    if (RB > 7u) { block_store_forward(g, row0 + 56u, col, t7, u7); }
}

// dX[row, i] = Σ_g Σ_j dZ_g[row, j] · W_g[i, j]: output columns are inputs i.
@compute @workgroup_size(WG)
fn backward_input_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row0 = wg.y * RB * 8u;
    let col = (wg.x * WG + lid) * CN * 4u;
    let src = row0 + lane % 8u;
    var g_first = wg.z;
    var g_end = wg.z + 1u;
    if (P.x_group_stride == 0u) {
        g_first = 0u;
        g_end = P.groups;
    }
    var t0: Tile; var t1: Tile; var t2: Tile; var t3: Tile;
    var t4: Tile; var t5: Tile; var t6: Tile; var t7: Tile;
    var u0: Tile; var u1: Tile; var u2: Tile; var u3: Tile;
    var u4: Tile; var u5: Tile; var u6: Tile; var u7: Tile;
    for (var g = g_first; g < g_end; g++) {
        for (var j = 0u; j < P.outputs; j += 4u) {
            let b0 = fetch_wt_block(g, j, col);
            var b1 = b0;
            if (CN > 1u) {
                b1 = fetch_wt_block(g, j, col + 4u);
            }
            block_step(&t0, &u0, broadcast_rows(fetch_dz_j4(g, src, j)), b0, b1);
            if (RB > 1u) { block_step(&t1, &u1, broadcast_rows(fetch_dz_j4(g, src + 8u, j)), b0, b1); }
            if (RB > 2u) { block_step(&t2, &u2, broadcast_rows(fetch_dz_j4(g, src + 16u, j)), b0, b1); }
            if (RB > 3u) { block_step(&t3, &u3, broadcast_rows(fetch_dz_j4(g, src + 24u, j)), b0, b1); }
            if (RB > 4u) { block_step(&t4, &u4, broadcast_rows(fetch_dz_j4(g, src + 32u, j)), b0, b1); }
            if (RB > 5u) { block_step(&t5, &u5, broadcast_rows(fetch_dz_j4(g, src + 40u, j)), b0, b1); }
            if (RB > 6u) { block_step(&t6, &u6, broadcast_rows(fetch_dz_j4(g, src + 48u, j)), b0, b1); }
            if (RB > 7u) { block_step(&t7, &u7, broadcast_rows(fetch_dz_j4(g, src + 56u, j)), b0, b1); }
        }
    }
    let g = wg.z;
    block_store_dx(g, row0, col, t0, u0);
    if (RB > 1u) { block_store_dx(g, row0 + 8u, col, t1, u1); }
    if (RB > 2u) { block_store_dx(g, row0 + 16u, col, t2, u2); }
    if (RB > 3u) { block_store_dx(g, row0 + 24u, col, t3, u3); }
    if (RB > 4u) { block_store_dx(g, row0 + 32u, col, t4, u4); }
    if (RB > 5u) { block_store_dx(g, row0 + 40u, col, t5, u5); }
    if (RB > 6u) { block_store_dx(g, row0 + 48u, col, t6, u6); }
    if (RB > 7u) { block_store_dx(g, row0 + 56u, col, t7, u7); }
}

// dW_g[i, col] = Σ_b X_g[b, i] · dZ_g[b, col], and db_g as the row i == inputs:
// output rows are inputs i (plus one), the reduction runs over the batch rows b (in
// ragged mode, over the slots of the routed rows, looked up once per step of 4).
@compute @workgroup_size(WG)
fn backward_weights_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let owned = column_of(wg, lid);
    let g = owned.x;
    let col = owned.y;
    let row0 = wg.y * RB * 8u;
    let src = row0 + lane % 8u;
    var t0: Tile; var t1: Tile; var t2: Tile; var t3: Tile;
    var t4: Tile; var t5: Tile; var t6: Tile; var t7: Tile;
    var u0: Tile; var u1: Tile; var u2: Tile; var u3: Tile;
    var u4: Tile; var u5: Tile; var u6: Tile; var u7: Tile;
    let n = live_slots(wg.z);
    for (var b = 0u; b < n; b += 4u) {
        let rows = rows_of4(g, b);
        let b0 = fetch_dz_block(g, b, rows, col, n);
        var b1 = b0;
        if (CN > 1u) {
            b1 = fetch_dz_block(g, b, rows, col + 4u, n);
        }
        block_step(&t0, &u0, broadcast_rows(fetch_xt_b4(g, src, b, rows, n)), b0, b1);
        if (RB > 1u) { block_step(&t1, &u1, broadcast_rows(fetch_xt_b4(g, src + 8u, b, rows, n)), b0, b1); }
        if (RB > 2u) { block_step(&t2, &u2, broadcast_rows(fetch_xt_b4(g, src + 16u, b, rows, n)), b0, b1); }
        if (RB > 3u) { block_step(&t3, &u3, broadcast_rows(fetch_xt_b4(g, src + 24u, b, rows, n)), b0, b1); }
        if (RB > 4u) { block_step(&t4, &u4, broadcast_rows(fetch_xt_b4(g, src + 32u, b, rows, n)), b0, b1); }
        if (RB > 5u) { block_step(&t5, &u5, broadcast_rows(fetch_xt_b4(g, src + 40u, b, rows, n)), b0, b1); }
        if (RB > 6u) { block_step(&t6, &u6, broadcast_rows(fetch_xt_b4(g, src + 48u, b, rows, n)), b0, b1); }
        if (RB > 7u) { block_step(&t7, &u7, broadcast_rows(fetch_xt_b4(g, src + 56u, b, rows, n)), b0, b1); }
    }
    block_store_dw(g, row0, col, t0, u0);
    if (RB > 1u) { block_store_dw(g, row0 + 8u, col, t1, u1); }
    if (RB > 2u) { block_store_dw(g, row0 + 16u, col, t2, u2); }
    if (RB > 3u) { block_store_dw(g, row0 + 24u, col, t3, u3); }
    if (RB > 4u) { block_store_dw(g, row0 + 32u, col, t4, u4); }
    if (RB > 5u) { block_store_dw(g, row0 + 40u, col, t5, u5); }
    if (RB > 6u) { block_store_dw(g, row0 + 48u, col, t6, u6); }
    if (RB > 7u) { block_store_dw(g, row0 + 56u, col, t7, u7); }
}
