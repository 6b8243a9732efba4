//! Parsing: `.net` text to the syntax tree of [`super::ast`], with the pest grammar in
//! `grammar/net.pest`. A syntax error stops the parse, because pest does not recover, so a
//! file with a syntax error reports that one error.

use super::ast::*;
use super::diagnostics::{Diagnostic, ErrorKind};
use crate::ir::Span;
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op as PrattOp, PrattParser};
use pest::Parser;
use std::sync::LazyLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/net.pest"]
struct NetParser;

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(PrattOp::infix(Rule::or, Assoc::Left))
        .op(PrattOp::infix(Rule::and, Assoc::Left))
        .op(PrattOp::prefix(Rule::not))
        .op(PrattOp::infix(Rule::eq, Assoc::Left)
            | PrattOp::infix(Rule::ne, Assoc::Left)
            | PrattOp::infix(Rule::lt, Assoc::Left)
            | PrattOp::infix(Rule::le, Assoc::Left)
            | PrattOp::infix(Rule::gt, Assoc::Left)
            | PrattOp::infix(Rule::ge, Assoc::Left))
        .op(PrattOp::infix(Rule::add, Assoc::Left) | PrattOp::infix(Rule::sub, Assoc::Left))
        .op(PrattOp::infix(Rule::mul, Assoc::Left)
            | PrattOp::infix(Rule::div, Assoc::Left)
            | PrattOp::infix(Rule::rem, Assoc::Left))
        .op(PrattOp::prefix(Rule::neg))
        .op(PrattOp::infix(Rule::pow, Assoc::Right))
});

/// The deepest nesting of brackets a file may have. The parser and the passes after it
/// recurse once per level, so the limit keeps deep input from overflowing the stack.
const MAX_NESTING: usize = 64;

/// The maximum number of operands and operators in one expression, for the same reason:
/// the tree of `1 + 1 + ...` is as deep as it is long.
const MAX_EXPR_PARTS: usize = 2_000;

/// The largest file the parser accepts.
const MAX_FILE_BYTES: usize = 4 << 20;

/// Parses a whole file.
pub fn parse_file(text: &str) -> Result<File, Diagnostic> {
    check_limits(text)?;
    let mut pairs = NetParser::parse(Rule::file, text).map_err(|e| syntax_error(e, text))?;
    let file = pairs.next().expect("the file rule always yields one pair");
    let mut items = Vec::new();
    for pair in file.into_inner() {
        if pair.as_rule() == Rule::EOI {
            break;
        }
        items.push(item(pair)?);
    }
    Ok(File { items })
}

/// Parses an expression alone, as `--set name=value` values are.
pub fn parse_expr(text: &str) -> Result<Expr, Diagnostic> {
    check_limits(text)?;
    let mut pairs = NetParser::parse(Rule::expr, text).map_err(|e| syntax_error(e, text))?;
    let pair = pairs.next().expect("the expr rule always yields one pair");
    if pair.as_str().len() != text.trim_end().len() {
        let at = pair.as_str().len();
        return Err(Diagnostic::new(
            ErrorKind::Syntax,
            Span::new(at, text.len()),
            format!("unexpected `{}` after the value", &text[at..].trim()),
        ));
    }
    expr(pair)
}

