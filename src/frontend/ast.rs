//! The syntax tree of a `.net` file, as the parser builds it. Every node keeps the byte
//! span it came from, so that later passes can point their diagnostics at the source.

use crate::ir::Span;

/// An identifier with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
            BinaryOp::Pow => "^",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }
}

/// A reference to a value or layer: `e3`, or `e{levels - 1}` with a computed index.
#[derive(Clone, Debug, PartialEq)]
pub struct Name {
    pub ident: Ident,
    pub index: Option<Box<Expr>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Positional(Expr),
    Keyword(Ident, Expr),
}

/// `conv2d(ngf * 2, kernel=4)`: an op, block, network or function applied to arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub callee: Ident,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Name(Name),
    Call(Call),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

/// `a -> f(b) -> g`: each stage after the first receives the previous value as its first
/// operand.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub stages: Vec<Expr>,
    pub span: Span,
}

/// The left side of a layer statement or one end of a skip edge: `e3`, or a range
/// `e4..e{levels}` that names one layer per index.
#[derive(Clone, Debug, PartialEq)]
pub struct Names {
    pub first: Name,
    pub last: Option<Name>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Require {
    pub condition: Expr,
    pub message: Option<String>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockDecl {
    pub name: Ident,
    pub params: Vec<Ident>,
    pub body: Chain,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetArg {
    pub name: Ident,
    /// The argument's shape without the batch axis.
    pub dims: Vec<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SkipEdge {
    pub from: Names,
    pub to: Names,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NetStmt {
    Layer { names: Names, chain: Chain, span: Span },
    Skip(Vec<SkipEdge>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetDecl {
    pub name: Ident,
    pub args: Vec<NetArg>,
    pub stmts: Vec<NetStmt>,
    pub span: Span,
}

/// One named or unnamed term of a step's loss.
#[derive(Clone, Debug, PartialEq)]
pub struct LossTerm {
    pub name: Option<Ident>,
    pub expr: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StepDecl {
    /// The network whose trainable parameters the step updates.
    pub net: Ident,
    pub optimizer: Call,
    pub terms: Vec<LossTerm>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TrainItem {
    /// `key: value`, such as `data: paired(...)` or `epochs: 200`.
    Setting {
        key: Ident,
        value: Expr,
        span: Span,
    },
    /// `fake = generator(input)`: a value computed once per iteration.
    Let {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Step(StepDecl),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainDecl {
    pub items: Vec<TrainItem>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Param(ParamDecl),
    Require(Require),
    Defaults(Vec<Call>),
    Block(BlockDecl),
    Net(NetDecl),
    Train(TrainDecl),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}
