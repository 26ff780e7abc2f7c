//! Objects of custom kinds checked against their CustomResourceDefinition's
//! `openAPIV3Schema`, as an apiserver checks them, plus what a strict
//! client adds: a field the schema does not declare is an error (the
//! apiserver would silently prune it, and the setting it carried would
//! never apply).
//!
//! The keywords these CRDs use are checked: `type`, `properties`,
//! `required`, `items`, `additionalProperties`, `enum`, `pattern`,
//! `minLength`, `minimum`, `maximum`, `anyOf`, `x-kubernetes-int-or-string`
//! and `x-kubernetes-preserve-unknown-fields`. A keyword the validator does
//! not know is an error, so a newer schema cannot pass unchecked. CEL rules
//! (`x-kubernetes-validations`) would be one: none of the vendored CRDs has
//! any.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Keywords that describe and do not constrain, or constrain only what a
/// server does with lists and maps (merge keys, atomicity).
const DESCRIPTIVE: &[&str] = &[
    "description",
    "default",
    "format",
    "nullable",
    "x-kubernetes-map-type",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
];
const CHECKED: &[&str] = &[
    "type",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "pattern",
    "minLength",
    "minimum",
    "maximum",
    "anyOf",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
];

/// A CRD file's kind, group and the schema of each served version.
pub struct Crd {
    pub group: String,
    pub kind: String,
    versions: Vec<(String, Value)>,
}

impl Crd {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let crd: Value = serde_yaml_ng::from_str(&text)?;
        let spec = &crd["spec"];
        let versions = spec["versions"]
            .as_array()
            .context("spec.versions")?
            .iter()
            .filter(|v| v["served"] == true)
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or_default().to_string(),
                    v["schema"]["openAPIV3Schema"].clone(),
                )
            })
            .collect();
        Ok(Self {
            group: spec["group"].as_str().context("spec.group")?.to_string(),
            kind: spec["names"]["kind"]
                .as_str()
                .context("spec.names.kind")?
                .to_string(),
            versions,
        })
    }

    /// Whether this CRD defines `object`'s apiVersion and kind.
    pub fn defines(&self, object: &Value) -> bool {
        self.schema_for(object).is_some()
    }

    fn schema_for(&self, object: &Value) -> Option<&Value> {
        let (group, version) = object["apiVersion"].as_str()?.split_once('/')?;
        if group != self.group || object["kind"] != self.kind.as_str() {
            return None;
        }
        self.versions
            .iter()
            .find(|(name, _)| name == version)
            .map(|(_, schema)| schema)
    }

    /// Every violation of the schema in `object`, with its path.
    pub fn violations(&self, object: &Value) -> Result<Vec<String>> {
        let schema = self
            .schema_for(object)
            .with_context(|| format!("{}/{} is not served by this CRD", self.group, self.kind))?;
        let mut found = Vec::new();
        // metadata is the apiserver's ObjectMeta, not the CRD's.
        let mut without_metadata = object.clone();
        if let Some(map) = without_metadata.as_object_mut() {
            map.remove("metadata");
        }
        check(schema, &without_metadata, "", &mut found)?;
        Ok(found)
    }
}

