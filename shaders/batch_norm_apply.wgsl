// y = (x - mean[c]) / sqrt(var[c] + EPS) * scale[c] + offset[c], with c the channel of
// each element (S spatial elements per channel, C channels), over COUNT values of type T:
// f32, or vec4<f32> of LANES elements of one channel.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group_index(wid) * ITEMS * WG + lid;
    for (var k = 0u; k < ITEMS; k += 1u) {
        let i = first + k * WG;
        if (i < COUNT) {
            let c = ((BASE + i * LANES) / S) % C;
            let inv_std = inverseSqrt({{VAR}} + EPS);
            y[i] = (x_at(i) - {{MEAN}}) * inv_std * scale[c] + offset[c];
        }
    }
}
