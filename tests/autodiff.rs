//! Autodiff tests: the structure of the backward graph (shapes, phases, accumulation,
//! stop-gradient, frozen parameters) on hand-built graphs.

mod common {
    use netc::ir::{
        Graph, Init, Module, NodeId, Op, Optimizer, ParamDecl, ParamId, ParamKind, Shape, StepSpec,
    };

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

        /// Declares a trainable parameter of `net` and returns its id.
        pub fn declare(&mut self, net: &str, name: &str, dims: &[usize]) -> ParamId {
            self.params.push(ParamDecl {
                name: format!("{net}.{name}"),
                shape: Shape::new(dims),
                init: Init::Normal { mean: 0.0, std: 0.02 },
                kind: ParamKind::Trainable,
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
