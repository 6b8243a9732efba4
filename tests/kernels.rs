//! Every kernel against the reference implementation on the real device (lavapipe in
//! CI). The sizes are awkward: 1x1, odd and prime sizes, channel counts that are not
//! multiples of 4, and element counts that are not multiples of the workgroup size. One
//! elementwise tensor needs more than 65,535 workgroups and more than one binding.

mod support {
    use netc::codegen::wgsl::RunValues;
    use netc::codegen::{lower_graph, Kernel, Mode, Target};
    use netc::ir::{Graph, Init, Module, NodeId, Op, ParamDecl, ParamKind, Shape};
    use netc::reference::{self, Tensor};
    use netc::runtime::{Gpu, ParamStore, Program};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    /// Opens one device for the whole test binary. Runs take turns, so timings and memory
    /// stay predictable on a software adapter.
    pub fn gpu() -> &'static Mutex<Gpu> {
        static GPU: OnceLock<Mutex<Gpu>> = OnceLock::new();
        GPU.get_or_init(|| {
            let gpu = Gpu::open(None).expect("the kernel tests need a wgpu adapter (lavapipe)");
            Mutex::new(gpu)
        })
    }

    /// A hand-built graph with random inputs and parameters.
    pub struct Case {
        pub graph: Graph,
        pub module: Module,
        pub inputs: Vec<(String, Tensor)>,
        pub params: Vec<Tensor>,
        rng: ChaCha8Rng,
    }

    pub struct Outcome {
        pub device: Vec<f32>,
        pub reference: Tensor,
        pub device_params: Vec<Vec<f32>>,
        pub reference_params: Vec<Option<Tensor>>,
        pub kernels: Vec<Kernel>,
    }

    impl Case {
        pub fn new(seed: u64) -> Self {
            Case {
                graph: Graph::new(),
                module: Module {
                    name: "test".into(),
                    params: Vec::new(),
                    nets: Vec::new(),
                    train: None,
                    settings: Vec::new(),
                },
                inputs: Vec::new(),
                params: Vec::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
            }
        }

        pub fn random(&mut self, dims: &[usize], low: f32, high: f32) -> Tensor {
            let len = dims.iter().product();
            Tensor::new(dims.to_vec(), (0..len).map(|_| self.rng.random_range(low..high)).collect())
        }

        pub fn input(&mut self, name: &str, dims: &[usize]) -> NodeId {
            let value = self.random(dims, -1.0, 1.0);
            self.input_with(name, value)
        }

        pub fn input_with(&mut self, name: &str, value: Tensor) -> NodeId {
            let shape = Shape::new(value.dims.clone());
            self.inputs.push((name.to_string(), value));
            self.graph.add_leaf(Op::Input { name: name.into() }, shape, name, None)
        }

        pub fn param(&mut self, name: &str, dims: &[usize]) -> NodeId {
            let value = self.random(dims, -0.5, 0.5);
            self.param_with(name, value).0
        }

        pub fn param_with(&mut self, name: &str, value: Tensor) -> (NodeId, usize) {
            let id = self.module.params.len();
            let shape = Shape::new(value.dims.clone());
            self.module.params.push(ParamDecl {
                name: name.into(),
                shape: shape.clone(),
                init: Init::Constant { value: 0.0 },
                kind: ParamKind::Trainable,
                net: "test".into(),
                span: None,
            });
            self.params.push(value);
            (self.graph.add_leaf(Op::Param { id }, shape, name, None), id)
        }

        pub fn constant(&mut self, value: f32) -> NodeId {
            let name = format!("constant{}", self.graph.node_count());
            self.graph.add_leaf(Op::Constant { value }, Shape::scalar(), name, None)
        }

        pub fn op(&mut self, op: Op, operands: &[NodeId]) -> NodeId {
            let name = format!("n{}.{}", self.graph.node_count(), op.name());
            self.graph.add_op(op, operands, name, None).expect("test graphs are well shaped")
        }

        /// Runs the graph on the device and in the reference.
        pub fn run(
            &self,
            output: NodeId,
            mode: Mode,
            run: RunValues,
            target: Option<Target>,
        ) -> Outcome {
            netc::ir::verify::verify_graph(&self.graph, &self.module).expect("test graph verifies");
            let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
            let target = target.unwrap_or_else(|| gpu.target());
            let kernels = lower_graph(&self.graph, &target, mode).expect("lowering succeeds");
            for kernel in &kernels {
                if let Err(message) = netc::codegen::validate_wgsl(&kernel.wgsl) {
                    panic!("kernel {} is invalid WGSL:\n{message}\n{}", kernel.name, kernel.wgsl);
                }
            }
            let store = ParamStore::zeros(&gpu, &self.module).expect("parameter buffers");
            for (id, value) in self.params.iter().enumerate() {
                store.upload(&gpu, id, &value.data).expect("parameter upload");
            }
            let outputs = vec![("out".to_string(), output)];
            let program = Program::compile(&gpu, &self.graph, mode, &kernels, &store, &outputs)
                .expect("program compiles");
            for (name, value) in &self.inputs {
                program.write_input(&gpu, name, &value.data).expect("input upload");
            }
            let device = program.run(&gpu, &run, &["out"]).expect("program runs").remove(0);
            let device_params = store.download_all(&gpu).expect("parameter download");
            drop(gpu);

            let inputs: HashMap<String, Tensor> = self.inputs.iter().cloned().collect();
            let mut reference_params: Vec<Option<Tensor>> =
                self.params.iter().cloned().map(Some).collect();
            let values =
                reference::evaluate(&self.graph, &inputs, &mut reference_params, mode, &run)
                    .expect("reference evaluates");
            let reference = values[output.index()].clone().expect("output evaluated");
            Outcome { device, reference, device_params, reference_params, kernels }
        }

        /// Runs the graph and asserts the device output matches the reference.
        pub fn check(&self, output: NodeId, mode: Mode) -> Outcome {
            let outcome =
                self.run(output, mode, RunValues { seed: 7, step: 3, ..Default::default() }, None);
            assert_close("output", &outcome.device, &outcome.reference.data, 1e-4);
            outcome
        }
    }

    /// Asserts that `got` matches `want` within `tolerance`, relative to the largest
    /// magnitude of `want` (1 when `want` is all zeros).
    pub fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().map(|v| f64::from(v.abs())).fold(0.0, f64::max).max(1e-30);
        let scale = if scale == 1e-30 { 1.0 } else { scale };
        let mut worst = (0usize, 0.0f64);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(g.is_finite(), "{what}: element {i} is {g}");
            let error = f64::from((g - w).abs()) / scale;
            if error > worst.1 {
                worst = (i, error);
            }
        }
        let (i, error) = worst;
        assert!(
            error <= tolerance,
            "{what}: element {i} is {} but the reference is {} (relative error {error:.3e})",
            got[i],
            want[i]
        );
    }
}

