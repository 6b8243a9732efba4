// y[n, c, oy, ox] = max over the KH x KW window at (oy * SH, ox * SW) of x[n, c].

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid) * WG + lid;
    if (t >= COUNT) {
        return;
    }
    let ox = t % OW;
    let oy = (t / OW) % OH;
    let plane = t / (OW * OH);
    let base = plane * H * W;
    var best = x[base + (oy * SH) * W + ox * SW];
    for (var ky = 0u; ky < KH; ky += 1u) {
        for (var kx = 0u; kx < KW; kx += 1u) {
            best = max(best, x[base + (oy * SH + ky) * W + ox * SW + kx]);
        }
    }
    y[t] = best;
}