/// Rejects a file too large or too deeply nested to parse safely. Brackets inside
/// comments and strings do not count.
fn check_limits(text: &str) -> Result<(), Diagnostic> {
    if text.len() > MAX_FILE_BYTES {
        let message =
            format!("the file has {} bytes, more than the limit of {MAX_FILE_BYTES}", text.len());
        return Err(Diagnostic::new(ErrorKind::Range, Span::new(0, 0), message));
    }
    let mut open: Vec<(usize, char)> = Vec::new();
    let mut in_comment = false;
    let mut in_string = false;
    for (at, c) in text.char_indices() {
        match c {
            '\n' => {
                in_comment = false;
                in_string = false;
            }
            _ if in_comment => {}
            '"' => in_string = !in_string,
            _ if in_string => {}
            '#' => in_comment = true,
            '(' | '[' | '{' => {
                open.push((at, c));
                if open.len() > MAX_NESTING {
                    let span = Span::new(at, at + 1);
                    let message =
                        format!("brackets are nested more than {MAX_NESTING} levels deep");
                    return Err(Diagnostic::new(ErrorKind::Range, span, message)
                        .with_label("too deep")
                        .with_help("split the expression into params or layers"));
                }
            }
            ')' | ']' | '}' => match open.pop() {
                Some((_, o)) if closing(o) == c => {}
                Some((start, o)) => return Err(unclosed(start, o, Some((at, c)))),
                None => {
                    let message = format!("unmatched `{c}`");
                    let d = Diagnostic::new(ErrorKind::Syntax, Span::new(at, at + 1), message)
                        .with_label("no bracket opens this one");
                    return Err(d);
                }
            },
            _ => {}
        }
    }
    if let Some((start, o)) = open.pop() {
        return Err(unclosed(start, o, None));
    }
    Ok(())
}

fn closing(open: char) -> char {
    match open {
        '(' => ')',
        '[' => ']',
        _ => '}',
    }
}

fn unclosed(start: usize, open: char, found: Option<(usize, char)>) -> Diagnostic {
    let close = closing(open);
    let d = Diagnostic::new(
        ErrorKind::Syntax,
        Span::new(start, start + 1),
        format!("unclosed `{open}`"),
    )
    .with_label(format!("this `{open}` has no matching `{close}`"));
    match found {
        Some((at, c)) => d
            .with_note(Span::new(at, at + 1), format!("`{c}` found here first"))
            .with_help(format!("add `{close}` where the bracket should end")),
        None => d.with_help(format!("add `{close}` before the end of the file")),
    }
}

fn span_of(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    Span::new(s.start(), s.end())
}

fn item(pair: Pair<Rule>) -> Result<Item, Diagnostic> {
    let span = span_of(&pair);
    Ok(match pair.as_rule() {
        Rule::param_decl => {
            let mut inner = pair.into_inner();
            let name = ident(next(&mut inner));
            Item::Param(ParamDecl { name, value: expr(next(&mut inner))?, span })
        }
        Rule::require_decl => {
            let mut inner = pair.into_inner();
            let condition = expr(next(&mut inner))?;
            let message = inner.next().map(|p| unquote(p.as_str()));
            Item::Require(Require { condition, message, span })
        }
        Rule::defaults_decl => {
            Item::Defaults(pair.into_inner().map(call).collect::<Result<_, _>>()?)
        }
        Rule::block_decl => {
            let mut inner = pair.into_inner();
            let name = ident(next(&mut inner));
            let mut params = Vec::new();
            let mut body = None;
            for p in inner {
                match p.as_rule() {
                    Rule::block_args => params = p.into_inner().map(ident).collect(),
                    _ => body = Some(chain(p)?),
                }
            }
            let body = body.expect("a block always has a body");
            Item::Block(BlockDecl { name, params, body, span })
        }
        Rule::net_decl => Item::Net(net(pair)?),
        Rule::train_decl => Item::Train(train(pair)?),
        rule => unreachable!("unexpected top-level rule {rule:?}"),
    })
}

