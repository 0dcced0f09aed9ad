//! The local publish protocol: newline-delimited JSON between a publisher and its edge
//! agent, one object per line.
//!
//! ```text
//! publisher → {"hello": {"publisher": "nginx", "tables": ["load_info"]}}
//! agent     → {"want": ["load_info"]}                  (again whenever the set changes)
//! publisher → {"publish": {"table": "load_info", "rows": [{"georegion": 1, "hits": 10, ...}]}}
//! agent     → {"ok": {"table": "load_info", "rows": 1}}
//!           | {"error": {"table": "load_info", "row": 0, "column": "hits", "message": "..."}}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A row as publishers send it: column name → value.
pub type Row = Map<String, Value>;

/// What a publisher sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FromPublisher {
    Hello(Hello),
    Publish(Publish),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub publisher: String,
    pub tables: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    pub table: String,
    pub rows: Vec<Row>,
}

/// What the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FromAgent {
    Want(Vec<String>),
    Ok(PublishOk),
    Error(PublishError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishOk {
    pub table: String,
    pub rows: usize,
}

/// A refused line or publish. `table`, `row` and `column` are set when known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", self.describe())]
pub struct PublishError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub message: String,
}

impl PublishError {
    pub fn new(message: impl Into<String>) -> Self {
        PublishError {
            table: None,
            row: None,
            column: None,
            message: message.into(),
        }
    }

    pub fn table(mut self, table: &str) -> Self {
        self.table = Some(table.to_string());
        self
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.table {
            s.push_str(&format!("table '{t}'"));
        }
        if let Some(r) = self.row {
            s.push_str(&format!(", row {r}"));
        }
        if let Some(c) = &self.column {
            s.push_str(&format!(", column '{c}'"));
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&self.message);
        s
    }
}

/// Decodes one line from a publisher. Never panics, whatever the bytes.
pub fn decode_line(line: &[u8]) -> Result<FromPublisher, PublishError> {
    let text = std::str::from_utf8(line)
        .map_err(|e| PublishError::new(format!("line is not UTF-8: {e}")))?;
    serde_json::from_str(text.trim_end_matches(['\r', '\n'])).map_err(|e| {
        PublishError::new(format!(
            "malformed message ({e}); expected {{\"hello\": {{...}}}} or {{\"publish\": {{...}}}}"
        ))
    })
}

/// Encodes a message as one line, newline included.
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Our own message types always serialize.
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let hello = FromPublisher::Hello(Hello {
            publisher: "p".into(),
            tables: vec!["sys".into()],
        });
        assert_eq!(decode_line(&encode_line(&hello)).ok(), Some(hello));
        let line = br#"{"publish": {"table": "t", "rows": [{"a": 1, "b": "x"}]}}"#;
        match decode_line(line) {
            Ok(FromPublisher::Publish(p)) => assert_eq!((p.table.as_str(), p.rows.len()), ("t", 1)),
            other => panic!("{other:?}"),
        }
        let want =
            String::from_utf8(encode_line(&FromAgent::Want(vec!["a".into()]))).unwrap_or_default();
        assert_eq!(want, "{\"want\":[\"a\"]}\n");
    }

    #[test]
    fn refuses_unknown_and_malformed() {
        for line in [
            &b"{"[..],
            b"[]",
            b"{\"publish\": {\"table\": 1}}",
            b"{\"hello\": {}, \"x\": 1}",
            b"\xff\xfe",
            b"",
        ] {
            assert!(
                decode_line(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_line(&bytes);
        }

        #[test]
        fn json_shaped_input_never_panics(s in r#"\{"(hello|publish|x)": ?[\{\[]("(publisher|table|rows|tables)": ?("[a-z]*"|\[[0-9, "a-z\{\}:]*\]|[0-9]+),? ?){0,3}[\}\]]\}"#) {
            let _ = decode_line(s.as_bytes());
        }
    }
}
