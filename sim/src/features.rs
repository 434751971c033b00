//! Request features that shape the output: tool calls, JSON output, stop strings.
//!
//! What vLLM does (`vllm/entrypoints/openai/chat_completion/serving.py`, `protocol.py`):
//! - `tool_choice: "required"` or `{"type":"function","function":{"name":N}}` with `tools`:
//!   the output is constrained to the tool's JSON arguments and returned as one tool call
//!   (`finish_reason: "tool_calls"`, `content: ""`, id `chatcmpl-tool-...`). `"auto"` needs
//!   a tool parser and a model that decides: the simulator then answers with text.
//! - `response_format` `json_object` / `json_schema`: structured output, valid JSON.
//! - `stop` (a string or a list): the text ends before the first stop string, which is
//!   not included; `finish_reason: "stop"`, `stop_reason` is the string.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::text;

/// The tool to call: `(name, parameters schema)`, when `tool_choice` asks for one.
pub(crate) fn tool_call(
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
) -> Option<(String, Option<Value>)> {
    let tools = tools?;
    let function = |t: &Value| -> Option<(String, Option<Value>)> {
        let f = t.get("function")?;
        Some((
            f.get("name")?.as_str()?.to_owned(),
            f.get("parameters").cloned(),
        ))
    };
    match tool_choice? {
        Value::String(s) if s == "required" => tools.iter().find_map(function),
        Value::Object(o) => {
            let want = o.get("function")?.get("name")?.as_str()?;
            tools
                .iter()
                .filter_map(function)
                .find(|(name, _)| name == want)
        }
        _ => None,
    }
}

/// The JSON schema of `response_format` (`Value::Null`: any JSON object).
pub(crate) fn json_format(response_format: Option<&Value>) -> Option<Value> {
    let rf = response_format?;
    match rf.get("type")?.as_str()? {
        "json_object" => Some(Value::Null),
        "json_schema" => Some(
            rf.get("json_schema")
                .and_then(|j| j.get("schema"))
                .cloned()
                .unwrap_or(Value::Null),
        ),
        _ => None,
    }
}

/// The stop strings of a request.
pub(crate) fn stop_strings(stop: Option<&Value>) -> Vec<String> {
    match stop {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn words(h: u64, n: usize) -> String {
    let mut w = Vec::new();
    text::word_tokens(h, n, &mut w);
    w.concat().trim_start().to_owned()
}

fn value_for(schema: Option<&Value>, h: u64, depth: u32) -> Value {
    let typ = schema
        .and_then(|s| s.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("string");
    match typ {
        "integer" => Value::from(h % 100),
        "number" => Value::from((text::unit_f64(h) * 1000.0).round() / 10.0),
        "boolean" => Value::Bool(h.is_multiple_of(2)),
        "array" => Value::Array(Vec::new()),
        "object" if depth < 4 => object_for(schema, h, depth + 1),
        _ => Value::String(words(h, 3)),
    }
}

fn object_for(schema: Option<&Value>, h: u64, depth: u32) -> Value {
    let mut m = Map::new();
    match schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.as_object())
    {
        Some(props) if !props.is_empty() => {
            for (i, (k, v)) in props.iter().enumerate() {
                m.insert(
                    k.clone(),
                    value_for(Some(v), text::mix64(h ^ i as u64), depth),
                );
            }
        }
        _ => {
            m.insert("answer".to_owned(), Value::String(words(h, 4)));
        }
    }
    Value::Object(m)
}

/// Valid JSON for a schema (an object with every listed property; else `{"answer": ...}`).
pub(crate) fn json_for_schema(schema: Option<&Value>, h: u64) -> String {
    object_for(schema, h, 0).to_string()
}

/// A generated string cut into tokens of about four characters.
pub(crate) fn pieces(s: &str) -> Vec<Cow<'static, str>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        cur.push(c);
        if cur.chars().count() >= 4 {
            out.push(Cow::Owned(std::mem::take(&mut cur)));
        }
    }
    if !cur.is_empty() {
        out.push(Cow::Owned(cur));
    }
    out
}

/// Ends the text before the first stop string; returns the string that matched.
pub(crate) fn apply_stop(tokens: &mut Vec<Cow<'static, str>>, stops: &[String]) -> Option<String> {
    if stops.is_empty() {
        return None;
    }
    let joined: String = tokens.iter().map(|t| t.as_ref()).collect();
    let (pos, stop) = stops
        .iter()
        .filter_map(|s| joined.find(s.as_str()).map(|p| (p, s)))
        .min_by_key(|(p, _)| *p)?;
    let mut kept = Vec::new();
    let mut at = 0;
    for t in tokens.drain(..) {
        if at >= pos {
            break;
        }
        let end = at + t.len();
        if end <= pos {
            kept.push(t);
        } else {
            kept.push(Cow::Owned(t[..pos - at].to_owned()));
        }
        at = end;
    }
    *tokens = kept;
    Some(stop.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_choice_required_or_named() {
        let tools = vec![
            json!({"type":"function","function":{"name":"a","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}),
            json!({"type":"function","function":{"name":"b"}}),
        ];
        assert_eq!(
            tool_call(Some(&tools), Some(&json!("required"))).unwrap().0,
            "a"
        );
        assert_eq!(
            tool_call(
                Some(&tools),
                Some(&json!({"type":"function","function":{"name":"b"}}))
            )
            .unwrap()
            .0,
            "b"
        );
        assert!(tool_call(Some(&tools), Some(&json!("auto"))).is_none());
        assert!(tool_call(None, Some(&json!("required"))).is_none());
    }

    #[test]
    fn json_output_is_valid_and_follows_the_schema() {
        let schema =
            json!({"type":"object","properties":{"n":{"type":"integer"},"name":{"type":"string"}}});
        let v: Value = serde_json::from_str(&json_for_schema(Some(&schema), 7)).unwrap();
        assert!(v["n"].is_u64() && v["name"].is_string());
        let v: Value = serde_json::from_str(&json_for_schema(None, 7)).unwrap();
        assert!(v["answer"].is_string());
        let joined: String = pieces("{\"é\":1}").concat();
        assert_eq!(joined, "{\"é\":1}");
    }

    #[test]
    fn stop_cuts_before_the_first_match() {
        let mut t: Vec<Cow<'static, str>> =
            vec![" the".into(), " model".into(), ".".into(), " x".into()];
        let got = apply_stop(&mut t, &["mod".to_owned(), ".".to_owned()]);
        assert_eq!(got.as_deref(), Some("mod"));
        assert_eq!(t.concat(), " the ");
        let mut t: Vec<Cow<'static, str>> = vec![" a".into()];
        assert!(apply_stop(&mut t, &["zz".to_owned()]).is_none());
        assert_eq!(t.len(), 1);
    }
}
