// dw[co, ci, ky, kx] = sum over (n, oy, ox) of
//     dy[n, co, oy, ox] * x[n, ci, oy * SH + ky - PH, ox * SW + kx - PW]
// Each invocation computes a COT x CIT block of (output, input) channels for one tap
// (ky, kx). For every output pixel it loads COT values of dy and CIT values of x and does
// COT * CIT multiply-adds with them, so each load feeds several. Neighbouring invocations
// own neighbouring taps of the same block, so their reads of x lie close together.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid) * WG + lid;
    if (t >= CO_GROUPS * CI_GROUPS * KH * KW) {
        return;
    }
    let kx = t % KW;
    let ky = (t / KW) % KH;
    let ci0 = ((t / (KW * KH)) % CI_GROUPS) * CIT;
    let co0 = (t / (KW * KH * CI_GROUPS)) * COT;

    var acc: array<f32, COT * CIT>;
    var xv: array<f32, CIT>;
    for (var n = 0u; n < N; n += 1u) {
        for (var oy = 0u; oy < OH; oy += 1u) {
            let iy = i32(oy * SH + ky) - PH;
            if (iy < 0 || iy >= i32(H)) {
                continue;
            }
            for (var ox = 0u; ox < OW; ox += 1u) {
                let ix = i32(ox * SW + kx) - PW;
                if (ix < 0 || ix >= i32(W)) {
                    continue;
                }
                let pixel = u32(iy) * W + u32(ix);
                for (var j = 0u; j < CIT; j += 1u) {
                    // Channels past CI read a valid element and are never stored.
                    let ci = min(ci0 + j, CI - 1u);
                    xv[j] = x[(n * CI + ci) * H * W + pixel];
                }
                let out_pixel = oy * OW + ox;
                for (var i = 0u; i < COT; i += 1u) {
                    let co = min(co0 + i, CO - 1u);
                    let g = dy[(n * CO + co) * OH * OW + out_pixel];
                    for (var j = 0u; j < CIT; j += 1u) {
                        acc[i * CIT + j] += g * xv[j];
                    }
                }
            }
        }
    }

    for (var i = 0u; i < COT; i += 1u) {
        for (var j = 0u; j < CIT; j += 1u) {
            let co = co0 + i;
            let ci = ci0 + j;
            if (co < CO && ci < CI) {
                dw[((co * CI + ci) * KH + ky) * KW + kx] = acc[i * CIT + j];
            }
        }
    }
}
