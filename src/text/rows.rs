//! Training rows in TRL's formats, parsed from JSONL with errors naming the line and field.
//!
//! Preference rows (DPO): `{"prompt", "chosen", "rejected"}`, all plain text or all lists of
//! `{"role", "content"}` messages. SFT rows: `{"prompt", "completion"}` (text or messages),
//! `{"text"}`, or `{"messages"}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chat::Message;
use crate::error::{Error, Location, Result};

/// A field's value: plain text, or a conversation rendered with the model's chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Messages(Vec<Message>),
}

impl From<String> for Content {
    fn from(s: String) -> Self {
        Content::Text(s)
    }
}

impl From<&str> for Content {
    fn from(s: &str) -> Self {
        Content::Text(s.to_string())
    }
}

/// One preference row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: Content,
    pub chosen: Content,
    pub rejected: Content,
}

/// One SFT row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SftExample {
    /// Loss on the completion only (TRL's `completion_only_loss` default for this format).
    PromptCompletion {
        prompt: Content,
        completion: Content,
    },
    /// Loss on every token.
    Messages { messages: Vec<Message> },
    /// Loss on every token.
    Text { text: String },
}

/// JSONL text and what to call it in errors (a file path, `trainData`).
#[derive(Debug, Clone)]
pub struct Jsonl {
    pub source: String,
    pub text: String,
}

impl Jsonl {
    /// A file's bytes as text: a UTF-8 byte-order mark is dropped, and invalid UTF-8 is an
    /// error naming the line it is on.
    pub fn from_bytes(source: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        let source = source.into();
        let text = text_of(bytes, &source)?;
        Ok(Self { source, text })
    }

    pub fn pairs(&self) -> Result<Vec<PreferencePair>> {
        parse_jsonl(&self.text, &self.source)
    }

    pub fn sft_examples(&self) -> Result<Vec<SftExample>> {
        parse_sft_jsonl(&self.text, &self.source)
    }
}

/// UTF-8 text without a byte-order mark; invalid UTF-8 is reported with its line and byte.
pub fn text_of(bytes: Vec<u8>, source: &str) -> Result<String> {
    let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => rest.to_vec(),
        None => bytes,
    };
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at - bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
        Error::input(
            Location::file(source).line(line),
            format!(
                "invalid UTF-8 at byte {column} of the line (byte 0x{:02X}); save the file as UTF-8",
                bytes[at]
            ),
        )
    })
}

/// Read rows with `parse`: JSONL (one object per line; blank lines skipped) or one JSON array
/// of objects. Errors name `source` and the 1-based line (JSONL) or the `[index]` (array), and
/// the field.
fn parse_lines<T>(
    text: &str,
    source: &str,
    parse: impl Fn(&Map<String, Value>, &dyn Fn(&str) -> Location) -> Result<T>,
) -> Result<Vec<T>> {
    let mut rows = Vec::new();
    // A byte-order mark (from a file, or text handed over by JavaScript) is not part of line 1.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Error::input(
                Location::file(source).line(e.line()),
                format!("invalid JSON: {e}"),
            )
        })?;
        let list = value.as_array().expect("starts with [");
        for (index, row) in list.iter().enumerate() {
            let at = |field: &str| {
                let path = if field.is_empty() {
                    format!("[{index}]")
                } else {
                    format!("[{index}].{field}")
                };
                Location::file(source).field(path)
            };
            let object = row
                .as_object()
                .ok_or_else(|| Error::input(at(""), "expected a JSON object"))?;
            rows.push(parse(object, &at)?);
        }
    } else {
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |field: &str| {
                let l = Location::file(source).line(index + 1);
                if field.is_empty() { l } else { l.field(field) }
            };
            let value: Value = serde_json::from_str(line)
                .map_err(|e| Error::input(at(""), format!("invalid JSON: {e}")))?;
            let object = value
                .as_object()
                .ok_or_else(|| Error::input(at(""), "expected a JSON object"))?;
            rows.push(parse(object, &at)?);
        }
    }
    if rows.is_empty() {
        return Err(Error::input(Location::file(source), "no rows"));
    }
    Ok(rows)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn messages(value: &Value, field: &str, at: &dyn Fn(&str) -> Location) -> Result<Vec<Message>> {
    let list = value.as_array().expect("checked by the caller");
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let here = || at(&format!("{field}[{i}]"));
            let get = |key: &str| -> Result<String> {
                match m.get(key) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(other) => Err(Error::input(
                        here(),
                        format!("`{key}` must be a string, found {}", json_kind(other)),
                    )),
                    None => Err(Error::input(here(), format!("message has no `{key}`"))),
                }
            };
            Ok(Message {
                role: get("role")?,
                content: get("content")?,
            })
        })
        .collect()
}