mod elementwise {
    use super::support::Case;
    use netc::codegen::Mode;
    use netc::ir::Op;

    fn unary(op: Op, dims: &[usize]) {
        let mut case = Case::new(1);
        let x = case.input("x", dims);
        let y = case.op(op, &[x]);
        case.check(y, Mode::Eval);
    }

    #[test]
    fn relu_matches_reference_at_odd_sizes() {
        for dims in [&[1, 1, 1, 1][..], &[2, 3, 5, 7], &[1, 257]] {
            unary(Op::Relu, dims);
        }
    }

    #[test]
    fn activations_match_reference() {
        unary(Op::LeakyRelu { slope: 0.2 }, &[3, 5, 7, 11]);
        unary(Op::Tanh, &[1, 3, 13, 17]);
        unary(Op::Sigmoid, &[2, 7, 9, 3]);
        unary(Op::Neg, &[1031]);
    }

    #[test]
    fn tanh_and_sigmoid_saturate_without_nan() {
        let mut case = Case::new(2);
        let values: Vec<f32> = vec![-1000.0, -90.0, -20.0, -1.0, 0.0, 1.0, 20.0, 90.0, 1000.0];
        let x = case.input_with("x", netc::reference::Tensor::new(vec![9], values));
        let t = case.op(Op::Tanh, &[x]);
        case.check(t, Mode::Eval);
        let mut case = Case::new(2);
        let values: Vec<f32> = vec![-1000.0, -90.0, -20.0, -1.0, 0.0, 1.0, 20.0, 90.0, 1000.0];
        let x = case.input_with("x", netc::reference::Tensor::new(vec![9], values));
        let s = case.op(Op::Sigmoid, &[x]);
        case.check(s, Mode::Eval);
    }

