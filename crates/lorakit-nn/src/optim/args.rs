//! sd-scripts' `--optimizer_args`: `key=value` items whose values are Python literals (spec §8.2).

use std::collections::BTreeMap;
use std::fmt;

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
