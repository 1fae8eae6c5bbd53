//! Optimizers over candle `Var`s, gradient-norm clipping and sd-scripts' `--optimizer_args`.
//!
//! Every optimizer implements [`Optimizer`]: parameters come in named [`ParamGroup`]s (sd-scripts'
//! `textencoder`, `unet`, `unet_block3`, … groups, spec §8.3), the training loop hands it the
//! gradients and each group's current learning rate (base lr × scheduler factor, see
//! [`crate::lr_scheduler`]), and its whole state can be taken out and put back for a resume that is
//! bitwise identical to an uninterrupted run.
//!
//! [`AdamW`] reproduces `torch.optim.AdamW` (what sd-scripts' default `--optimizer_type AdamW`
//! builds) operation by operation in f32, [`clip_grad_norm`] reproduces
//! `torch.nn.utils.clip_grad_norm_`, and [`OptimizerArgs`] parses `key=value` items with Python
//! literal values as sd-scripts does (spec §8.2). The fixtures in
//! `tests/fixtures/reference/optim/` (from `tools/reference/optim_fixture.py`) hold the reference
//! numbers.

use std::collections::BTreeMap;
use std::fmt;

use candle_core::{DType, Device, Error, Result, Tensor, Var};
use serde_json::json;

/// Parameters that share a learning rate, like one entry of a torch optimizer's `param_groups`.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// sd-scripts' group description (`textencoder`, `unet`, …); names state entries and errors.
    pub name: String,
    /// The trainable tensors (f32 master weights of LoRA down/up matrices).
    pub vars: Vec<Var>,
    /// The group's base learning rate (the scheduler factor multiplies it).
    pub lr: f64,
}

/// An optimizer's complete state: named tensors (moments) plus JSON scalars (step counts,
/// hyperparameters). Tensors can be written to a safetensors file and the scalars to JSON as they are.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    pub tensors: BTreeMap<String, Tensor>,
    pub scalars: serde_json::Value,
}

/// What the training loop needs from any optimizer (AdamW now; Lion, Prodigy, AdaFactor and 8-bit
/// variants later).
pub trait Optimizer: Send {
    /// One update. `grads[g][i]` is the gradient of `groups()[g].vars[i]` (`None`: no gradient this
    /// step, the parameter and its state are left alone, as torch skips params whose `.grad` is
    /// None). `lrs[g]` is the learning rate group `g` uses for this update.
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()>;

    fn groups(&self) -> &[ParamGroup];

    /// Everything needed to resume bitwise: named tensors + JSON scalars.
    fn state(&self) -> Result<OptimizerState>;

    /// Restores [`Optimizer::state`] output; errors name the entry whose name or shape does not
    /// match the current parameters, and leave the optimizer unchanged.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;

    /// sd-scripts' `ss_optimizer` text: `module.Class`, plus `(k=v,…)` when optimizer_args were
    /// given (spec §3.1, §8.1), e.g. `torch.optim.adamw.AdamW(weight_decay=0.1,betas=(0.9, 0.99))`.
    fn description(&self) -> String;

    /// Each group's base lr times a scheduler factor: the `lrs` argument of [`Optimizer::step`]
    /// when every group follows the same schedule (sd-scripts' case).
    fn scheduled_lrs(&self, factor: f64) -> Vec<f64> {
        self.groups().iter().map(|g| g.lr * factor).collect()
    }
}

fn msg(text: impl Into<String>) -> Error {
    Error::Msg(text.into())
}

// ------------------------------------------------------------------------------------ gradient norm

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: the L2 norm of all gradients taken together
/// (`None` entries are skipped); when `max_norm / (total + 1e-6)` is below 1, every gradient is
/// multiplied by it. Returns the total norm before clipping. As in torch, the coefficient is
/// computed in f32, a non-finite total turns the gradients non-finite too (check the returned
/// norm to skip such a step), and `max_norm = 0` zeroes them (sd-scripts skips the call when
/// `--max_grad_norm` is 0).
pub fn clip_grad_norm(grads: &mut [Vec<Option<Tensor>>], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(msg(format!("clip_grad_norm: max_norm must be a number ≥ 0, got {max_norm}")));
    }
    // Sum of squares per device on the device itself: one host transfer per device, not per tensor.
    let mut partial: Vec<(Device, Tensor)> = Vec::new();
    for g in grads.iter().flatten().flatten() {
        let sq = g.detach().to_dtype(DType::F32)?.sqr()?.sum_all()?;
        match partial.iter_mut().find(|(d, _)| d.same_device(g.device())) {
            Some((_, acc)) => *acc = (&*acc + &sq)?,
            None => partial.push((g.device().clone(), sq)),
        }
    }
    let mut sum_sq = 0f64;
    for (_, acc) in &partial {
        sum_sq += acc.to_scalar::<f32>()? as f64;
    }
    let total = sum_sq.sqrt() as f32;
    // torch: `max_norm / (total + 1e-6)` is `reciprocal(total + 1e-6) * max_norm` on an f32 tensor.
    let coef = (1.0f32 / (total + 1e-6f32)) * max_norm as f32;
    // NaN included: torch's clamp lets it through.
    if coef < 1.0 || coef.is_nan() {
        for g in grads.iter_mut().flatten().flatten() {
            *g = g.affine(coef as f64, 0.0)?;
        }
    }
    Ok(total as f64)
}

