//! A hand-built pix2pix U-Net generator (encoder-decoder with skips, batch norm,
//! dropout), the same layer sequence as the pix2pix paper's 256x256 generator, for
//! tests that need a realistic graph without the front end.

use netc::ir::{Graph, Init, Module, Net, NetInput, NodeId, Op, ParamDecl, ParamKind, Shape};

struct Builder {
    graph: Graph,
    module: Module,
}

impl Builder {
    fn param(
        &mut self,
        name: &str,
        dims: &[usize],
        init: Init,
        kind: ParamKind,
    ) -> (NodeId, usize) {
        let id = self.module.params.len();
        let shape = Shape::new(dims.to_vec());
        let name = format!("generator.{name}");
        self.module.params.push(ParamDecl {
            name: name.clone(),
            shape: shape.clone(),
            init,
            kind,
            net: "generator".into(),
            span: None,
        });
        (self.graph.add_leaf(Op::Param { id }, shape, name, None), id)
    }

    fn op(&mut self, name: &str, op: Op, operands: &[NodeId]) -> NodeId {
        self.graph
            .add_op(op, operands, format!("generator.{name}"), None)
            .expect("U-Net shapes agree")
    }

    fn conv(&mut self, layer: &str, x: NodeId, cin: usize, cout: usize, bias: bool) -> NodeId {
        let init = Init::Normal { mean: 0.0, std: 0.02 };
        let (w, _) = self.param(
            &format!("{layer}.conv.weight"),
            &[cout, cin, 4, 4],
            init,
            ParamKind::Trainable,
        );
        let mut operands = vec![x, w];
        if bias {
            let zero = Init::Constant { value: 0.0 };
            operands.push(
                self.param(&format!("{layer}.conv.bias"), &[cout], zero, ParamKind::Trainable).0,
            );
        }
        self.op(&format!("{layer}.conv"), Op::Conv2d { stride: [2, 2], padding: [1, 1] }, &operands)
    }

    fn deconv(&mut self, layer: &str, x: NodeId, cin: usize, cout: usize, bias: bool) -> NodeId {
        let init = Init::Normal { mean: 0.0, std: 0.02 };
        let (w, _) = self.param(
            &format!("{layer}.conv.weight"),
            &[cin, cout, 4, 4],
            init,
            ParamKind::Trainable,
        );
        let mut operands = vec![x, w];
        if bias {
            let zero = Init::Constant { value: 0.0 };
            operands.push(
                self.param(&format!("{layer}.conv.bias"), &[cout], zero, ParamKind::Trainable).0,
            );
        }
        let op = Op::ConvTranspose2d { stride: [2, 2], padding: [1, 1], output_padding: [0, 0] };
        self.op(&format!("{layer}.conv"), op, &operands)
    }

    fn norm(&mut self, layer: &str, x: NodeId, channels: usize) -> NodeId {
        let scale_init = Init::Normal { mean: 1.0, std: 0.02 };
        let (scale, _) = self.param(
            &format!("{layer}.norm.scale"),
            &[channels],
            scale_init,
            ParamKind::Trainable,
        );
        let zero = Init::Constant { value: 0.0 };
        let (offset, _) = self.param(
            &format!("{layer}.norm.offset"),
            &[channels],
            zero.clone(),
            ParamKind::Trainable,
        );
        let (_, mean) =
            self.param(&format!("{layer}.norm.running_mean"), &[channels], zero, ParamKind::Buffer);
        let one = Init::Constant { value: 1.0 };
        let (_, var) =
            self.param(&format!("{layer}.norm.running_var"), &[channels], one, ParamKind::Buffer);
        let op = Op::BatchNorm { eps: 1e-5, momentum: 0.1, running_mean: mean, running_var: var };
        self.op(&format!("{layer}.norm"), op, &[x, scale, offset])
    }
}

/// Builds the pix2pix U-Net generator for `[batch, 3, size, size]` images with `ngf` filters in
/// the first layer; `size` must be 256 for the full eight levels.
pub fn generator(ngf: usize, size: usize, batch: usize) -> Module {
    let module = Module {
        name: "unet".into(),
        params: Vec::new(),
        nets: Vec::new(),
        train: None,
        settings: Vec::new(),
    };
    let mut b = Builder { graph: Graph::new(), module };
    let shape = Shape::new([batch, 3, size, size]);
    let input = b.graph.add_leaf(
        Op::Input { name: "input".into() },
        shape.clone(),
        "generator.input",
        None,
    );

    // Encoder: channel counts per level, the first without batch norm.
    let widths = [ngf, 2 * ngf, 4 * ngf, 8 * ngf, 8 * ngf, 8 * ngf, 8 * ngf, 8 * ngf];
    let mut skips = Vec::new();
    let mut x = b.conv("e1", input, 3, widths[0], false);
    skips.push(x);
    for level in 1..8 {
        let layer = format!("e{}", level + 1);
        let act = b.op(&format!("{layer}.act"), Op::LeakyRelu { slope: 0.2 }, &[x]);
        x = b.conv(&layer, act, widths[level - 1], widths[level], false);
        if level < 7 {
            x = b.norm(&layer, x, widths[level]);
        }
        skips.push(x);
    }

    // Decoder: each level upsamples and concatenates the mirrored encoder output.
    let mut channels = widths[7];
    for level in 0..7 {
        let layer = format!("d{}", level + 1);
        let out = widths[6 - level];
        let act = b.op(&format!("{layer}.act"), Op::Relu, &[x]);
        x = b.deconv(&layer, act, channels, out, false);
        x = b.norm(&layer, x, out);
        if (1..4).contains(&level) {
            x = b.op(&format!("{layer}.dropout"), Op::Dropout { p: 0.5 }, &[x]);
        }
        x = b.op(&format!("{layer}.skip"), Op::Concat { axis: 1 }, &[x, skips[6 - level]]);
        channels = 2 * out;
    }
    let act = b.op("d8.act", Op::Relu, &[x]);
    let x = b.deconv("d8", act, channels, 3, true);
    let output = b.op("output", Op::Tanh, &[x]);
    b.graph.outputs.push(("output".into(), output));

    let params = (0..b.module.params.len()).collect();
    b.module.nets.push(Net {
        name: "generator".into(),
        inputs: vec![NetInput { name: "input".into(), shape }],
        graph: b.graph,
        params,
        span: None,
    });
    netc::ir::verify::verify_module(&b.module).expect("U-Net verifies");
    b.module
}
