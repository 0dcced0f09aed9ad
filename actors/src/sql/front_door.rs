//! The SQL front door: every statement a node runs is parsed and checked here, before any
//! planning, so that no text a client can send crashes a compute thread.
//!
//! Deep expression trees are what crash SQL engines: planning, optimising, evaluating and
//! even dropping an expression recurse once per level, and `1+1+...` with 5,000 terms is
//! 5,000 levels. The checks, in order, each without recursion over the client's text:
//!
//! 1. **Tokens.** The statement is tokenized and refused past `max_tokens`. The parser
//!    builds operator chains iteratively, so the tokens bound the depth of anything it can
//!    build; the compute threads' stacks are sized for that bound (`STACK_BYTES`), so even
//!    a refused tree can be dropped safely.
//! 2. **Parse** with the parser's nesting limit (parentheses, subqueries, unary operators).
//! 3. **Read-only** (`statement::check_read_only`).
//! 4. **Shape.** `AND`/`OR` chains (a user's `ip = 'a' OR ip = 'b' OR ...` list of thousands
//!    of terms, which is legitimate) are rebuilt as balanced trees, depth log2(n), the same
//!    truth table; then the depth of every expression is checked against `max_depth`, top
//!    down, so the walk stops at the first level past the limit instead of recursing on.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Query, SetExpr, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::statement::check_read_only;
use crate::error::QueryError;

/// Stack size of threads that parse, plan or run client SQL: room for dropping a refused
/// tree as deep as the largest `[sql] max_tokens` allows (`MAX_TOKENS_FOR_STACK`, tested
/// below in a debug build) and for the engine's own recursion on admitted ones.
pub const STACK_BYTES: usize = 64 << 20;

/// A chain of this many terms or more is rebuilt balanced; shorter ones keep their shape
/// (and their plans and EXPLAIN output).
const BALANCE_FROM: usize = 16;

/// The parser's nesting limit (parentheses, subqueries, prefix operators): DataFusion's.
const PARSER_RECURSION_LIMIT: usize = 50;

/// How large and deep a statement may be.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Tokens in the statement (keywords, names, literals, operators, punctuation).
    pub max_tokens: usize,
    /// Depth of any one expression once AND/OR chains are balanced.
    pub max_depth: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_tokens: 100_000,
            max_depth: 256,
        }
    }
}

/// Parses one statement, checks it is read-only and within `limits`, and returns it with
/// long AND/OR chains balanced.
pub fn parse_checked(sql: &str, limits: &ParseLimits) -> Result<DfStatement, QueryError> {
    if sql.trim().is_empty() {
        return Err(QueryError::BadRequest("no SQL statement given".into()));
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize()
        .map_err(|e| QueryError::Sql(format!("SQL error: {e}")))?;
    let count = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .count();
    // The parser reads `EXPLAIN EXPLAIN ...` by recursion with no limit of its own.
    let explains = tokens
        .iter()
        .filter(|t| matches!(t, Token::Word(w) if w.keyword == Keyword::EXPLAIN))
        .count();
    drop(tokens);
    if explains > 1 {
        return Err(QueryError::BadRequest(
            "EXPLAIN may appear once in a statement".into(),
        ));
    }
    if count > limits.max_tokens {
        return Err(QueryError::TooComplex(format!(
            "the statement has {count} tokens; the limit is {} ([sql] max_tokens)",
            limits.max_tokens
        )));
    }
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| {
            let msg = e.to_string();
            if msg.contains("RecursionLimitExceeded") || msg.contains("recursion limit") {
                QueryError::TooComplex(format!(
                    "the statement nests parentheses, subqueries or operators more than \
                     {PARSER_RECURSION_LIMIT} levels deep"
                ))
            } else {
                QueryError::from(e)
            }
        })?;
    if statements.len() > 1 {
        return Err(QueryError::BadRequest(
            "send one statement per request".into(),
        ));
    }
    let mut statement = statements
        .pop_front()
        .ok_or_else(|| QueryError::BadRequest("no SQL statement given".into()))?;
    check_read_only(&statement)?;
    shape(&mut statement, limits.max_depth)?;
    Ok(statement)
}

