//! Front-end tests: the shipped models, the `netc check` and `netc graph` commands, one
//! `.net` file per kind of mistake under `tests/net/errors/` with its rendered
//! diagnostics as an insta snapshot, and a proptest fuzz target over a kept corpus.

mod support;

use netc::frontend::{compile_file, compile_source, Diagnostics, ErrorKind};
use netc::ir::{self, Init, Module, Op, ParamKind};
use std::path::Path;

fn compile_model(path: &str, overrides: &[&str]) -> Module {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match compile_file(Path::new(path), &overrides) {
        Ok(module) => module,
        Err(diags) => panic!("{path} failed to compile:\n{}", diags.render_plain()),
    }
}

fn compile_errors(name: &str, text: &str, overrides: &[&str]) -> Diagnostics {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match compile_source(name, text, &overrides) {
        Ok(_) => panic!("{name} compiled, but it should fail"),
        Err(diags) => diags,
    }
}

/// Computes the generator's parameter count from the pix2pix spec, independently of the
/// front end: no convolution has a bias, batch norm (scale and offset) follows e2..e_L
/// and d_L..d2, and d_k for k < L reads twice the channels of e_k.
fn unet_params(ngf: usize, levels: usize) -> usize {
    let enc: Vec<usize> = (0..levels).map(|k| ngf * (1usize << k.min(3))).collect();
    let conv = |cin: usize, cout: usize| cin * cout * 16;
    // e1 and the 1x1 bottleneck have no batch norm; the output layer has 3 biases.
    let mut total = conv(3, enc[0]);
    for k in 1..levels {
        let norm = if k < levels - 1 { 2 * enc[k] } else { 0 };
        total += conv(enc[k - 1], enc[k]) + norm;
    }
    total += conv(enc[levels - 1], enc[levels - 2]) + 2 * enc[levels - 2];
    for k in (2..levels).rev() {
        total += conv(2 * enc[k - 1], enc[k - 2]) + 2 * enc[k - 2];
    }
    total + conv(2 * enc[0], 3) + 3
}

fn patchgan_params(ndf: usize) -> usize {
    // The first and the last layer have biases.
    let conv = |cin: usize, cout: usize| cin * cout * 16;
    conv(6, ndf)
        + ndf
        + conv(ndf, 2 * ndf)
        + 4 * ndf
        + conv(2 * ndf, 4 * ndf)
        + 8 * ndf
        + conv(4 * ndf, 8 * ndf)
        + 16 * ndf
        + conv(8 * ndf, 1)
        + 1
}

fn output_shape(module: &Module, net: &str) -> Vec<usize> {
    let net = module.net(net).expect("the net exists");
    let out = net.graph.output("output").expect("every net registers its output");
    net.graph.shape(out).dims().to_vec()
}

mod pix2pix {
    use super::*;

    #[test]
    fn default_counts_match_paper() {
        let m = compile_model("models/pix2pix.net", &[]);
        assert_eq!(m.trainable_count("generator"), 54_413_955);
        assert_eq!(m.trainable_count("discriminator"), 2_768_705);
        assert_eq!(unet_params(64, 8), 54_413_955);
        assert_eq!(patchgan_params(64), 2_768_705);
    }

    #[test]
    fn discriminator_returns_30x30_logits() {
        let m = compile_model("models/pix2pix.net", &[]);
        assert_eq!(output_shape(&m, "discriminator"), [1, 1, 30, 30]);
        assert_eq!(output_shape(&m, "generator"), [1, 3, 256, 256]);
    }

    #[test]
    fn smaller_sizes_drop_levels() {
        for (size, levels, patch) in [(128, 7, 14), (64, 6, 6)] {
            let set = format!("size={size}");
            let m = compile_model("models/pix2pix.net", &[&set]);
            assert_eq!(m.trainable_count("generator"), unet_params(64, levels), "size {size}");
            assert_eq!(m.trainable_count("discriminator"), 2_768_705, "size {size}");
            assert_eq!(output_shape(&m, "generator"), [1, 3, size, size]);
            assert_eq!(output_shape(&m, "discriminator"), [1, 1, patch, patch]);
            let gen = m.net("generator").unwrap();
            assert!(gen.graph.find(&format!("generator.e{levels}.conv")).is_some());
            assert!(gen.graph.find(&format!("generator.e{}.conv", levels + 1)).is_none());
        }
    }

    #[test]
    fn set_ngf_changes_generator_count() {
        let m = compile_model("models/pix2pix.net", &["ngf=32"]);
        assert_eq!(m.trainable_count("generator"), unet_params(32, 8));
        assert_eq!(m.trainable_count("generator"), unet_params(32, 8));
        assert_eq!(m.trainable_count("discriminator"), 2_768_705);
        let m = compile_model("models/pix2pix.net", &["ndf=32", "size=128"]);
        assert_eq!(m.trainable_count("discriminator"), patchgan_params(32));
    }

