// dx[n, c, iy, ix] = sum of dy over the windows whose first maximum is x[n, c, iy, ix].
// Each invocation gathers for one input element, so no two invocations write the same
// address and no atomics are needed.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = group_index(wid) * WG + lid;
    if (t >= PLANES * H * W) {
        return;
    }
    let ix = t % W;
    let iy = (t / W) % H;
    let plane = t / (W * H);
    let x_plane = plane * H * W;

    // Windows oy with oy * SH <= iy < oy * SH + KH, clipped to the output.
    let oy_first = select(0u, (iy - KH + SH) / SH, iy + 1u > KH);
    let ox_first = select(0u, (ix - KW + SW) / SW, ix + 1u > KW);
    var acc = 0.0;
    for (var oy = oy_first; oy <= min(iy / SH, OH - 1u); oy += 1u) {
        for (var ox = ox_first; ox <= min(ix / SW, OW - 1u); ox += 1u) {
            var best = x_plane + oy * SH * W + ox * SW;
            for (var ky = 0u; ky < KH; ky += 1u) {
                for (var kx = 0u; kx < KW; kx += 1u) {
                    let i = x_plane + (oy * SH + ky) * W + ox * SW + kx;
                    if (x[i] > x[best]) {
                        best = i;
                    }
                }
            }
            if (best == t) {
                acc += dy[(plane * OH + oy) * OW + ox];
            }
        }
    }
    dx[t] = acc;
}
