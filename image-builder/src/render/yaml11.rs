//! Read YAML back the way cloud-init does (YAML 1.1, PyYAML's implicit resolvers)
//! and compare it with the value that was meant.
//!
//! Only plain (unquoted) scalars are subject to implicit typing; quoted and block
//! scalars are always strings. The resolver rules are PyYAML's (`resolver.py`).

use std::sync::OnceLock;

use regex_lite::Regex;
use serde_json::Value;
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle};

/// The type PyYAML gives a plain scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag11 {
    /// `!!bool`
    Bool,
    /// `!!int`
    Int,
    /// `!!float`
    Float,
    /// `!!null`
    Null,
    /// `!!timestamp`
    Timestamp,
    /// `!!merge` (`<<`)
    Merge,
    /// `!!value` (`=`)
    Value,
    /// `!!str`
    Str,
}

struct Rules {
    bool_: Regex,
    float: Regex,
    int: Regex,
    null: Regex,
    timestamp: Regex,
}

fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| {
        let re = |s: &str| Regex::new(s).expect("static regex is valid");
        Rules {
            bool_: re(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"),
            float: re(
                r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
            ),
            int: re(
                r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
            ),
            null: re(r"^(?:~|null|Null|NULL|)$"),
            timestamp: re(
                r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
            ),
        }
    })
}

/// The YAML 1.1 type of a plain scalar with this text.
pub fn resolve_plain(text: &str) -> Tag11 {
    let r = rules();
    if r.bool_.is_match(text) {
        Tag11::Bool
    } else if r.float.is_match(text) {
        Tag11::Float
    } else if r.int.is_match(text) {
        Tag11::Int
    } else if r.null.is_match(text) {
        Tag11::Null
    } else if r.timestamp.is_match(text) {
        Tag11::Timestamp
    } else if text == "<<" {
        Tag11::Merge
    } else if text == "=" {
        Tag11::Value
    } else {
        Tag11::Str
    }
}

#[derive(Debug)]
enum Node {
    Scalar {
        text: String,
        plain: bool,
        line: usize,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A collection being built, with a map's key waiting for its value.
enum Frame {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>, Option<Node>),
}

fn build(text: &str) -> Result<Node, String> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut root = None;
    let mut add = |stack: &mut Vec<Frame>, n: Node| -> Result<(), String> {
        match stack.last_mut() {
            Some(Frame::Seq(items)) => items.push(n),
            Some(Frame::Map(pairs, key)) => match key.take() {
                Some(k) => pairs.push((k, n)),
                None => *key = Some(n),
            },
            None if root.is_some() => return Err("more than one document".into()),
            None => root = Some(n),
        }
        Ok(())
    };
    for ev in Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(|e| format!("not valid YAML: {e}"))?;
        let line = span.start.line();
        match ev {
            Event::Scalar(v, style, _, tag) => {
                if tag.is_some() {
                    return Err(format!("line {line}: unexpected explicit tag"));
                }
                let plain = style == ScalarStyle::Plain;
                add(
                    &mut stack,
                    Node::Scalar {
                        text: v.into_owned(),
                        plain,
                        line,
                    },
                )?;
            }
            Event::SequenceStart(..) => stack.push(Frame::Seq(Vec::new())),
            Event::MappingStart(..) => stack.push(Frame::Map(Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match stack.pop() {
                    Some(Frame::Seq(items)) => Node::Seq(items),
                    Some(Frame::Map(pairs, None)) => Node::Map(pairs),
                    Some(Frame::Map(_, Some(_))) => {
                        return Err(format!("line {line}: key without value"));
                    }
                    None => return Err("unbalanced collection end".into()),
                };
                add(&mut stack, node)?;
            }
            Event::Alias(_) => return Err(format!("line {line}: unexpected alias")),
            _ => {}
        }
    }
    root.ok_or_else(|| "empty document".to_owned())
}

fn path_join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_owned()
    } else {
        format!("{path}.{seg}")
    }
}