    #[test]
    fn add_matches_reference() {
        let mut case = Case::new(3);
        let a = case.input("a", &[2, 3, 5, 7]);
        let b = case.input("b", &[2, 3, 5, 7]);
        let y = case.op(Op::Add, &[a, b]);
        case.check(y, Mode::Eval);
    }

    #[test]
    fn arithmetic_broadcasts_scalars() {
        for op in [Op::Sub, Op::Mul, Op::Div] {
            let mut case = Case::new(4);
            let a = case.input("a", &[3, 1, 7, 5]);
            let c = case.constant(1.75);
            let y = case.op(op.clone(), &[a, c]);
            case.check(y, Mode::Eval);
            let mut case = Case::new(5);
            let a = case.input("a", &[97]);
            let c = case.constant(-0.5);
            let y = case.op(op, &[c, a]);
            case.check(y, Mode::Eval);
        }
    }
}

mod conv {
    use super::support::Case;
    use netc::codegen::Mode;
    use netc::ir::Op;

    fn conv2d(x: [usize; 4], co: usize, k: [usize; 2], stride: usize, padding: usize, bias: bool) {
        let mut case = Case::new(10);
        let input = case.input("x", &x);
        let w = case.param("w", &[co, x[1], k[0], k[1]]);
        let mut operands = vec![input, w];
        if bias {
            operands.push(case.param("b", &[co]));
        }
        let op = Op::Conv2d { stride: [stride; 2], padding: [padding; 2] };
        let y = case.op(op, &operands);
        case.check(y, Mode::Eval);
    }

    #[test]
    fn conv2d_matches_reference() {
        conv2d([2, 3, 9, 11], 5, [3, 3], 1, 1, true);
    }

    #[test]
    fn conv2d_strided_like_pix2pix() {
        conv2d([1, 3, 16, 16], 7, [4, 4], 2, 1, false);
        conv2d([3, 5, 13, 7], 11, [4, 4], 2, 1, true);
    }

    #[test]
    fn conv2d_one_by_one_and_unpadded() {
        conv2d([1, 1, 1, 1], 1, [1, 1], 1, 0, true);
        conv2d([2, 6, 7, 5], 3, [1, 1], 1, 0, false);
        conv2d([1, 2, 8, 8], 13, [2, 3], 3, 0, true);
    }

    #[test]
    fn conv2d_innermost_layer_to_one_pixel() {
        // The last encoder layer of pix2pix maps 2x2 to 1x1 with kernel 4, padding 1.
        conv2d([2, 17, 2, 2], 19, [4, 4], 2, 1, true);
    }

    fn conv_transpose2d(
        x: [usize; 4],
        co: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) {
        let mut case = Case::new(11);
        let input = case.input("x", &x);
        let w = case.param("w", &[x[1], co, k, k]);
        let mut operands = vec![input, w];
        if bias {
            operands.push(case.param("b", &[co]));
        }
        let op = Op::ConvTranspose2d {
            stride: [stride; 2],
            padding: [padding; 2],
            output_padding: [0; 2],
        };
        let y = case.op(op, &operands);
        case.check(y, Mode::Eval);
    }

    #[test]
    fn conv_transpose2d_matches_reference() {
        conv_transpose2d([2, 3, 5, 7], 5, 4, 2, 1, true);
        conv_transpose2d([1, 1, 1, 1], 3, 4, 2, 1, false);
        conv_transpose2d([1, 6, 3, 3], 2, 3, 1, 0, true);
        conv_transpose2d([2, 7, 4, 5], 9, 3, 3, 1, true);
    }

    #[test]
    fn conv_transpose2d_with_output_padding() {
        let mut case = Case::new(12);
        let x = case.input("x", &[1, 3, 5, 4]);
        let w = case.param("w", &[3, 2, 3, 3]);
        let op = Op::ConvTranspose2d { stride: [2, 2], padding: [1, 1], output_padding: [1, 1] };
        let y = case.op(op, &[x, w]);
        case.check(y, Mode::Eval);
    }
}
