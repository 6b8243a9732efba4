// The transpose of conv2d: y[n, co, oy, ox] = bias[co] + sum over (ci, ky, kx) of
// x[n, ci, iy, ix] * w[ci, co, ky, kx] where oy = iy * SH + ky - PH, ox = ix * SW + kx - PW.
// Output pixels whose ox share a residue modulo SW use the same kernel columns, so each
// invocation takes TP pixels of one residue class of one row (ox = rx + SW * q) and
// visits only the taps that reach them: ky = (oy + PH) mod SH + SH * a, and likewise kx.
// For those, ix = q + (rx + PW - kx) / SW exactly, so the TP inputs are contiguous. The
// TP x TC register tile is unrolled into scalar variables by the code generator.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid) * WG + lid;
    if (t >= N * OH * SW * Q_TILES * CO_GROUPS) {
        return;
    }
    let tile = t % Q_TILES;
    let rx = (t / Q_TILES) % SW;
    let oy = (t / (Q_TILES * SW)) % OH;
    let n = (t / (Q_TILES * SW * OH)) % N;
    let co0 = (t / (Q_TILES * SW * OH * N)) * TC;
    let q0 = tile * TP;
{{DECLARE}}
    let ky0 = (oy + u32(PH)) % SH;
    let kx0 = (rx + u32(PW)) % SW;
    for (var ci = 0u; ci < CI; ci += 1u) {
        let x_plane = (n * CI + ci) * H * W;
        let w_ci = ci * CO * KH * KW;
        for (var ky = ky0; ky < KH; ky += SH) {
            let ty = i32(oy) + PH - i32(ky);
            let iy = ty / i32(SH);
            if (ty < 0 || iy >= i32(H)) {
                continue;
            }
            let x_row = x_plane + u32(iy) * W;
            for (var kx = kx0; kx < KW; kx += SW) {
                let shift = (i32(rx) + PW - i32(kx)) / i32(SW);
                let tap = w_ci + ky * KW + kx;
{{LOADS}}
{{FMAS}}
            }
        }
    }
{{STORES}}
}
