//! Reading config values: typed getters that tell an absent key from an explicit
//! `null` and name the key in every error, shared by the config parsers.

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

pub(super) enum Field<'a> {
    Absent,
    Null,
    Val(&'a Value),
}

pub(super) fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Field<'a> {
    match m.get(key) {
        None => Field::Absent,
        Some(Value::Null) => Field::Null,
        Some(v) => Field::Val(v),
    }
}

pub(super) fn as_usize(key: &str, v: &Value) -> Result<usize> {
    if let Some(u) = v.as_u64() {
        return Ok(u as usize);
    }
    if let Some(f) = v.as_f64() {
        if f >= 0.0 && f.fract() == 0.0 && f < 1e15 {
            return Ok(f as usize);
        }
    }
    bail!("field {key}: expected a non-negative integer, got {v}")
}

pub(super) fn as_f64(key: &str, v: &Value) -> Result<f64> {
    v.as_f64().ok_or_else(|| anyhow!("field {key}: expected a number, got {v}"))
}

pub(super) fn as_bool(key: &str, v: &Value) -> Result<bool> {
    v.as_bool().ok_or_else(|| anyhow!("field {key}: expected true or false, got {v}"))
}

pub(super) fn as_str<'a>(key: &str, v: &'a Value) -> Result<&'a str> {
    v.as_str().ok_or_else(|| anyhow!("field {key}: expected a string, got {v}"))
}

pub(super) fn as_list<'a>(key: &str, v: &'a Value) -> Result<&'a Vec<Value>> {
    v.as_array().ok_or_else(|| anyhow!("field {key}: expected a list, got {v}"))
}

/// Required-or-default readers. `null` counts as "use the default" only where the
/// caller says so.
pub(super) fn get_usize(m: &Map<String, Value>, key: &str, default: Option<usize>) -> Result<usize> {
    match field(m, key) {
        Field::Val(v) => as_usize(key, v),
        Field::Absent => default.ok_or_else(|| anyhow!("missing field {key}")),
        Field::Null => bail!("field {key} is null; an integer is required"),
    }
}

pub(super) fn get_f64(m: &Map<String, Value>, key: &str, default: Option<f64>) -> Result<f64> {
    match field(m, key) {
        Field::Val(v) => as_f64(key, v),
        Field::Absent => default.ok_or_else(|| anyhow!("missing field {key}")),
        Field::Null => bail!("field {key} is null; a number is required"),
    }
}

pub(super) fn get_bool(m: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match field(m, key) {
        Field::Val(v) => as_bool(key, v),
        Field::Absent => Ok(default),
        Field::Null => bail!("field {key} is null; true or false is required"),
    }
}

/// A string field that, when present, must equal one of `allowed` (an absent key
/// means the default, which is allowed; `null` is accepted only with `null_ok`).
pub(super) fn check_str(m: &Map<String, Value>, key: &str, allowed: &[&str], null_ok: bool) -> Result<()> {
    match field(m, key) {
        Field::Absent => Ok(()),
        Field::Null if null_ok => Ok(()),
        Field::Null => bail!("unsupported {key} null (supported: {})", allowed.join(", ")),
        Field::Val(v) => {
            let s = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            if allowed.contains(&s.as_str()) {
                Ok(())
            } else {
                bail!("unsupported {key} {s:?} (supported: {})", allowed.join(", "))
            }
        }
    }
}

pub(super) fn get_usize_list(m: &Map<String, Value>, key: &str, default: &[usize]) -> Result<Vec<usize>> {
    match field(m, key) {
        Field::Absent => Ok(default.to_vec()),
        Field::Null => bail!("field {key} is null; a list of integers is required"),
        Field::Val(v) => as_list(key, v)?.iter().map(|x| as_usize(key, x)).collect(),
    }
}

pub(super) fn get_str_list(m: &Map<String, Value>, key: &str, default: &[&str]) -> Result<Vec<String>> {
    match field(m, key) {
        Field::Absent => Ok(default.iter().map(|s| s.to_string()).collect()),
        Field::Null => bail!("field {key} is null; a list of block types is required"),
        Field::Val(v) => as_list(key, v)?.iter().map(|x| as_str(key, x).map(str::to_string)).collect(),
    }
}

/// Parses JSON, or YAML when the text is not JSON.
pub fn parse_json_or_yaml(text: &str) -> Result<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        Err(json_err) => serde_yaml::from_str::<Value>(text)
            .map_err(|yaml_err| anyhow!("neither JSON ({json_err}) nor YAML ({yaml_err})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_null_and_wrong_types_are_told_apart() {
        let v: Value = serde_json::from_str(r#"{"a": 3, "b": null, "c": "x", "d": 2.5}"#).unwrap();
        let m = v.as_object().unwrap();
        assert_eq!(get_usize(m, "a", None).unwrap(), 3);
        assert_eq!(get_usize(m, "z", Some(7)).unwrap(), 7);
        assert!(get_usize(m, "z", None).unwrap_err().to_string().contains("missing field z"));
        assert!(get_usize(m, "b", Some(1)).unwrap_err().to_string().contains("b is null"));
        assert!(get_usize(m, "d", None).unwrap_err().to_string().contains("field d"));
        assert!(check_str(m, "c", &["y"], false).unwrap_err().to_string().contains('x'));
        assert_eq!(parse_json_or_yaml("a: 1").unwrap()["a"], 1);
    }
}
