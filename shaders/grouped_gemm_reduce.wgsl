// The second half of the grouped GEMM's ragged input gradient on a shared X
// (grouped_gemm.wgsl, FLAG_COMPACT_DX, writes the first):
//
//   dX[r, i] = Σ_g S[slot_base(g) + slot_g(r), i]   over the groups g that r is routed to
//
// in ascending g, from +0, then added to dX with FLAG_ACCUMULATE. S holds each group's
// rows compact, group g's from row slot_base(g) = Σ_{g' < g} count_g' on; slot_g(r) is
// r's place in g's list, found by binary search (the routed rows are ascending).
// A fixed order and no atomics: the same bits for every workgroup size and column
// blocking, and for every tiling of the GEMM that wrote S.
//
// Layouts, row-major:
//   routes  u32, the row map (grouped_gemm.wgsl, ragged mode; routing.wgsl writes it)
//   S       f32 [slots, inputs]      dX  [rows, inputs], stored as `Elem`
//
// A row no group takes gets +0, or, with FLAG_ACCUMULATE, stays as it was. The map
// is the caller's data: counts, rows and scratch rows are clamped, so a malformed map
// gives wrong numbers, never an access out of bounds.
//
// A workgroup covers one row and WG · CB · 4 columns; each invocation 4 adjacent
// columns in each of CB blocks. Its invocations look the row up in WG groups at a
// time (one group each) and share what they found through workgroup memory, so a
// search serves every column of the workgroup.

struct ReduceParams {
    groups: u32,
    rows: u32,
    inputs: u32,
    // Rows of S.
    slots: u32,
    // FLAG_ACCUMULATE: add into dX.
    flags: u32,
    // Element offsets of each operand inside its binding.
    routes_base: u32,
    slots_base: u32,
    dx_base: u32,
}

const FLAG_ACCUMULATE: u32 = 2u;
// Not a row of S: the row is not routed to that group.
const NOWHERE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> P: ReduceParams;
@group(0) @binding(1) var<storage, read> routes: array<u32>;
@group(0) @binding(2) var<storage, read> slots: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<Elem>;

// Invocations per workgroup.
override WG: u32 = 64u;
// Blocks of 4 columns per invocation (1..=4).
override CB: u32 = 4u;

// Per group of the current chunk: the row of S holding this workgroup's row, or NOWHERE.
var<workgroup> found: array<u32, WG>;

// The row of S holding group g's product for row `row`, or NOWHERE.
fn slot_row(g: u32, row: u32) -> u32 {
    let count = min(routes[P.routes_base + g], P.rows);
    let list = P.routes_base + P.groups + g * P.rows;
    // The first of g's routed rows that is not below `row`: at most 33 halvings.
    var lo = 0u;
    var hi = count;
    while (lo < hi) {
        let mid = lo + (hi - lo) / 2u;
        if (routes[list + mid] < row) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    if (lo >= count || routes[list + lo] != row) {
        return NOWHERE;
    }
    var base = 0u;
    for (var q = 0u; q < g; q++) {
        base += min(routes[P.routes_base + q], P.rows);
    }
    if (base + lo >= P.slots) {
        return NOWHERE;
    }
    return base + lo;
}

// S[s, col..col+4], columns clamped (clamped lanes are never stored).
fn slot_cols(s: u32, col: u32) -> vec4<f32> {
    let at = P.slots_base + s * P.inputs;
    let last = P.inputs - 1u;
    return vec4(
        slots[at + min(col, last)],
        slots[at + min(col + 1u, last)],
        slots[at + min(col + 2u, last)],
        slots[at + min(col + 3u, last)],
    );
}

fn store_cols(row: u32, col: u32, v: vec4<f32>, routed: bool) {
    let at = P.dx_base + row * P.inputs;
    let accumulate = (P.flags & FLAG_ACCUMULATE) != 0u;
    for (var c = 0u; c < 4u; c++) {
        if (col + c < P.inputs) {
            if (!accumulate) {
                dx[at + col + c] = Elem(v[c]);
            } else if (routed) {
                dx[at + col + c] = Elem(f32(dx[at + col + c]) + v[c]);
            }
        }
    }
}

@compute @workgroup_size(WG)
fn reduce_slots(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
) {
    // Rows run along y, and z once they pass the device's limit per dimension.
    let row = wg.y + wg.z * grid.y;
    if (row >= P.rows) {
        return;
    }
    let col = wg.x * WG * CB * 4u + lid * 4u;
    let stride = WG * 4u;
    var a0 = vec4(0.0);
    var a1 = vec4(0.0);
    var a2 = vec4(0.0);
    var a3 = vec4(0.0);
    var routed = false;
    for (var first = 0u; first < P.groups; first += WG) {
        var mine = NOWHERE;
        if (first + lid < P.groups) {
            mine = slot_row(first + lid, row);
        }
        found[lid] = mine;
        workgroupBarrier();
        let n = min(WG, P.groups - first);
        for (var j = 0u; j < n; j++) {
            let s = found[j];
            if (s != NOWHERE) {
                routed = true;
                a0 = a0 + slot_cols(s, col);
                if (CB > 1u) { a1 = a1 + slot_cols(s, col + stride); }
                if (CB > 2u) { a2 = a2 + slot_cols(s, col + 2u * stride); }
                if (CB > 3u) { a3 = a3 + slot_cols(s, col + 3u * stride); }
            }
        }
        // The next chunk overwrites the cells read above.
        workgroupBarrier();
    }
    store_cols(row, col, a0, routed);
    if (CB > 1u) { store_cols(row, col + stride, a1, routed); }
    if (CB > 2u) { store_cols(row, col + 2u * stride, a2, routed); }
    if (CB > 3u) { store_cols(row, col + 3u * stride, a3, routed); }
}