// ------------------------------------------------------------------------------ optimizer_args

/// A Python literal as `ast.literal_eval` returns it, for the values optimizers take.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<ArgValue>),
    List(Vec<ArgValue>),
}

impl ArgValue {
    /// The value as a float if it is an int or a float (not a bool: `weight_decay=True` is a typo).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            ArgValue::Int(i) => Some(i as f64),
            ArgValue::Float(f) => Some(f),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            ArgValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            ArgValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Elements of a tuple or list.
    pub fn as_seq(&self) -> Option<&[ArgValue]> {
        match self {
            ArgValue::Tuple(v) | ArgValue::List(v) => Some(v),
            _ => None,
        }
    }

    /// Python's type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            ArgValue::None => "NoneType",
            ArgValue::Bool(_) => "bool",
            ArgValue::Int(_) => "int",
            ArgValue::Float(_) => "float",
            ArgValue::Str(_) => "str",
            ArgValue::Tuple(_) => "tuple",
            ArgValue::List(_) => "list",
        }
    }

    /// Python's `repr()` of the value (strings quoted, as inside a tuple).
    pub fn python_repr(&self) -> String {
        match self {
            ArgValue::Str(s) => python_str_repr(s),
            other => other.to_string(),
        }
    }
}

/// Python's `str()` of the value — what sd-scripts' `f"{k}={v}"` writes into `ss_optimizer`.
impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::None => f.write_str("None"),
            ArgValue::Bool(true) => f.write_str("True"),
            ArgValue::Bool(false) => f.write_str("False"),
            ArgValue::Int(i) => write!(f, "{i}"),
            ArgValue::Float(x) => f.write_str(&python_float_repr(*x)),
            ArgValue::Str(s) => f.write_str(s),
            ArgValue::Tuple(items) => {
                let inner: Vec<String> = items.iter().map(ArgValue::python_repr).collect();
                if inner.len() == 1 {
                    write!(f, "({},)", inner[0])
                } else {
                    write!(f, "({})", inner.join(", "))
                }
            }
            ArgValue::List(items) => {
                let inner: Vec<String> = items.iter().map(ArgValue::python_repr).collect();
                write!(f, "[{}]", inner.join(", "))
            }
        }
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, fixed notation for exponents
/// -4..=15 (`0.0001`, `100.0`), scientific otherwise (`1e-05`, `1e+16`).
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` gives the same shortest round-trip digits; only the layout differs.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let n = digits.len() as i32;
    let decpt = exp + 1; // position of the decimal point after the first `decpt` digits
    let sign = if x < 0.0 { "-" } else { "" };
    if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let e = decpt - 1;
        format!("{sign}{first}{frac}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    } else if decpt <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{sign}{int}.{frac}")
    }
}

/// Python's `repr(str)`: single quotes unless the text has a `'` and no `"`.
fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => {
                let u = c as u32;
                if u <= 0xff {
                    out.push_str(&format!("\\x{u:02x}"));
                } else if u <= 0xffff {
                    out.push_str(&format!("\\u{u:04x}"));
                } else {
                    out.push_str(&format!("\\U{u:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Parses one value as `ast.literal_eval` does, for the literals optimizers take: ints (also hex,
/// octal, binary, `_` separators), floats, a sign on a number, `True`/`False`/`None`, quoted
/// strings (escapes, raw and adjacent-string concatenation), tuples (with or without parentheses:
/// `0.9,0.999`) and lists. Dicts, sets, bytes and complex numbers are rejected, as are ints beyond
/// 64 bits.
pub fn parse_python_literal(text: &str) -> std::result::Result<ArgValue, String> {
    // literal_eval strips leading spaces and tabs before parsing.
    let mut p = LiteralParser { chars: text.trim_start_matches([' ', '\t']).chars().collect(), pos: 0 };
    p.skip_ws();
    if p.at_end() {
        return Err("empty value (write e.g. `key=0.1`)".into());
    }
    let (value, _) = p.expr_list(None)?;
    p.skip_ws();
    if !p.at_end() {
        return Err(format!("unexpected `{}` after the value", p.rest()));
    }
    Ok(value)
}

struct LiteralParser {
    chars: Vec<char>,
    pos: usize,
}

impl LiteralParser {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, off: usize) -> Option<char> {
        self.chars.get(self.pos + off).copied()
    }

    fn rest(&self) -> String {
        self.chars[self.pos.min(self.chars.len())..].iter().collect()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\n' | '\r' | '\x0c' => self.pos += 1,
                '\\' if self.peek_at(1) == Some('\n') => self.pos += 2,
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    /// `item (',' item)* [',']`: a tuple if there is a comma. `close` is the bracket that may end
    /// the list (None at top level). Returns the value and whether it is a bare number constant
    /// (the only thing a unary sign may apply to).
    fn expr_list(&mut self, close: Option<char>) -> std::result::Result<(ArgValue, bool), String> {
        let first = self.item()?;
        self.skip_ws();
        if self.peek() != Some(',') {
            return Ok(first);
        }
        let mut items = vec![first.0];
        while self.peek() == Some(',') {
            self.pos += 1;
            self.skip_ws();
            if self.at_end() || self.peek() == close {
                break;
            }
            items.push(self.item()?.0);
            self.skip_ws();
        }
        Ok((ArgValue::Tuple(items), false))
    }

    fn item(&mut self) -> std::result::Result<(ArgValue, bool), String> {
        self.skip_ws();
        match self.peek() {
            Some(sign @ ('+' | '-')) => {
                self.pos += 1;
                self.skip_ws();
                let (v, plain) = self.atom()?;
                let negate = sign == '-';
                match (v, plain) {
                    (ArgValue::Int(i), true) => {
                        Ok((ArgValue::Int(if negate { i.checked_neg().ok_or("integer too large")? } else { i }), false))
                    }
                    (ArgValue::Float(f), true) => Ok((ArgValue::Float(if negate { -f } else { f }), false)),
                    (v, _) => Err(format!("a sign `{sign}` can only precede a number, not {}", v.python_repr())),
                }
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> std::result::Result<(ArgValue, bool), String> {
        self.skip_ws();
        let Some(c) = self.peek() else {
            return Err("the value ends where an operand was expected".into());
        };
        match c {
            '(' => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(')') {
                    self.pos += 1;
                    return Ok((ArgValue::Tuple(Vec::new()), false));
                }
                let inner = self.expr_list(Some(')'))?;
                self.skip_ws();
                self.expect(')')?;
                Ok(inner)
            }
            '[' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.peek() == Some(']') {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.item()?.0);
                    self.skip_ws();
                    match self.peek() {
                        Some(',') => self.pos += 1,
                        Some(']') => {}
                        _ => return Err(self.unexpected("`,` or `]`")),
                    }
                }
                Ok((ArgValue::List(items), false))
            }
            '{' => Err("dicts and sets are not supported in optimizer arguments".into()),
            '\'' | '"' => Ok((ArgValue::Str(self.strings()?), false)),
            c if c.is_ascii_digit() || (c == '.' && self.peek_at(1).is_some_and(|d| d.is_ascii_digit())) => {
                Ok((self.number()?, true))
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    self.pos += 1;
                }
                let word: String = self.chars[start..self.pos].iter().collect();
                if matches!(self.peek(), Some('\'' | '"')) && word.len() <= 2 {
                    let lower = word.to_ascii_lowercase();
                    if lower == "r" || lower == "u" {
                        self.pos = start;
                        return Ok((ArgValue::Str(self.strings()?), false));
                    }
                    return Err(format!("`{word}` string literals (bytes, f-strings) are not supported"));
                }
                match word.as_str() {
                    "True" => Ok((ArgValue::Bool(true), false)),
                    "False" => Ok((ArgValue::Bool(false), false)),
                    "None" => Ok((ArgValue::None, false)),
                    _ => Err(format!("`{word}` is not a Python literal (quote text values: `key='{word}'`)")),
                }
            }
            _ => Err(self.unexpected("a value")),
        }
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{c}`")))
        }
    }

    fn unexpected(&self, wanted: &str) -> String {
        match self.peek() {
            Some(c) => format!("expected {wanted}, found `{c}`"),
            None => format!("expected {wanted}, but the value ends"),
        }
    }

    /// `digit ('_'? digit)*` in the given radix; returns the digits without underscores.
    fn digit_part(&mut self, radix: u32, leading_underscore: bool) -> std::result::Result<String, String> {
        let mut out = String::new();
        let mut need_digit = true;
        loop {
            match self.peek() {
                Some('_') if !need_digit || (leading_underscore && out.is_empty()) => {
                    self.pos += 1;
                    need_digit = true;
                    if !self.peek().is_some_and(|c| c.is_digit(radix)) {
                        return Err("invalid number: `_` must sit between digits".into());
                    }
                }
                Some(c) if c.is_digit(radix) => {
                    out.push(c);
                    self.pos += 1;
                    need_digit = false;
                }
                _ => break,
            }
        }
        Ok(out)
    }

    fn number(&mut self) -> std::result::Result<ArgValue, String> {
        let start = self.pos;
        if self.peek() == Some('0') {
            let radix = match self.peek_at(1) {
                Some('x' | 'X') => 16,
                Some('o' | 'O') => 8,
                Some('b' | 'B') => 2,
                _ => 10,
            };
            if radix != 10 {
                self.pos += 2;
                let digits = self.digit_part(radix, true)?;
                if digits.is_empty() {
                    return Err("invalid number: no digits after the base prefix".into());
                }
                self.check_number_end()?;
                return i64::from_str_radix(&digits, radix)
                    .map(ArgValue::Int)
                    .map_err(|_| "integer literal too large (64-bit at most)".to_string());
            }
        }
        let int_part = self.digit_part(10, false)?;
        let mut is_float = false;
        let mut text = int_part.clone();
        if self.peek() == Some('.') {
            self.pos += 1;
            is_float = true;
            text.push('.');
            if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                text.push_str(&self.digit_part(10, false)?);
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let save = self.pos;
            self.pos += 1;
            let mut exp = String::from("e");
            if let Some(s @ ('+' | '-')) = self.peek() {
                exp.push(s);
                self.pos += 1;
            }
            if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                exp.push_str(&self.digit_part(10, false)?);
                text.push_str(&exp);
                is_float = true;
            } else {
                self.pos = save;
                return Err(format!("invalid number `{}`", self.chars[start..=save].iter().collect::<String>()));
            }
        }
        if matches!(self.peek(), Some('j' | 'J')) {
            return Err("complex numbers are not supported".into());
        }
        self.check_number_end()?;
        if is_float {
            if text.starts_with('.') {
                text.insert(0, '0');
            }
            if text.ends_with('.') {
                text.push('0');
            }
            text.replace(".e", ".0e")
                .parse::<f64>()
                .map(ArgValue::Float)
                .map_err(|_| format!("invalid number `{}`", self.chars[start..self.pos].iter().collect::<String>()))
        } else {
            if int_part.len() > 1 && int_part.starts_with('0') && int_part.chars().any(|c| c != '0') {
                return Err("leading zeros are not allowed in decimal integers (use 0o for octal)".into());
            }
            int_part.parse::<i64>().map(ArgValue::Int).map_err(|_| "integer literal too large (64-bit at most)".into())
        }
    }

    fn check_number_end(&self) -> std::result::Result<(), String> {
        match self.peek() {
            Some(c) if c.is_alphanumeric() || c == '_' || c == '.' => Err(format!("invalid number: unexpected `{c}`")),
            _ => Ok(()),
        }
    }

    /// One or more adjacent string literals, concatenated as Python does.
    fn strings(&mut self) -> std::result::Result<String, String> {
        let mut out = String::new();
        loop {
            let mut raw = false;
            while let Some(c @ ('r' | 'R' | 'u' | 'U')) = self.peek() {
                raw |= c == 'r' || c == 'R';
                self.pos += 1;
            }
            out.push_str(&self.string_literal(raw)?);
            let save = self.pos;
            self.skip_ws();
            let next_is_string = match self.peek() {
                Some('\'' | '"') => true,
                Some('r' | 'R' | 'u' | 'U') => matches!(self.peek_at(1), Some('\'' | '"')),
                _ => false,
            };
            if !next_is_string {
                self.pos = save;
                return Ok(out);
            }
        }
    }

    fn string_literal(&mut self, raw: bool) -> std::result::Result<String, String> {
        let Some(q @ ('\'' | '"')) = self.peek() else {
            return Err(self.unexpected("a quote"));
        };
        let triple = self.peek_at(1) == Some(q) && self.peek_at(2) == Some(q);
        self.pos += if triple { 3 } else { 1 };
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated string".into());
            };
            if c == q && (!triple || (self.peek_at(1) == Some(q) && self.peek_at(2) == Some(q))) {
                self.pos += if triple { 3 } else { 1 };
                return Ok(out);
            }
            if c == '\n' && !triple {
                return Err("unterminated string".into());
            }
            self.pos += 1;
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.peek() else {
                return Err("unterminated string".into());
            };
            self.pos += 1;
            if raw {
                out.push('\\');
                out.push(e);
                continue;
            }
            match e {
                '\n' => {}
                '\\' | '\'' | '"' => out.push(e),
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\x0b'),
                '0'..='7' => {
                    let mut v = e.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match self.peek().and_then(|c| c.to_digit(8)) {
                            Some(d) => {
                                v = v * 8 + d;
                                self.pos += 1;
                            }
                            None => break,
                        }
                    }
                    out.push(char::from_u32(v).ok_or("invalid octal escape")?);
                }
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = (0..n).filter_map(|i| self.peek_at(i)).collect();
                    if hex.len() != n || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(format!("invalid `\\{e}` escape in a string"));
                    }
                    self.pos += n;
                    let v = u32::from_str_radix(&hex, 16).map_err(|_| "invalid escape")?;
                    out.push(char::from_u32(v).ok_or_else(|| format!("invalid `\\{e}{hex}` escape"))?);
                }
                'N' => return Err("`\\N{…}` escapes are not supported".into()),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        }
    }
}

/// sd-scripts' `--optimizer_args` (spec §8.2): `key=value` items in the order given, values
/// parsed as Python literals. A repeated key keeps its first position and its last value, like the
/// Python dict sd-scripts builds; the order matters for [`OptimizerArgs::describe`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimizerArgs {
    entries: Vec<(String, ArgValue)>,
}

impl OptimizerArgs {
    /// Each item must contain exactly one `=` (sd-scripts splits on it and unpacks two parts); the
    /// key is taken as written, the value must be a Python literal (`mode=foo` is an error, write
    /// `mode='foo'`).
    pub fn parse(args: &[String]) -> std::result::Result<Self, String> {
        let mut out = OptimizerArgs::default();
        for arg in args {
            let mut parts = arg.split('=');
            let (Some(key), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("optimizer argument `{arg}`: expected exactly one `=`, as in `weight_decay=0.01`"));
            };
            let value =
                parse_python_literal(value).map_err(|e| format!("optimizer argument `{arg}`: invalid value: {e}"))?;
            out.insert(key, value);
        }
        Ok(out)
    }

    fn insert(&mut self, key: &str, value: ArgValue) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&ArgValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn entries(&self) -> &[(String, ArgValue)] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn to_map(&self) -> BTreeMap<String, ArgValue> {
        self.entries.iter().cloned().collect()
    }

    /// Errors on the first key not in `accepted`, naming it and listing the accepted ones.
    pub fn check_keys(&self, optimizer: &str, accepted: &[&str]) -> std::result::Result<(), String> {
        for (key, _) in &self.entries {
            if key == "lr" {
                return Err(
                    "optimizer_args: `lr` cannot be set here (sd-scripts passes it itself); use --learning_rate, \
                     --unet_lr or --text_encoder_lr"
                        .to_string(),
                );
            }
            if !accepted.contains(&key.as_str()) {
                return Err(format!(
                    "optimizer_args: {optimizer} does not accept `{key}` (accepted: {})",
                    accepted.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// `k=v,k=v` with Python's `str()` of each value, the text sd-scripts appends to `ss_optimizer`.
    pub fn describe(&self) -> String {
        self.entries.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// sd-scripts' `--optimizer_args` as a map (see [`OptimizerArgs::parse`] for the rules and for the
/// ordered form `ss_optimizer` needs).
pub fn parse_optimizer_args(args: &[String]) -> std::result::Result<BTreeMap<String, ArgValue>, String> {
    OptimizerArgs::parse(args).map(|a| a.to_map())
}

/// `module.Class` plus `(k=v,…)` when arguments were given: sd-scripts' `ss_optimizer` value.
pub fn describe_optimizer(class_path: &str, args: &OptimizerArgs) -> String {
    if args.is_empty() {
        class_path.to_string()
    } else {
        format!("{class_path}({})", args.describe())
    }
}

// ------------------------------------------------------------------------------------------ AdamW

/// `torch.optim.AdamW` hyperparameters; the defaults are torch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamWConfig {
    /// The optimizer_args keys AdamW takes. `amsgrad` and `maximize` are accepted only as False
    /// (their torch default); the other torch flags (`foreach`, `fused`, …) choose kernels, not math.
    pub const ACCEPTED_ARGS: &'static [&'static str] =
        &["betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable"];

    /// Reads betas/eps/weight_decay from optimizer_args (missing keys keep torch's defaults).
    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        args.check_keys("AdamW", Self::ACCEPTED_ARGS)?;
        let mut cfg = AdamWConfig::default();
        let number = |key: &str, v: &ArgValue| {
            v.as_f64().ok_or_else(|| format!("optimizer_args: AdamW `{key}` must be a number, got {}", v.python_repr()))
        };
        for (key, v) in args.entries() {
            match key.as_str() {
                "betas" => {
                    let pair = v.as_seq().filter(|s| s.len() == 2).and_then(|s| Some((s[0].as_f64()?, s[1].as_f64()?)));
                    cfg.betas = pair.ok_or_else(|| {
                        format!("optimizer_args: AdamW `betas` must be two numbers like `betas=0.9,0.999`, got {v}")
                    })?;
                }
                "eps" => cfg.eps = number(key, v)?,
                "weight_decay" => cfg.weight_decay = number(key, v)?,
                "amsgrad" | "maximize" => match v {
                    ArgValue::Bool(false) => {}
                    _ => return Err(format!("optimizer_args: AdamW `{key}={v}` is not supported (only False)")),
                },
                _ => {} // kernel-selection flags: no effect on the result
            }
        }
        cfg.validate().map_err(|e| format!("optimizer_args: {e}"))?;
        Ok(cfg)
    }

    /// torch's constructor checks (same wording).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (b1, b2) = self.betas;
        if !(0.0..1.0).contains(&b1) {
            return Err(format!("Invalid beta parameter at index 0: {}", python_float_repr(b1)));
        }
        if !(0.0..1.0).contains(&b2) {
            return Err(format!("Invalid beta parameter at index 1: {}", python_float_repr(b2)));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(format!("Invalid epsilon value: {}", python_float_repr(self.eps)));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(format!("Invalid weight_decay value: {}", python_float_repr(self.weight_decay)));
        }
        Ok(())
    }
}

/// Per-parameter AdamW state, created at the parameter's first update (as torch does lazily).
#[derive(Debug, Clone)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Updates applied to this parameter (torch's per-parameter `state["step"]`).
    step: u64,
}

/// `torch.optim.AdamW` (amsgrad off): per parameter with gradient g at its `t`-th update,
/// `p ← p·(1 − lr·wd)`, `m ← lerp(m, g, 1 − β1)`, `v ← β2·v + (1 − β2)·g²`,
/// `p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)`, in torch's operation order, in f32 on
/// the parameter's device (parameters of other dtypes are updated through f32 and cast back).
/// Moments live on the same device.
#[derive(Debug)]
pub struct AdamW {
    groups: Vec<ParamGroup>,
    config: AdamWConfig,
    moments: Vec<Vec<Option<Moments>>>,
    args: OptimizerArgs,
}

impl AdamW {
    /// `ss_optimizer`'s class path.
    pub const CLASS_PATH: &'static str = "torch.optim.adamw.AdamW";

    /// Group names must be unique (they name the state entries) and base lrs finite and ≥ 0.
    pub fn new(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<Self> {
        config.validate().map_err(msg)?;
        for (i, g) in groups.iter().enumerate() {
            if !(g.lr >= 0.0 && g.lr.is_finite()) {
                return Err(msg(format!("param group `{}`: Invalid learning rate: {}", g.name, g.lr)));
            }
            if groups[..i].iter().any(|o| o.name == g.name) {
                return Err(msg(format!("two param groups are named `{}`; group names must be unique", g.name)));
            }
        }
        let moments = groups.iter().map(|g| vec![None; g.vars.len()]).collect();
        Ok(AdamW { groups, config, moments, args: OptimizerArgs::default() })
    }

    /// Built from sd-scripts' `--optimizer_args` (betas, eps, weight_decay); unknown keys are
    /// errors naming the key. The arguments also make up [`Optimizer::description`].
    pub fn from_args(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let config = AdamWConfig::from_args(args).map_err(msg)?;
        let mut opt = AdamW::new(groups, config)?;
        opt.args = args.clone();
        Ok(opt)
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    fn state_key(group: &str, index: usize, what: &str) -> String {
        format!("{group}.{index}.{what}")
    }

    fn update(&self, var: &Var, grad: &Tensor, lr: f64, slot: Option<&Moments>) -> Result<Moments> {
        let cfg = &self.config;
        let dev = var.device();
        let p = var.as_detached_tensor().to_dtype(DType::F32)?;
        let g = grad.detach().to_device(dev)?.to_dtype(DType::F32)?;
        let (m, v, step) = match slot {
            Some(s) => (s.exp_avg.clone(), s.exp_avg_sq.clone(), s.step + 1),
            None => (p.zeros_like()?, p.zeros_like()?, 1),
        };
        let (b1, b2) = cfg.betas;
        // Decoupled weight decay; torch multiplies by the f32 value of (1 − lr·wd).
        let p = if cfg.weight_decay != 0.0 { p.affine(1.0 - lr * cfg.weight_decay, 0.0)? } else { p };
        // exp_avg.lerp_(grad, 1 − β1): torch's lerp switches formula at weight 0.5.
        let w = (1.0 - b1) as f32;
        let m = if w.abs() < 0.5 {
            (&m + (&g - &m)?.affine(w as f64, 0.0)?)?
        } else {
            (&g - (&g - &m)?.affine((1.0f32 - w) as f64, 0.0)?)?
        };
        // exp_avg_sq.mul_(β2).addcmul_(grad, grad, value = 1 − β2)
        let v = (v.affine(b2, 0.0)? + (g.affine(1.0 - b2, 0.0)? * &g)?)?;
        let t = step as f64;
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2 = 1.0 - b2.powf(t);
        let step_size = lr / bias_correction1;
        let bc2_sqrt = Tensor::new(bias_correction2.powf(0.5) as f32, dev)?;
        // denom = (√v / √bc2) + ε (a true f32 division, as torch), then p.addcdiv_(m, denom, −step_size)
        let denom = v.sqrt()?.broadcast_div(&bc2_sqrt)?.affine(1.0, cfg.eps)?;
        let p = (p + (m.affine(-step_size, 0.0)? / &denom)?)?;
        var.set(&p.to_dtype(var.dtype())?)?;
        Ok(Moments { exp_avg: m, exp_avg_sq: v, step })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
        check_step_inputs(&self.groups, grads, lrs)?;
        // Every shape first: a bad gradient must not leave the step half applied.
        for (group, group_grads) in self.groups.iter().zip(grads) {
            for (i, (var, grad)) in group.vars.iter().zip(group_grads).enumerate() {
                if let Some(grad) = grad {
                    if grad.dims() != var.dims() {
                        return Err(msg(format!(
                            "AdamW: gradient {i} of group `{}` has shape {:?}, the parameter has {:?}",
                            group.name,
                            grad.dims(),
                            var.dims()
                        )));
                    }
                }
            }
        }
        for (gi, group) in self.groups.iter().enumerate() {
            for (i, var) in group.vars.iter().enumerate() {
                let Some(grad) = &grads[gi][i] else { continue };
                let new = self.update(var, grad, lrs[gi], self.moments[gi][i].as_ref())?;
                self.moments[gi][i] = Some(new);
            }
        }
        Ok(())
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Tensors `{group}.{i}.exp_avg` / `{group}.{i}.exp_avg_sq` (f32, for parameters updated at
    /// least once); scalars `{"optimizer": "AdamW", "betas", "eps", "weight_decay",
    /// "groups": [{"name", "lr", "steps": [per-parameter update counts]}]}`.
    fn state(&self) -> Result<OptimizerState> {
        let mut tensors = BTreeMap::new();
        let mut groups = Vec::new();
        for (group, moments) in self.groups.iter().zip(&self.moments) {
            let mut steps = Vec::new();
            for (i, slot) in moments.iter().enumerate() {
                steps.push(slot.as_ref().map_or(0, |s| s.step));
                if let Some(s) = slot {
                    tensors.insert(Self::state_key(&group.name, i, "exp_avg"), s.exp_avg.clone());
                    tensors.insert(Self::state_key(&group.name, i, "exp_avg_sq"), s.exp_avg_sq.clone());
                }
            }
            groups.push(json!({"name": group.name, "lr": group.lr, "steps": steps}));
        }
        let c = &self.config;
        let scalars = json!({
            "optimizer": "AdamW",
            "betas": [c.betas.0, c.betas.1],
            "eps": c.eps,
            "weight_decay": c.weight_decay,
            "groups": groups,
        });
        Ok(OptimizerState { tensors, scalars })
    }

    /// Like torch's `load_state_dict`, the saved betas/eps/weight_decay replace the current ones
    /// (resuming continues the run that was saved); group base lrs stay as constructed.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let s = &state.scalars;
        let bad = |what: &str| msg(format!("AdamW state: {what}"));
        match s.get("optimizer").and_then(|v| v.as_str()) {
            Some("AdamW") => {}
            Some(other) => return Err(bad(&format!("it was saved by the {other} optimizer, not AdamW"))),
            None => return Err(bad("missing `optimizer` entry; not an optimizer state")),
        }
        let num =
            |key: &str| s.get(key).and_then(|v| v.as_f64()).ok_or_else(|| bad(&format!("missing number `{key}`")));
        let betas = s
            .get("betas")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_f64()?, a[1].as_f64()?)))
            .ok_or_else(|| bad("`betas` must be two numbers"))?;
        let config = AdamWConfig { betas, eps: num("eps")?, weight_decay: num("weight_decay")? };
        config.validate().map_err(|e| bad(&e))?;
        let groups = s.get("groups").and_then(|v| v.as_array()).ok_or_else(|| bad("missing `groups`"))?;
        if groups.len() != self.groups.len() {
            return Err(bad(&format!(
                "it has {} param groups, this run has {} ({})",
                groups.len(),
                self.groups.len(),
                self.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        let mut used = 0usize;
        let mut moments = Vec::with_capacity(self.groups.len());
        for (group, saved) in self.groups.iter().zip(groups) {
            let name = saved.get("name").and_then(|v| v.as_str()).unwrap_or("");
            if name != group.name {
                return Err(bad(&format!("param group `{name}` where this run has `{}`", group.name)));
            }
            let steps = saved
                .get("steps")
                .and_then(|v| v.as_array())
                .ok_or_else(|| bad(&format!("group `{name}`: missing `steps`")))?;
            if steps.len() != group.vars.len() {
                return Err(bad(&format!(
                    "group `{name}` has {} parameters, this run has {}",
                    steps.len(),
                    group.vars.len()
                )));
            }
            let mut slots = Vec::with_capacity(group.vars.len());
            for (i, (var, step)) in group.vars.iter().zip(steps).enumerate() {
                let step = step.as_u64().ok_or_else(|| bad(&format!("group `{name}`: bad step count {step}")))?;
                if step == 0 {
                    slots.push(None);
                    continue;
                }
                let mut get = |what: &str| -> Result<Tensor> {
                    let key = Self::state_key(name, i, what);
                    let t = state.tensors.get(&key).ok_or_else(|| bad(&format!("missing tensor `{key}`")))?;
                    if t.dims() != var.dims() {
                        return Err(bad(&format!(
                            "tensor `{key}` has shape {:?}, the parameter has {:?}",
                            t.dims(),
                            var.dims()
                        )));
                    }
                    used += 1;
                    t.to_device(var.device())?.to_dtype(DType::F32)
                };
                let exp_avg = get("exp_avg")?;
                let exp_avg_sq = get("exp_avg_sq")?;
                slots.push(Some(Moments { exp_avg, exp_avg_sq, step }));
            }
            moments.push(slots);
        }
        if used != state.tensors.len() {
            let expected: Vec<String> = self
                .groups
                .iter()
                .zip(&moments)
                .flat_map(|(g, slots)| {
                    slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.is_some())
                        .flat_map(move |(i, _)| ["exp_avg", "exp_avg_sq"].map(|w| Self::state_key(&g.name, i, w)))
                })
                .collect();
            let extra = state.tensors.keys().find(|k| !expected.contains(k)).cloned().unwrap_or_default();
            return Err(bad(&format!("unexpected tensor `{extra}` (no parameter of this run matches it)")));
        }
        self.config = config;
        self.moments = moments;
        Ok(())
    }

    fn description(&self) -> String {
        describe_optimizer(Self::CLASS_PATH, &self.args)
    }
}

/// Shape checks shared by every optimizer's `step`.
pub fn check_step_inputs(groups: &[ParamGroup], grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
    if grads.len() != groups.len() || lrs.len() != groups.len() {
        return Err(msg(format!(
            "optimizer step: {} param groups but {} gradient lists and {} learning rates",
            groups.len(),
            grads.len(),
            lrs.len()
        )));
    }
    for ((group, g), lr) in groups.iter().zip(grads).zip(lrs) {
        if g.len() != group.vars.len() {
            return Err(msg(format!(
                "optimizer step: group `{}` has {} parameters but {} gradients",
                group.name,
                group.vars.len(),
                g.len()
            )));
        }
        if !lr.is_finite() {
            return Err(msg(format!("optimizer step: learning rate of group `{}` is {lr}", group.name)));
        }
    }
    Ok(())
}