    #[test]
    fn parameter_names_and_inits() {
        let m = compile_model("models/pix2pix.net", &[]);
        let param = |name: &str| &m.params[m.param_id(name).unwrap_or_else(|| panic!("{name}"))];
        let w = param("generator.e3.conv.weight");
        assert_eq!(w.shape.dims(), [256, 128, 4, 4]);
        assert_eq!(w.init, Init::Normal { mean: 0.0, std: 0.02 });
        assert_eq!(w.kind, ParamKind::Trainable);
        assert_eq!(param("generator.e3.norm.scale").init, Init::Normal { mean: 1.0, std: 0.02 });
        assert_eq!(param("generator.e3.norm.offset").init, Init::Constant { value: 0.0 });
        let mean = param("generator.e3.norm.running_mean");
        assert_eq!(
            (mean.kind, mean.init.clone()),
            (ParamKind::Buffer, Init::Constant { value: 0.0 })
        );
        let var = param("generator.e3.norm.running_var");
        assert_eq!(
            (var.kind, var.init.clone()),
            (ParamKind::Buffer, Init::Constant { value: 1.0 })
        );
        assert_eq!(param("generator.d1.conv_transpose.weight").shape.dims(), [128, 3, 4, 4]);
        assert_eq!(param("discriminator.l1.conv.weight").shape.dims(), [64, 6, 4, 4]);
        assert!(m.param_id("generator.e1.norm.scale").is_none(), "e1 has no batch norm");
        assert!(m.param_id("generator.d1.norm.scale").is_none(), "d1 has no batch norm");
        let biases: Vec<&str> = m
            .params
            .iter()
            .filter(|p| p.name.ends_with(".bias"))
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            biases,
            [
                "generator.d1.conv_transpose.bias",
                "discriminator.l1.conv.bias",
                "discriminator.logits.conv.bias"
            ]
        );
        assert_eq!(param("generator.d1.conv_transpose.bias").init, Init::Constant { value: 0.0 });
    }

    #[test]
    fn batch_norm_and_dropout_placement() {
        let m = compile_model("models/pix2pix.net", &[]);
        let g = &m.net("generator").unwrap().graph;
        for k in 2..=7 {
            let node = g.find(&format!("generator.e{k}.norm")).expect("e2..e7 have batch norm");
            assert!(matches!(g.node(node).op, Op::BatchNorm { eps, .. } if eps == 1e-5));
        }
        assert!(g.find("generator.e8.norm").is_none(), "the 1x1 bottleneck has no batch norm");
        for k in [7, 6, 5] {
            let node = g.find(&format!("generator.d{k}.dropout")).expect("d7..d5 have dropout");
            assert_eq!(g.node(node).op, Op::Dropout { p: 0.5 });
        }
        for k in [1, 2, 3, 4, 8] {
            assert!(g.find(&format!("generator.d{k}.dropout")).is_none(), "d{k} has no dropout");
        }
        let tanh = g.find("generator.d1.tanh").expect("d1 ends in tanh");
        assert_eq!(g.output("output"), Some(tanh));
    }

    #[test]
    fn skips_concatenate_decoder_then_encoder() {
        let m = compile_model("models/pix2pix.net", &[]);
        let g = &m.net("generator").unwrap().graph;
        for k in 1..=7 {
            let skip = g.find(&format!("generator.d{k}.skip")).expect("d1..d7 read a skip");
            let operands: Vec<&str> =
                g.operands(skip).iter().map(|&o| g.node(o).name.as_str()).collect();
            let previous = if k == 7 { "generator.d8.norm".to_string() } else { String::new() };
            assert_eq!(operands.len(), 2);
            assert!(operands[0].starts_with(&format!("generator.d{}.", k + 1)), "{operands:?}");
            if !previous.is_empty() {
                assert_eq!(operands[0], previous);
            }
            assert!(operands[1].starts_with(&format!("generator.e{k}.")), "{operands:?}");
        }
        assert!(g.find("generator.d8.skip").is_none(), "d8 reads e8 directly");
    }

    #[test]
    fn train_graph_has_phases_and_terms() {
        let m = compile_model("models/pix2pix.net", &[]);
        let train = m.train.as_ref().expect("pix2pix has a train section");
        let g = &train.graph;
        let inputs: Vec<String> = g.input_nodes().into_iter().map(|(_, n)| n).collect();
        assert_eq!(inputs, ["input", "target"]);
        assert_eq!(train.steps.len(), 2);
        let (d, gen) = (&train.steps[0], &train.steps[1]);
        assert_eq!((d.name.as_str(), d.phase), ("discriminator", 1));
        assert_eq!((gen.name.as_str(), gen.phase), ("generator", 2));
        let names = |s: &ir::StepSpec| s.terms.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(d), ["d_real", "d_fake"]);
        assert_eq!(names(gen), ["g_gan", "g_l1"]);
        assert_eq!(g.node(d.loss).phase, 1);
        assert_eq!(g.node(gen.loss).phase, 2);
        assert!(g.shape(d.loss).is_scalar());
        assert!(g.shape(gen.loss).is_scalar());
        let count =
            |s: &ir::StepSpec| s.params.iter().map(|&p| m.params[p].shape.numel()).sum::<usize>();
        assert_eq!(count(d), 2_768_705);
        assert_eq!(count(gen), 54_413_955);
        assert!(d.params.iter().all(|&p| m.params[p].net == "discriminator"));
        assert!(
            matches!(d.optimizer, ir::Optimizer::Adam { lr, beta1, .. } if lr == 2e-4 && beta1 == 0.5)
        );
        assert_eq!(train.generator, "generator");
        assert_eq!(train.data.crop, Some(256));
        assert_eq!(train.data.resize, Some(286));
        assert_eq!((train.data.input, train.data.target), (ir::Half::Right, ir::Half::Left));
        assert_eq!(train.epochs, 200);
    }

    #[test]
    fn train_graph_instantiates_each_call() {
        let m = compile_model("models/pix2pix.net", &[]);
        let g = &m.train.as_ref().unwrap().graph;
        let fake = g.find("fake.generator.d1.tanh").expect("the let is built once");
        assert_eq!(g.node(fake).phase, 0);
        assert_eq!(g.output("fake"), Some(fake));
        for site in ["d_real", "d_fake", "g_gan"] {
            assert!(g.find(&format!("{site}.discriminator.logits.conv")).is_some(), "{site}");
        }
        assert!(g.find("g_l1.generator.e1.conv").is_none(), "fake is not built again");
        // Each phase reads the parameter through its own node, all with the same id.
        let id = m.param_id("discriminator.l1.conv.weight").unwrap();
        let readers: Vec<u32> = g
            .param_nodes()
            .into_iter()
            .filter(|&(_, p)| p == id)
            .map(|(n, _)| g.node(n).phase)
            .collect();
        assert_eq!(readers.len(), 2);
        assert!(readers.contains(&1));
        assert!(readers.contains(&2));
        let mut names: Vec<&str> =
            g.inner.node_indices().map(|n| g.node(n).name.as_str()).collect();
        let total = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), total, "node names are unique");
        assert!(ir::verify::verify_module(&m).is_ok());
    }

    #[test]
    fn stop_gradient_guards_fake_in_discriminator_step() {
        let m = compile_model("models/pix2pix.net", &[]);
        let g = &m.train.as_ref().unwrap().graph;
        let concat = g.find("d_fake.discriminator.xy.concat").unwrap();
        let second = g.operands(concat)[1];
        assert_eq!(g.node(second).op, Op::StopGradient);
        let concat = g.find("g_gan.discriminator.xy.concat").unwrap();
        assert_ne!(g.node(g.operands(concat)[1]).op, Op::StopGradient);
    }
}

