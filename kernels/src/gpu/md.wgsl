// Bit-deterministic Lennard-Jones MD in WGSL.
//
// WGSL guarantees neither 64-bit integers nor correctly rounded float division, so every value that
// feeds the state is computed with 32-bit integer operations here: 64-bit quantities are vec2<u32>
// (low word, high word; two's complement when signed) and products are built from 16-bit halves.
// Each function mirrors a reference in `model.rs`/`numbers.rs`; the tests compare state hashes.
//
// Atoms stay in canonical order on the GPU; neighbour lists are full (each pair seen from both atoms),
// and since the pair force is exactly antisymmetric, the sums equal the CPU's half-list sums.

struct Params {
    atoms: u32,
    types: u32,
    max_neighbors: u32,
    atom_groups: u32,
    cells: vec4<u32>,            // x, y, z, total
    multiplier: vec4<u32>,       // separation scale per axis
    shift: vec4<u32>,
    list_squared: vec2<u32>,
    drift_limit_squared: vec2<u32>,
    langevin: u32,
    seed_low: u32,
    seed_high: u32,
    friction_mantissa: u32,
    friction_shift: u32,
    energy_offset: u32,          // first energy segment in `segments` (in segments)
    virial_offset: u32,
    cell_groups: u32,
}

// control words
const REBUILD: u32 = 0u;
const OVERFLOW: u32 = 1u;
const STEP_LOW: u32 = 2u;
const STEP_HIGH: u32 = 3u;
const BUILDS: u32 = 4u;

const SEGMENT_BITS: u32 = 7u;
const FRACTION_BITS: u32 = 31u;
const SEPARATION_LIMIT: u32 = 0x40000000u; // 2^30
const GROUP: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> position: array<vec2<u32>>;      // 3 per atom
@group(0) @binding(2) var<storage, read_write> velocity: array<vec2<u32>>;      // 3 per atom
@group(0) @binding(3) var<storage, read_write> force: array<vec2<u32>>;         // 3 per atom
@group(0) @binding(4) var<storage, read_write> high: array<vec4<u32>>;          // x, y, z high words, type
@group(0) @binding(5) var<storage, read_write> reference: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> neighbors: array<u32>;           // [k * atoms + i]
@group(0) @binding(7) var<storage, read_write> neighbor_count: array<u32>;
@group(0) @binding(8) var<storage, read_write> cell_count: array<atomic<u32>>;
@group(0) @binding(9) var<storage, read_write> cell_start: array<u32>;
@group(0) @binding(10) var<storage, read_write> cell_atoms: array<u32>;
@group(0) @binding(11) var<storage, read_write> atom_cell: array<vec2<u32>>;    // cell, slot
@group(0) @binding(12) var<storage, read_write> control: array<atomic<u32>>;
// Bound alone in group 1, used only by `prepare`: a buffer cannot be storage and indirect at once.
@group(1) @binding(0) var<storage, read_write> indirect: array<u32>;            // 3 dispatches x 3
@group(0) @binding(14) var<storage, read> pair_params: array<vec4<u32>>;        // 2 per pair type
@group(0) @binding(15) var<storage, read> segments: array<vec4<i32>>;           // 2 per segment
@group(0) @binding(16) var<storage, read> type_factors: array<vec4<u32>>;       // 3 per type
@group(0) @binding(17) var<storage, read_write> energy_out: array<vec4<u32>>;   // energy, virial (i64)

override WITH_ENERGY: bool = false;

// ---- 64-bit arithmetic on vec2<u32> ----

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let low = a.x + b.x;
    return vec2<u32>(low, a.y + b.y + select(0u, 1u, low < a.x));
}

fn neg64(a: vec2<u32>) -> vec2<u32> {
    return add64(~a, vec2<u32>(1u, 0u));
}

fn negative64(a: vec2<u32>) -> bool {
    return (a.y >> 31u) != 0u;
}

fn less64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y < b.y || (a.y == b.y && a.x < b.x);
}

fn max64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return select(a, b, less64(a, b));
}

fn clz64(a: vec2<u32>) -> u32 {
    if (a.y != 0u) {
        return countLeadingZeros(a.y);
    }
    return 32u + countLeadingZeros(a.x);
}

// Logical shift right, s in [0, 63].
fn shr64(a: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return a;
    }
    if (s >= 32u) {
        return vec2<u32>(a.y >> (s - 32u), 0u);
    }
    return vec2<u32>((a.x >> s) | (a.y << (32u - s)), a.y >> s);
}

// Arithmetic shift right, s in [0, 63].
fn sar64(a: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return a;
    }
    let top = bitcast<i32>(a.y);
    if (s >= 32u) {
        return vec2<u32>(bitcast<u32>(top >> (s - 32u)), bitcast<u32>(top >> 31u));
    }
    return vec2<u32>((a.x >> s) | (a.y << (32u - s)), bitcast<u32>(top >> s));
}