fn net(pair: Pair<Rule>) -> Result<NetDecl, Diagnostic> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let name = ident(next(&mut inner));
    let mut args = Vec::new();
    let mut stmts = Vec::new();
    for p in inner {
        let pspan = span_of(&p);
        match p.as_rule() {
            Rule::net_arg => {
                let mut parts = p.into_inner();
                let name = ident(next(&mut parts));
                let dims = next(&mut parts).into_inner().map(expr).collect::<Result<_, _>>()?;
                args.push(NetArg { name, dims, span: pspan });
            }
            Rule::layer_stmt => {
                let mut parts = p.into_inner();
                let names = names(next(&mut parts))?;
                let chain = chain(next(&mut parts))?;
                stmts.push(NetStmt::Layer { names, chain, span: pspan });
            }
            Rule::skip_stmt => {
                let mut edges = Vec::new();
                for edge in p.into_inner() {
                    let espan = span_of(&edge);
                    let mut parts = edge.into_inner();
                    let from = names(next(&mut parts))?;
                    let to = names(next(&mut parts))?;
                    edges.push(SkipEdge { from, to, span: espan });
                }
                stmts.push(NetStmt::Skip(edges));
            }
            rule => unreachable!("unexpected rule {rule:?} in a net"),
        }
    }
    Ok(NetDecl { name, args, stmts, span })
}

fn train(pair: Pair<Rule>) -> Result<TrainDecl, Diagnostic> {
    let span = span_of(&pair);
    let mut items = Vec::new();
    for p in pair.into_inner() {
        let pspan = span_of(&p);
        let rule = p.as_rule();
        let mut parts = p.into_inner();
        items.push(match rule {
            Rule::setting => {
                let key = ident(next(&mut parts));
                TrainItem::Setting { key, value: expr(next(&mut parts))?, span: pspan }
            }
            Rule::let_stmt => {
                let name = ident(next(&mut parts));
                TrainItem::Let { name, value: expr(next(&mut parts))?, span: pspan }
            }
            Rule::step_decl => {
                let net = ident(next(&mut parts));
                let optimizer = call(next(&mut parts))?;
                let terms = parts.map(loss_term).collect::<Result<_, _>>()?;
                TrainItem::Step(StepDecl { net, optimizer, terms, span: pspan })
            }
            rule => unreachable!("unexpected rule {rule:?} in train"),
        });
    }
    Ok(TrainDecl { items, span })
}

fn loss_term(pair: Pair<Rule>) -> Result<LossTerm, Diagnostic> {
    let span = span_of(&pair);
    let mut name = None;
    let mut value = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::term_name => name = Some(ident(next(&mut p.into_inner()))),
            _ => value = Some(expr(p)?),
        }
    }
    let expr = value.expect("a loss term always has an expression");
    Ok(LossTerm { name, expr, span })
}

fn names(pair: Pair<Rule>) -> Result<Names, Diagnostic> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let first = name(next(&mut inner))?;
    let last = inner.next().map(name).transpose()?;
    Ok(Names { first, last, span })
}

fn name(pair: Pair<Rule>) -> Result<Name, Diagnostic> {
    let span = span_of(&pair);
    let inner = next(&mut pair.into_inner());
    match inner.as_rule() {
        Rule::ident => Ok(Name { ident: ident(inner), index: None, span }),
        Rule::indexed_name => {
            let mut parts = inner.into_inner();
            let head = next(&mut parts);
            let ident = ident(next(&mut head.into_inner()));
            let index = expr(next(&mut parts))?;
            Ok(Name { ident, index: Some(Box::new(index)), span })
        }
        rule => unreachable!("unexpected rule {rule:?} in a name"),
    }
}

fn chain(pair: Pair<Rule>) -> Result<Chain, Diagnostic> {
    let span = span_of(&pair);
    let stages = pair.into_inner().map(expr).collect::<Result<_, _>>()?;
    Ok(Chain { stages, span })
}

fn call(pair: Pair<Rule>) -> Result<Call, Diagnostic> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let head = next(&mut inner);
    let callee = ident(next(&mut head.into_inner()));
    let mut args = Vec::new();
    for arg in inner {
        let a = next(&mut arg.into_inner());
        args.push(match a.as_rule() {
            Rule::kwarg => {
                let mut parts = a.into_inner();
                let key = ident(next(&mut parts));
                Arg::Keyword(key, expr(next(&mut parts))?)
            }
            _ => Arg::Positional(expr(a)?),
        });
    }
    Ok(Call { callee, args, span })
}

