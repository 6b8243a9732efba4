// y[i] = x[i] * SCALE where the element is kept, else 0. An element is kept when the top
// 24 random bits reach THRESHOLD = round(p * 2^24).

fn kept(i: u32) -> bool {
    return (random_bits(run.seed, run.step, NODE, BASE + i) >> 8u) >= THRESHOLD;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group_index(wid) * ITEMS * WG + lid;
    for (var k = 0u; k < ITEMS; k += 1u) {
        let i = first + k * WG;
        if (i < COUNT) {
            y[i] = select(0.0, x[i] * SCALE, kept(i));
        }
    }
}