// Shift left, s in [0, 63].
fn shl64(a: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return a;
    }
    if (s >= 32u) {
        return vec2<u32>(0u, a.x << (s - 32u));
    }
    return vec2<u32>(a.x << s, (a.y << s) | (a.x >> (32u - s)));
}

// Full 64-bit product of two u32.
fn mul32(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let middle = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>((p00 & 0xffffu) | (middle << 16u), p11 + (p01 >> 16u) + (p10 >> 16u) + (middle >> 16u));
}

// Exact signed product of an i32 and a u32.
fn mul_signed(y: i32, t: u32) -> vec2<u32> {
    let magnitude = mul32(bitcast<u32>(abs(y)), t);
    return select(magnitude, neg64(magnitude), y < 0);
}

fn widen(y: i32) -> vec2<u32> {
    return vec2<u32>(bitcast<u32>(y), bitcast<u32>(y >> 31u));
}

// floor(v * mantissa / 2^s) for a signed 64-bit v, s in [0, 63] (numbers::Factor::apply).
fn factor_apply(v: vec2<u32>, mantissa: u32, s: u32) -> vec2<u32> {
    let negative = negative64(v);
    let a = select(v, neg64(v), negative);
    let low = mul32(a.x, mantissa);
    let top = mul32(a.y, mantissa);
    let middle = low.y + top.x;
    var w = vec3<u32>(low.x, middle, top.y + select(0u, 1u, middle < low.y));
    if (negative) {
        w = ~w;
        w.x = w.x + 1u;
        let carry0 = select(0u, 1u, w.x == 0u);
        w.y = w.y + carry0;
        let carry1 = select(0u, 1u, carry0 == 1u && w.y == 0u);
        w.z = w.z + carry1;
    }
    if (s == 0u) {
        return w.xy;
    }
    if (s < 32u) {
        return vec2<u32>((w.x >> s) | (w.y << (32u - s)), (w.y >> s) | (w.z << (32u - s)));
    }
    if (s == 32u) {
        return w.yz;
    }
    let r = s - 32u;
    return vec2<u32>((w.y >> r) | (w.z << (32u - r)), bitcast<u32>(bitcast<i32>(w.z) >> r));
}

// ---- counter-based random numbers (rng.rs) ----

fn mix32(value: u32) -> u32 {
    var x = value;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    x = x ^ (x >> 16u);
    return x;
}

fn draw(step: vec2<u32>, atom: u32, dimension: u32) -> u32 {
    var h = mix32(params.seed_low ^ 0x9e3779b9u);
    h = mix32(h ^ params.seed_high);
    h = mix32(h ^ step.x);
    h = mix32(h ^ step.y);
    h = mix32(h ^ atom);
    return mix32(h ^ (dimension * 0x632be5abu));
}

// ---- pair functions (model.rs) ----

struct Separation {
    dx: vec3<i32>,
    p: vec3<u32>,
    r2: vec2<u32>,
    far: bool,
}

fn separation(a: vec4<u32>, b: vec4<u32>) -> Separation {
    var out: Separation;
    out.dx = vec3<i32>(bitcast<i32>(a.x - b.x), bitcast<i32>(a.y - b.y), bitcast<i32>(a.z - b.z));
    let px = shr64(mul32(bitcast<u32>(abs(out.dx.x)), params.multiplier.x), params.shift.x);
    let py = shr64(mul32(bitcast<u32>(abs(out.dx.y)), params.multiplier.y), params.shift.y);
    let pz = shr64(mul32(bitcast<u32>(abs(out.dx.z)), params.multiplier.z), params.shift.z);
    out.far = (px.y | py.y | pz.y) != 0u || (px.x | py.x | pz.x) >= SEPARATION_LIMIT;
    out.p = vec3<u32>(px.x, py.x, pz.x);
    out.r2 = add64(add64(mul32(out.p.x, out.p.x), mul32(out.p.y, out.p.y)), mul32(out.p.z, out.p.z));
    return out;
}

struct Location {
    segment: u32,
    t: u32,
}

fn locate(r2: vec2<u32>, first_octave: u32) -> Location {
    let octave = 63u - clz64(r2);
    let below = octave - SEGMENT_BITS;
    var out: Location;
    out.segment = ((octave - first_octave) << SEGMENT_BITS) | (shr64(r2, below).x & ((1u << SEGMENT_BITS) - 1u));
    let mask = add64(shl64(vec2<u32>(1u, 0u), below), vec2<u32>(0xffffffffu, 0xffffffffu));
    let remainder = r2 & mask;
    if (below >= FRACTION_BITS) {
        out.t = shr64(remainder, below - FRACTION_BITS).x;
    } else {
        out.t = shl64(remainder, FRACTION_BITS - below).x;
    }
    return out;
}

