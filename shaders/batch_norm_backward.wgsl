// Batch norm's backward pass for one channel c per workgroup: the offset gradient (the
// channel sum of dy) and the scale gradient (the channel sum of dy * x_hat) in one pass
// over x and dy, then
//     dx = scale[c] * inv_std * (dy - offset_grad[c] / M - x_hat * scale_grad[c] / M).

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // Surplus workgroups of a folded grid still take part in the sums, on channel 0.
    let group = group_index(wid);
    let c = select(0u, group, group < C);
    let stats = channel_stats(c, lid);

    var sum_dy = 0.0;
    var sum_dy_x = 0.0;
    for (var j = lid; j < VM; j += WG) {
        let i = element(c, j);
        let g = dy_at(i);
        sum_dy += lanes_sum(g);
        sum_dy_x += lanes_sum(g * (x_at(i) - stats.x));
    }
    let offset_total = workgroup_sum(lid, sum_dy);
    let scale_total = workgroup_sum(lid, sum_dy_x) * stats.y;
    if (group >= C) {
        return;
    }
    if (lid == 0u) {
        offset_grad[c] = offset_total;
        scale_grad[c] = scale_total;
    }

    let mean_dy = offset_total / f32(M);
    let mean_dy_x_hat = scale_total / f32(M);
    let factor = scale[c] * stats.y;
    for (var j = lid; j < VM; j += WG) {
        let i = element(c, j);
        let x_hat = (x_at(i) - stats.x) * stats.y;
        dx[i] = factor * (dy_at(i) - mean_dy - x_hat * mean_dy_x_hat);
    }
}
