// Sum over the WG invocations of a workgroup that is exactly one subgroup (WG is the
// adapter's fixed subgroup size), without workgroup memory or barriers. Every invocation
// must call it, from uniform control flow; all of them get the total.

fn workgroup_sum(lid: u32, value: f32) -> f32 {
    return subgroupAdd(value);
}
