//! Front-end errors: each one a value with a stable code, a primary span with a label,
//! optional secondary labels and a help line. [`Diagnostics`] collects every error of a
//! file with the source text, and renders through miette once, at the command line.

use crate::ir::Span;
use miette::{LabeledSpan, NamedSource, SourceCode};
use std::fmt;
use std::sync::Arc;

/// The kind of a front-end error; its [`code`](ErrorKind::code) is stable, so tests and
/// tools may match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text does not match the grammar.
    Syntax,
    /// An op, block, network, function, key, setting or parameter that does not exist.
    Unknown,
    /// A name declared twice.
    Duplicate,
    /// A reference to a layer or value that is not defined.
    Undefined,
    /// Layers or networks that depend on themselves.
    Cycle,
    /// A value of the wrong type: a float where an integer belongs, a tensor where a
    /// number belongs.
    Type,
    /// A number outside the range its place allows.
    Range,
    /// A shape rule that failed.
    Shape,
    /// A `require` condition that is false.
    Requirement,
    /// A missing argument, setting or section.
    Missing,
    /// A `--set` override that cannot be applied.
    Override,
    /// A layer whose value no output uses.
    Unused,
    /// The model file cannot be read.
    Io,
}

impl ErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "netc::syntax",
            ErrorKind::Unknown => "netc::unknown",
            ErrorKind::Duplicate => "netc::duplicate",
            ErrorKind::Undefined => "netc::undefined",
            ErrorKind::Cycle => "netc::cycle",
            ErrorKind::Type => "netc::type",
            ErrorKind::Range => "netc::range",
            ErrorKind::Shape => "netc::shape",
            ErrorKind::Requirement => "netc::requirement",
            ErrorKind::Missing => "netc::missing",
            ErrorKind::Override => "netc::override",
            ErrorKind::Unused => "netc::unused",
            ErrorKind::Io => "netc::io",
        }
    }
}

/// One front-end error.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Diagnostic {
    pub kind: ErrorKind,
    pub message: String,
    /// The primary location; `None` for errors outside the file (`--set`, I/O).
    pub span: Option<Span>,
    pub label: String,
    pub notes: Vec<(Span, String)>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(kind: ErrorKind, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            kind,
            message: message.into(),
            span: Some(span),
            label: String::from("here"),
            notes: Vec::new(),
            help: None,
        }
    }

    /// Creates an error that no span of the file can show, such as a bad `--set`.
    pub fn without_span(kind: ErrorKind, message: impl Into<String>) -> Self {
        Diagnostic {
            kind,
            message: message.into(),
            span: None,
            label: String::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn with_note(mut self, span: Span, text: impl Into<String>) -> Self {
        self.notes.push((span, text.into()));
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a help line, or extends the existing one with a new sentence.
    pub fn add_help(mut self, help: impl Into<String>) -> Self {
        let help = help.into();
        self.help = Some(match self.help.take() {
            Some(old) => format!("{old}\n{help}"),
            None => help,
        });
        self
    }
}

impl miette::Diagnostic for Diagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        let primary = LabeledSpan::new_primary_with_span(Some(self.label.clone()), to_miette(span));
        let notes = self
            .notes
            .iter()
            .map(|(span, text)| LabeledSpan::new_with_span(Some(text.clone()), to_miette(*span)));
        Some(Box::new(std::iter::once(primary).chain(notes)))
    }
}

fn to_miette(span: Span) -> miette::SourceSpan {
    (span.start, span.end.saturating_sub(span.start)).into()
}

/// Every error found in one `.net` file, with the file's text for rendering.
#[derive(Debug, thiserror::Error)]
pub struct Diagnostics {
    text: NamedSource<Arc<str>>,
    pub errors: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file_name: &str, text: &str, errors: Vec<Diagnostic>) -> Self {
        let source = NamedSource::new(file_name, Arc::from(text)).with_language("netc");
        Diagnostics { text: source, errors }
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn kinds(&self) -> Vec<ErrorKind> {
        self.errors.iter().map(|e| e.kind).collect()
    }

    /// Renders every error as miette's graphical report without colours, as the snapshot
    /// tests compare it.
    pub fn render_plain(&self) -> String {
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
                .with_width(100);
        let mut out = String::new();
        for error in &self.errors {
            let report = SourcedError { error, text: &self.text };
            // NOTE: writing into a String cannot fail, so the fmt::Result is dropped.
            let _ = handler.render_report(&mut out, &report);
        }
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.len() {
            1 => write!(f, "{} has 1 error", self.text.name()),
            n => write!(f, "{} has {n} errors", self.text.name()),
        }
    }
}

impl miette::Diagnostic for Diagnostics {
    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.text)
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        Some(Box::new(self.errors.iter().map(|e| e as &dyn miette::Diagnostic)))
    }
}

/// One error paired with the file text, so it renders on its own.
#[derive(Debug, thiserror::Error)]
#[error("{}", error.message)]
struct SourcedError<'a> {
    error: &'a Diagnostic,
    text: &'a NamedSource<Arc<str>>,
}

impl miette::Diagnostic for SourcedError<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.error.code()
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        miette::Diagnostic::help(self.error)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.error.labels()
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.error.span.map(|_| self.text as &dyn SourceCode)
    }
}
