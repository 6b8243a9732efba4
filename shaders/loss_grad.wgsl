// dx[i] = expression of (a = x[i], b = y[i] or y[0] for a scalar target, g = dy[0]) over
// COUNT elements; INV_N is 1 / COUNT, the mean's factor.

fn stable_sigmoid(v: f32) -> f32 {
    // Both branches are evaluated; select keeps the one that cannot overflow.
    return select(exp(v) / (1.0 + exp(v)), 1.0 / (1.0 + exp(-v)), v >= 0.0);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group_index(wid) * ITEMS * WG + lid;
    let g = dy[0];
    for (var k = 0u; k < ITEMS; k += 1u) {
        let i = first + k * WG;
        if (i < COUNT) {
            let a = x[i];
            let b = y[{{B_INDEX}}];
            dx[i] = {{EXPR}};
        }
    }
}