/// Builds an expression from an `expr` or `product` pair with operator precedence.
fn expr(pair: Pair<Rule>) -> Result<Expr, Diagnostic> {
    if pair.clone().into_inner().count() > MAX_EXPR_PARTS {
        let message = format!("expression has more than {MAX_EXPR_PARTS} operands and operators");
        let span = Span::new(pair.as_span().start(), pair.as_span().start() + 1);
        return Err(Diagnostic::new(ErrorKind::Range, span, message)
            .with_label("this expression is too long")
            .with_help("split it into params or layers"));
    }
    PRATT
        .map_primary(primary)
        .map_prefix(|op, rhs| {
            let rhs = rhs?;
            let span = Span::new(op.as_span().start(), rhs.span.end);
            let op = if op.as_rule() == Rule::neg { UnaryOp::Neg } else { UnaryOp::Not };
            Ok(Expr { kind: ExprKind::Unary(op, Box::new(rhs)), span })
        })
        .map_infix(|lhs, op, rhs| {
            let (lhs, rhs) = (lhs?, rhs?);
            let span = Span::new(lhs.span.start, rhs.span.end);
            let op = binary_op(op.as_rule());
            Ok(Expr { kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)), span })
        })
        .parse(pair.into_inner())
}

fn binary_op(rule: Rule) -> BinaryOp {
    match rule {
        Rule::add => BinaryOp::Add,
        Rule::sub => BinaryOp::Sub,
        Rule::mul => BinaryOp::Mul,
        Rule::div => BinaryOp::Div,
        Rule::rem => BinaryOp::Rem,
        Rule::pow => BinaryOp::Pow,
        Rule::lt => BinaryOp::Lt,
        Rule::le => BinaryOp::Le,
        Rule::gt => BinaryOp::Gt,
        Rule::ge => BinaryOp::Ge,
        Rule::eq => BinaryOp::Eq,
        Rule::ne => BinaryOp::Ne,
        Rule::and => BinaryOp::And,
        Rule::or => BinaryOp::Or,
        rule => unreachable!("{rule:?} is not an infix operator"),
    }
}

fn primary(pair: Pair<Rule>) -> Result<Expr, Diagnostic> {
    let span = span_of(&pair);
    let kind = match pair.as_rule() {
        Rule::number => number(pair.as_str(), span)?,
        Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
        Rule::string => ExprKind::Str(unquote(pair.as_str())),
        Rule::name => ExprKind::Name(name(pair)?),
        Rule::call => ExprKind::Call(call(pair)?),
        Rule::expr => return expr(pair),
        rule => unreachable!("unexpected primary {rule:?}"),
    };
    Ok(Expr { kind, span })
}

fn number(text: &str, span: Span) -> Result<ExprKind, Diagnostic> {
    let is_float = text.contains(['.', 'e', 'E']);
    if is_float {
        let value: f64 = text.parse().expect("the grammar only admits valid float literals");
        if !value.is_finite() {
            return Err(Diagnostic::new(
                ErrorKind::Range,
                span,
                format!("number {text} is too large"),
            )
            .with_help("numbers must fit in a 64-bit float"));
        }
        return Ok(ExprKind::Float(value));
    }
    text.parse::<i64>().map(ExprKind::Int).map_err(|_| {
        Diagnostic::new(ErrorKind::Range, span, format!("integer {text} is too large"))
            .with_label("does not fit in a 64-bit integer")
            .with_help(format!("integers must lie between {} and {}", i64::MIN, i64::MAX))
    })
}

fn unquote(text: &str) -> String {
    text.trim_start_matches('"').trim_end_matches('"').to_string()
}

fn ident(pair: Pair<Rule>) -> Ident {
    Ident { text: pair.as_str().to_string(), span: span_of(&pair) }
}

fn next<'a>(pairs: &mut pest::iterators::Pairs<'a, Rule>) -> Pair<'a, Rule> {
    pairs.next().expect("the grammar guarantees this child")
}

