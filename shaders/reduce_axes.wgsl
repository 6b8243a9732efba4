// y[o] = SCALE * sum over the REDUCED elements r of x[kept_offset(o) + reduced_offset(r)]:
// one workgroup per output element, with a compensated sum per invocation.

fn kept_offset(o: u32) -> u32 {
    var rest = o;
    var offset = 0u;
{{KEPT}}    return offset;
}

fn reduced_offset(r: u32) -> u32 {
    var rest = r;
    var offset = 0u;
{{REDUCED}}    return offset;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = group_index(wid);
    if (o >= OUTPUTS) {
        return;
    }
    let base = kept_offset(o);
    var sum = 0.0;
    var compensation = 0.0;
    for (var r = lid; r < REDUCED; r += WG) {
        let v = x[base + reduced_offset(r)] - compensation;
        let next = sum + v;
        compensation = (next - sum) - v;
        sum = next;
    }
    let total = workgroup_sum(lid, sum);
    if (lid == 0u) {
        y[o] = total * SCALE;
    }
}
