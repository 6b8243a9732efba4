//! Inference: run a module's generator on image files and write a PNG per input.
//!
//! Needs: a module with a network whose single input is an image batch `[N, C, H, W]`
//! with C of 1 or 3, and whose output has 1 or 3 channels. Guarantees: the network runs
//! in the [`Mode`] the caller picks, [`Mode::Infer`] (batch statistics, dropout keyed by a
//! fixed seed and step) or [`Mode::Eval`] (running statistics, no dropout). In both modes
//! the same weights on the same adapter give the same output bits. Inputs are batched N
//! at a time, and the last batch is padded with zeros.

mod images;

pub use images::{load_input, save_png};

use crate::codegen::wgsl::RunValues;
use crate::codegen::{lower_graph, Mode};
use crate::ir::{Half, Module, Net};
use crate::runtime::{Gpu, ParamStore, Program, RuntimeError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum InferError {
    #[error("failed to read image {path}: {message}")]
    #[diagnostic(help("pass a JPEG or PNG file"))]
    ImageRead { path: PathBuf, message: String },
    #[error("failed to write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("the generator's {what} has {channels} channels; images need 1 (gray) or 3 (RGB)")]
    Channels { channels: usize, what: &'static str },
    #[error("the model has no network named {name}; its networks are: {available}")]
    NoGenerator { name: String, available: String },
    #[error("network {net} takes {count} inputs; --infer needs a network with one image input")]
    Inputs { net: String, count: usize },
    #[error("network {net}'s {what} has shape {shape}; --infer needs an image, [N, C, H, W]")]
    #[diagnostic(help(
        "--infer runs networks that map an image to an image; time a classifier's training \
         step with `netc bench` without --infer"
    ))]
    ImageShape { net: String, what: String, shape: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<crate::codegen::CodegenError> for InferError {
    fn from(error: crate::codegen::CodegenError) -> Self {
        InferError::Runtime(error.into())
    }
}

/// Returns the network `--infer` runs: the train section's generator, else a network
/// named `generator`, else the module's only network.
pub fn generator(module: &Module) -> Result<&Net, InferError> {
    let name = match &module.train {
        Some(train) => train.generator.clone(),
        None if module.nets.len() == 1 => module.nets[0].name.clone(),
        None => "generator".to_string(),
    };
    module.net(&name).ok_or_else(|| InferError::NoGenerator {
        name,
        available: module.nets.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
    })
}

/// Picks the output file for each input: `<stem>.png` in `out_dir`, with `-2`, `-3`, ...
/// added where two inputs share a stem.
pub fn output_paths(images: &[PathBuf], out_dir: &Path) -> Vec<PathBuf> {
    let mut used = HashSet::new();
    images
        .iter()
        .map(|image| {
            let stem =
                image.file_stem().map_or("output".into(), |s| s.to_string_lossy().into_owned());
            let mut name = format!("{stem}.png");
            let mut copy = 1;
            while !used.insert(name.clone()) {
                copy += 1;
                name = format!("{stem}-{copy}.png");
            }
            out_dir.join(name)
        })
        .collect()
}

/// The generator compiled for inference.
pub struct Generator {
    program: Program,
    mode: Mode,
    input: String,
    /// `[N, C, H, W]` of the input and of the output.
    input_dims: [usize; 4],
    output_dims: [usize; 4],
    /// The half of a paired image that is the generator's input.
    half: Option<Half>,
}

/// Returns `dims` as `[N, C, H, W]`, or an error naming `part` (the input or the output).
fn image_dims(net: &Net, part: &str, dims: &[usize]) -> Result<[usize; 4], InferError> {
    match dims {
        &[n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(InferError::ImageShape {
            net: net.name.clone(),
            what: part.to_string(),
            shape: format!("{dims:?}"),
        }),
    }
}

impl Generator {
    /// Compiles the module's generator against `params`, with batch norm and dropout set
    /// by `mode`.
    pub fn compile(
        gpu: &Gpu,
        module: &Module,
        params: &ParamStore,
        mode: Mode,
    ) -> Result<Generator, InferError> {
        let net = generator(module)?;
        let [input] = net.inputs.as_slice() else {
            return Err(InferError::Inputs { net: net.name.clone(), count: net.inputs.len() });
        };
        let input_dims = image_dims(net, &format!("input {}", input.name), input.shape.dims())?;
        let output = net.graph.output("output").ok_or_else(|| InferError::NoGenerator {
            name: format!("{}.output", net.name),
            available: net
                .graph
                .outputs
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let output_dims = image_dims(net, "output", net.graph.shape(output).dims())?;
        for (channels, what) in [(input_dims[1], "input"), (output_dims[1], "output")] {
            if channels != 1 && channels != 3 {
                return Err(InferError::Channels { channels, what });
            }
        }
        let kernels = lower_graph(&net.graph, &gpu.target(), mode)?;
        let outputs = vec![("output".to_string(), output)];
        let program = Program::compile(gpu, &net.graph, mode, &kernels, params, &outputs)?;
        let half = module.train.as_ref().map(|t| t.data.input);
        Ok(Generator { program, mode, input: input.name.clone(), input_dims, output_dims, half })
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Runs the generator on `images` and writes one PNG per image to `out_dir`.
    pub fn run_files(
        &self,
        gpu: &Gpu,
        images: &[PathBuf],
        out_dir: &Path,
    ) -> Result<Vec<PathBuf>, InferError> {
        std::fs::create_dir_all(out_dir).map_err(|e| InferError::Write {
            path: out_dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let [batch, channels, height, width] = self.input_dims;
        let [_, out_channels, out_height, out_width] = self.output_dims;
        let paths = output_paths(images, out_dir);
        let in_size = channels * height * width;
        let out_size = out_channels * out_height * out_width;

        // NOTE: with batch statistics the zero padding of a short last batch shifts the
        // mean and variance that its real images are normalized with.
        if self.mode.uses_batch_statistics() && batch > 1 && images.len() % batch != 0 {
            tracing::warn!(
                images = images.len(),
                batch,
                "the last batch is padded with zeros, which changes its batch statistics; \
                 pass a multiple of the batch size or use --running-stats"
            );
        }
        for (files, outputs) in images.chunks(batch).zip(paths.chunks(batch)) {
            let mut values = vec![0.0; batch * in_size];
            for (slot, file) in files.iter().enumerate() {
                let image = load_input(file, self.half, channels, height, width)?;
                values[slot * in_size..(slot + 1) * in_size].copy_from_slice(&image);
            }
            self.program.write_input(gpu, &self.input, &values)?;
            let started = std::time::Instant::now();
            let result = self.program.run(gpu, &RunValues::default(), &["output"])?.remove(0);
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(images = files.len(), seconds, "generator forward pass");
            for (slot, path) in outputs.iter().enumerate() {
                let image = &result[slot * out_size..(slot + 1) * out_size];
                save_png(path, image, out_channels, out_height, out_width)?;
                tracing::info!(input = %files[slot].display(), output = %path.display(), "wrote image");
            }
        }
        Ok(paths)
    }
}
