//! Autodiff tests: the structure of the backward graph (shapes, phases, accumulation,
//! stop-gradient, frozen parameters) on hand-built graphs; every gradient rule against
//! central finite differences and its kernels against the reference, on the device
//! (lavapipe in CI), at awkward sizes; a small U-Net with skips end to end; and the GAN
//! iteration, whose steps leave the other network's parameters bit-identical.

mod support;

mod common {
    use netc::ir::{
        Graph, Init, Module, NodeId, Op, Optimizer, ParamDecl, ParamId, ParamKind, Schedule, Shape,
        StepSpec, TrainSpec,
    };
    use netc::runtime::Gpu;
    use std::sync::{Mutex, OnceLock};

    /// Opens one device for the whole test binary; tests take turns on it.
    pub fn gpu() -> &'static Mutex<Gpu> {
        static GPU: OnceLock<Mutex<Gpu>> = OnceLock::new();
        GPU.get_or_init(|| {
            Mutex::new(Gpu::open(None).expect("the autodiff tests need a wgpu adapter (lavapipe)"))
        })
    }

    /// A module under construction with one flat graph, the way the front end builds the
    /// `train` section.
    pub struct Builder {
        pub params: Vec<ParamDecl>,
        pub graph: Graph,
        pub phase: u32,
    }

    impl Builder {
        pub fn new() -> Self {
            Builder { params: Vec::new(), graph: Graph::new(), phase: 0 }
        }

        /// Declares a trainable parameter of `net`, drawn from N(0, 0.02), and returns its id.
        pub fn declare(&mut self, net: &str, name: &str, dims: &[usize]) -> ParamId {
            self.declare_with(net, name, dims, Init::Normal { mean: 0.0, std: 0.02 })
        }

        /// Declares a trainable parameter of `net` with `init` and returns its id.
        pub fn declare_with(
            &mut self,
            net: &str,
            name: &str,
            dims: &[usize],
            init: Init,
        ) -> ParamId {
            self.params.push(ParamDecl {
                name: format!("{net}.{name}"),
                shape: Shape::new(dims),
                init,
                kind: ParamKind::Trainable,
                net: net.into(),
                span: None,
            });
            self.params.len() - 1
        }

        /// Declares a batch-norm running statistic of `net` (a buffer) and returns its id.
        pub fn buffer(&mut self, net: &str, name: &str, channels: usize, value: f32) -> ParamId {
            self.params.push(ParamDecl {
                name: format!("{net}.{name}"),
                shape: Shape::new([channels]),
                init: Init::Constant { value },
                kind: ParamKind::Buffer,
                net: net.into(),
                span: None,
            });
            self.params.len() - 1
        }

        /// Adds a `Param` node reading `id`, in the current phase.
        pub fn read(&mut self, id: ParamId) -> NodeId {
            let decl = &self.params[id];
            let name = format!("p{}.{}", self.phase, decl.name);
            let node = self.graph.add_leaf(Op::Param { id }, decl.shape.clone(), name, None);
            self.graph.node_mut(node).phase = self.phase;
            node
        }

        pub fn input(&mut self, name: &str, dims: &[usize]) -> NodeId {
            self.graph.add_leaf(Op::Input { name: name.into() }, Shape::new(dims), name, None)
        }

        pub fn constant(&mut self, name: &str, value: f32) -> NodeId {
            let node = self.graph.add_leaf(Op::Constant { value }, Shape::scalar(), name, None);
            self.graph.node_mut(node).phase = self.phase;
            node
        }

        /// Adds an op node and moves it into the current phase.
        pub fn op(&mut self, op: Op, operands: &[NodeId], name: &str) -> NodeId {
            let node = self.graph.add_op(op, operands, name, None).expect("valid test graph");
            self.graph.node_mut(node).phase = self.phase;
            node
        }

        pub fn step(&self, name: &str, loss: NodeId, params: Vec<ParamId>) -> StepSpec {
            StepSpec {
                name: name.into(),
                phase: self.phase,
                loss,
                terms: Vec::new(),
                params,
                optimizer: Optimizer::Adam { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8 },
                span: None,
            }
        }

        pub fn module(&self) -> Module {
            Module {
                name: "test".into(),
                params: self.params.clone(),
                nets: Vec::new(),
                train: None,
                settings: Vec::new(),
            }
        }

        /// Builds the module with a `train` section that runs `steps` on this graph.
        pub fn train_module(&self, steps: Vec<StepSpec>) -> Module {
            let mut module = self.module();
            module.train = Some(TrainSpec {
                data: crate::support::paired_data(),
                graph: self.graph.clone(),
                steps,
                schedule: Schedule::Constant,
                epochs: 1,
                generator: "g".into(),
                span: None,
            });
            module
        }
    }
}

mod structure {
    use super::common::Builder;
    use netc::autodiff::{differentiate, AutodiffError};
    use netc::ir::{verify::verify_graph, NodeId, Op, ParamId};

    /// Builds a conv -> batch_norm -> leaky_relu -> conv_transpose -> tanh network with an L1 loss.
    fn conv_net(b: &mut Builder) -> (NodeId, Vec<ParamId>) {
        let w1 = b.declare("g", "conv.weight", &[4, 3, 4, 4]);
        let b1 = b.declare("g", "conv.bias", &[4]);
        let scale = b.declare("g", "bn.scale", &[4]);
        let offset = b.declare("g", "bn.offset", &[4]);
        let mean = b.declare("g", "bn.running_mean", &[4]);
        let var = b.declare("g", "bn.running_var", &[4]);
        let w2 = b.declare("g", "up.weight", &[4, 3, 4, 4]);
        let x = b.input("input", &[2, 3, 9, 7]);
        let target = b.input("target", &[2, 3, 8, 6]);
        let (w1n, b1n, sn, on, w2n) =
            (b.read(w1), b.read(b1), b.read(scale), b.read(offset), b.read(w2));
        let conv = b.op(Op::Conv2d { stride: [2, 2], padding: [1, 1] }, &[x, w1n, b1n], "conv");
        let bn_op =
            Op::BatchNorm { eps: 1e-5, momentum: 0.1, running_mean: mean, running_var: var };
        let bn = b.op(bn_op, &[conv, sn, on], "bn");
        let act = b.op(Op::LeakyRelu { slope: 0.2 }, &[bn], "act");
        let up_op = Op::ConvTranspose2d { stride: [2, 2], padding: [1, 1], output_padding: [0, 0] };
        let up = b.op(up_op, &[act, w2n], "up");
        let out = b.op(Op::Tanh, &[up], "out");
        let loss = b.op(Op::L1Loss, &[out, target], "loss");
        (loss, vec![w1, b1, scale, offset, w2])
    }

    #[test]
    fn gradients_have_parameter_shapes() {
        let mut b = Builder::new();
        b.phase = 1;
        let (loss, params) = conv_net(&mut b);
        let module = b.module();
        let step = b.step("g", loss, params.clone());
        let grads = differentiate(&mut b.graph, &module.params, &step).expect("differentiates");

        assert_eq!(grads.grads.len(), params.len());
        assert!(grads.unused.is_empty());
        for (param, node) in &grads.grads {
            assert_eq!(
                b.graph.shape(*node),
                &module.params[*param].shape,
                "{}",
                module.params[*param].name
            );
        }
        verify_graph(&b.graph, &module).expect("the graph verifies after autodiff");
    }

    #[test]
    fn backward_nodes_carry_step_phase() {
        let mut b = Builder::new();
        b.phase = 2;
        let (loss, params) = conv_net(&mut b);
        let before = b.graph.node_count();
        let module = b.module();
        let step = b.step("g", loss, params);
        differentiate(&mut b.graph, &module.params, &step).expect("differentiates");

        assert!(b.graph.node_count() > before);
        for id in b.graph.inner.node_indices().filter(|n| n.index() >= before) {
            let node = b.graph.node(id);
            assert_eq!(node.phase, 2, "{}", node.name);
            assert!(node.name.starts_with("grad.g."), "{}", node.name);
        }
    }

