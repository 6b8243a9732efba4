//! A compiled `.net` file: parameters, networks and the training program.

use super::{Graph, NodeId, Shape, Span};
use serde::{Deserialize, Serialize};

/// Index into [`Module::params`].
pub type ParamId = usize;

/// How a parameter's initial value is drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Init {
    Normal { mean: f32, std: f32 },
    Uniform { low: f32, high: f32 },
    Constant { value: f32 },
}

/// Whether the optimizer updates a parameter, or it is a buffer the forward pass maintains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    Trainable,
    /// Batch-norm running statistics: updated by the forward pass in training mode.
    Buffer,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParamDecl {
    /// Stable dotted name (`generator.e3.conv.weight`); checkpoints are keyed by it.
    pub name: String,
    pub shape: Shape,
    pub init: Init,
    pub kind: ParamKind,
    /// The network that owns the parameter.
    pub net: String,
    pub span: Option<Span>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetInput {
    pub name: String,
    /// Shape including the batch axis.
    pub shape: Shape,
}

/// One `net` of the file, as a standalone forward graph whose `Input` nodes are the
/// network's arguments and whose single output is named `output`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Net {
    pub name: String,
    pub inputs: Vec<NetInput>,
    pub graph: Graph,
    /// The parameters the network owns, trainable ones and buffers.
    pub params: Vec<ParamId>,
    pub span: Option<Span>,
}

/// Which half of a side-by-side paired image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Half {
    Left,
    Right,
}

/// How the training data binds to the graph's `input` and `target`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub input: Half,
    pub target: Half,
    /// Resize both halves to this square size before cropping.
    pub resize: Option<usize>,
    /// Random square crop of this size (the network's input size).
    pub crop: Option<usize>,
    /// Random horizontal flip, the same for both halves.
    pub flip: bool,
    pub batch: usize,
    /// Set for a classification data set: each image is one example, the data folder
    /// holds one subfolder per class (sorted by name, class `k` is the `k`-th), `input` is
    /// `[N, channels, size, size]` and `target` holds the `N` class indices as f32. The
    /// `input` and `target` halves above are unused then. `None` for paired images.
    #[serde(default)]
    pub labeled: Option<LabeledData>,
}

/// The classes and image format of a labeled data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabeledData {
    pub classes: usize,
    /// 1 for grayscale, 3 for RGB.
    pub channels: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    Adam { lr: f32, beta1: f32, beta2: f32, eps: f32 },
    Sgd { lr: f32, momentum: f32 },
}

impl Optimizer {
    pub fn lr(&self) -> f32 {
        match self {
            Optimizer::Adam { lr, .. } | Optimizer::Sgd { lr, .. } => *lr,
        }
    }
}

/// Learning-rate schedule, counted in epochs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// `constant` epochs at the base rate, then a linear decay to zero over `decay` epochs.
    LinearDecay {
        constant: usize,
        decay: usize,
    },
}

/// A named term of a step's loss, logged as a column of `losses.csv`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LossTerm {
    pub name: String,
    pub node: NodeId,
}

/// One optimizer step of an iteration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepSpec {
    /// The step's name, which is the network whose parameters it updates.
    pub name: String,
    /// The phase of [`TrainSpec::graph`] that this step's nodes carry (1-based).
    pub phase: u32,
    /// The scalar node the step minimizes.
    pub loss: NodeId,
    pub terms: Vec<LossTerm>,
    /// The trainable parameters this step updates; every other parameter is frozen here.
    pub params: Vec<ParamId>,
    pub optimizer: Optimizer,
    pub span: Option<Span>,
}

/// The `train` section: one iteration as a flat graph with phases, plus its settings.
///
/// Phase 0 holds the shared values (`fake = generator(input)`), computed once per
/// iteration; phase `k` holds step `k`'s loss. The graph's `Input` nodes are `input` and
/// `target`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSpec {
    pub data: DataSpec,
    pub graph: Graph,
    pub steps: Vec<StepSpec>,
    pub schedule: Schedule,
    /// Default run length when neither `--epochs` nor `--steps` is given.
    pub epochs: usize,
    /// The network whose output `--infer` writes, and that the image grids show.
    pub generator: String,
    pub span: Option<Span>,
}

/// Everything the front end produces from one `.net` file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Module {
    /// The file name, for messages and the default run folder.
    pub name: String,
    pub params: Vec<ParamDecl>,
    pub nets: Vec<Net>,
    pub train: Option<TrainSpec>,
    /// The resolved values of the file's `param` declarations after `--set`.
    pub settings: Vec<(String, serde_json::Value)>,
}

impl Module {
    pub fn net(&self, name: &str) -> Option<&Net> {
        self.nets.iter().find(|n| n.name == name)
    }

    /// Number of trainable scalars a network owns.
    pub fn trainable_count(&self, net: &str) -> usize {
        self.params
            .iter()
            .filter(|p| p.net == net && p.kind == ParamKind::Trainable)
            .map(|p| p.shape.numel())
            .sum()
    }

    pub fn param_id(&self, name: &str) -> Option<ParamId> {
        self.params.iter().position(|p| p.name == name)
    }
}
