// y[n, co, oy, ox] = bias[co] + sum over (ci, ky, kx) of
//     x[n, ci, oy * SH + ky - PH, ox * SW + kx - PW] * w[co, ci, ky, kx]
// as an implicit GEMM with a register tile: each invocation computes TP neighbouring
// pixels of one output row for TC output channels, so each tap loads TP inputs and TC
// weights for TP * TC multiply-adds. The tile is unrolled into scalar variables by the
// code generator, because drivers keep indexed local arrays in memory.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid) * WG + lid;
    if (t >= N * OH * OW_TILES * CO_GROUPS) {
        return;
    }
    let tile = t % OW_TILES;
    let oy = (t / OW_TILES) % OH;
    let n = (t / (OW_TILES * OH)) % N;
    let co0 = (t / (OW_TILES * OH * N)) * TC;
    let ox0 = tile * TP;
{{DECLARE}}
    for (var ci = 0u; ci < CI; ci += 1u) {
        let x_plane = (n * CI + ci) * H * W;
        let w_ci = ci * KH * KW;
        for (var ky = 0u; ky < KH; ky += 1u) {
            let iy = i32(oy * SH + ky) - PH;
            if (iy < 0 || iy >= i32(H)) {
                continue;
            }
            let x_row = x_plane + u32(iy) * W;
            for (var kx = 0u; kx < KW; kx += 1u) {
                let tap = w_ci + ky * KW + kx;
{{LOADS}}
{{FMAS}}
            }
        }
    }
{{STORES}}
}