mod classifier {
    use super::*;

    fn classifier_params(width: usize, size: usize, classes: usize) -> usize {
        let stage = |cin: usize, c: usize| cin * c * 9 + c + 2 * c + c * c * 9 + c;
        let features = 4 * width * (size / 8) * (size / 8);
        let hidden = 4 * width;
        stage(3, width)
            + stage(width, 2 * width)
            + stage(2 * width, 4 * width)
            + features * hidden
            + hidden
            + hidden * classes
            + classes
    }

    #[test]
    fn counts_and_shapes() {
        let m = compile_model("models/classifier.net", &[]);
        assert_eq!(m.trainable_count("classifier"), classifier_params(32, 32, 10));
        assert_eq!(output_shape(&m, "classifier"), [32, 10]);
        let m = compile_model("models/classifier.net", &["width=16", "size=64", "classes=100"]);
        assert_eq!(m.trainable_count("classifier"), classifier_params(16, 64, 100));
    }

    #[test]
    fn sgd_step_on_labels() {
        let m = compile_model("models/classifier.net", &[]);
        let train = m.train.as_ref().unwrap();
        let labeled = train.data.labeled.as_ref().expect("labeled data");
        assert_eq!((labeled.classes, labeled.channels), (10, 3));
        let g = &train.graph;
        let target = g.find("target").unwrap();
        assert_eq!(g.shape(target).dims(), [32]);
        assert_eq!(g.shape(g.find("input").unwrap()).dims(), [32, 3, 32, 32]);
        let step = &train.steps[0];
        assert_eq!(step.optimizer, ir::Optimizer::Sgd { lr: 0.01, momentum: 0.9 });
        assert_eq!(g.node(step.loss).op, Op::CrossEntropy);
        assert_eq!(step.terms[0].name, "xent");
    }
}