    #[test]
    fn conv_gradients_reuse_forward_ops() {
        let mut b = Builder::new();
        let (loss, params) = conv_net(&mut b);
        let module = b.module();
        let step = b.step("g", loss, params);
        differentiate(&mut b.graph, &module.params, &step).expect("differentiates");

        // The conv_transpose2d's input gradient is a conv2d with the same weight, and the
        // conv2d's input gradient is not needed because its input is data.
        let convs: Vec<_> = b
            .graph
            .inner
            .node_indices()
            .filter(|&n| b.graph.node(n).name.starts_with("grad."))
            .map(|n| b.graph.node(n).op.name())
            .collect();
        assert_eq!(convs.iter().filter(|&&n| n == "conv2d").count(), 1);
        assert_eq!(convs.iter().filter(|&&n| n == "conv_transpose2d").count(), 0);
        assert_eq!(convs.iter().filter(|&&n| n == "conv2d_weight_grad").count(), 2);
    }

    #[test]
    fn conv_input_gradient_restores_odd_size() {
        let mut b = Builder::new();
        let w = b.declare("g", "conv.weight", &[5, 3, 4, 4]);
        let x_param = b.declare("g", "x", &[1, 3, 11, 10]);
        let x = b.read(x_param);
        let wn = b.read(w);
        let conv = b.op(Op::Conv2d { stride: [2, 3], padding: [1, 0] }, &[x, wn], "conv");
        let loss = b.op(Op::Mean { axes: vec![] }, &[conv], "loss");
        let module = b.module();
        let step = b.step("g", loss, vec![x_param, w]);
        let grads = differentiate(&mut b.graph, &module.params, &step).expect("differentiates");

        let dx = grads.grads[0].1;
        assert_eq!(b.graph.shape(dx).dims(), [1, 3, 11, 10]);
        match &b.graph.node(dx).op {
            Op::ConvTranspose2d { output_padding, .. } => assert_eq!(output_padding, &[1, 0]),
            other => panic!("dx is {other:?}, expected conv_transpose2d"),
        }
    }

    #[test]
    fn skip_connection_gradients_accumulate() {
        // e = relu(conv(x)); d = concat(e, tanh(e)); loss = mean(d).
        let mut b = Builder::new();
        let w = b.declare("g", "e.weight", &[2, 1, 3, 3]);
        let x = b.input("input", &[1, 1, 5, 5]);
        let wn = b.read(w);
        let conv = b.op(Op::Conv2d { stride: [1, 1], padding: [1, 1] }, &[x, wn], "e.conv");
        let e = b.op(Op::Relu, &[conv], "e.act");
        let inner = b.op(Op::Tanh, &[e], "inner");
        let cat = b.op(Op::Concat { axis: 1 }, &[e, inner], "skip");
        let loss = b.op(Op::Mean { axes: vec![] }, &[cat], "loss");
        let module = b.module();
        let step = b.step("g", loss, vec![w]);
        differentiate(&mut b.graph, &module.params, &step).expect("differentiates");

        // relu's gradient reads the sum of the skip's slice and tanh's input gradient.
        let relu_grad = b
            .graph
            .inner
            .node_indices()
            .find(|&n| matches!(b.graph.node(n).op, Op::LeakyReluGrad { .. }))
            .expect("relu has a gradient node");
        let dy = b.graph.operands(relu_grad)[1];
        assert_eq!(b.graph.node(dy).op, Op::Add, "relu's output gradient is a sum");
        let parts: Vec<&str> =
            b.graph.operands(dy).iter().map(|&n| b.graph.node(n).op.name()).collect();
        assert!(parts.contains(&"slice"), "{parts:?}");
        assert!(parts.contains(&"mul"), "{parts:?}");
    }

    /// A small GAN in the shape the front end builds: phase 0 computes `fake`, phase 1 the
    /// discriminator's loss on real and stopped fake, phase 2 the generator's loss through
    /// a second reading of the discriminator's weights.
    struct Gan {
        b: Builder,
        g_params: Vec<ParamId>,
        d_params: Vec<ParamId>,
        d_loss: NodeId,
        g_loss: NodeId,
    }

    fn gan() -> Gan {
        let mut b = Builder::new();
        let gw = b.declare("generator", "conv.weight", &[3, 3, 3, 3]);
        let gb = b.declare("generator", "conv.bias", &[3]);
        let dw = b.declare("discriminator", "conv.weight", &[1, 6, 4, 4]);
        let db = b.declare("discriminator", "conv.bias", &[1]);
        let input = b.input("input", &[1, 3, 8, 8]);
        let target = b.input("target", &[1, 3, 8, 8]);
        let (gwn, gbn) = (b.read(gw), b.read(gb));
        let conv =
            b.op(Op::Conv2d { stride: [1, 1], padding: [1, 1] }, &[input, gwn, gbn], "g.conv");
        let fake = b.op(Op::Tanh, &[conv], "fake");

        let discriminate = |b: &mut Builder, image: NodeId, tag: &str| {
            let (dwn, dbn) = (b.read(dw), b.read(db));
            let pair = b.op(Op::Concat { axis: 1 }, &[input, image], &format!("{tag}.pair"));
            let op = Op::Conv2d { stride: [2, 2], padding: [1, 1] };
            b.op(op, &[pair, dwn, dbn], &format!("{tag}.logits"))
        };

        b.phase = 1;
        let stopped = b.op(Op::StopGradient, &[fake], "d.fake");
        let real_logits = discriminate(&mut b, target, "d.real");
        let fake_logits = discriminate(&mut b, stopped, "d.fake");
        let one = b.constant("d.one", 1.0);
        let zero = b.constant("d.zero", 0.0);
        let real = b.op(Op::BceWithLogits, &[real_logits, one], "d.loss_real");
        let fake_term = b.op(Op::BceWithLogits, &[fake_logits, zero], "d.loss_fake");
        let sum = b.op(Op::Add, &[real, fake_term], "d.sum");
        let half = b.constant("d.half", 0.5);
        let d_loss = b.op(Op::Mul, &[sum, half], "d.loss");

        b.phase = 2;
        let logits = discriminate(&mut b, fake, "g.disc");
        let one = b.constant("g.one", 1.0);
        let adversarial = b.op(Op::BceWithLogits, &[logits, one], "g.gan");
        let l1 = b.op(Op::L1Loss, &[fake, target], "g.l1");
        let weight = b.constant("g.lambda", 100.0);
        let weighted = b.op(Op::Mul, &[l1, weight], "g.l1_weighted");
        let g_loss = b.op(Op::Add, &[adversarial, weighted], "g.loss");
        Gan { b, g_params: vec![gw, gb], d_params: vec![dw, db], d_loss, g_loss }
    }

    /// Counts the backward nodes of `step` whose op is named `op`.
    fn count_backward_ops(b: &Builder, step: &str, op: &str) -> usize {
        let prefix = format!("grad.{step}.");
        b.graph
            .inner
            .node_indices()
            .filter(|&n| {
                b.graph.node(n).name.starts_with(&prefix) && b.graph.node(n).op.name() == op
            })
            .count()
    }

    #[test]
    fn discriminator_step_stops_at_fake() {
        let mut gan = gan();
        let module = gan.b.module();
        let mut step = gan.b.step("discriminator", gan.d_loss, gan.d_params.clone());
        step.phase = 1;
        let grads = differentiate(&mut gan.b.graph, &module.params, &step).expect("differentiates");

        assert_eq!(grads.grads.iter().map(|g| g.0).collect::<Vec<_>>(), gan.d_params);
        // Only the two discriminator calls get weight gradients, and nothing flows into
        // the generator through the stopped fake.
        assert_eq!(count_backward_ops(&gan.b, "discriminator", "conv2d_weight_grad"), 2);
        assert_eq!(count_backward_ops(&gan.b, "discriminator", "conv_transpose2d"), 0);
        assert_eq!(count_backward_ops(&gan.b, "discriminator", "leaky_relu_grad"), 0);
        let touches_generator = gan.b.graph.inner.node_indices().any(|n| {
            let name = &gan.b.graph.node(n).name;
            name.starts_with("grad.discriminator.fake") || name.starts_with("grad.discriminator.g.")
        });
        assert!(!touches_generator);
    }