/// Balances AND/OR chains and checks expression depth.
fn shape(statement: &mut DfStatement, max_depth: usize) -> Result<(), QueryError> {
    let mut shaper = Shaper {
        depth: 0,
        max_depth,
    };
    let flow = match statement {
        DfStatement::Statement(s) => s.visit(&mut shaper),
        DfStatement::Explain(e) => match e.statement.as_mut() {
            DfStatement::Statement(s) => s.visit(&mut shaper),
            _ => ControlFlow::Continue(()),
        },
        _ => ControlFlow::Continue(()),
    };
    match flow {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(e) => Err(e),
    }
}

struct Shaper {
    /// Expression levels above the node being visited.
    depth: usize,
    max_depth: usize,
}

impl VisitorMut for Shaper {
    type Break = QueryError;

    /// `SELECT ... UNION SELECT ... UNION ...` is a chain the parser builds in a loop, one
    /// level per operator: counted here, before the walk descends into it.
    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<QueryError> {
        let mut depth = 0usize;
        let mut body: &SetExpr = &query.body;
        while let SetExpr::SetOperation { left, .. } = body {
            depth += 1;
            if depth > self.max_depth {
                return ControlFlow::Break(QueryError::TooComplex(format!(
                    "more than {} UNION, INTERSECT or EXCEPT in a row ([sql] max_expr_depth)",
                    self.max_depth
                )));
            }
            body = left;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<QueryError> {
        if let Expr::BinaryOp {
            op: op @ (BinaryOperator::And | BinaryOperator::Or),
            ..
        } = expr
        {
            let op = op.clone();
            balance(expr, op);
        }
        self.depth += 1;
        if self.depth > self.max_depth {
            return ControlFlow::Break(QueryError::TooComplex(format!(
                "an expression is nested more than {} levels deep ([sql] max_expr_depth); \
                 long chains of + or || count one level per operator",
                self.max_depth
            )));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &mut Expr) -> ControlFlow<QueryError> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

/// Rebuilds the chain of `op` rooted at `expr` as a balanced tree when it is long. The
/// terms keep their left-to-right order; AND and OR are associative in SQL's three-valued
/// logic, so the result is the same.
fn balance(expr: &mut Expr, op: BinaryOperator) {
    // Count first, cheaply, so short chains (nearly all) are left untouched.
    let mut terms = 0usize;
    let mut stack: Vec<&Expr> = vec![expr];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryOp { left, op: o, right } if *o == op => {
                stack.push(right);
                stack.push(left);
            }
            _ => terms += 1,
        }
        if terms >= BALANCE_FROM {
            break;
        }
    }
    if terms < BALANCE_FROM {
        return;
    }
    let root = std::mem::replace(expr, placeholder());
    let mut leaves = Vec::new();
    let mut stack = vec![root];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryOp { left, op: o, right } if o == op => {
                stack.push(*right);
                stack.push(*left);
            }
            other => leaves.push(other),
        }
    }
    // Pairwise, level by level: depth ceil(log2(n)).
    while leaves.len() > 1 {
        let mut next = Vec::with_capacity(leaves.len().div_ceil(2));
        let mut it = leaves.into_iter();
        while let Some(left) = it.next() {
            match it.next() {
                Some(right) => next.push(Expr::BinaryOp {
                    left: Box::new(left),
                    op: op.clone(),
                    right: Box::new(right),
                }),
                None => next.push(left),
            }
        }
        leaves = next;
    }
    if let Some(balanced) = leaves.pop() {
        *expr = balanced;
    }
}