mod text {
    use super::*;

    fn generator_count(text: &str) -> usize {
        match compile_source("pix2pix.net", text, &[]) {
            Ok(m) => m.trainable_count("generator"),
            Err(d) => panic!("{}", d.render_plain()),
        }
    }

    #[test]
    fn crlf_tabs_and_bom_accepted() {
        let text = std::fs::read_to_string("models/pix2pix.net").unwrap();
        let crlf = text.replace('\n', "\r\n");
        let tabs = text.replace("    ", "\t");
        let bom = format!("\u{feff}{text}");
        let all = format!("\u{feff}{}", tabs.replace('\n', "\r\n"));
        for variant in [&crlf, &tabs, &bom, &all] {
            assert_eq!(generator_count(variant), 54_413_955);
        }
    }

    #[test]
    fn crlf_error_points_at_right_line() {
        let text = "net small(x: [3, 8, 8]) {\r\n\ta = x -> conv2(4, kernel=1)\r\n}\r\n";
        let diags = compile_errors("crlf.net", text, &[]);
        let span = diags.errors[0].span.unwrap();
        assert_eq!(&text[span.start..span.end], "conv2");
        insta::assert_snapshot!(diags.render_plain());
    }

    #[test]
    fn empty_file_declares_no_network() {
        for (name, text) in [("empty.net", ""), ("bom.net", "\u{feff}# only a comment\r\n")] {
            let diags = compile_errors(name, text, &[]);
            assert_eq!(diags.kinds(), [ErrorKind::Missing], "{name}");
            assert_eq!(diags.errors[0].message, format!("{name} declares no network"));
            let help = diags.errors[0].help.as_deref().unwrap_or_default();
            assert!(help.contains(netc::frontend::MINIMAL_MODEL), "{name}: {help}");
        }
    }

    #[test]
    fn minimal_model_in_help_compiles() {
        let m = compile_source("tiny.net", netc::frontend::MINIMAL_MODEL, &[]).unwrap();
        assert_eq!(m.nets.len(), 1);
    }

    #[test]
    fn chain_in_argument_gets_help() {
        let text = "net g(x: [3, 8, 8]) {\n    y = concat(x, x -> relu)\n}\n";
        let diags = compile_errors("chain.net", text, &[]);
        assert_eq!(diags.kinds(), [ErrorKind::Syntax]);
        let rendered = diags.render_plain();
        assert!(rendered.contains("chain.net:2:21"), "{rendered}");
        let help = diags.errors[0].help.as_deref().unwrap_or_default();
        assert!(help.contains("name the chain as a layer of its own"), "{help}");
    }

    #[test]
    fn missing_file_is_diagnostic() {
        let diags = compile_file(Path::new("tests/net/no_such_file.net"), &[]).unwrap_err();
        assert_eq!(diags.kinds(), [ErrorKind::Io]);
        assert!(diags.errors[0].message.contains("no_such_file.net"));
    }
}

/// One test per kind of mistake: the file's rendered diagnostics are a snapshot, and the
/// test also checks the error kinds so that a wrong snapshot cannot pass review unseen.
mod errors {
    use super::*;

    fn check(name: &str, overrides: &[&str], kinds: &[ErrorKind]) -> String {
        let path = format!("tests/net/errors/{name}.net");
        let text = std::fs::read_to_string(&path).unwrap();
        let diags = compile_errors(&path, &text, overrides);
        assert_eq!(diags.kinds(), kinds, "{}", diags.render_plain());
        let rendered = diags.render_plain();
        insta::assert_snapshot!(name, rendered);
        rendered
    }

    use ErrorKind::*;

    #[test]
    fn syntax_error_names_expected_token() {
        let out = check("syntax_error", &[], &[Syntax]);
        assert!(out.contains("syntax_error.net:3:20"), "{out}");
        assert!(out.contains("unclosed `(`"), "{out}");
    }

    #[test]
    fn unknown_op_suggests_nearest() {
        assert!(check("unknown_op", &[], &[Unknown]).contains("did you mean `conv2d`?"));
    }

    #[test]
    fn unknown_key_suggests_kernel() {
        assert!(check("unknown_key", &[], &[Unknown]).contains("did you mean `kernel`?"));
    }