    #[test]
    fn generator_step_skips_discriminator_weights() {
        let mut gan = gan();
        let module = gan.b.module();
        let mut step = gan.b.step("generator", gan.g_loss, gan.g_params.clone());
        step.phase = 2;
        let grads = differentiate(&mut gan.b.graph, &module.params, &step).expect("differentiates");

        assert_eq!(grads.grads.iter().map(|g| g.0).collect::<Vec<_>>(), gan.g_params);
        // One weight gradient, the generator's: the discriminator's weights are frozen
        // here, though the gradient passes through its conv (a conv_transpose2d).
        assert_eq!(count_backward_ops(&gan.b, "generator", "conv2d_weight_grad"), 1);
        assert_eq!(count_backward_ops(&gan.b, "generator", "conv_transpose2d"), 1);
        // The discriminator's bias gradient (a sum over dy) is not built either.
        let sums = gan.b.graph.inner.node_indices().filter(|&n| {
            let node = gan.b.graph.node(n);
            node.name.starts_with("grad.generator.g.disc.logits") && node.op.name() == "sum"
        });
        assert_eq!(sums.count(), 0);
        // fake feeds both the discriminator and the L1 term: its gradient is a sum.
        let fake_sum =
            gan.b.graph.find("grad.generator.fake.acc").expect("fake's gradients are summed");
        assert_eq!(gan.b.graph.node(fake_sum).op, Op::Add);
    }

    #[test]
    fn unlisted_parameters_get_no_gradient() {
        let mut gan = gan();
        let module = gan.b.module();
        let mut step = gan.b.step("generator", gan.g_loss, vec![gan.g_params[0]]);
        step.phase = 2;
        let grads = differentiate(&mut gan.b.graph, &module.params, &step).expect("differentiates");

        assert_eq!(grads.grads.len(), 1);
        assert_eq!(count_backward_ops(&gan.b, "generator", "sum"), 0, "no bias gradient is built");
    }

    #[test]
    fn unreachable_parameter_is_reported_unused() {
        let mut gan = gan();
        let module = gan.b.module();
        // The discriminator loss never reads the generator's weights (fake is stopped).
        let mut step = gan.b.step("discriminator", gan.d_loss, gan.g_params.clone());
        step.phase = 1;
        let before = gan.b.graph.node_count();
        let grads = differentiate(&mut gan.b.graph, &module.params, &step).expect("differentiates");

        assert!(grads.grads.is_empty());
        assert_eq!(grads.unused, gan.g_params);
        assert_eq!(gan.b.graph.node_count(), before, "no gradient work at all");
    }

