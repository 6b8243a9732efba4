// dw[co, ci, ky, kx] = sum over (n, oy, ox) of
//     dy[n, co, oy, ox] * x[n, ci, oy * SH + ky - PH, ox * SW + kx - PW]
// Each invocation computes one weight element. Neighbouring invocations own neighbouring
// taps of the same channel pair, so their reads of x lie close together.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid) * WG + lid;
    if (t >= CO * CI * KH * KW) {
        return;
    }
    let kx = t % KW;
    let ky = (t / KW) % KH;
    let ci = (t / (KW * KH)) % CI;
    let co = t / (KW * KH * CI);

    var acc = 0.0;
    for (var n = 0u; n < N; n += 1u) {
        let x_plane = (n * CI + ci) * H * W;
        let dy_plane = (n * CO + co) * OH * OW;
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
                acc += dy[dy_plane + oy * OW + ox] * x[x_plane + u32(iy) * W + u32(ix)];
            }
        }
    }
    dw[t] = acc;
}
