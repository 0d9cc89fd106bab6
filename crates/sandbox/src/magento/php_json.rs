//! Magento's web API JSON encoder, byte for byte: PHP's `json_encode` with
//! `JSON_HEX_TAG | JSON_HEX_APOS | JSON_HEX_QUOT | JSON_HEX_AMP` (what Laminas' encoder
//! passes), slashes escaped, non-ASCII as `\uXXXX`, keys in the order the module's
//! interfaces declare them, and floats as PHP prints them — a whole float without a
//! fraction (`2`, not `2.0`: there is no `JSON_PRESERVE_ZERO_FRACTION`), any other in
//! its shortest round-trip form (`23.990000000000002`). Contract §8.2 and §12.1.

use rust_decimal::{Decimal, prelude::ToPrimitive as _};

/// A PHP value on its way to `json_encode`, objects in insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum Php {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Php>),
    Obj(Vec<(String, Php)>),
}

impl Php {
    /// A PHP float holding a Magento amount (stored as DECIMAL, read back as float).
    pub fn money(d: Decimal) -> Self {
        Self::Float(d.to_f64().expect("amounts fit in a double"))
    }

    pub fn obj() -> Obj {
        Obj(Vec::new())
    }

    /// The encoded text, as Magento's web API writes it.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(256);
        write_value(&mut out, self, Flags::WEBAPI);
        out
    }

    /// The encoded text as the module's outbox stores an event body
    /// (`json_encode($body, JSON_UNESCAPED_SLASHES)`).
    pub fn encode_event(&self) -> String {
        let mut out = String::with_capacity(256);
        write_value(&mut out, self, Flags::EVENT);
        out
    }

    /// The same document as a `serde_json::Value` (what a JSON reader sees).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.encode()).expect("the encoder writes JSON")
    }
}

impl From<&str> for Php {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<String> for Php {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<&String> for Php {
    fn from(s: &String) -> Self {
        Self::Str(s.clone())
    }
}

impl From<i64> for Php {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<bool> for Php {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl<T: Into<Php>> From<Vec<T>> for Php {
    fn from(items: Vec<T>) -> Self {
        Self::List(items.into_iter().map(Into::into).collect())
    }
}

/// An object under construction; nullable getters that are null are left out, as
/// Magento's output processor does.
#[derive(Debug, Clone, Default)]
pub struct Obj(Vec<(String, Php)>);

impl Obj {
    pub fn put(mut self, key: &str, value: impl Into<Php>) -> Self {
        self.0.push((key.to_owned(), value.into()));
        self
    }

    pub fn opt(self, key: &str, value: Option<impl Into<Php>>) -> Self {
        match value {
            Some(v) => self.put(key, v),
            None => self,
        }
    }

    pub fn money(self, key: &str, value: Decimal) -> Self {
        self.put(key, Php::money(value))
    }

    pub fn opt_money(self, key: &str, value: Option<Decimal>) -> Self {
        match value {
            Some(v) => self.money(key, v),
            None => self,
        }
    }

    pub fn build(self) -> Php {
        Php::Obj(self.0)
    }
}

impl From<Obj> for Php {
    fn from(o: Obj) -> Self {
        o.build()
    }
}

/// Which of `json_encode`'s escaping flags are on.
#[derive(Debug, Clone, Copy)]
struct Flags {
    /// `JSON_HEX_TAG | JSON_HEX_APOS | JSON_HEX_QUOT | JSON_HEX_AMP`.
    hex: bool,
    /// Not `JSON_UNESCAPED_SLASHES`.
    escape_slashes: bool,
}

impl Flags {
    const WEBAPI: Self = Self {
        hex: true,
        escape_slashes: true,
    };
    const EVENT: Self = Self {
        hex: false,
        escape_slashes: false,
    };
}

fn write_value(out: &mut String, value: &Php, flags: Flags) {
    match value {
        Php::Null => out.push_str("null"),
        Php::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Php::Int(n) => out.push_str(&n.to_string()),
        Php::Float(f) => out.push_str(&php_float(*f)),
        Php::Str(s) => write_string(out, s, flags),
        Php::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, flags);
            }
            out.push(']');
        }
        Php::Obj(members) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k, flags);
                out.push(':');
                write_value(out, v, flags);
            }
            out.push('}');
        }
    }
}

/// A PHP float as `json_encode` prints it (serialize_precision -1).
pub fn php_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        return format!("{f:.0}");
    }
    // Rust's `Display` is the shortest text that reads back as the same double, which
    // is what PHP's zend_gcvt gives with precision 17 in mode 0.
    format!("{f}")
}

fn write_string(out: &mut String, s: &str, flags: Flags) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' if flags.hex => out.push_str("\\u0022"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if flags.escape_slashes => out.push_str("\\/"),
            '<' if flags.hex => out.push_str("\\u003C"),
            '>' if flags.hex => out.push_str("\\u003E"),
            '&' if flags.hex => out.push_str("\\u0026"),
            '\'' if flags.hex => out.push_str("\\u0027"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7f => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_floats_lose_their_fraction() {
        let v = Php::obj()
            .put("qty", Php::Float(2.0))
            .put("unit_price", Php::Float(34.0))
            .put("rate", Php::Float(1.0))
            .put("tax", Php::Float(0.2))
            .put("line_total", Php::Float(23.990000000000002))
            .put("id", 7_i64)
            .build();
        assert_eq!(
            v.encode(),
            r#"{"qty":2,"unit_price":34,"rate":1,"tax":0.2,"line_total":23.990000000000002,"id":7}"#
        );
    }

    #[test]
    fn text_is_escaped_like_the_encoder() {
        let v = Php::obj()
            .put("name", "Fish & Chips 'n' <b>\"Tea\"</b> / Café ☕ 🍵")
            .build();
        assert_eq!(
            v.encode(),
            r#"{"name":"Fish \u0026 Chips \u0027n\u0027 \u003Cb\u003E\u0022Tea\u0022\u003C\/b\u003E \/ Caf\u00e9 \u2615 \ud83c\udf75"}"#
        );
        // Whatever the escaping, it is JSON: the text reads back unchanged.
        assert_eq!(v.to_value()["name"], "Fish & Chips 'n' <b>\"Tea\"</b> / Café ☕ 🍵");
    }

    #[test]
    fn event_bodies_keep_slashes() {
        let v = Php::obj().put("url", "a/b & 'c'").put("é", "\"").build();
        assert_eq!(v.encode_event(), r#"{"url":"a/b & 'c'","\u00e9":"\""}"#);
    }

    #[test]
    fn keys_keep_the_interface_order() {
        let v = Php::obj()
            .put("sku", "A")
            .put("name", "B")
            .put("qty", Php::Float(1.5))
            .build();
        assert_eq!(v.encode(), r#"{"sku":"A","name":"B","qty":1.5}"#);
    }
}
