// y[n, o] = bias[o] + sum over i of x[n, i] * w[o, i].

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid) * WG + lid;
    if (t >= N * OUT) {
        return;
    }
    let o = t % OUT;
    let n = t / OUT;
    var acc = 0.0;
    for (var i = 0u; i < IN; i += 1u) {
        acc += x[n * IN + i] * w[o * IN + i];
    }
    y[t] = acc + {{BIAS}};
}