fn check(schema: &Value, value: &Value, path: &str, found: &mut Vec<String>) -> Result<()> {
    let Some(keywords) = schema.as_object() else {
        bail!("{path}: the schema is not an object");
    };
    if let Some(unknown) = keywords
        .keys()
        .find(|k| !DESCRIPTIVE.contains(&k.as_str()) && !CHECKED.contains(&k.as_str()))
    {
        bail!("{path}: schema keyword {unknown:?} is not checked here: teach crd.rs");
    }
    let mut fail = |message: String| found.push(format!("{}: {message}", display(path)));
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            fail(format!("{value} is neither an integer nor a string"));
        }
        return Ok(());
    }
    if let Some(options) = schema["anyOf"].as_array()
        && !options.iter().any(|option| {
            let mut none = Vec::new();
            check(option, value, path, &mut none).is_ok() && none.is_empty()
        })
    {
        fail(format!("{value} matches none of anyOf"));
    }
    if let Some(kind) = schema["type"].as_str() {
        let fits = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => bail!("{path}: unknown type {other:?}"),
        };
        if !fits {
            fail(format!("{value} is not of type {kind}"));
            return Ok(());
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        fail(format!("{value} is not one of {allowed:?}"));
    }
    if let (Some(pattern), Some(text)) = (schema["pattern"].as_str(), value.as_str()) {
        let regex = regex::Regex::new(pattern).with_context(|| format!("{path}: pattern"))?;
        if !regex.is_match(text) {
            fail(format!("{text:?} does not match {pattern:?}"));
        }
    }
    if let (Some(min), Some(text)) = (schema["minLength"].as_u64(), value.as_str())
        && (text.chars().count() as u64) < min
    {
        fail(format!("{text:?} is shorter than {min}"));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < min
    {
        fail(format!("{n} is below the minimum {min}"));
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), value.as_f64())
        && n > max
    {
        fail(format!("{n} is above the maximum {max}"));
    }
    if let Some(items) = value.as_array() {
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{path}[{i}]"), found)?;
            }
        }
        return Ok(());
    }
    let Some(fields) = value.as_object() else {
        return Ok(());
    };
    for required in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !fields.contains_key(name)
        {
            found.push(format!("{}: {name:?} is required", display(path)));
        }
    }
    let properties = schema["properties"].as_object();
    for (name, field) in fields {
        let at = format!("{path}.{name}");
        match (
            properties.and_then(|p| p.get(name)),
            schema.get("additionalProperties"),
        ) {
            (Some(field_schema), _) => check(field_schema, field, &at, found)?,
            (None, Some(Value::Bool(true))) => {}
            (None, Some(additional @ Value::Object(_))) => check(additional, field, &at, found)?,
            (None, _) if schema["x-kubernetes-preserve-unknown-fields"] == true => {}
            (None, _) => found.push(format!(
                "{}: field not declared by the schema (the apiserver would drop it)",
                display(&at)
            )),
        }
    }
    Ok(())
}

fn display(path: &str) -> &str {
    if path.is_empty() { "." } else { path }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(name: &str) -> Crd {
        Crd::load(&crate::root().join("deploy/check/schemas").join(name)).unwrap()
    }

    #[test]
    fn a_valid_monitor_passes_and_each_kind_of_mistake_is_named() {
        let crd = crd("monitoring.coreos.com_servicemonitors.yaml");
        let good = serde_json::json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "x"},
            "spec": {"selector": {"matchLabels": {"a": "b"}},
                     "endpoints": [{"port": "metrics", "interval": "30s"}]}
        });
        assert!(crd.defines(&good));
        assert_eq!(crd.violations(&good).unwrap(), Vec::<String>::new());

        let mut bad = good.clone();
        bad["spec"]["endpoints"][0]["interval"] = "30 seconds".into();
        bad["spec"]["endpoints"][0]["scheme"] = "ftp".into();
        bad["spec"]["endpoints"][0]["portt"] = "metrics".into();
        bad["spec"]["selector"]["matchLabels"]["a"] = 1.into();
        let found = crd.violations(&bad).unwrap().join("\n");
        assert!(
            found.contains(".spec.endpoints[0].interval: \"30 seconds\" does not match"),
            "{found}"
        );
        assert!(
            found.contains(".spec.endpoints[0].scheme: \"ftp\" is not one of"),
            "{found}"
        );
        assert!(
            found.contains(".spec.endpoints[0].portt: field not declared"),
            "{found}"
        );
        assert!(
            found.contains(".spec.selector.matchLabels.a: 1 is not of type string"),
            "{found}"
        );

        let mut missing = good.clone();
        missing["spec"].as_object_mut().unwrap().remove("selector");
        assert!(
            crd.violations(&missing)
                .unwrap()
                .join("\n")
                .contains("\"selector\" is required")
        );
        let mut other = good;
        other["kind"] = "PodMonitor".into();
        assert!(!crd.defines(&other));
    }
}