    #[test]
    fn non_scalar_loss_is_rejected() {
        let mut gan = gan();
        let module = gan.b.module();
        let logits = gan.b.graph.find("d.real.logits").expect("node exists");
        let step = gan.b.step("discriminator", logits, gan.d_params.clone());
        let err = differentiate(&mut gan.b.graph, &module.params, &step).unwrap_err();

        assert!(matches!(err, AutodiffError::LossNotScalar { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "the loss of step discriminator must be a scalar, got shape [1, 1, 4, 4]"
        );
    }

    #[test]
    fn buffer_parameter_is_rejected() {
        let mut gan = gan();
        let mut module = gan.b.module();
        module.params[gan.d_params[1]].kind = netc::ir::ParamKind::Buffer;
        let step = gan.b.step("discriminator", gan.d_loss, gan.d_params.clone());
        let err = differentiate(&mut gan.b.graph, &module.params, &step).unwrap_err();

        assert!(matches!(err, AutodiffError::NotTrainable { .. }), "{err}");
    }

    #[test]
    fn gradient_of_gradient_is_rejected() {
        let mut b = Builder::new();
        let p = b.declare("g", "p", &[3]);
        let pn = b.read(p);
        let dy = b.input("dy", &[3]);
        let g = b.op(Op::LeakyReluGrad { slope: 0.1 }, &[pn, dy], "g");
        let loss = b.op(Op::Sum { axes: vec![] }, &[g], "loss");
        let module = b.module();
        let step = b.step("g", loss, vec![p]);
        let err = differentiate(&mut b.graph, &module.params, &step).unwrap_err();

        assert!(
            matches!(err, AutodiffError::NoGradientRule { op: "leaky_relu_grad", .. }),
            "{err}"
        );
    }
}

mod rules {
    use super::common::{gpu, Builder};
    use netc::ir::{Init, NodeId, Op, ParamKind};
    use netc::train::gradcheck::{check_gradients, run_gradients, GradCheckOptions, Verdict};

    const UNIFORM: Init = Init::Uniform { low: -1.0, high: 1.0 };

    /// Checks the gradients of `loss = sum(y * r)` with respect to every trainable
    /// parameter, where `y` is the node `build` returns and `r` a random input of its
    /// shape: against central differences with step `step_size`, and the device's
    /// gradient values against the reference's.
    pub fn check(step_size: f32, build: impl FnOnce(&mut Builder) -> NodeId) {
        let mut b = Builder::new();
        b.phase = 1;
        let y = build(&mut b);
        let dims = b.graph.shape(y).dims().to_vec();
        let r = b.input("weights", &dims);
        let weighted = b.op(Op::Mul, &[y, r], "weighted");
        let loss = b.op(Op::Sum { axes: vec![] }, &[weighted], "loss");
        let params =
            (0..b.params.len()).filter(|&p| b.params[p].kind == ParamKind::Trainable).collect();
        let step = b.step("g", loss, params);
        let module = b.train_module(vec![step]);
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());

        let options = GradCheckOptions { seed: 7, step_size, rtol: 1e-2 };
        let checks = check_gradients(&gpu, &module, &options).expect("the gradient check runs");
        assert!(!checks.is_empty(), "no parameter was checked");
        for c in &checks {
            assert!(
                c.verdict == Verdict::Agrees,
                "{}: {:?}, analytic {} but numeric {} (allowed difference {})",
                c.param,
                c.verdict,
                c.analytic,
                c.numeric,
                c.allowed
            );
        }

        let run = run_gradients(&gpu, &module, 7).expect("the gradient program runs");
        let values = run
            .reference_values(&module)
            .expect("the reference evaluates the differentiated graph");
        for (_, param, node, device) in &run.grads {
            let expected = values[node.index()].as_ref().expect("the gradient is evaluated");
            let scale = expected.data.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            for (i, (&d, &e)) in device.iter().zip(&expected.data).enumerate() {
                assert!(
                    (d - e).abs() <= 1e-4 * scale,
                    "gradient of {} element {i}: device {d}, reference {e}",
                    module.params[*param].name
                );
            }
        }
    }

    #[test]
    fn conv2d_strided_padded_gradients() {
        check(1e-3, |b| {
            let x = b.declare_with("g", "x", &[2, 3, 9, 7], UNIFORM);
            let w = b.declare_with("g", "w", &[5, 3, 4, 4], UNIFORM);
            let bias = b.declare_with("g", "b", &[5], UNIFORM);
            let (x, w, bias) = (b.read(x), b.read(w), b.read(bias));
            b.op(Op::Conv2d { stride: [2, 2], padding: [1, 1] }, &[x, w, bias], "conv")
        });
    }

    #[test]
    fn conv2d_uneven_stride_gradients() {
        // Stride 3 along the width leaves the last input column out of every window.
        check(1e-3, |b| {
            let x = b.declare_with("g", "x", &[1, 2, 7, 8], UNIFORM);
            let w = b.declare_with("g", "w", &[3, 2, 3, 3], UNIFORM);
            let (x, w) = (b.read(x), b.read(w));
            b.op(Op::Conv2d { stride: [1, 3], padding: [0, 0] }, &[x, w], "conv")
        });
    }

    #[test]
    fn conv_transpose2d_gradients() {
        check(1e-3, |b| {
            let x = b.declare_with("g", "x", &[2, 5, 4, 3], UNIFORM);
            let w = b.declare_with("g", "w", &[5, 3, 4, 4], UNIFORM);
            let bias = b.declare_with("g", "b", &[3], UNIFORM);
            let (x, w, bias) = (b.read(x), b.read(w), b.read(bias));
            let op =
                Op::ConvTranspose2d { stride: [2, 2], padding: [1, 1], output_padding: [1, 0] };
            b.op(op, &[x, w, bias], "up")
        });
    }

    fn batch_norm(b: &mut Builder, dims: &[usize]) -> NodeId {
        let c = dims[1];
        let x = b.declare_with("g", "x", dims, UNIFORM);
        let scale = b.declare_with("g", "scale", &[c], Init::Uniform { low: 0.5, high: 1.5 });
        let offset = b.declare_with("g", "offset", &[c], UNIFORM);
        let mean = b.buffer("g", "running_mean", c, 0.0);
        let var = b.buffer("g", "running_var", c, 1.0);
        let (x, scale, offset) = (b.read(x), b.read(scale), b.read(offset));
        let op = Op::BatchNorm { eps: 1e-5, momentum: 0.1, running_mean: mean, running_var: var };
        b.op(op, &[x, scale, offset], "bn")
    }

    #[test]
    fn batch_norm_training_gradients() {
        check(1e-3, |b| batch_norm(b, &[3, 5, 4, 3]));
    }

    #[test]
    fn batch_norm_single_pixel_gradients() {
        // Batch 1 at 1x1: zero variance, so x_hat is 0 and eps keeps the inverse finite.
        check(1e-3, |b| batch_norm(b, &[1, 7, 1, 1]));
    }

    fn activation(b: &mut Builder, op: Op) -> NodeId {
        let x = b.declare_with("g", "x", &[2, 3, 5, 7], UNIFORM);
        let x = b.read(x);
        b.op(op, &[x], "act")
    }

    #[test]
    fn relu_gradient() {
        check(1e-4, |b| activation(b, Op::Relu));
    }

    #[test]
    fn leaky_relu_gradient() {
        check(1e-4, |b| activation(b, Op::LeakyRelu { slope: 0.2 }));
    }

    #[test]
    fn tanh_gradient() {
        check(1e-3, |b| activation(b, Op::Tanh));
    }

    #[test]
    fn sigmoid_gradient() {
        check(1e-3, |b| activation(b, Op::Sigmoid));
    }

    #[test]
    fn dropout_gradient_reuses_forward_mask() {
        check(1e-3, |b| activation(b, Op::Dropout { p: 0.5 }));
    }

    #[test]
    fn concat_gradients_split_by_axis() {
        check(1e-3, |b| {
            let p = b.declare_with("g", "p", &[2, 3, 5, 3], UNIFORM);
            let q = b.declare_with("g", "q", &[2, 1, 5, 3], UNIFORM);
            let (p, q) = (b.read(p), b.read(q));
            let joined = b.op(Op::Concat { axis: 1 }, &[p, q, p], "cat");
            b.op(Op::Tanh, &[joined], "act")
        });
    }

    #[test]
    fn arithmetic_with_scalar_operands() {
        check(1e-3, |b| {
            let a = b.declare_with("g", "a", &[3, 7], UNIFORM);
            let c = b.declare_with("g", "c", &[3, 7], UNIFORM);
            let d = b.declare_with("g", "d", &[3, 7], Init::Uniform { low: 0.5, high: 1.5 });
            let s = b.declare_with("g", "s", &[], UNIFORM);
            let t = b.declare_with("g", "t", &[], Init::Uniform { low: 0.5, high: 1.5 });
            let (a, c, d, s, t) = (b.read(a), b.read(c), b.read(d), b.read(s), b.read(t));
            let sum = b.op(Op::Add, &[a, s], "sum");
            let product = b.op(Op::Mul, &[s, sum], "product");
            let quotient = b.op(Op::Div, &[c, d], "quotient");
            let scaled = b.op(Op::Div, &[quotient, t], "scaled");
            let inverse = b.op(Op::Div, &[s, d], "inverse");
            let difference = b.op(Op::Sub, &[product, scaled], "difference");
            let shifted = b.op(Op::Sub, &[t, difference], "shifted");
            let total = b.op(Op::Add, &[shifted, inverse], "total");
            b.op(Op::Neg, &[total], "negated")
        });
    }

    #[test]
    fn linear_and_flatten_gradients() {
        check(1e-3, |b| {
            let x = b.declare_with("g", "x", &[3, 2, 3, 2], UNIFORM);
            let w = b.declare_with("g", "w", &[5, 12], UNIFORM);
            let bias = b.declare_with("g", "b", &[5], UNIFORM);
            let (x, w, bias) = (b.read(x), b.read(w), b.read(bias));
            let flat = b.op(Op::Flatten, &[x], "flat");
            b.op(Op::Linear, &[flat, w, bias], "fc")
        });
    }

    #[test]
    fn matmul_transpose_gradients() {
        check(1e-3, |b| {
            let p = b.declare_with("g", "p", &[3, 5], UNIFORM);
            let q = b.declare_with("g", "q", &[4, 5], UNIFORM);
            let (p, q) = (b.read(p), b.read(q));
            // p q^T is [3, 4] and its transpose times p is [4, 5]. With both operands
            // transposed, back^T (p q^T)^T is [5, 3].
            let pq = b.op(Op::MatMul { transpose_a: false, transpose_b: true }, &[p, q], "pq");
            let back = b.op(Op::MatMul { transpose_a: true, transpose_b: false }, &[pq, p], "back");
            b.op(Op::MatMul { transpose_a: true, transpose_b: true }, &[back, pq], "both")
        });
    }

    #[test]
    fn max_pool2d_overlapping_windows() {
        check(1e-4, |b| {
            let x = b.declare_with("g", "x", &[2, 3, 7, 6], UNIFORM);
            let x = b.read(x);
            b.op(Op::MaxPool2d { kernel: [3, 2], stride: [2, 1] }, &[x], "pool")
        });
    }

    #[test]
    fn sum_and_mean_gradients() {
        check(1e-3, |b| {
            let x = b.declare_with("g", "x", &[2, 3, 5, 3], UNIFORM);
            let x = b.read(x);
            let squared = b.op(Op::Mul, &[x, x], "squared");
            let sum = b.op(Op::Sum { axes: vec![0, 2, 3] }, &[squared], "sum");
            let mean = b.op(Op::Mean { axes: vec![1, 2] }, &[x], "mean");
            let all = b.op(Op::Mean { axes: vec![] }, &[squared], "all");
            let flat = b.op(Op::Sum { axes: vec![1] }, &[mean], "flat");
            let total = b.op(Op::Add, &[flat, all], "total");
            let channels = b.op(Op::Sum { axes: vec![] }, &[sum], "channels");
            b.op(Op::Mul, &[total, channels], "product")
        });
    }

    #[test]
    fn bce_logits_gradients() {
        check(1e-3, |b| {
            let x = b.declare_with("g", "x", &[2, 1, 3, 5], Init::Uniform { low: -4.0, high: 4.0 });
            let y = b.declare_with("g", "y", &[2, 1, 3, 5], Init::Uniform { low: 0.0, high: 1.0 });
            let (x, y) = (b.read(x), b.read(y));
            let full = b.op(Op::BceWithLogits, &[x, y], "full");
            let one = b.constant("one", 1.0);
            let scalar = b.op(Op::BceWithLogits, &[x, one], "scalar");
            b.op(Op::Add, &[full, scalar], "total")
        });
    }

    #[test]
    fn l1_and_mse_gradients() {
        check(1e-4, |b| {
            let p = b.declare_with("g", "p", &[3, 2, 5, 3], UNIFORM);
            let q = b.declare_with("g", "q", &[3, 2, 5, 3], UNIFORM);
            let (p, q) = (b.read(p), b.read(q));
            let l1 = b.op(Op::L1Loss, &[p, q], "l1");
            let mse = b.op(Op::MseLoss, &[q, p], "mse");
            let weight = b.constant("lambda", 10.0);
            let weighted = b.op(Op::Mul, &[l1, weight], "weighted");
            b.op(Op::Add, &[weighted, mse], "total")
        });
    }

    #[test]
    fn cross_entropy_gradient() {
        check(1e-3, |b| {
            let logits =
                b.declare_with("g", "logits", &[5, 7], Init::Uniform { low: -3.0, high: 3.0 });
            // Class 2 for every row. Labels take no gradient, so a buffer stores them.
            let labels = b.buffer("g", "labels", 5, 2.0);
            let (logits, labels) = (b.read(logits), b.read(labels));
            b.op(Op::CrossEntropy, &[logits, labels], "ce")
        });
    }

    #[test]
    fn slice_reshape_broadcast_gradients() {
        check(1e-3, |b| {
            let x = b.declare_with("g", "x", &[2, 6, 3], UNIFORM);
            let s = b.declare_with("g", "s", &[6], UNIFORM);
            let (x, s) = (b.read(x), b.read(s));
            let middle = b.op(Op::Slice { axis: 1, start: 1, len: 4 }, &[x], "middle");
            let shape = netc::ir::Shape::new([2, 6, 3]);
            let spread = b.op(Op::Broadcast { shape, axes: vec![0, 2] }, &[s], "spread");
            let product = b.op(Op::Mul, &[x, spread], "product");
            let flat =
                b.op(Op::Reshape { shape: netc::ir::Shape::new([4, 9]) }, &[product], "flat");
            let tail = b.op(Op::Slice { axis: 0, start: 3, len: 1 }, &[flat], "tail");
            let tail_sum = b.op(Op::Sum { axes: vec![] }, &[tail], "tail_sum");
            let squared = b.op(Op::Mul, &[middle, middle], "squared");
            b.op(Op::Mul, &[squared, tail_sum], "scaled")
        });
    }
}

mod gan {
    use super::common::{gpu, Builder};
    use netc::codegen::{validate_wgsl, Target};
    use netc::ir::{Init, Module, NodeId, Op, Optimizer, ParamId, StepSpec};
    use netc::train::gradcheck::{check_gradients, run_gradients, GradCheckOptions, Verdict};
    use netc::train::optimizer::{adam_reference, sgd_reference, UpdateValues};
    use netc::train::program::TrainProgram;
    use netc::train::{NamedTensor, Trainer};

