// One SGD update with momentum over COUNT packed elements of a step's parameters:
//     velocity = MOMENTUM * velocity + g
//     p = p - lr * velocity
// values[0] holds the learning rate of this update, written by the host before each
// submit.

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = (group_index(wid) * WG + lid) * ITEMS;
    let lr = values[0];
    for (var k = 0u; k < ITEMS; k += 1u) {
        let i = first + k;
        if (i < COUNT) {
            let velocity = MOMENTUM * momentum_buffer[i] + grad[i];
            momentum_buffer[i] = velocity;
            param[i] = param[i] - lr * velocity;
        }
    }
}
