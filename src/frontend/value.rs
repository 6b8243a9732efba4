//! The values that expressions evaluate to, and arithmetic on numbers. Integer arithmetic
//! is checked: an overflow is a diagnostic, never a wrapped value.

use super::ast::{BinaryOp, UnaryOp};
use super::diagnostics::{Diagnostic, ErrorKind};
use crate::ir::{Init, NodeId, Span};

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Tensor(NodeId),
    Init(Init),
    /// The result of an expression that already reported an error. Every use of it
    /// yields `Poison` again without a second report.
    Poison,
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Str(_) => "a string",
            Value::Tensor(_) => "a tensor",
            Value::Init(_) => "an initializer",
            Value::Poison => "an invalid value",
        }
    }

    /// Renders the value briefly for messages: `64`, `0.5`, `true`, `tensor`.
    pub fn describe(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format_float(*f),
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => format!("\"{s}\""),
            Value::Tensor(_) => "a tensor".into(),
            Value::Init(_) => "an initializer".into(),
            Value::Poison => "an invalid value".into(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Value::from(*f),
            Value::Bool(b) => serde_json::Value::from(*b),
            Value::Str(s) => serde_json::Value::from(s.clone()),
            _ => serde_json::Value::Null,
        }
    }
}

/// Formats a float for messages: `2.0`, `0.5`, and `1e39` or `1e-8` for extreme sizes.
pub fn format_float(f: f64) -> String {
    let magnitude = f.abs();
    if magnitude >= 1e15 || (magnitude < 1e-4 && magnitude > 0.0) {
        format!("{f:e}")
    } else if f.fract() == 0.0 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// Applies a unary operator to a number or boolean.
pub fn unary(op: UnaryOp, value: &Value, span: Span) -> Result<Value, Diagnostic> {
    match (op, value) {
        (UnaryOp::Neg, Value::Int(i)) => {
            i.checked_neg().map(Value::Int).ok_or_else(|| overflow(span, "-", *i, 0))
        }
        (UnaryOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
        (UnaryOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
        (UnaryOp::Neg, v) => Err(type_error(span, "`-` needs a number", v)),
        (UnaryOp::Not, v) => Err(type_error(span, "`not` needs a boolean", v)),
    }
}

/// Applies a binary operator to two numbers or booleans. Integers stay integers except
/// under `/` when the division is not exact, which gives a float.
pub fn binary(op: BinaryOp, a: &Value, b: &Value, span: Span) -> Result<Value, Diagnostic> {
    use BinaryOp::*;
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => int_binary(op, *x, *y, span),
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            let (x, y) = (as_f64(a), as_f64(b));
            float_binary(op, x, y, span)
        }
        (Value::Bool(x), Value::Bool(y)) => match op {
            And => Ok(Value::Bool(*x && *y)),
            Or => Ok(Value::Bool(*x || *y)),
            Eq => Ok(Value::Bool(x == y)),
            Ne => Ok(Value::Bool(x != y)),
            _ => Err(Diagnostic::new(
                ErrorKind::Type,
                span,
                format!("`{}` needs numbers, got two booleans", op.symbol()),
            )),
        },
        _ => Err(Diagnostic::new(
            ErrorKind::Type,
            span,
            format!("`{}` cannot combine {} and {}", op.symbol(), a.type_name(), b.type_name()),
        )),
    }
}

fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        _ => unreachable!("as_f64 is only called on numbers"),
    }
}

fn int_binary(op: BinaryOp, x: i64, y: i64, span: Span) -> Result<Value, Diagnostic> {
    use BinaryOp::*;
    let checked = match op {
        Add => x.checked_add(y),
        Sub => x.checked_sub(y),
        Mul => x.checked_mul(y),
        Div => {
            if y == 0 {
                return Err(Diagnostic::new(ErrorKind::Range, span, "division by zero"));
            }
            if x % y != 0 {
                return Ok(Value::Float(x as f64 / y as f64));
            }
            x.checked_div(y)
        }
        Rem => {
            if y == 0 {
                return Err(Diagnostic::new(
                    ErrorKind::Range,
                    span,
                    "remainder of a division by zero",
                ));
            }
            x.checked_rem(y)
        }
        Pow => {
            if y < 0 {
                return Ok(Value::Float((x as f64).powf(y as f64)));
            }
            u32::try_from(y).ok().and_then(|e| x.checked_pow(e))
        }
        Lt => return Ok(Value::Bool(x < y)),
        Le => return Ok(Value::Bool(x <= y)),
        Gt => return Ok(Value::Bool(x > y)),
        Ge => return Ok(Value::Bool(x >= y)),
        Eq => return Ok(Value::Bool(x == y)),
        Ne => return Ok(Value::Bool(x != y)),
        And | Or => {
            return Err(Diagnostic::new(
                ErrorKind::Type,
                span,
                format!("`{}` needs booleans, got two integers", op.symbol()),
            ))
        }
    };
    checked.map(Value::Int).ok_or_else(|| overflow(span, op.symbol(), x, y))
}

fn float_binary(op: BinaryOp, x: f64, y: f64, span: Span) -> Result<Value, Diagnostic> {
    use BinaryOp::*;
    let result = match op {
        Add => x + y,
        Sub => x - y,
        Mul => x * y,
        Div => {
            if y == 0.0 {
                return Err(Diagnostic::new(ErrorKind::Range, span, "division by zero"));
            }
            x / y
        }
        Rem => {
            if y == 0.0 {
                return Err(Diagnostic::new(
                    ErrorKind::Range,
                    span,
                    "remainder of a division by zero",
                ));
            }
            x % y
        }
        Pow => x.powf(y),
        Lt => return Ok(Value::Bool(x < y)),
        Le => return Ok(Value::Bool(x <= y)),
        Gt => return Ok(Value::Bool(x > y)),
        Ge => return Ok(Value::Bool(x >= y)),
        Eq => return Ok(Value::Bool(x == y)),
        Ne => return Ok(Value::Bool(x != y)),
        And | Or => {
            return Err(Diagnostic::new(
                ErrorKind::Type,
                span,
                format!("`{}` needs booleans, got numbers", op.symbol()),
            ))
        }
    };
    if result.is_finite() {
        Ok(Value::Float(result))
    } else {
        Err(Diagnostic::new(
            ErrorKind::Range,
            span,
            format!(
                "`{} {} {}` has no finite value",
                format_float(x),
                op.symbol(),
                format_float(y)
            ),
        ))
    }
}

fn overflow(span: Span, op: &str, x: i64, y: i64) -> Diagnostic {
    Diagnostic::new(ErrorKind::Range, span, format!("integer overflow in `{x} {op} {y}`"))
        .with_label("the result does not fit in a 64-bit integer")
}

pub fn type_error(span: Span, expected: &str, got: &Value) -> Diagnostic {
    Diagnostic::new(ErrorKind::Type, span, format!("{expected}, got {}", got.describe()))
        .with_label(format!("this is {}", got.type_name()))
}
