//! Checks real responses against `edge/openapi.yaml`: the status must be documented for the
//! operation and a JSON body must match its schema (the subset of JSON Schema the spec uses).

use serde_json::Value;

use crate::http::Response;

pub struct Spec {
    doc: Value,
}

impl Spec {
    pub fn load() -> Spec {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge/openapi.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Spec { doc: serde_yaml::from_str(&text).expect("openapi.yaml parses") }
    }

    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("only local $refs: {r}"));
            v = self.doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    /// Panics unless `resp` is a documented response of `method path`.
    pub fn check(&self, method: &str, path: &str, resp: &Response) {
        let path = path.split('?').next().unwrap_or(path);
        let op = self
            .doc
            .get("paths")
            .and_then(|p| p.get(path))
            .map(|item| self.resolve(item))
            .and_then(|p| p.get(method.to_ascii_lowercase()))
            .unwrap_or_else(|| panic!("{method} {path} is not in openapi.yaml"));
        let status = resp.status.to_string();
        let documented = op.get("responses").and_then(|r| r.get(&status)).unwrap_or_else(|| {
            panic!(
                "{method} {path} answered {status}, which openapi.yaml does not document: {}",
                String::from_utf8_lossy(&resp.body)
            )
        });
        let documented = self.resolve(documented);
        let Some(schema) = documented.pointer("/content/application~1json/schema") else { return };
        assert_eq!(resp.header("content-type"), Some("application/json"), "{method} {path} {status}");
        let body: Value = serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("{method} {path} {status}: body is not JSON: {e}"));
        if let Err(e) = self.validate(schema, &body, "$") {
            panic!("{method} {path} {status}: body does not match openapi.yaml: {e}\nbody: {body}");
        }
    }

    fn validate(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if v.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
            let matching = options.iter().filter(|o| self.validate(o, v, at).is_ok()).count();
            return if matching == 1 { Ok(()) } else { Err(format!("{at}: matches {matching} of oneOf")) };
        }
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            let ok = match t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                other => return Err(format!("{at}: unsupported schema type {other}")),
            };
            if !ok {
                return Err(format!("{at}: expected {t}, got {v}"));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(v)
        {
            return Err(format!("{at}: {v} is not one of {allowed:?}"));
        }
        if let (Some(max), Some(s)) = (schema.get("maxLength").and_then(Value::as_u64), v.as_str())
            && s.chars().count() as u64 > max
        {
            return Err(format!("{at}: longer than {max}"));
        }
        if let Some(obj) = v.as_object() {
            for req in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let key = req.as_str().unwrap_or_default();
                if !obj.contains_key(key) {
                    return Err(format!("{at}: missing required `{key}`"));
                }
            }
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    if let Some(child) = obj.get(k) {
                        self.validate(sub, child, &format!("{at}.{k}"))?;
                    }
                }
            }
        }
        if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
            for (i, child) in arr.iter().enumerate() {
                self.validate(items, child, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }
}
