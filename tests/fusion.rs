//! Fusion and view stress tests: small graphs whose device gradients must match the CPU
//! reference (src/reference) to 1e-4 of the largest gradient value. Each graph puts an
//! activation, a concat or a batch norm where the fusion pass (src/passes/fusion.rs) or
//! the view pass (src/passes/views.rs) has to decide whether to fuse or place it.

mod support;

use netc::codegen::Mode;
use netc::ir::{Graph, Init, Module, NodeId, Op, Optimizer, ParamDecl, ParamId, ParamKind};
use netc::ir::{Schedule, Shape, StepSpec, TrainSpec};
use netc::runtime::Gpu;
use netc::train::gradcheck::run_gradients;
use std::sync::{Mutex, OnceLock};

const UNIFORM: Init = Init::Uniform { low: -1.0, high: 1.0 };

/// Opens one device for the whole test binary; tests take turns on it.
fn gpu() -> &'static Mutex<Gpu> {
    static GPU: OnceLock<Mutex<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| Mutex::new(Gpu::open(None).expect("these tests need a wgpu adapter")))
}

/// A one-graph module under construction, as in tests/autodiff.rs.
struct Builder {
    params: Vec<ParamDecl>,
    graph: Graph,
}

impl Builder {
    fn new() -> Self {
        Builder { params: Vec::new(), graph: Graph::new() }
    }

    /// Declares a trainable parameter drawn from U(-1, 1) and adds a node that reads it.
    fn param(&mut self, name: &str, dims: &[usize]) -> NodeId {
        self.param_with(name, dims, UNIFORM)
    }

    fn param_with(&mut self, name: &str, dims: &[usize], init: Init) -> NodeId {
        self.params.push(ParamDecl {
            name: format!("g.{name}"),
            shape: Shape::new(dims),
            init,
            kind: ParamKind::Trainable,
            net: "g".into(),
            span: None,
        });
        let id = self.params.len() - 1;
        self.read(id)
    }

    fn read(&mut self, id: ParamId) -> NodeId {
        let decl = &self.params[id];
        let name = format!("p.{}", decl.name);
        let node = self.graph.add_leaf(Op::Param { id }, decl.shape.clone(), name, None);
        self.graph.node_mut(node).phase = 1;
        node
    }

    /// Declares a batch-norm running statistic (a buffer) and returns its id.
    fn buffer(&mut self, name: &str, channels: usize, value: f32) -> ParamId {
        self.params.push(ParamDecl {
            name: format!("g.{name}"),
            shape: Shape::new([channels]),
            init: Init::Constant { value },
            kind: ParamKind::Buffer,
            net: "g".into(),
            span: None,
        });
        self.params.len() - 1
    }

    fn input(&mut self, name: &str, dims: &[usize]) -> NodeId {
        self.graph.add_leaf(Op::Input { name: name.into() }, Shape::new(dims), name, None)
    }

    fn op(&mut self, op: Op, operands: &[NodeId], name: &str) -> NodeId {
        let node = self.graph.add_op(op, operands, name, None).expect("valid test graph");
        self.graph.node_mut(node).phase = 1;
        node
    }

    fn conv(&mut self, x: NodeId, out: usize, kernel: usize, name: &str) -> NodeId {
        let cin = self.graph.shape(x).dims()[1];
        let w = self.param(&format!("{name}.w"), &[out, cin, kernel, kernel]);
        let pad = kernel / 2;
        self.op(Op::Conv2d { stride: [1, 1], padding: [pad, pad] }, &[x, w], name)
    }

    fn conv_transpose(&mut self, x: NodeId, out: usize, name: &str) -> NodeId {
        let cin = self.graph.shape(x).dims()[1];
        let w = self.param(&format!("{name}.w"), &[cin, out, 4, 4]);
        let op = Op::ConvTranspose2d { stride: [2, 2], padding: [1, 1], output_padding: [0, 0] };
        self.op(op, &[x, w], name)
    }

    fn batch_norm(&mut self, x: NodeId, name: &str) -> NodeId {
        let c = self.graph.shape(x).dims()[1];
        let scale_init = Init::Uniform { low: 0.5, high: 1.5 };
        let scale = self.param_with(&format!("{name}.scale"), &[c], scale_init);
        let offset = self.param(&format!("{name}.offset"), &[c]);
        let running_mean = self.buffer(&format!("{name}.mean"), c, 0.0);
        let running_var = self.buffer(&format!("{name}.var"), c, 1.0);
        let op = Op::BatchNorm { eps: 1e-5, momentum: 0.1, running_mean, running_var };
        self.op(op, &[x, scale, offset], name)
    }