fn horner(c: i32, y: i32, t: u32) -> i32 {
    return c + bitcast<i32>(sar64(mul_signed(y, t), FRACTION_BITS).x);
}

// Evaluates segment `index`: returns (value, shift).
fn evaluate(index: u32, t: u32) -> vec2<i32> {
    let c = segments[2u * index];
    let shift = segments[2u * index + 1u].x;
    var y = c.w;
    y = horner(c.z, y, t);
    y = horner(c.y, y, t);
    y = horner(c.x, y, t);
    return vec2<i32>(y, shift);
}

fn shift_signed(y: i32, s: i32) -> vec2<u32> {
    if (s >= 0) {
        return sar64(widen(y), u32(s));
    }
    return shl64(widen(y), u32(-s));
}

// ---- kernels ----

fn atom_index(id: vec3<u32>) -> u32 {
    return id.x + id.y * params.atom_groups * GROUP;
}

@compute @workgroup_size(64)
fn kick_drift(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = atom_index(id);
    if (i >= params.atoms) {
        return;
    }
    let t = high[i].w;
    var h = vec4<u32>(0u, 0u, 0u, t);
    for (var d = 0u; d < 3u; d++) {
        let k = type_factors[3u * t + d];
        let v = add64(velocity[3u * i + d], factor_apply(force[3u * i + d], k.x, k.y));
        velocity[3u * i + d] = v;
        let x = add64(position[3u * i + d], v);
        position[3u * i + d] = x;
        h[d] = x.y;
    }
    high[i] = h;
}

@compute @workgroup_size(64)
fn kick_thermostat(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = atom_index(id);
    if (i >= params.atoms) {
        return;
    }
    let t = high[i].w;
    let step = vec2<u32>(atomicLoad(&control[STEP_LOW]), atomicLoad(&control[STEP_HIGH]));
    for (var d = 0u; d < 3u; d++) {
        let k = type_factors[3u * t + d];
        var v = add64(velocity[3u * i + d], factor_apply(force[3u * i + d], k.x, k.y));
        if (params.langevin != 0u) {
            v = factor_apply(v, params.friction_mantissa, params.friction_shift);
            if (k.w != 0u) {
                let word = draw(step, i, d);
                // 2 word - 2^32 + 1, as a signed 64-bit value
                let noise = add64(vec2<u32>(word << 1u, (word >> 31u) - 1u), vec2<u32>(1u, 0u));
                v = add64(v, factor_apply(noise, k.z, k.w - 1u));
            }
        }
        velocity[3u * i + d] = v;
    }
}

@compute @workgroup_size(1)
fn advance() {
    let low = atomicLoad(&control[STEP_LOW]) + 1u;
    atomicStore(&control[STEP_LOW], low);
    if (low == 0u) {
        atomicAdd(&control[STEP_HIGH], 1u);
    }
}

@compute @workgroup_size(64)
fn check(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = atom_index(id);
    if (i >= params.atoms) {
        return;
    }
    let s = separation(high[i], reference[i]);
    if (s.far || less64(params.drift_limit_squared, s.r2)) {
        atomicStore(&control[REBUILD], 1u);
    }
}

// Turns the rebuild flag into the workgroup counts of the indirect build dispatches.
@compute @workgroup_size(1)
fn prepare() {
    let rebuild = atomicLoad(&control[REBUILD]) != 0u;
    atomicStore(&control[REBUILD], 0u);
    if (rebuild) {
        atomicAdd(&control[BUILDS], 1u);
    }
    indirect[0] = select(0u, params.atom_groups, rebuild);
    indirect[1] = select(0u, (params.atoms + params.atom_groups * GROUP - 1u) / (params.atom_groups * GROUP), rebuild);
    indirect[2] = 1u;
    indirect[3] = select(0u, params.cell_groups, rebuild);
    indirect[4] = 1u;
    indirect[5] = 1u;
    indirect[6] = select(0u, 1u, rebuild);
    indirect[7] = 1u;
    indirect[8] = 1u;
}

@compute @workgroup_size(64)
fn clear_cells(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < params.cells.w) {
        atomicStore(&cell_count[id.x], 0u);
    }
}

fn cell_of(h: vec4<u32>) -> vec3<u32> {
    return vec3<u32>(mul32(h.x, params.cells.x).y, mul32(h.y, params.cells.y).y, mul32(h.z, params.cells.z).y);
}

fn cell_index(c: vec3<u32>) -> u32 {
    return (c.z * params.cells.y + c.y) * params.cells.x + c.x;
}

