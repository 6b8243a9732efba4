// y[n, co, oy, ox] = bias[co] + sum over (ci, ky, kx) of
//     x[n, ci, oy * SH + ky - PH, ox * SW + kx - PW] * w[co, ci, ky, kx]
// Each invocation computes COT output channels of one output pixel, so every input value
// it loads feeds COT multiply-adds. Neighbouring invocations own neighbouring pixels.

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
            let iy = i32(oy * SH + ky) - PH;
            if (iy < 0 || iy >= i32(H)) {
                continue;
            }
            for (var kx = 0u; kx < KW; kx += 1u) {
                let ix = i32(ox * SW + kx) - PW;
                if (ix < 0 || ix >= i32(W)) {
                    continue;
                }
                let v = x[x_plane + u32(iy) * W + u32(ix)];
                let tap = (ci * KH + ky) * KW + kx;
                for (var j = 0u; j < COT; j += 1u) {
                    // Channels past CO read a valid weight and are never stored.
                    let co = min(co0 + j, CO - 1u);
                    acc[j] += v * w[co * CI * KH * KW + tap];
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