fn placeholder() -> Expr {
    Expr::Value(Value::Null.with_empty_span())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(term: &str, op: &str, n: usize) -> String {
        vec![term; n].join(op)
    }

    /// Runs `f` on a thread with the compute pool's stack, as production does.
    fn on_compute_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(STACK_BYTES)
            .spawn(f)
            .expect("thread")
            .join()
            .expect("no panic")
    }

    #[test]
    fn long_or_chains_and_in_lists_are_accepted_and_balanced() {
        let sql = format!(
            "SELECT 1 FROM sys WHERE {}",
            chain("machine_ip = '10.0.0.1'", " OR ", 2_000)
        );
        let stmt = on_compute_stack(move || parse_checked(&sql, &ParseLimits::default()));
        let stmt = stmt.expect("a 2,000-term OR chain is a legitimate query");
        // Balanced: the deepest OR is about log2(2000) = 11 levels down.
        let mut probe = Shaper {
            depth: 0,
            max_depth: 16,
        };
        let DfStatement::Statement(mut s) = stmt else {
            panic!("a statement")
        };
        assert!(s.visit(&mut probe).is_continue());

        let list = vec!["'10.0.0.1'"; 5_000].join(", ");
        let sql = format!("SELECT 1 FROM sys WHERE machine_ip IN ({list})");
        assert!(parse_checked(&sql, &ParseLimits::default()).is_ok());
    }

    #[test]
    fn long_arithmetic_and_concat_chains_are_refused_not_crashing() {
        for (term, op) in [("1", "+"), ("'a'", " || ")] {
            let sql = format!("SELECT {}", chain(term, op, 5_000));
            let r = on_compute_stack(move || parse_checked(&sql, &ParseLimits::default()));
            match r {
                Err(QueryError::TooComplex(m)) => assert!(m.contains("max_expr_depth"), "{m}"),
                other => panic!("{op}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_megabyte_of_flat_chains_is_refused_by_tokens() {
        for (term, op) in [("1", "+"), ("x = 1", " OR ")] {
            let mut sql = String::from("SELECT 1 FROM sys WHERE ");
            while sql.len() < 1 << 20 {
                sql.push_str(term);
                sql.push_str(op);
            }
            sql.push('1');
            let r = on_compute_stack(move || parse_checked(&sql, &ParseLimits::default()));
            match r {
                Err(QueryError::TooComplex(m)) => assert!(m.contains("max_tokens"), "{m}"),
                other => panic!("{op}: {other:?}"),
            }
        }
    }

    /// The largest statement `[sql]` validation allows (`MAX_TOKENS_FOR_STACK`), one chain
    /// of `+` as deep as it can be, is parsed, refused and dropped on the compute stack.
    #[test]
    fn the_largest_admissible_statement_is_refused_within_the_stack() {
        let limits = ParseLimits {
            max_tokens: crate::node::config::MAX_TOKENS_FOR_STACK,
            max_depth: 4096,
        };
        let sql = format!("SELECT {}", chain("1", "+", limits.max_tokens / 2 - 1));
        match on_compute_stack(move || parse_checked(&sql, &limits)) {
            Err(QueryError::TooComplex(m)) => assert!(m.contains("max_expr_depth"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nested_explains_and_long_unions_are_refused() {
        let sql = format!("{}SELECT 1", "EXPLAIN ".repeat(90_000));
        assert!(matches!(
            on_compute_stack(move || parse_checked(&sql, &ParseLimits::default())),
            Err(QueryError::BadRequest(_))
        ));
        let sql = chain("SELECT 1", " UNION ALL ", 25_000);
        match on_compute_stack(move || parse_checked(&sql, &ParseLimits::default())) {
            Err(QueryError::TooComplex(m)) => assert!(m.contains("UNION"), "{m}"),
            other => panic!("{other:?}"),
        }
        let sql = chain("SELECT 1", " UNION ALL ", 100);
        assert!(parse_checked(&sql, &ParseLimits::default()).is_ok());
        assert!(parse_checked("EXPLAIN SELECT 1", &ParseLimits::default()).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_by_the_parser_limit() {
        let sql = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        match on_compute_stack(move || parse_checked(&sql, &ParseLimits::default())) {
            Err(QueryError::TooComplex(m)) => assert!(m.contains("levels deep"), "{m}"),
            other => panic!("{other:?}"),
        }
        let sql = format!("SELECT {}1", "- ".repeat(10_000));
        assert!(on_compute_stack(move || parse_checked(&sql, &ParseLimits::default())).is_err());
    }

    #[test]
    fn short_chains_keep_their_shape() {
        let stmt =
            parse_checked("SELECT 1 WHERE a OR b OR c", &ParseLimits::default()).expect("parses");
        assert_eq!(stmt.to_string(), "SELECT 1 WHERE a OR b OR c");
    }
}
