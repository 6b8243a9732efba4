// dx = scale[c] * inv_std * (dy - offset_grad[c] / M - x_hat * scale_grad[c] / M), one
// workgroup per channel c, where offset_grad is the channel sum of dy and scale_grad the
// channel sum of dy * x_hat.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // Surplus workgroups of a folded grid still take part in the barriers, on channel 0.
    let group = group_index(wid);
    let c = select(0u, group, group < C);
    let stats = channel_stats(c, lid);
    if (group >= C) {
        return;
    }

    let mean_dy = offset_grad[c] / f32(M);
    let mean_dy_x_hat = scale_grad[c] / f32(M);
    let factor = scale[c] * stats.y;
    for (var j = lid; j < VM; j += WG) {
        let i = element(c, j);
        let x_hat = (x_at(i) - stats.x) * stats.y;
        dx[i] = factor * (dy_at(i) - mean_dy - x_hat * mean_dy_x_hat);
    }
}
