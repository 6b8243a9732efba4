// dx[r, k] = dy * (softmax(logits[r])[k] - (k == labels[r])) / ROWS, one invocation per
// row r of logits [ROWS, K].

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = group_index(wid) * WG + lid;
    if (r >= ROWS) {
        return;
    }
    let row = r * K;
    var max_logit = logits[row];
    for (var k = 1u; k < K; k += 1u) {
        max_logit = max(max_logit, logits[row + k]);
    }
    var total = 0.0;
    for (var k = 0u; k < K; k += 1u) {
        total += exp(logits[row + k] - max_logit);
    }
    let label = u32(labels[r]);
    let factor = dy[0] / f32(ROWS);
    for (var k = 0u; k < K; k += 1u) {
        let softmax = exp(logits[row + k] - max_logit) / total;
        dx[row + k] = factor * (softmax - select(0.0, 1.0, k == label));
    }
}
