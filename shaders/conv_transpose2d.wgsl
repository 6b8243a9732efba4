// The transpose of conv2d, as a gather: y[n, co, oy, ox] = bias[co] + sum over
// (ci, ky, kx) of x[n, ci, iy, ix] * w[ci, co, ky, kx] where oy = iy * SH + ky - PH and
// ox = ix * SW + kx - PW. Each invocation computes COT output channels of one pixel.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid) * WG + lid;
    let pixels = N * OH * OW;
    if (t >= pixels * CO_GROUPS) {
        return;
    }
    let ox = t % OW;
    let oy = (t / OW) % OH;
    let n = (t / (OW * OH)) % N;
    let co0 = (t / pixels) * COT;

    var acc: array<f32, COT>;
    for (var ci = 0u; ci < CI; ci += 1u) {
        let x_plane = (n * CI + ci) * H * W;
        for (var ky = 0u; ky < KH; ky += 1u) {
            let ty = i32(oy) + PH - i32(ky);
            if (ty < 0 || u32(ty) % SH != 0u || u32(ty) / SH >= H) {
                continue;
            }
            let iy = u32(ty) / SH;
            for (var kx = 0u; kx < KW; kx += 1u) {
                let tx = i32(ox) + PW - i32(kx);
                if (tx < 0 || u32(tx) % SW != 0u || u32(tx) / SW >= W) {
                    continue;
                }
                let v = x[x_plane + iy * W + u32(tx) / SW];
                let tap = ky * KW + kx;
                for (var j = 0u; j < COT; j += 1u) {
                    // Channels past CO read a valid weight and are never stored.
                    let co = min(co0 + j, CO - 1u);
                    acc[j] += v * w[(ci * CO + co) * KH * KW + tap];
                }
            }
        }
    }

    for (var j = 0u; j < COT; j += 1u) {
        let co = co0 + j;
        if (co < CO) {
            y[((n * CO + co) * OH + oy) * OW + ox] = acc[j] + {{BIAS}};
        }
    }
}