/// Converts a pest error into a diagnostic with readable names for the expected tokens.
fn syntax_error(error: pest::error::Error<Rule>, text: &str) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    // The span covers the character at the error, or nothing at the end of the text.
    let (start, end) = match error.location {
        InputLocation::Pos(p) => (p, p + 1),
        InputLocation::Span((s, e)) => (s, e.max(s + 1)),
    };
    let end =
        (start..=end.min(text.len())).rev().find(|&e| text.is_char_boundary(e)).unwrap_or(start);
    let span = Span::new(start.min(text.len()), end.max(start.min(text.len())));
    let (message, label) = match &error.variant {
        ErrorVariant::ParsingError { positives, negatives: _ } => {
            let mut expected: Vec<&str> = positives.iter().filter_map(|r| rule_name(*r)).collect();
            expected.sort_unstable();
            expected.dedup();
            if expected.contains(&"an expression") {
                expected.retain(|e| !EXPRESSION_PARTS.contains(e));
            }
            match expected.as_slice() {
                [] => ("invalid syntax".to_string(), "unexpected text".to_string()),
                [one] => (format!("expected {one}"), format!("expected {one} here")),
                many => {
                    let (last, rest) = many.split_last().expect("many has at least two entries");
                    let list = format!("{} or {last}", rest.join(", "));
                    (format!("expected {list}"), "unexpected text".to_string())
                }
            }
        }
        ErrorVariant::CustomError { message } => (message.clone(), "here".to_string()),
    };
    let diagnostic = Diagnostic::new(ErrorKind::Syntax, span, message).with_label(label);
    // An arrow that stops the parser sits where a chain is not allowed, such as inside an
    // argument list or parentheses.
    if text[span.start..].starts_with("->") {
        return diagnostic.with_help(
            "`->` chains only whole layers, not values inside arguments or parentheses: \
             name the chain as a layer of its own (`ar = a -> relu`) and use that name",
        );
    }
    diagnostic
}

/// Expected-token names that "an expression" already covers.
const EXPRESSION_PARTS: &[&str] =
    &["`true` or `false`", "a layer name", "a name", "a number", "a string"];

fn rule_name(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "the end of the file",
        Rule::param_decl => "`param`",
        Rule::require_decl => "`require`",
        Rule::defaults_decl => "`defaults`",
        Rule::block_decl => "`block`",
        Rule::net_decl => "`net`",
        Rule::train_decl => "`train`",
        Rule::net_arg => "an argument such as `x: [3, 256, 256]`",
        Rule::shape => "a shape such as `[3, 256, 256]`",
        Rule::layer_stmt => "a layer such as `e1 = conv2d(64)`",
        Rule::skip_stmt => "`skip`",
        Rule::skip_edge => "a skip edge such as `e1 -> d1`",
        Rule::names | Rule::name | Rule::indexed_name => "a layer name",
        Rule::index_head => "a layer name",
        Rule::setting => "a setting such as `epochs: 200`",
        Rule::let_stmt => "a value such as `fake = generator(input)`",
        Rule::step_decl => "`step`",
        Rule::loss_term => "a loss term",
        Rule::term_name => "a term name",
        Rule::chain | Rule::expr | Rule::product => "an expression",
        Rule::infix | Rule::mul_op => "an operator",
        Rule::prefix | Rule::neg | Rule::not => "an expression",
        Rule::or | Rule::and => "an operator",
        Rule::ge | Rule::le | Rule::eq | Rule::ne | Rule::gt | Rule::lt => "an operator",
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::rem | Rule::pow => "an operator",
        Rule::primary | Rule::call | Rule::call_head => "an expression",
        Rule::arg | Rule::kwarg => "an argument",
        Rule::number => "a number",
        Rule::boolean => "`true` or `false`",
        Rule::string => "a string",
        Rule::ident => "a name",
        Rule::keyword => return None,
        _ => return None,
    })
}
