// Running statistics: running = (1 - MOMENTUM) * running + MOMENTUM * batch, with the
// batch variance made unbiased by UNBIAS = M / (M - 1), as PyTorch does.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = group_index(wid) * WG + lid;
    if (c < C) {
        running_mean[c] = (1.0 - MOMENTUM) * running_mean[c] + MOMENTUM * stats[c];
        running_var[c] = (1.0 - MOMENTUM) * running_var[c] + MOMENTUM * stats[C + c] * UNBIAS;
    }
}
