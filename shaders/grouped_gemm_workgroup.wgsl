// Register-tiled grouped GEMM kernels sharing the left operand through workgroup
// memory; extends grouped_gemm.wgsl and grouped_gemm_tiles.wgsl (compiled after them).
// No subgroup operations: these run on every adapter (WebGPU without `subgroups`, DX12
// through FXC, older Vulkan drivers).
//
// The RB · 8 rows of the left operand are staged in `staged`, a ring of 2 · KT
// reduction steps: while the workgroup multiplies the steps of one half, each
// invocation loads its share of the steps KT further on into the other half, so one
// barrier every KT steps keeps both halves apart (double buffering: the loads of the
// next half overlap the fmas of this one). Invocation lid loads rows lid, lid + WG,
// ... of the workgroup's rows, each looked up in the ragged map once. Each output is
// the same fma chain, step by step, as in the naive and the subgroup kernels.
//
// Every loop bound and barrier condition depends only on uniform values (parameters,
// the workgroup id, the row map's counts), so every invocation reaches every barrier.

// Reduction steps per half of the ring: a power of two, at most 64.
override KT: u32 = 8u;
// Left-operand values each invocation loads per reduction step.
override LOADS: u32 = (RB * 8u + WG - 1u) / WG;
// The ring: 2 · KT steps of RB · 8 rows, four rows to a vec4 (one vec4 load gives an
// invocation four rows' values).
override STAGED_LEN: u32 = 4u * KT * RB;
var<workgroup> staged: array<vec4<f32>, STAGED_LEN>;

// The slot of reduction step k in the ring.
fn ring_slot(k: u32) -> u32 {
    return k & (2u * KT - 1u);
}

// Rows 8r..8r+8 of the workgroup's left operand at a slot.
fn staged_rows(slot: u32, r: u32) -> Rows8 {
    let at = (slot * RB + r) * 2u;
    return Rows8(staged[at], staged[at + 1u]);
}

// Whether invocation lid loads a j-th value: its row lid + j·WG is one of the
// workgroup's (always for j < LOADS where WG divides RB · 8; with more invocations
// than rows, only the first RB · 8 load).
fn loads(j: u32, lid: u32) -> bool {
    return LOADS > j && lid + j * WG < RB * 8u;
}

fn put(slot: u32, row: u32, v: f32) {
    staged[slot * RB * 2u + row / 4u][row % 4u] = v;
}

// What an invocation loads from: one index per value it stages (rows of X or dZ, or
// inputs of X for the weight gradient), worked out once.
struct Sources {
    lo: vec4<u32>,
    hi: vec4<u32>,
}

// The left-operand rows invocation lid stages, from slot row0 on of group g's list,
// clamped into X (or dZ).
fn row_sources(g: u32, row0: u32, lid: u32) -> Sources {
    let last = P.rows - 1u;
    let s = row0 + lid;
    return Sources(
        vec4(
            min(row_of(g, s), last),
            min(row_of(g, s + WG), last),
            min(row_of(g, s + 2u * WG), last),
            min(row_of(g, s + 3u * WG), last),
        ),
        vec4(
            min(row_of(g, s + 4u * WG), last),
            min(row_of(g, s + 5u * WG), last),
            min(row_of(g, s + 6u * WG), last),
            min(row_of(g, s + 7u * WG), last),
        ),
    );
}

// Forward, step k: X[row, k] of what the group reads from xo for the invocation's
// rows.
fn stage_x(slot: u32, xo: XWindow, k: u32, lid: u32, src: Sources) {
    if (loads(0u, lid)) { put(slot, lid, x_at(xo, src.lo.x, k)); }
    if (loads(1u, lid)) { put(slot, lid + WG, x_at(xo, src.lo.y, k)); }
    if (loads(2u, lid)) { put(slot, lid + 2u * WG, x_at(xo, src.lo.z, k)); }
    if (loads(3u, lid)) { put(slot, lid + 3u * WG, x_at(xo, src.lo.w, k)); }
    if (loads(4u, lid)) { put(slot, lid + 4u * WG, x_at(xo, src.hi.x, k)); }
    if (loads(5u, lid)) { put(slot, lid + 5u * WG, x_at(xo, src.hi.y, k)); }
    if (loads(6u, lid)) { put(slot, lid + 6u * WG, x_at(xo, src.hi.z, k)); }
    if (loads(7u, lid)) { put(slot, lid + 7u * WG, x_at(xo, src.hi.w, k)); }
}

// Input gradient, step (g, j): dZ_g[row, j] for the invocation's rows.
fn stage_dz(slot: u32, g: u32, j: u32, lid: u32, src: Sources) {
    if (loads(0u, lid)) { put(slot, lid, dz_at(g, src.lo.x, j)); }
    if (loads(1u, lid)) { put(slot, lid + WG, dz_at(g, src.lo.y, j)); }
    if (loads(2u, lid)) { put(slot, lid + 2u * WG, dz_at(g, src.lo.z, j)); }
    if (loads(3u, lid)) { put(slot, lid + 3u * WG, dz_at(g, src.lo.w, j)); }
    if (loads(4u, lid)) { put(slot, lid + 4u * WG, dz_at(g, src.hi.x, j)); }
    if (loads(5u, lid)) { put(slot, lid + 5u * WG, dz_at(g, src.hi.y, j)); }
    if (loads(6u, lid)) { put(slot, lid + 6u * WG, dz_at(g, src.hi.z, j)); }
    if (loads(7u, lid)) { put(slot, lid + 7u * WG, dz_at(g, src.hi.w, j)); }
}