    const SIZE: usize = 12;

    /// A pix2pix in miniature: a two-level U-Net generator with batch norm, dropout and a
    /// skip connection, and a PatchGAN-style discriminator on (input, image) pairs. Phase
    /// 0 computes `fake`; phase 1 is the discriminator's loss on real and stopped fake
    /// pairs; phase 2 the generator's GAN + 100 x L1 loss through a second reading of the
    /// discriminator's weights.
    pub struct Gan {
        pub b: Builder,
        pub g_params: Vec<ParamId>,
        pub d_params: Vec<ParamId>,
        pub d_loss: NodeId,
        pub g_loss: NodeId,
        pub terms: Vec<(String, NodeId)>,
    }

    fn conv(b: &mut Builder, x: NodeId, w: ParamId, stride: usize, name: &str) -> NodeId {
        let w = b.read(w);
        b.op(Op::Conv2d { stride: [stride; 2], padding: [1, 1] }, &[x, w], name)
    }

    fn norm(
        b: &mut Builder,
        x: NodeId,
        scale: ParamId,
        offset: ParamId,
        stats: (ParamId, ParamId),
        name: &str,
    ) -> NodeId {
        let (scale, offset) = (b.read(scale), b.read(offset));
        let op =
            Op::BatchNorm { eps: 1e-5, momentum: 0.1, running_mean: stats.0, running_var: stats.1 };
        b.op(op, &[x, scale, offset], name)
    }

    pub fn gan() -> Gan {
        let mut b = Builder::new();
        let g = |b: &mut Builder, name: &str, dims: &[usize]| b.declare("generator", name, dims);
        let e1 = g(&mut b, "e1.weight", &[4, 3, 4, 4]);
        let e2 = g(&mut b, "e2.weight", &[8, 4, 4, 4]);
        let e2_scale =
            b.declare_with("generator", "e2.scale", &[8], Init::Normal { mean: 1.0, std: 0.02 });
        let e2_offset =
            b.declare_with("generator", "e2.offset", &[8], Init::Constant { value: 0.0 });
        let e2_stats =
            (b.buffer("generator", "e2.mean", 8, 0.0), b.buffer("generator", "e2.var", 8, 1.0));
        let d1 = g(&mut b, "d1.weight", &[8, 4, 4, 4]);
        let d1_scale =
            b.declare_with("generator", "d1.scale", &[4], Init::Normal { mean: 1.0, std: 0.02 });
        let d1_offset =
            b.declare_with("generator", "d1.offset", &[4], Init::Constant { value: 0.0 });
        let d1_stats =
            (b.buffer("generator", "d1.mean", 4, 0.0), b.buffer("generator", "d1.var", 4, 1.0));
        let d2 = g(&mut b, "d2.weight", &[8, 3, 4, 4]);
        let d2_bias = g(&mut b, "d2.bias", &[3]);
        let dw1 = b.declare("discriminator", "c1.weight", &[4, 6, 4, 4]);
        let dw2 = b.declare("discriminator", "c2.weight", &[1, 4, 4, 4]);
        let db2 = b.declare("discriminator", "c2.bias", &[1]);

        let input = b.input("input", &[1, 3, SIZE, SIZE]);
        let target = b.input("target", &[1, 3, SIZE, SIZE]);
        let x = conv(&mut b, input, e1, 2, "g.e1");
        let a1 = b.op(Op::LeakyRelu { slope: 0.2 }, &[x], "g.e1.act");
        let x = conv(&mut b, a1, e2, 2, "g.e2");
        let x = norm(&mut b, x, e2_scale, e2_offset, e2_stats, "g.e2.norm");
        let a2 = b.op(Op::Relu, &[x], "g.e2.act");
        let w = b.read(d1);
        let up = Op::ConvTranspose2d { stride: [2, 2], padding: [1, 1], output_padding: [0, 0] };
        let x = b.op(up.clone(), &[a2, w], "g.d1");
        let x = norm(&mut b, x, d1_scale, d1_offset, d1_stats, "g.d1.norm");
        let x = b.op(Op::Dropout { p: 0.5 }, &[x], "g.d1.dropout");
        let x = b.op(Op::Relu, &[x], "g.d1.act");
        let skip = b.op(Op::Concat { axis: 1 }, &[x, a1], "g.d2.skip");
        let (w, bias) = (b.read(d2), b.read(d2_bias));
        let x = b.op(up, &[skip, w, bias], "g.d2");
        let fake = b.op(Op::Tanh, &[x], "fake");

        let discriminate = |b: &mut Builder, image: NodeId, tag: &str| {
            let pair = b.op(Op::Concat { axis: 1 }, &[input, image], &format!("{tag}.pair"));
            let x = conv(b, pair, dw1, 2, &format!("{tag}.c1"));
            let x = b.op(Op::LeakyRelu { slope: 0.2 }, &[x], &format!("{tag}.c1.act"));
            let (w, bias) = (b.read(dw2), b.read(db2));
            let op = Op::Conv2d { stride: [1, 1], padding: [1, 1] };
            b.op(op, &[x, w, bias], &format!("{tag}.logits"))
        };

        b.phase = 1;
        let stopped = b.op(Op::StopGradient, &[fake], "d.fake");
        let real_logits = discriminate(&mut b, target, "d.real");
        let fake_logits = discriminate(&mut b, stopped, "d.fake");
        let one = b.constant("d.one", 1.0);
        let zero = b.constant("d.zero", 0.0);
        let real = b.op(Op::BceWithLogits, &[real_logits, one], "d.loss_real");
        let fake_term = b.op(Op::BceWithLogits, &[fake_logits, zero], "d.loss_fake");
        let sum = b.op(Op::Add, &[real, fake_term], "d.sum");
        let half = b.constant("d.half", 0.5);
        let d_loss = b.op(Op::Mul, &[sum, half], "d.loss");

        b.phase = 2;
        let logits = discriminate(&mut b, fake, "g.disc");
        let one = b.constant("g.one", 1.0);
        let adversarial = b.op(Op::BceWithLogits, &[logits, one], "g.gan");
        let l1 = b.op(Op::L1Loss, &[fake, target], "g.l1");
        let lambda = b.constant("g.lambda", 100.0);
        let weighted = b.op(Op::Mul, &[l1, lambda], "g.l1_weighted");
        let g_loss = b.op(Op::Add, &[adversarial, weighted], "g.loss");

        let terms = vec![
            ("d_real".to_string(), real),
            ("d_fake".to_string(), fake_term),
            ("g_gan".to_string(), adversarial),
            ("g_l1".to_string(), l1),
        ];
        Gan {
            b,
            g_params: vec![e1, e2, e2_scale, e2_offset, d1, d1_scale, d1_offset, d2, d2_bias],
            d_params: vec![dw1, dw2, db2],
            d_loss,
            g_loss,
            terms,
        }
    }