    #[test]
    fn undefined_param_suggests_width() {
        assert!(check("undefined_param", &[], &[Undefined]).contains("did you mean `width`?"));
    }

    #[test]
    fn unknown_setting_suggests_epochs() {
        assert!(check("unknown_setting", &[], &[Unknown]).contains("did you mean `epochs`?"));
    }

    #[test]
    fn duplicate_layer_from_range() {
        check("duplicate_layer", &[], &[Duplicate]);
    }

    #[test]
    fn duplicate_param_and_builtin_name() {
        check("duplicate_param", &[], &[Duplicate, Duplicate]);
    }

    #[test]
    fn undefined_layer_suggests_nearest() {
        assert!(check("undefined_layer", &[], &[Undefined]).contains("did you mean"));
    }

    #[test]
    fn cycle_lists_every_layer() {
        let out = check("cycle", &[], &[Cycle]);
        assert!(out.contains("`a` -> `c` -> `b` -> `a`"), "{out}");
    }

    #[test]
    fn recursive_net_is_cycle() {
        check("recursive_net", &[], &[Cycle]);
    }

    #[test]
    fn skip_to_missing_layer() {
        check("skip_missing_layer", &[], &[Undefined]);
    }

    #[test]
    fn wrong_argument_types() {
        check("wrong_type", &[], &[Type, Type, Type]);
    }

    #[test]
    fn integer_literal_too_large() {
        check("number_too_large", &[], &[Range]);
    }

    #[test]
    fn values_out_of_range() {
        check("out_of_range", &[], &[Range, Range, Range, Range]);
    }

    #[test]
    fn shape_mismatch_names_both_shapes() {
        let out = check("shape_mismatch", &[], &[Shape, Shape]);
        assert!(out.contains("[1, 8, 30, 30]"), "{out}");
        assert!(out.contains("[1, 8, 32, 32]"), "{out}");
    }

    #[test]
    fn unet_size_error_lists_legal_sizes() {
        let out = check("unet_illegal_size", &[], &[Shape]);
        assert!(out.contains("multiples of 8"), "{out}");
        let m = compile_source(
            "unet.net",
            &std::fs::read_to_string("tests/net/errors/unet_illegal_size.net").unwrap(),
            &["size=104".into()],
        );
        assert!(m.is_ok(), "104 is a multiple of 8");
    }

    #[test]
    fn failed_require_shows_values() {
        assert!(check("require_failed", &[], &[Requirement]).contains("size = 48"));
    }

    #[test]
    fn unused_layer_is_reported() {
        check("unused_layer", &[], &[Unused]);
    }

    #[test]
    fn unused_train_value_is_reported() {
        check("unused_let", &[], &[Unused]);
    }

    #[test]
    fn missing_input_and_argument() {
        check("missing_input", &[], &[Missing, Missing]);
    }

    #[test]
    fn loss_must_be_scalar() {
        check("loss_not_scalar", &[], &[Shape, Undefined]);
    }

    #[test]
    fn train_settings_are_checked() {
        check("bad_train", &[], &[Type, Undefined, Missing, Unknown]);
    }

    #[test]
    fn all_errors_are_collected() {
        let out = check("many_errors", &[], &[Unknown, Unknown, Undefined, Type, Unknown]);
        assert!(out.contains("did you mean `kernel`?"), "{out}");
        assert!(out.contains("did you mean `batch_norm`?"), "{out}");
    }

    #[test]
    fn set_unknown_param_suggests() {
        let text = std::fs::read_to_string("models/pix2pix.net").unwrap();
        let diags = compile_errors("models/pix2pix.net", &text, &["nfg=32"]);
        assert_eq!(diags.kinds(), [Override]);
        let out = diags.render_plain();
        assert!(out.contains("did you mean `ngf`?"), "{out}");
        insta::assert_snapshot!(out);
    }

    #[test]
    fn set_wrong_type_is_rejected() {
        let text = std::fs::read_to_string("models/pix2pix.net").unwrap();
        let diags = compile_errors("models/pix2pix.net", &text, &["ngf=1.5", "size", "ndf=~"]);
        assert_eq!(diags.kinds(), [Override, Override, Override], "{}", diags.render_plain());
        insta::assert_snapshot!(diags.render_plain());
    }

    #[test]
    fn set_invalid_value_names_param() {
        let text = std::fs::read_to_string("models/pix2pix.net").unwrap();
        let diags = compile_errors("models/pix2pix.net", &text, &["ngf=abc", "ndf=size / 4"]);
        assert_eq!(diags.kinds(), [Override, Override], "{}", diags.render_plain());
        let out = diags.render_plain();
        assert!(out.contains("invalid --set `ngf=abc`"), "{out}");
        assert!(out.contains("`abc` is neither a number nor a param declared before `ngf`"));
        assert!(out.contains("`size` is declared after `ndf`"), "{out}");
        assert!(out.contains("models/pix2pix.net:5:13"), "{out}");
        assert!(out.contains("give `ngf` an integer, such as --set ngf=64"), "{out}");
        insta::assert_snapshot!(out);
    }

