// y[i, j] = sum over p of a(i, p) * b(p, j) for y [M, N]; A_AT and B_AT read a and b in
// their stored layouts, transposed or not.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid) * WG + lid;
    if (t >= M * N) {
        return;
    }
    let i = t / N;
    let j = t % N;
    var acc = 0.0;
    for (var p = 0u; p < K; p += 1u) {
        acc += a[{{A_AT}}] * b[{{B_AT}}];
    }
    y[t] = acc;
}