    fn module(&self, loss: NodeId) -> Module {
        let params =
            (0..self.params.len()).filter(|&p| self.params[p].kind == ParamKind::Trainable);
        let step = StepSpec {
            name: "g".into(),
            phase: 1,
            loss,
            terms: Vec::new(),
            params: params.collect(),
            optimizer: Optimizer::Adam { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8 },
            span: None,
        };
        let data = support::paired_data();
        Module {
            name: "fusion".into(),
            params: self.params.clone(),
            nets: Vec::new(),
            train: Some(TrainSpec {
                data,
                graph: self.graph.clone(),
                steps: vec![step],
                schedule: Schedule::Constant,
                epochs: 1,
                generator: "g".into(),
                span: None,
            }),
            settings: Vec::new(),
        }
    }
}

/// Builds `loss = sum(y * r)` for the node `build` returns (`r` a random input of its
/// shape), runs the gradient program on the device once, and compares the loss and every
/// parameter gradient with the CPU reference.
fn compare(build: impl FnOnce(&mut Builder) -> NodeId) {
    let mut b = Builder::new();
    let y = build(&mut b);
    let dims = b.graph.shape(y).dims().to_vec();
    let r = b.input("weights", &dims);
    let weighted = b.op(Op::Mul, &[y, r], "weighted");
    let loss = b.op(Op::Sum { axes: vec![] }, &[weighted], "loss");
    let module = b.module(loss);
    let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());

    let run = run_gradients(&gpu, &module, 7).expect("the gradient program runs");
    let values =
        run.reference_values(&module).expect("the reference evaluates the differentiated graph");

    let expected_loss = values[loss.index()].as_ref().expect("the loss is evaluated").data[0];
    let device_loss = run.losses[0].1;
    assert!(
        (device_loss - expected_loss).abs() <= 1e-4 * expected_loss.abs().max(1.0),
        "loss: device {device_loss}, reference {expected_loss}"
    );
    for (_, param, node, device) in &run.grads {
        let expected = values[node.index()].as_ref().expect("the gradient is evaluated");
        let scale = expected.data.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let name = &module.params[*param].name;
        assert_eq!(device.len(), expected.data.len(), "gradient of {name}: length");
        for (i, (&d, &e)) in device.iter().zip(&expected.data).enumerate() {
            assert!(
                (d - e).abs() <= 1e-4 * scale,
                "gradient of {name} element {i}: device {d}, reference {e} (scale {scale})"
            );
        }
    }
}

fn leaky(slope: f32) -> Op {
    Op::LeakyRelu { slope }
}

// Views: concats whose operands are written straight into the concat's buffer.