fn content(
    object: &Map<String, Value>,
    field: &str,
    at: &dyn Fn(&str) -> Location,
) -> Result<Content> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(Content::Text(s.clone())),
        Some(v @ Value::Array(_)) => Ok(Content::Messages(messages(v, field, at)?)),
        Some(other) => Err(Error::input(
            at(field),
            format!(
                "expected a string or a list of messages, found {}",
                json_kind(other)
            ),
        )),
        None => Err(Error::input(at(field), "missing")),
    }
}

/// Parse preference rows (JSONL or a JSON array); `source` names the file in errors. Rows
/// without a `prompt` (or whose `prompt` is text while the answers are conversations) have an
/// implicit prompt, extracted as TRL's `maybe_extract_prompt` does.
pub fn parse_jsonl(text: &str, source: &str) -> Result<Vec<PreferencePair>> {
    parse_lines(text, source, |object, at| {
        let chat = |c: &Content| matches!(c, Content::Messages(_));
        let chosen = content(object, "chosen", at)?;
        let rejected = content(object, "rejected", at)?;
        let prompt = match object.get("prompt") {
            None => None,
            Some(_) => Some(content(object, "prompt", at)?),
        };
        let pair = match prompt {
            Some(prompt) if chat(&prompt) == chat(&chosen) => PreferencePair {
                prompt,
                chosen,
                rejected,
            },
            _ => {
                extract_prompt(chosen, rejected).map_err(|message| Error::input(at(""), message))?
            }
        };
        if chat(&pair.prompt) != chat(&pair.chosen) || chat(&pair.chosen) != chat(&pair.rejected) {
            return Err(Error::input(
                at(""),
                "prompt, chosen and rejected must all be text or all be message lists",
            ));
        }
        Ok(pair)
    })
}

/// The implicit prompt of a row, as TRL's `extract_prompt`: the longest common prefix of chosen
/// and rejected (characters, or whole messages), giving a space just before the difference to
/// the answers; when one answer is a prefix of the other, the last shared element goes to the
/// answers too (TRL's loop index stops one short).
pub fn extract_prompt(
    chosen: Content,
    rejected: Content,
) -> std::result::Result<PreferencePair, String> {
    fn split_at<T: PartialEq>(
        chosen: &[T],
        rejected: &[T],
        is_space: impl Fn(&T) -> bool,
    ) -> Option<usize> {
        let shortest = chosen.len().min(rejected.len());
        let mut idx = (0..shortest)
            .find(|&i| chosen[i] != rejected[i])
            .unwrap_or(shortest.checked_sub(1)?);
        if idx > 0 && idx < shortest && chosen[idx] != rejected[idx] && is_space(&chosen[idx - 1]) {
            idx -= 1;
        }
        Some(idx)
    }
    let no_prompt = "chosen and rejected have no common beginning, so no prompt can be extracted \
                     (give a `prompt` field, or start both answers with the prompt)";
    match (chosen, rejected) {
        (Content::Text(c), Content::Text(r)) => {
            let (cc, rc): (Vec<char>, Vec<char>) = (c.chars().collect(), r.chars().collect());
            let idx = split_at(&cc, &rc, |ch| *ch == ' ')
                .filter(|&i| i > 0)
                .ok_or(no_prompt)?;
            let text = |chars: &[char]| chars.iter().collect::<String>();
            Ok(PreferencePair {
                prompt: Content::Text(text(&cc[..idx])),
                chosen: Content::Text(text(&cc[idx..])),
                rejected: Content::Text(text(&rc[idx..])),
            })
        }
        (Content::Messages(c), Content::Messages(r)) => {
            let idx = split_at(&c, &r, |_| false)
                .filter(|&i| i > 0)
                .ok_or(no_prompt)?;
            Ok(PreferencePair {
                prompt: Content::Messages(c[..idx].to_vec()),
                chosen: Content::Messages(c[idx..].to_vec()),
                rejected: Content::Messages(r[idx..].to_vec()),
            })
        }
        _ => Err("prompt, chosen and rejected must all be text or all be message lists".into()),
    }
}