    #[test]
    fn set_reads_earlier_params() {
        let text = std::fs::read_to_string("models/pix2pix.net").unwrap();
        let m = compile_source("pix2pix.net", &text, &["ndf=ngf / 2".into()]).unwrap();
        assert_eq!(m.trainable_count("discriminator"), patchgan_params(32));
    }

    #[test]
    fn file_without_network() {
        let out = check("no_network", &[], &[Missing]);
        assert!(out.contains("no_network.net declares no network"), "{out}");
        assert!(out.contains("net tiny(x: [3, 32, 32]) {"), "{out}");
    }

    #[test]
    fn paired_side_must_be_left_or_right() {
        let out = check("bad_paired_side", &[], &[Type]);
        assert!(out.contains("invalid value `top` for `input` of paired"), "{out}");
        assert!(out.contains("bad_paired_side.net:6:24"), "{out}");
        assert!(out.contains("expected `left` or `right`"), "{out}");
        assert!(!out.contains("needs `input`"), "a rejected value is not also missing: {out}");
    }

    #[test]
    fn rejected_setting_is_not_missing() {
        let text = std::fs::read_to_string("models/classifier.net").unwrap();
        let text = text.replace("classes=classes", "classes=klasses");
        let diags = compile_errors("classifier.net", &text, &[]);
        assert_eq!(diags.kinds(), [Undefined], "{}", diags.render_plain());
    }

    #[test]
    fn set_non_power_of_two_size() {
        let text = std::fs::read_to_string("models/pix2pix.net").unwrap();
        let diags = compile_errors("models/pix2pix.net", &text, &["size=300"]);
        assert_eq!(diags.kinds(), [Range]);
        insta::assert_snapshot!(diags.render_plain());
    }
}

/// The `netc check` and `netc graph` commands, run as a user runs them.
mod cli {
    use std::process::{Command, Output};