fn compare(node: &Node, want: &Value, path: &str) -> Result<(), String> {
    match (node, want) {
        (Node::Map(pairs), Value::Object(obj)) => {
            if pairs.len() != obj.len() {
                return Err(format!(
                    "{path}: {} keys, expected {}",
                    pairs.len(),
                    obj.len()
                ));
            }
            for (k, v) in pairs {
                let Node::Scalar { text, plain, line } = k else {
                    return Err(format!("{path}: non-scalar key"));
                };
                if *plain && resolve_plain(text) != Tag11::Str {
                    return Err(format!(
                        "line {line}: key {text:?} under {path} reads as {:?} in YAML 1.1",
                        resolve_plain(text)
                    ));
                }
                let w = obj
                    .get(text)
                    .ok_or_else(|| format!("line {line}: unexpected key {text:?} under {path}"))?;
                compare(v, w, &path_join(path, text))?;
            }
            Ok(())
        }
        (Node::Seq(items), Value::Array(arr)) => {
            if items.len() != arr.len() {
                return Err(format!(
                    "{path}: {} items, expected {}",
                    items.len(),
                    arr.len()
                ));
            }
            for (i, (n, w)) in items.iter().zip(arr).enumerate() {
                compare(n, w, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Node::Scalar { text, plain, line }, want) => {
            let got = if *plain {
                resolve_plain(text)
            } else {
                Tag11::Str
            };
            let ok = match want {
                Value::String(s) => got == Tag11::Str && text == s,
                Value::Bool(b) => {
                    got == Tag11::Bool
                        && matches!(text.to_ascii_lowercase().as_str(), "true" | "yes" | "on") == *b
                }
                Value::Number(n) => {
                    (got == Tag11::Int || got == Tag11::Float)
                        && text.replace('_', "") == n.to_string()
                }
                Value::Null => got == Tag11::Null,
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "line {line}: {path} is {text:?} read as {got:?} in YAML 1.1, but {want} was meant"
                ))
            }
        }
        (_, want) => Err(format!("{path}: structure differs from {want}")),
    }
}

/// Check that `text` (user-data, comments allowed) reads back as `expected` under YAML 1.1.
pub fn check(text: &str, expected: &Value) -> Result<(), String> {
    let root = build(text)?;
    compare(&root, expected, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyyaml_implicit_types() {
        for s in ["on", "no", "Yes", "OFF", "true"] {
            assert_eq!(resolve_plain(s), Tag11::Bool, "{s}");
        }
        for s in ["12:30", "1_000", "0x10", "0777", "-3", "190:20:30", "0b101"] {
            assert_eq!(resolve_plain(s), Tag11::Int, "{s}");
        }
        for s in ["1.5", ".inf", "-.Inf", ".nan", "12:30.5"] {
            assert_eq!(resolve_plain(s), Tag11::Float, "{s}");
        }
        for s in ["~", "null", ""] {
            assert_eq!(resolve_plain(s), Tag11::Null, "{s}");
        }
        assert_eq!(resolve_plain("2024-01-02"), Tag11::Timestamp);
        // PyYAML needs a dot for floats: 1e3 stays a string.
        for s in ["1e3", "builder", "ünï", "y", "n", "0o17"] {
            assert_eq!(resolve_plain(s), Tag11::Str, "{s}");
        }
    }

    #[test]
    fn catches_bare_scalars_that_change_type() {
        let want = serde_json::json!({"a": "on", "b": ["12:30"], "c": true});
        assert!(check("a: 'on'\nb: ['12:30']\nc: true\n", &want).is_ok());
        let e = check("a: on\nb: ['12:30']\nc: true\n", &want).unwrap_err();
        assert!(e.contains("Bool"), "{e}");
        let e = check("a: 'on'\nb: [12:30]\nc: true\n", &want).unwrap_err();
        assert!(e.contains("b[0]") && e.contains("Int"), "{e}");
        let e = check("a: 'on'\nb: ['12:30']\nc: 'true'\n", &want).unwrap_err();
        assert!(e.contains("c"), "{e}");
    }
}