// Weight gradients, the step of batch row `row`: X[row, i] of what the group reads
// from xo for the invocation's inputs i.
fn stage_xt(slot: u32, xo: XWindow, row: u32, lid: u32, src: Sources) {
    if (loads(0u, lid)) { put(slot, lid, x_in_window(xo, row, src.lo.x)); }
    if (loads(1u, lid)) { put(slot, lid + WG, x_in_window(xo, row, src.lo.y)); }
    if (loads(2u, lid)) { put(slot, lid + 2u * WG, x_in_window(xo, row, src.lo.z)); }
    if (loads(3u, lid)) { put(slot, lid + 3u * WG, x_in_window(xo, row, src.lo.w)); }
    if (loads(4u, lid)) { put(slot, lid + 4u * WG, x_in_window(xo, row, src.hi.x)); }
    if (loads(5u, lid)) { put(slot, lid + 5u * WG, x_in_window(xo, row, src.hi.y)); }
    if (loads(6u, lid)) { put(slot, lid + 6u * WG, x_in_window(xo, row, src.hi.z)); }
    if (loads(7u, lid)) { put(slot, lid + 7u * WG, x_in_window(xo, row, src.hi.w)); }
}

@compute @workgroup_size(WG)
fn forward_workgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
) {
    let owned = column_of(wg, lid);
    let g = owned.x;
    let col = owned.y;
    let row0 = wg.y * RB * 8u;
    if (row0 >= live_slots(wg.z)) {
        store_zero_rows(g, row0, col);
        return;
    }
    // The staged rows are group wg.z's: with packed groups X is shared, so the same
    // for every group the workgroup's columns belong to.
    let src = row_sources(wg.z, row0, lid);
    let xo = x_offset(wg.z);
    // Uniform: with windows a workgroup holds one group (they are never packed).
    let n = xo.width;
    for (var k = 0u; k < min(KT, n); k++) {
        stage_x(k, xo, k, lid, src);
    }
    var t0: Tile; var t1: Tile; var t2: Tile; var t3: Tile;
    var t4: Tile; var t5: Tile; var t6: Tile; var t7: Tile;
    var u0: Tile; var u1: Tile; var u2: Tile; var u3: Tile;
    var u4: Tile; var u5: Tile; var u6: Tile; var u7: Tile;
    for (var k = 0u; k < n; k++) {
        if ((k & (KT - 1u)) == 0u) {
            workgroupBarrier();
        }
        if (k + KT < n) {
            stage_x(ring_slot(k + KT), xo, k + KT, lid, src);
        }
        let slot = ring_slot(k);
        let b0 = w_cols(g, k, col);
        var b1 = b0;
        if (CN > 1u) {
            b1 = w_cols(g, k, col + 4u);
        }
        block_step_rows(&t0, &u0, staged_rows(slot, 0u), b0, b1);
        if (RB > 1u) { block_step_rows(&t1, &u1, staged_rows(slot, 1u), b0, b1); }
        if (RB > 2u) { block_step_rows(&t2, &u2, staged_rows(slot, 2u), b0, b1); }
        if (RB > 3u) { block_step_rows(&t3, &u3, staged_rows(slot, 3u), b0, b1); }
        if (RB > 4u) { block_step_rows(&t4, &u4, staged_rows(slot, 4u), b0, b1); }
        if (RB > 5u) { block_step_rows(&t5, &u5, staged_rows(slot, 5u), b0, b1); }
        if (RB > 6u) { block_step_rows(&t6, &u6, staged_rows(slot, 6u), b0, b1); }
        if (RB > 7u) { block_step_rows(&t7, &u7, staged_rows(slot, 7u), b0, b1); }
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

// The position after (g, j) in the input gradient's reduction, which runs over j
// within each group, then over the groups.
fn next_step(at: vec2<u32>) -> vec2<u32> {
    if (at.y + 1u == P.outputs) {
        return vec2(at.x + 1u, 0u);
    }
    return vec2(at.x, at.y + 1u);
}

// dX[row, i] = Σ_g Σ_j dZ_g[row, j] · W_g[i, j] (see backward_input_subgroup); one
// reduction step per (g, j), in the same order.
@compute @workgroup_size(WG)
fn backward_input_workgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
) {
    let row0 = wg.y * RB * 8u;
    let col = (wg.x * WG + lid) * CN * 4u;
    if (row0 >= live_slots(wg.z)) {
        store_zero_dx_rows(wg.z, row0, col);
        return;
    }
    let src = row_sources(wg.z, row0, lid);
    let groups = dx_groups(wg.z);
    let n = (groups.y - groups.x) * P.outputs;
    // Where the loads (KT steps ahead) and the fmas are in the reduction.
    var ahead = vec2(groups.x, 0u);
    for (var q = 0u; q < min(KT, n); q++) {
        stage_dz(q, ahead.x, ahead.y, lid, src);
        ahead = next_step(ahead);
    }
    var at = vec2(groups.x, 0u);
    var win = window_of(at.x);
    var t0: Tile; var t1: Tile; var t2: Tile; var t3: Tile;
    var t4: Tile; var t5: Tile; var t6: Tile; var t7: Tile;
    var u0: Tile; var u1: Tile; var u2: Tile; var u3: Tile;
    var u4: Tile; var u5: Tile; var u6: Tile; var u7: Tile;
    for (var q = 0u; q < n; q++) {
        if ((q & (KT - 1u)) == 0u) {
            workgroupBarrier();
        }
        if (q + KT < n) {
            stage_dz(ring_slot(q + KT), ahead.x, ahead.y, lid, src);
            ahead = next_step(ahead);
        }
        let slot = ring_slot(q);
        let b0 = wt_cols(at.x, win, at.y, col);
        var b1 = b0;
        if (CN > 1u) {
            b1 = wt_cols(at.x, win, at.y, col + 4u);
        }
        block_step_rows(&t0, &u0, staged_rows(slot, 0u), b0, b1);
        if (RB > 1u) { block_step_rows(&t1, &u1, staged_rows(slot, 1u), b0, b1); }
        if (RB > 2u) { block_step_rows(&t2, &u2, staged_rows(slot, 2u), b0, b1); }
        if (RB > 3u) { block_step_rows(&t3, &u3, staged_rows(slot, 3u), b0, b1); }
        if (RB > 4u) { block_step_rows(&t4, &u4, staged_rows(slot, 4u), b0, b1); }
        if (RB > 5u) { block_step_rows(&t5, &u5, staged_rows(slot, 5u), b0, b1); }
        if (RB > 6u) { block_step_rows(&t6, &u6, staged_rows(slot, 6u), b0, b1); }
        if (RB > 7u) { block_step_rows(&t7, &u7, staged_rows(slot, 7u), b0, b1); }
        at = next_step(at);
        if (at.y == 0u && P.windows != 0u) {
            win = window_of(at.x);
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

// dW_g[i, col] = Σ_b X_g[b, i] · dZ_g[b, col], and db_g apart (see
// backward_weights_subgroup): the staged operand is X_gᵀ, the reduction runs over the
// batch rows (ragged: the slots of the routed rows).
@compute @workgroup_size(WG)
fn backward_weights_workgroup(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
) {
    let owned = column_of(wg, lid);
    let g = owned.x;
    let col = owned.y;
    let row0 = wg.y * RB * 8u;
    let i = row0 + lid;
    let last = P.inputs;
    let src = Sources(
        min(vec4(i, i + WG, i + 2u * WG, i + 3u * WG), vec4(last)),
        min(vec4(i + 4u * WG, i + 5u * WG, i + 6u * WG, i + 7u * WG), vec4(last)),
    );
    let n = live_slots(wg.z);
    let xo = x_offset(wg.z);
    for (var b = 0u; b < min(KT, n); b++) {
        stage_xt(b, xo, row_of(wg.z, b), lid, src);
    }
    var t0: Tile; var t1: Tile; var t2: Tile; var t3: Tile;
    var t4: Tile; var t5: Tile; var t6: Tile; var t7: Tile;
    var u0: Tile; var u1: Tile; var u2: Tile; var u3: Tile;
    var u4: Tile; var u5: Tile; var u6: Tile; var u7: Tile;
    let db_here = sums_db(wg);
    var d0 = vec4(0.0);
    var d1 = vec4(0.0);
    for (var b = 0u; b < n; b++) {
        if ((b & (KT - 1u)) == 0u) {
            workgroupBarrier();
        }
        if (b + KT < n) {
            stage_xt(ring_slot(b + KT), xo, row_of(wg.z, b + KT), lid, src);
        }
        let slot = ring_slot(b);
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
        block_step_rows(&t0, &u0, staged_rows(slot, 0u), b0, b1);
        if (RB > 1u) { block_step_rows(&t1, &u1, staged_rows(slot, 1u), b0, b1); }
        if (RB > 2u) { block_step_rows(&t2, &u2, staged_rows(slot, 2u), b0, b1); }
        if (RB > 3u) { block_step_rows(&t3, &u3, staged_rows(slot, 3u), b0, b1); }
        if (RB > 4u) { block_step_rows(&t4, &u4, staged_rows(slot, 4u), b0, b1); }
        if (RB > 5u) { block_step_rows(&t5, &u5, staged_rows(slot, 5u), b0, b1); }
        if (RB > 6u) { block_step_rows(&t6, &u6, staged_rows(slot, 6u), b0, b1); }
        if (RB > 7u) { block_step_rows(&t7, &u7, staged_rows(slot, 7u), b0, b1); }
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