@compute @workgroup_size(64)
fn bin(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = atom_index(id);
    if (i >= params.atoms) {
        return;
    }
    let c = cell_index(cell_of(high[i]));
    atom_cell[i] = vec2<u32>(c, atomicAdd(&cell_count[c], 1u));
}

var<workgroup> partial: array<u32, 256>;

// Exclusive prefix sum of the cell counts, in one workgroup.
@compute @workgroup_size(256)
fn scan(@builtin(local_invocation_id) local: vec3<u32>) {
    let total = params.cells.w;
    let per = (total + 255u) / 256u;
    let first = min(local.x * per, total);
    let last = min(first + per, total);
    var sum = 0u;
    for (var c = first; c < last; c++) {
        sum += atomicLoad(&cell_count[c]);
    }
    partial[local.x] = sum;
    workgroupBarrier();
    for (var offset = 1u; offset < 256u; offset = offset * 2u) {
        var value = 0u;
        if (local.x >= offset) {
            value = partial[local.x - offset];
        }
        workgroupBarrier();
        partial[local.x] += value;
        workgroupBarrier();
    }
    var running = partial[local.x] - sum;
    for (var c = first; c < last; c++) {
        cell_start[c] = running;
        running += atomicLoad(&cell_count[c]);
    }
    if (local.x == 255u) {
        cell_start[total] = partial[255];
    }
}

@compute @workgroup_size(64)
fn scatter(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = atom_index(id);
    if (i >= params.atoms) {
        return;
    }
    let cs = atom_cell[i];
    cell_atoms[cell_start[cs.x] + cs.y] = i;
}

@compute @workgroup_size(64)
fn build(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = atom_index(id);
    if (i >= params.atoms) {
        return;
    }
    let a = high[i];
    let home = vec3<i32>(cell_of(a));
    let cells = vec3<i32>(params.cells.xyz);
    // Offsets -1..1 per axis, fewer where the box has fewer than three cells (no cell twice).
    let low = select(vec3<i32>(-1), vec3<i32>(0), cells < vec3<i32>(3));
    let top = select(vec3<i32>(1), vec3<i32>(0), cells < vec3<i32>(2));
    var count = 0u;
    for (var z = low.z; z <= top.z; z++) {
        for (var y = low.y; y <= top.y; y++) {
            for (var x = low.x; x <= top.x; x++) {
                let c = (home + vec3<i32>(x, y, z) + cells) % cells;
                let cell = cell_index(vec3<u32>(c));
                for (var k = cell_start[cell]; k < cell_start[cell + 1u]; k++) {
                    let j = cell_atoms[k];
                    if (j == i) {
                        continue;
                    }
                    let s = separation(a, high[j]);
                    if (!s.far && less64(s.r2, params.list_squared)) {
                        if (count < params.max_neighbors) {
                            neighbors[count * params.atoms + i] = j;
                        }
                        count++;
                    }
                }
            }
        }
    }
    if (count > params.max_neighbors) {
        atomicMax(&control[OVERFLOW], count);
    }
    neighbor_count[i] = min(count, params.max_neighbors);
    reference[i] = a;
}

@compute @workgroup_size(64)
fn forces(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = atom_index(id);
    if (i >= params.atoms) {
        return;
    }
    let a = high[i];
    let row = a.w * params.types;
    var total = array<vec2<u32>, 3>(vec2<u32>(0u), vec2<u32>(0u), vec2<u32>(0u));
    var energy = vec2<u32>(0u);
    var virial = vec2<u32>(0u);
    let count = neighbor_count[i];
    for (var k = 0u; k < count; k++) {
        let b = high[neighbors[k * params.atoms + i]];
        let s = separation(a, b);
        let table = 2u * (row + b.w);
        let limits = pair_params[table];
        let cutoff = limits.xy;
        if (s.far || !less64(s.r2, cutoff)) {
            continue;
        }
        let shape = pair_params[table + 1u];
        let place = locate(max64(s.r2, limits.zw), shape.x);
        let segment = shape.y + place.segment;
        let g = evaluate(segment, place.t);
        for (var d = 0u; d < 3u; d++) {
            let magnitude = sar64(mul_signed(g.x, s.p[d]), u32(g.y));
            total[d] = add64(total[d], select(magnitude, neg64(magnitude), s.dx[d] < 0));
        }
        if (WITH_ENERGY) {
            let e = evaluate(params.energy_offset + segment, place.t);
            energy = add64(energy, shift_signed(e.x, e.y));
            let w = evaluate(params.virial_offset + segment, place.t);
            virial = add64(virial, shift_signed(w.x, w.y));
        }
    }
    for (var d = 0u; d < 3u; d++) {
        force[3u * i + d] = total[d];
    }
    if (WITH_ENERGY) {
        energy_out[i] = vec4<u32>(energy, virial);
    }
}