    impl Gan {
        pub fn d_step(&self, optimizer: Optimizer) -> StepSpec {
            let mut step = self.b.step("discriminator", self.d_loss, self.d_params.clone());
            step.phase = 1;
            step.optimizer = optimizer;
            step.terms = self.terms[..2]
                .iter()
                .map(|(n, id)| netc::ir::LossTerm { name: n.clone(), node: *id })
                .collect();
            step
        }

        pub fn g_step(&self, optimizer: Optimizer) -> StepSpec {
            let mut step = self.b.step("generator", self.g_loss, self.g_params.clone());
            step.phase = 2;
            step.optimizer = optimizer;
            step.terms = self.terms[2..]
                .iter()
                .map(|(n, id)| netc::ir::LossTerm { name: n.clone(), node: *id })
                .collect();
            step
        }
    }

    pub const ADAM: Optimizer = Optimizer::Adam { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8 };

    fn batch(seed: u32) -> (Vec<f32>, Vec<f32>) {
        let count = 3 * SIZE * SIZE;
        let value = |i: usize, k: u32| {
            (((i as u32).wrapping_mul(2654435761) ^ k) % 2001) as f32 / 1000.0 - 1.0
        };
        (
            (0..count).map(|i| value(i, seed)).collect(),
            (0..count).map(|i| value(i, seed + 1)).collect(),
        )
    }

    fn trainables(trainer: &Trainer<'_>, module: &Module, net: &str) -> Vec<NamedTensor> {
        module
            .params
            .iter()
            .filter(|p| p.net == net && p.kind == netc::ir::ParamKind::Trainable)
            .map(|p| trainer.tensor(&p.name).expect("the tensor exists"))
            .collect()
    }

    fn bits(tensors: &[NamedTensor]) -> Vec<Vec<u32>> {
        tensors.iter().map(|t| t.data.iter().map(|v| v.to_bits()).collect()).collect()
    }

    #[test]
    fn training_kernels_validate_with_naga() {
        // No device: the kernels are lowered for the WebGPU default limits.
        let gan = gan();
        let sgd = Optimizer::Sgd { lr: 0.01, momentum: 0.9 };
        let module = gan.b.train_module(vec![gan.d_step(sgd), gan.g_step(ADAM)]);
        let program = TrainProgram::build(&module, &Target::default()).expect("the program builds");

        let names: Vec<&str> = program.kernels.iter().map(|k| k.name.as_str()).collect();
        for kernel in &program.kernels {
            if let Err(message) = validate_wgsl(&kernel.wgsl) {
                panic!("kernel {} is invalid WGSL:\n{message}\n{}", kernel.name, kernel.wgsl);
            }
        }
        // The discriminator's leaky ReLU is applied as its logits convolution loads it, its
        // gradient as the logits' input-gradient GEMM stores its output, and the first
        // operand of the generator's skip concat is written straight into the concat.
        assert!(!names.contains(&"d.real.c1.act.leaky_relu"), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with("d.real.c1.act.dx.leaky_relu_grad")));
        let dx = "grad.discriminator.d.real.logits.dx.conv_transpose2d";
        let masked = program.kernels.iter().find(|k| k.name == dx).expect("the logits' dx");
        assert!(masked.bindings.iter().any(|b| b.name == "mask"), "{dx} has no mask");
        assert!(!names.contains(&"g.d2.skip.concat0"), "{names:?}");
        // The sum of the discriminator weight's gradients from its two calls runs in the
        // stores of the second weight-gradient GEMM.
        assert!(!names.contains(&"grad.discriminator.p1.discriminator.c1.weight.acc.add"));
        let sums = program.kernels.iter().filter(|k| k.bindings.iter().any(|b| b.name == "addend"));
        assert!(sums.count() >= 2, "fewer than two GEMMs add to their output: {names:?}");
        for role in ["conv2d_weight_grad", "batch_norm_backward", "dropout_grad", "slice"] {
            assert!(names.iter().any(|n| n.ends_with(role)), "no {role} kernel in {names:?}");
        }
        // Each batch norm's backward pass is one kernel, which reads the statistics that
        // the forward pass saved.
        assert!(names.iter().all(|n| !n.ends_with("batch_norm_scale_grad")), "{names:?}");
        assert!(names.iter().all(|n| !n.ends_with("batch_norm_input_grad")), "{names:?}");
        for kernel in program.kernels.iter().filter(|k| k.name.contains("batch_norm_")) {
            let role = kernel.name.rsplit('.').next().unwrap_or_default();
            if role == "batch_norm_backward" {
                let saved = kernel.bindings.iter().any(|b| b.name == "saved");
                assert!(saved, "{} recomputes the batch statistics", kernel.name);
            }
        }

        // The discriminator's updates run after its backward pass and before any node of
        // the generator step; the generator's come last.
        let position = |prefix: &str| {
            names.iter().position(|n| n.starts_with(prefix)).expect("the kernel exists")
        };
        let last = |prefix: &str| {
            names.iter().rposition(|n| n.starts_with(prefix)).expect("the kernel exists")
        };
        assert!(last("grad.discriminator.") < position("optimizer.discriminator"));
        assert!(last("optimizer.discriminator") < position("g.disc."));
        assert!(last("grad.generator.") < position("optimizer.generator"));
        assert_eq!(last("optimizer.generator"), names.len() - 1);
    }

    #[test]
    fn unet_gan_gradients_match_differences() {
        let gan = gan();
        let module = gan.b.train_module(vec![gan.d_step(ADAM), gan.g_step(ADAM)]);
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let options = GradCheckOptions { seed: 3, step_size: 1e-2, rtol: 2e-2 };
        let checks = check_gradients(&gpu, &module, &options).expect("the gradient check runs");

        assert_eq!(checks.len(), gan.g_params.len() + gan.d_params.len());
        for c in &checks {
            // A bias or batch-norm vector can move the loss by less than f32 resolves at
            // this step; it still may not disagree. Every weight tensor must agree.
            let is_weight = module.params.iter().any(|p| p.name == c.param && p.shape.rank() == 4);
            let accepted =
                c.verdict == Verdict::Agrees || (!is_weight && c.verdict == Verdict::Inconclusive);
            assert!(
                accepted,
                "{} of step {}: {:?}, analytic {} but numeric {} (allowed difference {})",
                c.param, c.step, c.verdict, c.analytic, c.numeric, c.allowed
            );
        }
        let agreeing = checks.iter().filter(|c| c.verdict == Verdict::Agrees).count();
        assert!(agreeing * 4 >= checks.len() * 3, "only {agreeing} of {} agree", checks.len());
    }

