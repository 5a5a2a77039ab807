// Register-tiled grouped GEMM kernels sharing the left operand by subgroup broadcast;
// extends grouped_gemm.wgsl and grouped_gemm_tiles.wgsl (compiled after them).
//
// The left operand of an 8-row block is loaded once per subgroup (invocation s of each
// 8 loads row s) and handed to every invocation with subgroupBroadcast. Needs a
// subgroup size of at least 8 and WG a multiple of 8; the host only builds these
// kernels where both hold.

// Lane s of the subgroup loaded row s's value; every invocation gets all 8.
fn broadcast_rows(a: f32) -> Rows8 {
    return Rows8(
        vec4(subgroupBroadcast(a, 0u), subgroupBroadcast(a, 1u), subgroupBroadcast(a, 2u), subgroupBroadcast(a, 3u)),
        vec4(subgroupBroadcast(a, 4u), subgroupBroadcast(a, 5u), subgroupBroadcast(a, 6u), subgroupBroadcast(a, 7u)),
    );
}

// One reduction step for a row block: `a` is this lane's row of the block.
fn block_step(t: ptr<function, Tile>, u: ptr<function, Tile>, a: f32, b0: vec4<f32>, b1: vec4<f32>) {
    block_step_rows(t, u, broadcast_rows(a), b0, b1);
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
    let x0 = min(row_of(g, src), P.rows - 1u);
    let x1 = min(row_of(g, src + 8u), P.rows - 1u);
    let x2 = min(row_of(g, src + 16u), P.rows - 1u);
    let x3 = min(row_of(g, src + 24u), P.rows - 1u);
    let x4 = min(row_of(g, src + 32u), P.rows - 1u);
    let x5 = min(row_of(g, src + 40u), P.rows - 1u);
    let x6 = min(row_of(g, src + 48u), P.rows - 1u);
    let x7 = min(row_of(g, src + 56u), P.rows - 1u);
    let xo = x_offset(g);
    var t0: Tile; var t1: Tile; var t2: Tile; var t3: Tile;
    var t4: Tile; var t5: Tile; var t6: Tile; var t7: Tile;
    var u0: Tile; var u1: Tile; var u2: Tile; var u3: Tile;
    var u4: Tile; var u5: Tile; var u6: Tile; var u7: Tile;
    // Uniform: with windows a workgroup holds one group (they are never packed).
    for (var k = 0u; k < xo.width; k++) {
        let b0 = w_cols(g, k, col);
        var b1 = b0;
        if (CN > 1u) {
            b1 = w_cols(g, k, col + 4u);
        }
        block_step(&t0, &u0, x_at(xo, x0, k), b0, b1);
        if (RB > 1u) { block_step(&t1, &u1, x_at(xo, x1, k), b0, b1); }
        if (RB > 2u) { block_step(&t2, &u2, x_at(xo, x2, k), b0, b1); }
        if (RB > 3u) { block_step(&t3, &u3, x_at(xo, x3, k), b0, b1); }
        if (RB > 4u) { block_step(&t4, &u4, x_at(xo, x4, k), b0, b1); }
        if (RB > 5u) { block_step(&t5, &u5, x_at(xo, x5, k), b0, b1); }
        if (RB > 6u) { block_step(&t6, &u6, x_at(xo, x6, k), b0, b1); }
        if (RB > 7u) { block_step(&t7, &u7, x_at(xo, x7, k), b0, b1); }
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

// dX[row, i] = Σ_g Σ_j dZ_g[row, j] · W_g[i, j]: output columns are inputs i (in
// ragged mode, output rows are group wg.z's slots).
@compute @workgroup_size(WG)
fn backward_input_subgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row0 = wg.y * RB * 8u;
    let col = (wg.x * WG + lid) * CN * 4u;
    // Uniform: in ragged mode a workgroup holds one group.
    if (row0 >= live_slots(wg.z)) {
        store_zero_dx_rows(wg.z, row0, col);
        return;
    }
    let src = row0 + lane % 8u;
    // The dZ rows each lane loads, looked up in the ragged map once, not per step.
    let d0 = min(row_of(wg.z, src), P.rows - 1u);
    let d1 = min(row_of(wg.z, src + 8u), P.rows - 1u);
    let d2 = min(row_of(wg.z, src + 16u), P.rows - 1u);
    let d3 = min(row_of(wg.z, src + 24u), P.rows - 1u);
    let d4 = min(row_of(wg.z, src + 32u), P.rows - 1u);
    let d5 = min(row_of(wg.z, src + 40u), P.rows - 1u);
    let d6 = min(row_of(wg.z, src + 48u), P.rows - 1u);
    let d7 = min(row_of(wg.z, src + 56u), P.rows - 1u);
    let groups = dx_groups(wg.z);
    let g_first = groups.x;
    let g_end = groups.y;
    var t0: Tile; var t1: Tile; var t2: Tile; var t3: Tile;
    var t4: Tile; var t5: Tile; var t6: Tile; var t7: Tile;
    var u0: Tile; var u1: Tile; var u2: Tile; var u3: Tile;
    var u4: Tile; var u5: Tile; var u6: Tile; var u7: Tile;
    for (var g = g_first; g < g_end; g++) {
        let win = window_of(g);
        for (var j = 0u; j < P.outputs; j++) {
            let b0 = wt_cols(g, win, j, col);
            var b1 = b0;
            if (CN > 1u) {
                b1 = wt_cols(g, win, j, col + 4u);
            }
            block_step(&t0, &u0, dz_at(g, d0, j), b0, b1);
            if (RB > 1u) { block_step(&t1, &u1, dz_at(g, d1, j), b0, b1); }
            if (RB > 2u) { block_step(&t2, &u2, dz_at(g, d2, j), b0, b1); }
            if (RB > 3u) { block_step(&t3, &u3, dz_at(g, d3, j), b0, b1); }
            if (RB > 4u) { block_step(&t4, &u4, dz_at(g, d4, j), b0, b1); }
            if (RB > 5u) { block_step(&t5, &u5, dz_at(g, d5, j), b0, b1); }
            if (RB > 6u) { block_step(&t6, &u6, dz_at(g, d6, j), b0, b1); }
            if (RB > 7u) { block_step(&t7, &u7, dz_at(g, d7, j), b0, b1); }
        }
    }
    let g = wg.z;
    let base = slot_base(g);
    block_store_dx(g, row0, base, col, t0, u0);
    if (RB > 1u) { block_store_dx(g, row0 + 8u, base, col, t1, u1); }
    if (RB > 2u) { block_store_dx(g, row0 + 16u, base, col, t2, u2); }
    if (RB > 3u) { block_store_dx(g, row0 + 24u, base, col, t3, u3); }
    if (RB > 4u) { block_store_dx(g, row0 + 32u, base, col, t4, u4); }
    if (RB > 5u) { block_store_dx(g, row0 + 40u, base, col, t5, u5); }
    if (RB > 6u) { block_store_dx(g, row0 + 48u, base, col, t6, u6); }
    if (RB > 7u) { block_store_dx(g, row0 + 56u, base, col, t7, u7); }
}

// dW_g[i, col] = Σ_b X_g[b, i] · dZ_g[b, col], and db_g = Σ_b dZ_g[b, col] apart
// (FLAG_DB_APART): output rows are inputs i, the reduction runs over the batch rows
// b (in ragged mode, over the slots of the routed rows).
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
    let db_here = sums_db(wg);
    var d0 = vec4(0.0);
    var d1 = vec4(0.0);
    let n = live_slots(wg.z);
    let xo = x_offset(g);
    let i0 = min(src, P.inputs);
    let i1 = min(src + 8u, P.inputs);
    let i2 = min(src + 16u, P.inputs);
    let i3 = min(src + 24u, P.inputs);
    let i4 = min(src + 32u, P.inputs);
    let i5 = min(src + 40u, P.inputs);
    let i6 = min(src + 48u, P.inputs);
    let i7 = min(src + 56u, P.inputs);
    for (var b = 0u; b < n; b++) {
        let row = row_of(g, b);
        let b0 = dz_cols(g, row, col);
        var b1 = b0;
        if (CN > 1u) {
            b1 = dz_cols(g, row, col + 4u);
        }
        // Every workgroup sums (a branch in the loop cost more than the adds); the
        // first row block's store.
        d0 = d0 + b0;
        d1 = d1 + b1;
        block_step(&t0, &u0, x_in_window(xo, row, i0), b0, b1);
        if (RB > 1u) { block_step(&t1, &u1, x_in_window(xo, row, i1), b0, b1); }
        if (RB > 2u) { block_step(&t2, &u2, x_in_window(xo, row, i2), b0, b1); }
        if (RB > 3u) { block_step(&t3, &u3, x_in_window(xo, row, i3), b0, b1); }
        if (RB > 4u) { block_step(&t4, &u4, x_in_window(xo, row, i4), b0, b1); }
        if (RB > 5u) { block_step(&t5, &u5, x_in_window(xo, row, i5), b0, b1); }
        if (RB > 6u) { block_step(&t6, &u6, x_in_window(xo, row, i6), b0, b1); }
        if (RB > 7u) { block_step(&t7, &u7, x_in_window(xo, row, i7), b0, b1); }
    }
    if (db_here) {
        block_store_db(g, col, d0, d1);
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
