//! Assembly of a kernel's WGSL: a header with the bindings, the grid and the baked
//! constants, then the op's template body from `shaders/`.

use super::{Access, Binding, Grid};

/// The per-run uniform block, written before each submit so that a new step needs no
/// recompilation. Field order and padding match [`RUN_VALUES_WGSL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RunValues {
    /// The run's seed folded to 32 bits; keys dropout masks.
    pub seed: u32,
    /// The iteration counter; keys dropout masks and the optimizer's bias correction.
    pub step: u32,
    /// The learning rate of this step.
    pub lr: f32,
    /// `beta1^t` and `beta2^t` for Adam's bias correction.
    pub beta1_power: f32,
    pub beta2_power: f32,
    pub reserved: [u32; 3],
}

pub const RUN_VALUES_BYTES: u64 = std::mem::size_of::<RunValues>() as u64;

/// The WGSL twin of [`RunValues`].
pub const RUN_VALUES_WGSL: &str = "struct RunValues {
    seed: u32,
    step: u32,
    lr: f32,
    beta1_power: f32,
    beta2_power: f32,
    reserved0: u32,
    reserved1: u32,
    reserved2: u32,
}
";

/// Replaces each `{{KEY}}` of `template` with its value.
///
/// # Panics
/// When a placeholder is left unfilled: templates and their lowerings ship together, so
/// that is a compiler bug.
pub fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut text = template.to_string();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    if let Some(start) = text.find("{{") {
        let end = text[start..].find("}}").map_or(text.len(), |e| start + e + 2);
        panic!("template placeholder {} has no value", &text[start..end]);
    }
    text
}

/// Writes `value` as a WGSL `f32` literal that round-trips exactly.
pub fn f32_literal(value: f32) -> String {
    if value.is_finite() {
        let text = format!("{value:?}");
        if text.contains('.') || text.contains('e') {
            text
        } else {
            format!("{text}.0")
        }
    } else {
        // NOTE: WGSL has no infinity literal; these stand in for IR constants of +-inf.
        if value > 0.0 {
            "3.4028235e38".into()
        } else {
            "-3.4028235e38".into()
        }
    }
}

/// Builds the kernel source: a comment naming the kernel, the binding declarations, the
/// grid, the constants (each `(NAME, literal)` becomes a `const`), then the body.
pub fn assemble(
    name: &str,
    body: &str,
    constants: &[(&str, String)],
    bindings: &[Binding],
    grid: &Grid,
) -> String {
    let mut out = format!("// netc kernel {name}\n\n");
    if bindings.iter().any(|b| b.access == Access::Uniform) {
        out.push_str(RUN_VALUES_WGSL);
        out.push('\n');
    }
    for (index, binding) in bindings.iter().enumerate() {
        let element = if binding.vec4 { "vec4<f32>" } else { "f32" };
        let declaration = match binding.access {
            Access::Read => format!("var<storage, read> {}: array<{element}>", binding.name),
            Access::ReadWrite => {
                format!("var<storage, read_write> {}: array<{element}>", binding.name)
            }
            Access::Uniform => format!("var<uniform> {}: RunValues", binding.name),
            Access::Texture => format!("var {}: texture_2d<f32>", binding.name),
        };
        out.push_str(&format!("@group(0) @binding({index}) {declaration};\n"));
    }
    for helper in bindings.iter().filter_map(|binding| load_helper(binding, body)) {
        out.push('\n');
        out.push_str(&helper);
    }
    out.push('\n');
    out.push_str(&grid.wgsl());
    out.push('\n');
    for (key, value) in constants {
        let ty = if value.ends_with('u') {
            "u32"
        } else if value.ends_with('i') {
            "i32"
        } else {
            "f32"
        };
        out.push_str(&format!("const {key}: {ty} = {value};\n"));
    }
    if !constants.is_empty() {
        out.push('\n');
    }
    out.push_str(body);
    out
}

/// Returns whether `body` contains `token` not preceded by a character of an identifier,
/// so that `x[` matches in `y = x[i]` but not in `dx[i] = y`.
pub fn mentions(body: &str, token: &str) -> bool {
    body.match_indices(token).any(|(at, _)| {
        !body[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// Returns the WGSL of `fn NAME_at(i: u32)`, which loads element `i` of a storage binding
/// or a texture, when the body calls it and does not define it itself.
fn load_helper(binding: &Binding, body: &str) -> Option<String> {
    let name = binding.name;
    let called = mentions(body, &format!("{name}_at("));
    let defined = body.contains(&format!("fn {name}_at("));
    if binding.access == Access::Uniform || !called || defined {
        return None;
    }
    let (element, part) = if binding.vec4 { ("vec4<f32>", "") } else { ("f32", ".x") };
    let width = super::gemm::TEXTURE_WIDTH;
    let load = match binding.access {
        Access::Texture => format!(
            "textureLoad({name}, vec2<u32>(i & {}u, i >> {}u), 0){part}",
            width - 1,
            width.trailing_zeros()
        ),
        _ => format!("{name}[i]"),
    };
    Some(format!("fn {name}_at(i: u32) -> {element} {{\n    return {load};\n}}\n"))
}

/// A `u32` literal.
pub fn u(value: impl Into<u64>) -> String {
    format!("{}u", value.into())
}

/// An `i32` literal.
pub fn i(value: i64) -> String {
    format!("{value}i")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_values_size_matches_wgsl_struct() {
        assert_eq!(RUN_VALUES_BYTES, 32);
    }

    #[test]
    fn f32_literals_round_trip() {
        for v in [0.0f32, 1.0, -0.2, 1e-5, 3.0e20, 0.1] {
            let text = f32_literal(v);
            assert_eq!(text.parse::<f32>().unwrap(), v, "{text}");
            assert!(text.contains('.') || text.contains('e'), "{text}");
        }
    }

    #[test]
    #[should_panic(expected = "{{MISSING}}")]
    fn unfilled_placeholder_panics() {
        fill("a {{MISSING}} b", &[]);
    }
}