/// Parse SFT JSONL (`prompt`+`completion`, `messages` or `text` rows).
pub fn parse_sft_jsonl(text: &str, source: &str) -> Result<Vec<SftExample>> {
    parse_lines(text, source, |object, at| {
        if object.contains_key("prompt") || object.contains_key("completion") {
            let prompt = content(object, "prompt", at)?;
            let completion = content(object, "completion", at)?;
            if matches!(prompt, Content::Messages(_)) != matches!(completion, Content::Messages(_))
            {
                return Err(Error::input(
                    at(""),
                    "prompt and completion must both be text or both be message lists",
                ));
            }
            return Ok(SftExample::PromptCompletion { prompt, completion });
        }
        if let Some(value) = object.get("messages") {
            if !value.is_array() {
                return Err(Error::input(at("messages"), "expected a list of messages"));
            }
            return Ok(SftExample::Messages {
                messages: messages(value, "messages", at)?,
            });
        }
        match object.get("text") {
            Some(Value::String(s)) => Ok(SftExample::Text { text: s.clone() }),
            Some(other) => Err(Error::input(
                at("text"),
                format!("expected a string, found {}", json_kind(other)),
            )),
            None => Err(Error::input(
                at(""),
                "expected `prompt` + `completion`, `messages` or `text`",
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_errors_name_line_and_field() {
        let text = "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n\n{\"prompt\":\"a\",\"chosen\":3,\"rejected\":\"c\"}\n";
        let err = parse_jsonl(text, "data.jsonl").unwrap_err().to_string();
        assert!(err.starts_with("data.jsonl:3 (field `chosen`)"), "{err}");
        let err = parse_jsonl("{\"prompt\":\"a\",\"chosen\":\"b\"}", "d.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d.jsonl:1 (field `rejected`): missing"),
            "{err}"
        );
        let err = parse_jsonl("not json", "d.jsonl").unwrap_err().to_string();
        assert!(err.contains("d.jsonl:1: invalid JSON"), "{err}");
        let bad_message = "{\"prompt\":[{\"role\":\"user\"}],\"chosen\":[],\"rejected\":[]}";
        let err = parse_jsonl(bad_message, "c.jsonl").unwrap_err().to_string();
        assert!(
            err.contains("c.jsonl:1 (field `prompt[0]`): message has no `content`"),
            "{err}"
        );
        let mixed = "{\"prompt\":\"a\",\"chosen\":[],\"rejected\":\"c\"}";
        assert!(parse_jsonl(mixed, "m.jsonl").is_err());
    }

    #[test]
    fn byte_order_marks_and_bad_utf8_are_handled() {
        let row = "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}";
        let with_bom = [b"\xEF\xBB\xBF".as_slice(), row.as_bytes()].concat();
        let jsonl = Jsonl::from_bytes("bom.jsonl", with_bom).unwrap();
        assert_eq!(jsonl.pairs().unwrap().len(), 1);
        assert_eq!(
            parse_jsonl(&format!("\u{feff}{row}"), "js").unwrap().len(),
            1
        );
        let bad = [row.as_bytes(), b"\n{\"prompt\":\"\xFF\"}\n"].concat();
        let err = Jsonl::from_bytes("bad.jsonl", bad).unwrap_err().to_string();
        assert!(
            err.starts_with("bad.jsonl:2: invalid UTF-8 at byte 12"),
            "{err}"
        );
    }

    #[test]
    fn sft_rows_of_every_format_parse() {
        let text = concat!(
            "{\"prompt\":\"a\",\"completion\":\"b\"}\n",
            "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n",
            "{\"text\":\"plain\"}\n",
        );
        let rows = parse_sft_jsonl(text, "s.jsonl").unwrap();
        assert!(matches!(rows[0], SftExample::PromptCompletion { .. }));
        assert!(matches!(rows[1], SftExample::Messages { .. }));
        assert!(matches!(rows[2], SftExample::Text { .. }));
        let err = parse_sft_jsonl("{\"prompt\":\"a\"}", "s.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.jsonl:1 (field `completion`): missing"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod implicit_prompt_tests {
    use super::*;

    #[test]
    fn conversations_split_at_the_first_different_message() {
        // TRL's `extract_prompt` docstring example.
        let row = r#"{"chosen": [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "It is blue."}], "rejected": [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "It is green."}]}"#;
        let pair = &parse_jsonl(row, "t").unwrap()[0];
        let one = |c: &Content| match c {
            Content::Messages(m) => (m.len(), m[0].content.clone()),
            Content::Text(_) => panic!("messages expected"),
        };
        assert_eq!(one(&pair.prompt), (1, "What color is the sky?".into()));
        assert_eq!(one(&pair.chosen), (1, "It is blue.".into()));
        assert_eq!(one(&pair.rejected), (1, "It is green.".into()));
        // A text prompt beside conversational answers is ignored, as TRL does.
        let row = row.replacen('{', r#"{"prompt": "ignored", "#, 1);
        assert_eq!(parse_jsonl(&row, "t").unwrap()[0], *pair);
    }
}