    #[test]
    fn discriminator_step_freezes_generator() {
        let gan = gan();
        let module = gan.b.train_module(vec![gan.d_step(ADAM)]);
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let mut trainer = Trainer::new(&gpu, &module, 5).expect("the trainer compiles");
        let g_before = bits(&trainables(&trainer, &module, "generator"));
        let d_before = bits(&trainables(&trainer, &module, "discriminator"));
        let (input, target) = batch(1);
        let losses = trainer.step(&input, &target).expect("the iteration runs");

        assert!(losses.iter().all(|(_, v)| v.is_finite()), "{losses:?}");
        assert_eq!(bits(&trainables(&trainer, &module, "generator")), g_before);
        let d_after = bits(&trainables(&trainer, &module, "discriminator"));
        for (before, after) in d_before.iter().zip(&d_after) {
            assert_ne!(before, after, "every discriminator tensor is updated");
        }
    }

    #[test]
    fn generator_step_freezes_discriminator() {
        let gan = gan();
        let module = gan.b.train_module(vec![gan.g_step(ADAM)]);
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let mut trainer = Trainer::new(&gpu, &module, 5).expect("the trainer compiles");
        let d_before = bits(&trainables(&trainer, &module, "discriminator"));
        let g_before = bits(&trainables(&trainer, &module, "generator"));
        let (input, target) = batch(2);
        trainer.step(&input, &target).expect("the iteration runs");

        assert_eq!(bits(&trainables(&trainer, &module, "discriminator")), d_before);
        let g_after = bits(&trainables(&trainer, &module, "generator"));
        for (before, after) in g_before.iter().zip(&g_after) {
            assert_ne!(before, after, "every generator tensor is updated");
        }
    }

    #[test]
    fn generator_step_reads_updated_discriminator() {
        // The same iteration with and without a discriminator update: the generator's
        // adversarial term differs only if its discriminator call reads the new weights.
        let gan = gan();
        let frozen = Optimizer::Adam { lr: 0.0, beta1: 0.5, beta2: 0.999, eps: 1e-8 };
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let (input, target) = batch(3);
        let mut losses = Vec::new();
        for d_optimizer in
            [frozen, Optimizer::Adam { lr: 0.05, beta1: 0.5, beta2: 0.999, eps: 1e-8 }]
        {
            let module = gan.b.train_module(vec![gan.d_step(d_optimizer), gan.g_step(ADAM)]);
            let mut trainer = Trainer::new(&gpu, &module, 9).expect("the trainer compiles");
            losses.push(trainer.step(&input, &target).expect("the iteration runs"));
        }
        let term = |losses: &[(String, f32)], name: &str| {
            losses.iter().find(|(n, _)| n == name).map(|(_, v)| *v).expect("the term is reported")
        };

        assert_eq!(term(&losses[0], "d_real"), term(&losses[1], "d_real"));
        assert_eq!(term(&losses[0], "g_l1"), term(&losses[1], "g_l1"));
        assert_ne!(term(&losses[0], "g_gan"), term(&losses[1], "g_gan"));
    }

    #[test]
    fn optimizer_kernels_match_reference() {
        // One step per module, so the gradients the trainer applies are exactly those of
        // a plain gradient run with the same seed and inputs.
        let gan = gan();
        let sgd = Optimizer::Sgd { lr: 0.01, momentum: 0.9 };
        let modules = [
            gan.b.train_module(vec![gan.d_step(sgd.clone())]),
            gan.b.train_module(vec![gan.g_step(ADAM)]),
        ];
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        for module in &modules {
            let run = run_gradients(&gpu, module, 11).expect("the gradient program runs");
            let mut trainer = Trainer::new(&gpu, module, 11).expect("the trainer compiles");
            trainer.step(&run.inputs["input"], &run.inputs["target"]).expect("the iteration runs");

            let step = &module.train.as_ref().expect("a train section").steps[0];
            let optimizer = &step.optimizer;
            let updates: Vec<&str> = trainer
                .device_program()
                .kernel_names()
                .filter(|name| name.starts_with("optimizer."))
                .collect();
            assert_eq!(updates, [format!("optimizer.{}", step.name)], "one fused update kernel");
            assert!(!run.grads.is_empty());
            for (_, param, _, grad) in &run.grads {
                let decl = &module.params[*param];
                let mut expected = run.params[*param].clone();
                let values = UpdateValues::new(optimizer, optimizer.lr(), 1);
                if let Optimizer::Sgd { .. } = optimizer {
                    let mut velocity = vec![0.0; grad.len()];
                    sgd_reference(&mut expected, grad, &mut velocity, optimizer, values);
                } else {
                    let (mut m, mut v) = (vec![0.0; grad.len()], vec![0.0; grad.len()]);
                    adam_reference(&mut expected, grad, &mut m, &mut v, optimizer, values);
                }
                let device = trainer.tensor(&decl.name).expect("the tensor exists").data;
                for (i, (&d, &e)) in device.iter().zip(&expected).enumerate() {
                    assert!(
                        (d - e).abs() <= 1e-6 * e.abs().max(1e-2),
                        "{} element {i}: device {d}, reference {e}",
                        decl.name
                    );
                }
            }
        }
    }

    #[test]
    fn resumed_trainer_matches_straight_run() {
        let gan = gan();
        let module = gan.b.train_module(vec![gan.d_step(ADAM), gan.g_step(ADAM)]);
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let batches: Vec<_> = (0..4).map(batch).collect();

        let mut straight = Trainer::new(&gpu, &module, 21).expect("the trainer compiles");
        for (input, target) in &batches {
            straight.step(input, target).expect("runs");
        }

        let mut first = Trainer::new(&gpu, &module, 21).expect("the trainer compiles");
        for (input, target) in &batches[..2] {
            first.step(input, target).expect("runs");
        }
        let (tensors, state) = (first.tensors().expect("tensors download"), first.state());
        drop(first);
        let mut resumed = Trainer::new(&gpu, &module, state.seed).expect("the trainer compiles");
        resumed.set_tensors(&tensors).expect("the tensors fit");
        resumed.restore_state(&state).expect("the state fits");
        for (input, target) in &batches[2..] {
            resumed.step(input, target).expect("runs");
        }

        assert_eq!(resumed.state(), straight.state());
        let straight_tensors = straight.tensors().expect("tensors download");
        let resumed_tensors = resumed.tensors().expect("tensors download");
        assert_eq!(straight_tensors.len(), resumed_tensors.len());
        for (a, b) in straight_tensors.iter().zip(&resumed_tensors) {
            assert_eq!(a.name, b.name);
            assert_eq!(bits(std::slice::from_ref(a)), bits(std::slice::from_ref(b)), "{}", a.name);
        }
    }

    #[test]
    fn checkpoint_tensors_include_optimizer_state() {
        let gan = gan();
        let module = gan.b.train_module(vec![gan.d_step(ADAM), gan.g_step(ADAM)]);
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let trainer = Trainer::new(&gpu, &module, 1).expect("the trainer compiles");
        let names: Vec<String> =
            trainer.tensors().expect("tensors download").into_iter().map(|t| t.name).collect();

        assert!(names.contains(&"generator.e1.weight".to_string()));
        assert!(names.contains(&"generator.e2.mean".to_string()), "buffers are stored");
        assert!(names.contains(&"optimizer.generator.generator.e1.weight.exp_avg".to_string()));
        assert!(
            names.contains(&"optimizer.discriminator.discriminator.c2.bias.exp_avg_sq".to_string())
        );
        assert!(!names.iter().any(|n| n.ends_with(".values")), "per-step values are derived");
        let err = trainer.tensor("generator.missing").unwrap_err();
        assert_eq!(err.to_string(), "the training program has no tensor named generator.missing");
    }