#[test]
fn dense_concat_of_conv_and_its_reader() {
    // b = conv(a) reads a from the concat's buffer while it writes its own range of it.
    compare(|b| {
        let x = b.param("x", &[1, 3, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let c = b.conv(a, 4, 3, "b");
        let cat = b.op(Op::Concat { axis: 1 }, &[a, c], "cat");
        b.op(Op::Tanh, &[cat], "out")
    });
}

#[test]
fn dense_concat_at_batch_two() {
    compare(|b| {
        let x = b.param("x", &[2, 3, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let c = b.conv(a, 4, 3, "b");
        let cat = b.op(Op::Concat { axis: 1 }, &[a, c], "cat");
        b.op(Op::Tanh, &[cat], "out")
    });
}

#[test]
fn concat_of_tanh_and_its_input() {
    // An elementwise kernel that reads one range of the concat and writes another.
    compare(|b| {
        let x = b.param("x", &[1, 3, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let t = b.op(Op::Tanh, &[a], "t");
        let cat = b.op(Op::Concat { axis: 1 }, &[a, t], "cat");
        b.op(Op::Sigmoid, &[cat], "out")
    });
}

#[test]
fn nested_concat_reads_placed_operand() {
    compare(|b| {
        let x = b.param("x", &[1, 3, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let y = b.param("y", &[1, 3, 8, 8]);
        let inner = b.op(Op::Concat { axis: 1 }, &[a, y], "inner");
        let outer = b.op(Op::Concat { axis: 1 }, &[inner, a], "outer");
        b.op(Op::Tanh, &[outer], "out")
    });
}

#[test]
fn concat_of_independent_convs() {
    compare(|b| {
        let x = b.param("x", &[1, 3, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let c = b.conv(x, 5, 3, "c");
        let cat = b.op(Op::Concat { axis: 1 }, &[a, c], "cat");
        b.op(Op::Tanh, &[cat], "out")
    });
}

#[test]
fn concat_same_tensor_twice() {
    compare(|b| {
        let x = b.param("x", &[1, 3, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let cat = b.op(Op::Concat { axis: 1 }, &[a, a], "cat");
        b.op(Op::Tanh, &[cat], "out")
    });
}

#[test]
fn concat_along_height_single_channel() {
    // Batch 1 and one channel: every axis before axis 2 has size 1.
    compare(|b| {
        let x = b.param("x", &[1, 3, 8, 8]);
        let a = b.conv(x, 1, 3, "a");
        let c = b.conv(x, 1, 3, "c");
        let cat = b.op(Op::Concat { axis: 2 }, &[a, c], "cat");
        b.op(Op::Tanh, &[cat], "out")
    });
}

#[test]
fn concat_along_width_single_row() {
    compare(|b| {
        let x = b.param("x", &[1, 1, 1, 16]);
        let a = b.op(Op::Tanh, &[x], "a");
        let c = b.op(Op::Sigmoid, &[x], "c");
        let cat = b.op(Op::Concat { axis: 3 }, &[a, c], "cat");
        b.op(Op::Tanh, &[cat], "out")
    });
}

#[test]
fn concat_unaligned_second_operand() {
    // 3 x 1 x 1 = 3 elements: the second operand starts at an unaligned offset.
    compare(|b| {
        let x = b.param("x", &[1, 3, 1, 1]);
        let a = b.op(Op::Tanh, &[x], "a");
        let y = b.param("y", &[1, 5, 1, 1]);
        let c = b.op(Op::Sigmoid, &[y], "c");
        let d = b.op(Op::Tanh, &[y], "d");
        let cat = b.op(Op::Concat { axis: 1 }, &[a, c, d], "cat");
        b.op(Op::Tanh, &[cat], "out")
    });
}

#[test]
fn concat_operand_is_dropout_passthrough() {
    // Dropout with p = 0 has no kernel, so the concat copies its operand from `a`, which
    // is itself placed in the concat.
    compare(|b| {
        let x = b.param("x", &[1, 3, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let d = b.op(Op::Dropout { p: 0.0 }, &[a], "drop");
        let c = b.conv(x, 4, 3, "c");
        let cat = b.op(Op::Concat { axis: 1 }, &[d, c, a], "cat");
        b.op(Op::Tanh, &[cat], "out")
    });
}

#[test]
fn concat_operands_are_params() {
    // The gradients of p and q are slices of the concat's gradient.
    compare(|b| {
        let p = b.param("p", &[1, 4, 4, 4]);
        let q = b.param("q", &[1, 4, 4, 4]);
        let cat = b.op(Op::Concat { axis: 1 }, &[p, q], "cat");
        b.op(Op::Tanh, &[cat], "out")
    });
}

#[test]
fn concat_read_by_two_convs_and_sliced_gradient() {
    compare(|b| {
        let x = b.param("x", &[1, 3, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let c = b.conv(x, 4, 3, "c");
        let cat = b.op(Op::Concat { axis: 1 }, &[a, c], "cat");
        let r = b.op(Op::Relu, &[cat], "r");
        let u = b.conv(r, 3, 3, "u");
        let v = b.conv(r, 3, 1, "v");
        b.op(Op::Add, &[u, v], "out")
    });
}

// Fused activations: applied as a convolution GEMM loads them.

#[test]
fn relu_read_by_conv_and_concat() {
    compare(|b| {
        let x = b.param("x", &[1, 3, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let r = b.op(Op::Relu, &[a], "r");
        let c = b.conv(r, 4, 3, "c");
        let cat = b.op(Op::Concat { axis: 1 }, &[r, c], "cat");
        b.op(Op::Tanh, &[cat], "out")
    });
}

#[test]
fn relu_read_by_conv_and_add() {
    compare(|b| {
        let x = b.param("x", &[1, 4, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let r = b.op(Op::Relu, &[a], "r");
        let c = b.conv(r, 4, 3, "c");
        b.op(Op::Add, &[r, c], "out")
    });
}

#[test]
fn leaky_relu_read_by_two_convs() {
    compare(|b| {
        let x = b.param("x", &[2, 3, 8, 8]);
        let a = b.conv(x, 4, 3, "a");
        let r = b.op(leaky(0.2), &[a], "r");
        let c = b.conv(r, 4, 3, "c");
        let d = b.conv(r, 4, 1, "d");
        b.op(Op::Add, &[c, d], "out")
    });
}

fn leaky_chain(b: &mut Builder, slope: f32, dims: &[usize]) -> NodeId {
    let x = b.param("x", dims);
    let a = b.conv(x, 5, 3, "a");
    let r = b.op(leaky(slope), &[a], "r");
    let c = b.conv(r, 3, 3, "c");
    let s = b.op(leaky(slope), &[c], "s");
    b.conv_transpose(s, 2, "u")
}

#[test]
fn leaky_relu_slope_zero() {
    compare(|b| leaky_chain(b, 0.0, &[1, 3, 7, 7]));
}

#[test]
fn leaky_relu_negative_slope() {
    compare(|b| leaky_chain(b, -0.5, &[1, 3, 7, 7]));
}

#[test]
fn leaky_relu_slope_above_one() {
    compare(|b| leaky_chain(b, 1.5, &[2, 3, 7, 7]));
}

#[test]
fn leaky_relu_slope_one() {
    compare(|b| leaky_chain(b, 1.0, &[1, 3, 5, 5]));
}

#[test]
fn leaky_relu_odd_sizes() {
    compare(|b| leaky_chain(b, 0.2, &[3, 7, 11, 13]));
}

#[test]
fn leaky_relu_on_one_pixel() {
    compare(|b| {
        let x = b.param("x", &[1, 5, 1, 1]);
        let r = b.op(leaky(0.3), &[x], "r");
        let c = b.conv(r, 7, 1, "c");
        let s = b.op(Op::Relu, &[c], "s");
        b.conv(s, 3, 1, "d")
    });
}

#[test]
fn relu_of_param_into_conv() {
    // The activation's input is a parameter, so its gradient is a masked GEMM output.
    compare(|b| {
        let x = b.param("x", &[1, 3, 6, 6]);
        let r = b.op(leaky(0.1), &[x], "r");
        b.conv(r, 4, 3, "c")
    });
}

#[test]
fn relu_into_conv_transpose() {
    compare(|b| {
        let x = b.param("x", &[2, 6, 4, 4]);
        let a = b.conv(x, 6, 3, "a");
        let r = b.op(leaky(0.25), &[a], "r");
        let u = b.conv_transpose(r, 3, "u");
        let s = b.op(Op::Relu, &[u], "s");
        b.conv_transpose(s, 2, "v")
    });
}

#[test]
fn relu_of_concat_into_conv_transpose() {
    // The U-Net decoder: relu(concat(d, e)) read by a transposed convolution.
    compare(|b| {
        let x = b.param("x", &[1, 3, 8, 8]);
        let e = b.conv(x, 4, 3, "e");
        let d = b.conv(x, 4, 3, "d");
        let cat = b.op(Op::Concat { axis: 1 }, &[d, e], "cat");
        let r = b.op(Op::Relu, &[cat], "r");
        b.conv_transpose(r, 3, "u")
    });
}

#[test]
fn relu_of_relu_into_conv() {
    compare(|b| {
        let x = b.param("x", &[1, 3, 6, 6]);
        let a = b.conv(x, 4, 3, "a");
        let r = b.op(Op::Relu, &[a], "r");
        let s = b.op(leaky(0.2), &[r], "s");
        b.conv(s, 3, 3, "c")
    });
}

#[test]
fn relu_read_by_conv_and_loss_directly() {
    // The activation is the output y itself and also a conv's input.
    compare(|b| {
        let x = b.param("x", &[1, 3, 6, 6]);
        let a = b.conv(x, 3, 3, "a");
        let r = b.op(Op::Relu, &[a], "r");
        let c = b.conv(r, 3, 3, "c");
        let t = b.op(Op::Tanh, &[c], "t");
        b.op(Op::Mul, &[r, t], "out")
    });
}

// Batch norm: the fused forward kernel and the fused backward group.

#[test]
fn batch_norm_on_param_input() {
    compare(|b| {
        let x = b.param("x", &[2, 3, 5, 5]);
        b.batch_norm(x, "bn")
    });
}

#[test]
fn batch_norm_on_graph_input_no_input_grad() {
    compare(|b| {
        let x = b.input("image", &[2, 3, 5, 5]);
        let n = b.batch_norm(x, "bn");
        let r = b.op(leaky(0.2), &[n], "r");
        b.conv(r, 4, 3, "c")
    });
}

#[test]
fn batch_norm_between_fused_activations() {
    compare(|b| {
        let x = b.param("x", &[1, 3, 9, 9]);
        let a = b.conv(x, 6, 3, "a");
        let n = b.batch_norm(a, "bn");
        let r = b.op(leaky(0.2), &[n], "r");
        let c = b.conv(r, 5, 3, "c");
        let m = b.batch_norm(c, "bn2");
        let s = b.op(Op::Relu, &[m], "s");
        b.conv_transpose(s, 3, "u")
    });
}

#[test]
fn batch_norm_one_channel_many_pixels() {
    compare(|b| {
        let x = b.param("x", &[3, 1, 37, 41]);
        b.batch_norm(x, "bn")
    });
}

#[test]
fn batch_norm_many_channels_one_pixel() {
    compare(|b| {
        let x = b.param("x", &[2, 67, 1, 1]);
        b.batch_norm(x, "bn")
    });
}

#[test]
fn batch_norm_read_twice() {
    // One batch norm output read by two convs and the loss.
    compare(|b| {
        let x = b.param("x", &[2, 4, 6, 6]);
        let n = b.batch_norm(x, "bn");
        let c = b.conv(n, 4, 3, "c");
        let d = b.conv(n, 4, 1, "d");
        let s = b.op(Op::Add, &[c, d], "s");
        b.op(Op::Mul, &[s, n], "out")
    });
}

#[test]
fn batch_norm_params_shared() {
    // Two batch norms with the same scale and offset: their gradients accumulate.
    compare(|b| {
        let x = b.param("x", &[2, 3, 4, 4]);
        let y = b.param("y", &[2, 3, 4, 4]);
        let scale = b.param_with("scale", &[3], Init::Uniform { low: 0.5, high: 1.5 });
        let offset = b.param("offset", &[3]);
        let mean = b.buffer("mean", 3, 0.0);
        let var = b.buffer("var", 3, 1.0);
        let op = Op::BatchNorm { eps: 1e-5, momentum: 0.1, running_mean: mean, running_var: var };
        let n = b.op(op.clone(), &[x, scale, offset], "n1");
        let m = b.op(op, &[y, scale, offset], "n2");
        let t = b.op(Op::Tanh, &[m], "t");
        b.op(Op::Mul, &[n, t], "out")
    });
}

#[test]
fn batch_norm_of_concat_at_batch_one() {
    compare(|b| {
        let x = b.param("x", &[1, 3, 6, 6]);
        let a = b.conv(x, 3, 3, "a");
        let c = b.conv(x, 2, 3, "c");
        let cat = b.op(Op::Concat { axis: 1 }, &[a, c], "cat");
        let n = b.batch_norm(cat, "bn");
        let r = b.op(leaky(0.2), &[n], "r");
        b.conv(r, 3, 3, "d")
    });
}

// Structure: no kernel may bind one buffer both for reading and for writing, because
// WebGPU rejects a dispatch whose storage bindings alias with a read_write use.

#[test]
fn no_kernel_reads_the_buffer_it_writes() {
    use netc::codegen::{lower_graph, Access, Resource, Target};
    let mut b = Builder::new();
    let x = b.input("x", &[1, 3, 8, 8]);
    let a = b.conv(x, 4, 3, "a");
    let c = b.conv(a, 4, 3, "b");
    let cat = b.op(Op::Concat { axis: 1 }, &[a, c], "cat");
    b.op(Op::Tanh, &[cat], "out");
    let kernels = lower_graph(&b.graph, &Target::default(), Mode::Infer).expect("lowers");
    for kernel in &kernels {
        let written: Vec<Resource> = kernel
            .bindings
            .iter()
            .filter(|binding| binding.access == Access::ReadWrite)
            .map(|binding| binding.resource)
            .collect();
        for binding in kernel.bindings.iter().filter(|binding| binding.access != Access::ReadWrite)
        {
            assert!(
                !written.contains(&binding.resource),
                "kernel {} reads {} from {:?} at offset {}, which it also writes",
                kernel.name,
                binding.name,
                binding.resource,
                binding.offset
            );
        }
    }
}
