// y[i] = apply(x[i]) over COUNT values of type T (f32, or vec4<f32> of LANES elements);
// each invocation handles ITEMS values that lie WG apart, so neighbouring invocations
// touch neighbouring addresses.

fn apply(v: T) -> T {
    return {{EXPR}};
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group_index(wid) * ITEMS * WG + lid;
    for (var k = 0u; k < ITEMS; k += 1u) {
        let i = first + k * WG;
        if (i < COUNT) {
            y[i] = apply(x_at(i));
        }
    }
}