    #[test]
    fn bce_finite_at_extreme_logits() {
        let mut b = Builder::new();
        b.phase = 1;
        let high = b.declare_with("g", "high", &[3], Init::Constant { value: 100.0 });
        let low = b.declare_with("g", "low", &[3], Init::Constant { value: -100.0 });
        let (high, low) = (b.read(high), b.read(low));
        let zero = b.constant("zero", 0.0);
        let one = b.constant("one", 1.0);
        let wrong_high = b.op(Op::BceWithLogits, &[high, zero], "wrong_high");
        let wrong_low = b.op(Op::BceWithLogits, &[low, one], "wrong_low");
        let loss = b.op(Op::Add, &[wrong_high, wrong_low], "loss");
        let step = b.step("g", loss, vec![0, 1]);
        let module = b.train_module(vec![step]);
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let run = run_gradients(&gpu, &module, 0).expect("the gradient program runs");

        // Each term is 100 + log(1 + e^-100), and the gradients are +-1/3 per element.
        assert!((run.losses[0].1 - 200.0).abs() < 1e-3, "{:?}", run.losses);
        for (_, param, _, grad) in &run.grads {
            let sign = if *param == 0 { 1.0 } else { -1.0 };
            for &g in grad {
                assert!((g - sign / 3.0).abs() < 1e-6, "{g}");
            }
        }
    }
}

mod pix2pix {
    use super::common::gpu;
    use image::{Rgb, RgbImage};
    use netc::ir::Module;
    use netc::train::run::{train, RunOptions};
    use netc::train::Trainer;
    use std::path::Path;

    /// Compiles the repository's pix2pix at its smallest legal size, 4 filters at 64x64.
    fn small_pix2pix() -> Module {
        let set = ["ngf=4", "ndf=4", "size=64"].map(String::from);
        netc::frontend::compile_file(Path::new("models/pix2pix.net"), &set)
            .expect("models/pix2pix.net compiles")
    }

    fn batch(module: &Module) -> (Vec<f32>, Vec<f32>) {
        let train = module.train.as_ref().expect("a train section");
        let (node, _) = train
            .graph
            .input_nodes()
            .into_iter()
            .find(|(_, name)| name == "input")
            .expect("an input node");
        let count = train.graph.shape(node).numel();
        let wave = |i: usize, k: usize| ((i * k % 2001) as f32) / 1000.0 - 1.0;
        (
            (0..count).map(|i| wave(i, 7919)).collect(),
            (0..count).map(|i| wave(i, 104_729)).collect(),
        )
    }

    fn trainable_bits(trainer: &Trainer<'_>, net: &str) -> Vec<Vec<u32>> {
        trainer
            .trainable_names(net)
            .iter()
            .map(|name| {
                let tensor = trainer.tensor(name).expect("the tensor exists");
                tensor.data.iter().map(|v| v.to_bits()).collect()
            })
            .collect()
    }

    #[test]
    fn pix2pix_fits_one_batch() {
        let module = small_pix2pix();
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let mut trainer = Trainer::new(&gpu, &module, 0).expect("the trainer compiles");
        let (input, target) = batch(&module);
        let mut l1 = Vec::new();
        for _ in 0..6 {
            let losses = trainer.step(&input, &target).expect("the iteration runs");
            assert!(losses.iter().all(|(_, v)| v.is_finite()), "{losses:?}");
            l1.push(losses.iter().find(|(n, _)| n == "g_l1").expect("the g_l1 term").1);
        }

        // Adam moves each weight by about the learning rate (2e-4) per step, so six steps
        // lower the L1 term by about a percent.
        assert!(l1.windows(2).all(|w| w[1] < w[0]), "the L1 term does not fall: {l1:?}");
        assert!(l1[5] < 0.995 * l1[0], "the L1 term falls too little: {l1:?}");
        assert_eq!(trainer.state().iteration, 6);
        assert_eq!(trainer.state().updates, [("discriminator".into(), 6), ("generator".into(), 6)]);
    }

    #[test]
    fn pix2pix_steps_freeze_other_network() {
        let module = small_pix2pix();
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let (input, target) = batch(&module);
        for (kept, frozen) in [("discriminator", "generator"), ("generator", "discriminator")] {
            let mut single = module.clone();
            let train = single.train.as_mut().expect("a train section");
            train.steps.retain(|s| s.name == kept);
            let mut trainer = Trainer::new(&gpu, &single, 1).expect("the trainer compiles");
            let frozen_before = trainable_bits(&trainer, frozen);
            let kept_before = trainable_bits(&trainer, kept);
            trainer.step(&input, &target).expect("the iteration runs");

            assert_eq!(
                trainable_bits(&trainer, frozen),
                frozen_before,
                "step {kept} changed {frozen}"
            );
            assert_ne!(trainable_bits(&trainer, kept), kept_before, "step {kept} changed nothing");
        }
    }

    /// Writes `count` paired 128x64 images (photo left, label map right) into
    /// `root/pairs/train/`.
    fn write_dataset(root: &Path, count: u32) {
        let dir = root.join("pairs").join("train");
        std::fs::create_dir_all(&dir).expect("the temporary folder is writable");
        for k in 0..count {
            let image = RgbImage::from_fn(128, 64, |x, y| {
                let v = ((x * (3 + k) + y * 5) % 256) as u8;
                if x < 64 {
                    Rgb([v, 255 - v, (y * 4) as u8])
                } else {
                    Rgb([(x % 4 * 60) as u8, (y % 8 * 30) as u8, 90])
                }
            });
            image.save(dir.join(format!("{k}.png"))).expect("the temporary folder is writable");
        }
    }

    fn options(data: &Path, out: &Path, steps: u64, resume: Option<&Path>) -> RunOptions {
        RunOptions {
            source: std::fs::read_to_string("models/pix2pix.net").expect("the model is readable"),
            overrides: ["ngf=4", "ndf=4", "size=64"].map(String::from).to_vec(),
            dataset: "pairs".into(),
            data: Some(data.to_path_buf()),
            steps: Some(steps),
            seed: 3,
            out: Some(out.to_path_buf()),
            resume: resume.map(Path::to_path_buf),
            quiet: true,
            images_every: 2,
            checkpoint_every: 2,
            ..RunOptions::default()
        }
    }

    fn weight_bits(trainer: &mut Trainer<'_>) -> Vec<(String, Vec<u32>)> {
        netc::train::Trainer::tensors(trainer)
            .expect("tensors download")
            .into_iter()
            .map(|t| (t.name, t.data.iter().map(|v| v.to_bits()).collect()))
            .collect()
    }

    #[test]
    fn run_loop_resume_matches_straight_run() {
        let module = small_pix2pix();
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let root = tempfile::tempdir().expect("a temporary folder");
        write_dataset(root.path(), 3);
        let (straight_dir, split_dir) = (root.path().join("straight"), root.path().join("split"));

        let mut straight = Trainer::new(&gpu, &module, 3).expect("the trainer compiles");
        let summary = train(&module, &mut straight, &options(root.path(), &straight_dir, 4, None))
            .expect("the straight run trains");
        assert_eq!(summary.steps, 4);
        assert!(
            summary.last_losses.iter().all(|(_, v)| v.is_finite()),
            "{:?}",
            summary.last_losses
        );
        let names: Vec<&str> = summary.last_losses.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["d_real", "d_fake", "g_gan", "g_l1"]);

        let mut first = Trainer::new(&gpu, &module, 3).expect("the trainer compiles");
        train(&module, &mut first, &options(root.path(), &split_dir, 2, None)).expect("trains");
        drop(first);
        let mut resumed = Trainer::new(&gpu, &module, 3).expect("the trainer compiles");
        let options = options(root.path(), &split_dir, 4, Some(&split_dir));
        let summary = train(&module, &mut resumed, &options).expect("the resumed run trains");
        assert_eq!(summary.first_step, 2);

        assert_eq!(resumed.state(), straight.state());
        let (expected, got) = (weight_bits(&mut straight), weight_bits(&mut resumed));
        assert_eq!(expected.len(), got.len());
        for (a, b) in expected.iter().zip(&got) {
            assert_eq!(a.0, b.0);
            assert!(a.1 == b.1, "{} differs after the resume", a.0);
        }
        assert!(split_dir.join("losses.csv").exists());
        assert!(split_dir.join("index.html").exists());
    }
}
