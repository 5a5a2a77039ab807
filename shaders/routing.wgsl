// Routing: for every expert, the rows some gate sends to it, as the row map the
// ragged grouped GEMM reads (grouped_gemm.wgsl, RAGGED = 1).
//
// Layouts, row-major:
//   G       [gates, rows, experts], stored as `Elem` (f32 or f16, set by storage_*.wgsl)
//   routes  u32: routes[e] = count_e, then routes[experts + e·rows + s] = slot s of
//           expert e's list: the rows routed to e in ascending order (s < count_e),
//           then the other rows in ascending order
//
// Row r is routed to expert e when G[t, r, e] != 0 for some gate t (a NaN counts as
// routed: it must reach the output to be noticed).
//
// One workgroup per expert. A routed row's slot is the number of routed rows before
// it; an unrouted row's is count_e plus the number of unrouted rows before it. So the
// workgroup sweeps the rows twice: once to count, once to place each row, in chunks
// of WG rows whose routed rows are numbered by a workgroup prefix sum. Integer sums
// in a fixed shape, no atomics: the map is the same on every run and every device.

struct RoutingParams {
    gates: u32,
    rows: u32,
    experts: u32,
    // Element offsets of each operand inside its binding.
    g_base: u32,
    routes_base: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: RoutingParams;
@group(0) @binding(1) var<storage, read> gate: array<Elem>;
@group(0) @binding(2) var<storage, read_write> routes: array<u32>;

// Invocations per workgroup; a power of two (the host checks).
override WG: u32 = 64u;

var<workgroup> scan: array<u32, WG>;

// 1 when some gate gives row `row` to expert e, 0 otherwise (and past the last row).
fn routed(row: u32, e: u32) -> u32 {
    if (row >= P.rows) {
        return 0u;
    }
    for (var t = 0u; t < P.gates; t++) {
        if (f32(gate[P.g_base + (t * P.rows + row) * P.experts + e]) != 0.0) {
            return 1u;
        }
    }
    return 0u;
}

// Inclusive prefix sum of v over the workgroup's invocations (Hillis–Steele), and
// the workgroup's total.
fn workgroup_scan(lid: u32, v: u32) -> vec2<u32> {
    scan[lid] = v;
    workgroupBarrier();
    for (var stride = 1u; stride < WG; stride *= 2u) {
        var add = 0u;
        if (lid >= stride) {
            add = scan[lid - stride];
        }
        workgroupBarrier();
        scan[lid] = scan[lid] + add;
        workgroupBarrier();
    }
    let out = vec2(scan[lid], scan[WG - 1u]);
    // The next scan overwrites the cells read above.
    workgroupBarrier();
    return out;
}

@compute @workgroup_size(WG)
fn route_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = wid.x;
    var mine = 0u;
    for (var row = lid; row < P.rows; row += WG) {
        mine += routed(row, e);
    }
    let count = workgroup_scan(lid, mine).y;

    let list = P.routes_base + P.experts + e * P.rows;
    // Routed rows in the chunks before this one.
    var before = 0u;
    for (var first = 0u; first < P.rows; first += WG) {
        let row = first + lid;
        let f = routed(row, e);
        let s = workgroup_scan(lid, f);
        let routed_before = before + s.x - f;
        if (row < P.rows) {
            // Unrouted rows before this one: row − routed_before.
            let slot = select(count + row - routed_before, routed_before, f == 1u);
            routes[list + slot] = row;
        }
        before += s.y;
    }
    if (lid == 0u) {
        routes[P.routes_base + e] = count;
    }
}