    fn netc(args: &[&str]) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_netc"))
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("the netc binary runs");
        output
    }

    fn stdout(output: &Output) -> String {
        String::from_utf8(output.stdout.clone()).expect("netc writes UTF-8")
    }

    fn stderr(output: &Output) -> String {
        String::from_utf8(output.stderr.clone()).expect("netc writes UTF-8")
    }

    #[test]
    fn check_pix2pix_prints_table() {
        let out = netc(&["check", "models/pix2pix.net"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("trainable parameters: 54,413,955"), "{text}");
        assert!(text.contains("trainable parameters: 2,768,705"), "{text}");
        assert!(text.contains("[1, 1, 30, 30]"), "{text}");
        assert!(text.contains("input x: height and width must be multiples of 256"), "{text}");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn check_set_ngf_changes_count() {
        let out = netc(&["check", "models/pix2pix.net", "--set", "ngf=32"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("trainable parameters: 13,608,259"));
        let out = netc(&["check", "models/pix2pix.net", "--set", "size=128"]);
        let text = stdout(&out);
        assert!(text.contains("input x: height and width must be multiples of 128"), "{text}");
        assert!(text.contains("[1, 1, 14, 14]"), "{text}");
    }

    #[test]
    fn check_classifier_prints_table() {
        let out = netc(&["check", "models/classifier.net"]);
        assert!(out.status.success(), "{}", stderr(&out));
        insta::assert_snapshot!(stdout(&out));
    }

    #[test]
    fn check_bad_file_exits_nonzero() {
        let out = netc(&["check", "tests/net/errors/many_errors.net"]);
        assert!(!out.status.success());
        assert!(stdout(&out).is_empty());
        let text = stderr(&out);
        assert!(text.contains("many_errors.net has 5 errors"), "{text}");
        assert!(text.contains("many_errors.net:4:28"), "{text}");
        assert!(text.contains("did you mean `kernel`?"), "{text}");
        assert!(text.contains("did you mean `batch_norm`?"), "{text}");
    }

    #[test]
    fn check_unknown_set_exits_nonzero() {
        let out = netc(&["check", "models/pix2pix.net", "--set", "nfg=32"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("did you mean `ngf`?"), "{}", stderr(&out));
    }

    #[test]
    fn check_grad_small_pix2pix_agrees() {
        let sizes = ["--set", "ngf=4", "--set", "ndf=4", "--set", "size=64"];
        let out = netc(&[&["check", "models/pix2pix.net", "--grad"][..], &sizes[..]].concat());
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("discriminator.l1.conv.weight"), "{text}");
        assert!(text.contains("generator.d1.conv_transpose.weight"), "{text}");
        assert!(text.contains(" 0 disagree"), "{text}");
    }

    #[test]
    fn graph_dot_has_every_graph() {
        let out = netc(&["graph", "models/pix2pix.net", "--format", "dot"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let dot = stdout(&out);
        assert!(dot.starts_with("digraph \"pix2pix\" {"));
        for cluster in ["cluster_n0", "cluster_n1", "cluster_t", "cluster_t_p0", "cluster_t_p2"] {
            assert!(dot.contains(cluster), "{cluster}");
        }
        assert!(dot.contains("\"generator.e3.conv\\nconv2d\\n[1, 256, 32, 32]\""));
        assert_eq!(dot.matches('{').count(), dot.matches('}').count());
    }

    #[test]
    fn graph_json_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pix2pix.json");
        let path_text = path.to_str().unwrap();
        let out = netc(&["graph", "models/pix2pix.net", "--format", "json", "-o", path_text]);
        assert!(out.status.success(), "{}", stderr(&out));
        let json = std::fs::read_to_string(&path).unwrap();
        let module: netc::ir::Module = serde_json::from_str(&json).expect("the JSON is a Module");
        assert_eq!(module.trainable_count("generator"), 54_413_955);
        assert_eq!(module.train.as_ref().unwrap().steps.len(), 2);
        assert!(netc::ir::verify::verify_module(&module).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn graph_output_folder_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let out = netc(&["graph", "models/pix2pix.net", "-o", dir.path().to_str().unwrap()]);
        assert!(!out.status.success());
        let text = crate::support::report_words(stderr(&out).as_bytes());
        assert!(text.contains("is a folder, but netc graph writes one file"), "{text}");
        assert!(text.contains("pix2pix.dot"), "{text}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is written");
    }

    #[test]
    fn graph_output_never_replaces_model() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.net");
        let text = std::fs::read_to_string("models/classifier.net").unwrap();
        std::fs::write(&model, &text).unwrap();
        let path = model.to_str().unwrap();
        let out = netc(&["graph", path, "-o", path]);
        assert!(!out.status.success());
        let message = crate::support::report_words(stderr(&out).as_bytes());
        assert!(message.contains("is the model file, which the output would replace"));
        assert!(message.contains("choose another path for -o"), "{message}");
        assert_eq!(std::fs::read_to_string(&model).unwrap(), text, "the model is unchanged");
    }

    #[test]
    fn graph_bad_file_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.dot");
        let out = netc(&["graph", "tests/net/errors/cycle.net", "-o", path.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary file is left");
    }
}

/// A proptest fuzz target: random edits of a kept corpus (the shipped models, every error
/// file and the edge cases in `tests/fuzz/corpus/`) and random text must never make the
/// front end panic, and every rendered diagnostic must render.
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Tokens that edits insert: brackets, operators, keywords, odd numbers and text.
    const TOKENS: &[&str] = &[
        "(",
        ")",
        "{",
        "}",
        "[",
        "]",
        "->",
        "..",
        "=",
        ":",
        ",",
        "+",
        "-",
        "*",
        "/",
        "%",
        "^",
        "\r\n",
        "\t",
        "\u{feff}",
        "é",
        "0",
        "1",
        "-1",
        "2.5",
        "1e309",
        "99999999999999999999",
        "x",
        "e{levels}",
        "d{0}",
        "skip",
        "net",
        "block",
        "param",
        "train",
        "step",
        "minimize",
        "conv2d(",
        "relu",
        "concat(",
        "generator(",
        "discriminator(",
        "#",
        "\"",
        "require",
        "defaults",
        "stop_gradient(",
        "input",
        "target",
        "true",
        "not",
        "and",
        "log2(",
    ];

    fn corpus() -> Vec<(String, String)> {
        let mut files = Vec::new();
        for dir in ["models", "tests/net/errors", "tests/fuzz/corpus"] {
            let mut entries: Vec<_> =
                std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
            entries.sort();
            for path in entries {
                let bytes = std::fs::read(&path).unwrap();
                let text = String::from_utf8_lossy(&bytes).into_owned();
                files.push((path.display().to_string(), text));
            }
        }
        files
    }

    #[derive(Clone, Debug)]
    enum Edit {
        Delete { at: usize, len: usize },
        Insert { at: usize, token: usize },
        Duplicate { at: usize, len: usize },
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), 1usize..24).prop_map(|(at, len)| Edit::Delete { at, len }),
            (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Edit::Insert { at, token }),
            (any::<usize>(), 1usize..80).prop_map(|(at, len)| Edit::Duplicate { at, len }),
        ]
    }

    fn apply(text: &str, edits: &[Edit]) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        for e in edits {
            let n = chars.len();
            match *e {
                Edit::Delete { at, len } if n > 0 => {
                    let at = at % n;
                    chars.drain(at..(at + len).min(n));
                }
                Edit::Insert { at, token } => {
                    let at = if n == 0 { 0 } else { at % (n + 1) };
                    chars.splice(at..at, TOKENS[token].chars());
                }
                Edit::Duplicate { at, len } if n > 0 => {
                    let at = at % n;
                    let piece: Vec<char> = chars[at..(at + len).min(n)].to_vec();
                    chars.splice(at..at, piece);
                }
                _ => {}
            }
        }
        chars.into_iter().collect()
    }

    /// Compiles and renders; a panic anywhere fails the property.
    fn exercise(name: &str, text: &str, overrides: &[String]) {
        match compile_source(name, text, overrides) {
            Ok(module) => assert!(ir::verify::verify_module(&module).is_ok()),
            Err(diags) => {
                assert!(!diags.is_empty(), "an error result carries at least one diagnostic");
                for d in &diags.errors {
                    if let Some(span) = d.span {
                        assert!(span.start <= span.end, "{d:?}");
                        assert!(span.end <= text.len(), "{d:?}");
                    }
                }
                let _ = diags.render_plain();
            }
        }
    }

    #[test]
    fn corpus_compiles_without_panic() {
        for (name, text) in corpus() {
            exercise(&name, &text, &[]);
        }
    }

    #[test]
    fn forward_reference_to_long_chain() {
        let text = std::fs::read_to_string("tests/fuzz/corpus/forward_chain.net").unwrap();
        let m = compile_source("forward_chain.net", &text, &[]).unwrap();
        let g = &m.net("chain").unwrap().graph;
        assert_eq!(g.node_count(), 4004, "input, first, 4000 chained relus, mid and out");
    }

    #[test]
    fn deep_input_is_rejected_cleanly() {
        for (file, kind) in [("too_deep", ErrorKind::Range), ("too_long_sum", ErrorKind::Range)] {
            let text = std::fs::read_to_string(format!("tests/fuzz/corpus/{file}.net")).unwrap();
            let diags = compile_errors(file, &text, &[]);
            assert_eq!(diags.kinds(), [kind], "{file}");
        }
        let text = std::fs::read_to_string("tests/fuzz/corpus/block_recursion.net").unwrap();
        assert_eq!(compile_errors("block_recursion", &text, &[]).kinds(), [ErrorKind::Cycle]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn edited_corpus_never_panics(file in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..6)) {
            let corpus = corpus();
            let (name, text) = &corpus[file.index(corpus.len())];
            exercise(name, &apply(text, &edits), &[]);
        }

        #[test]
        fn random_text_never_panics(text in "\\PC{0,200}") {
            exercise("random.net", &text, &[]);
        }

        #[test]
        fn random_token_soup_never_panics(tokens in prop::collection::vec(0..TOKENS.len(), 0..60)) {
            let text: Vec<&str> = tokens.iter().map(|&t| TOKENS[t]).collect();
            exercise("soup.net", &text.join(" "), &[]);
        }

        #[test]
        fn random_overrides_never_panic(name in "[a-z]{1,5}", value in "[-0-9a-z.=~()*+e]{0,12}") {
            let text = std::fs::read_to_string("models/pix2pix.net").unwrap();
            exercise("pix2pix.net", &text, &[format!("{name}={value}"), "ngf=8".into()]);
        }
    }
}

/// IR dumps of the shipped models: one line per node in topological order, so that any
/// change to the lowering shows up as a reviewable snapshot diff.
mod ir_dump {
    use super::*;

    fn dump(graph: &ir::Graph) -> String {
        let mut out = String::new();
        for id in graph.topo_order() {
            let node = graph.node(id);
            let operands: Vec<&str> =
                graph.operands(id).iter().map(|&o| graph.node(o).name.as_str()).collect();
            let line = format!(
                "{} {} {} {} <- [{}]\n",
                node.phase,
                node.name,
                node.op.name(),
                node.shape,
                operands.join(", ")
            );
            out.push_str(&line);
        }
        out
    }

    #[test]
    fn classifier_net_dump() {
        let m = compile_model("models/classifier.net", &[]);
        insta::assert_snapshot!(dump(&m.net("classifier").unwrap().graph));
    }

    #[test]
    fn pix2pix_train_dump() {
        let m = compile_model("models/pix2pix.net", &["ngf=8", "ndf=8", "size=64"]);
        insta::assert_snapshot!(dump(&m.train.as_ref().unwrap().graph));
    }
}
