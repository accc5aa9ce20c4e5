//! PII policy checks: disallowed field paths and value detectors (e-mail addresses, card numbers
//! with a Luhn check). A hit fails the whole request with 422 so nothing from it is stored.
//!
//! Only `properties` and `context` are scanned: `event`, `distinct_id` and `event_id` are
//! identifiers by contract, and an SDK that puts an e-mail there did so on purpose.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::{PiiDetector, PiiPolicy};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PiiViolation {
    pub index: usize,
    /// Dotted path of the offending field, e.g. `properties.contact.email`.
    pub field: String,
    /// `disallowed_field`, `email`, `card_number`, or `too_deep_to_check` (nested past the
    /// depth a check can walk, so refused rather than passed unchecked).
    pub rule: &'static str,
}

/// Checks one event's `properties` and `context` against `policy`.
pub fn check(
    policy: &PiiPolicy,
    index: usize,
    properties: Option<&RawValue>,
    context: Option<&RawValue>,
) -> Result<(), PiiViolation> {
    if policy.disallowed_fields.is_empty() && policy.detectors.is_empty() {
        return Ok(());
    }
    for (root, raw) in [("properties", properties), ("context", context)] {
        let Some(raw) = raw else { continue };
        // Parsing into a Value is costly, so it only happens for tenants with a policy. The text
        // is valid JSON (the event parsed), so a failure here is serde_json's nesting limit (128):
        // such a value cannot be checked, and letting it through unchecked would let anyone past
        // the policy by nesting the field deep enough.
        let Ok(value) = serde_json::from_str::<Value>(raw.get()) else {
            return Err(PiiViolation { index, field: root.to_string(), rule: "too_deep_to_check" });
        };
        for path in &policy.disallowed_fields {
            if let Some(rest) = path.strip_prefix(root).and_then(|p| p.strip_prefix('.'))
                && lookup(&value, rest).is_some()
            {
                return Err(PiiViolation { index, field: path.clone(), rule: "disallowed_field" });
            }
        }
        if !policy.detectors.is_empty() {
            let mut path = root.to_string();
            if let Some(v) = scan(&value, &mut path, &policy.detectors, index) {
                return Err(v);
            }
        }
    }
    Ok(())
}

fn lookup<'v>(value: &'v Value, dotted: &str) -> Option<&'v Value> {
    dotted.split('.').try_fold(value, |v, part| v.get(part))
}

fn scan(value: &Value, path: &mut String, detectors: &[PiiDetector], index: usize) -> Option<PiiViolation> {
    match value {
        Value::String(s) => detectors.iter().find(|d| detect(**d, s)).map(|d| PiiViolation {
            index,
            field: path.clone(),
            rule: match d {
                PiiDetector::Email => "email",
                PiiDetector::CardNumber => "card_number",
            },
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            let len = path.len();
            path.push_str(&format!(".{i}"));
            let hit = scan(v, path, detectors, index);
            path.truncate(len);
            hit
        }),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let len = path.len();
            path.push('.');
            path.push_str(k);
            let hit = scan(v, path, detectors, index);
            path.truncate(len);
            hit
        }),
        _ => None,
    }
}

fn detect(detector: PiiDetector, s: &str) -> bool {
    match detector {
        PiiDetector::Email => contains_email(s),
        PiiDetector::CardNumber => contains_card_number(s),
    }
}

/// `local@domain.tld` with a plausible local part, a dotted domain and an alphabetic TLD.
pub fn contains_email(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().filter(|(_, c)| **c == b'@').any(|(at, _)| {
        let local_ok = at > 0 && is_local(b[at - 1]);
        let domain: &[u8] = &b[at + 1..];
        let end = domain
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.'))
            .unwrap_or(domain.len());
        let domain = &domain[..end];
        let domain = domain.strip_suffix(b".").unwrap_or(domain);
        let labels: Vec<&[u8]> = domain.split(|c| *c == b'.').collect();
        local_ok
            && labels.len() >= 2
            && labels.iter().all(|l| !l.is_empty())
            && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic))
    })
}

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"._%+-".contains(&c)
}

/// A run of 13-19 digits, optionally grouped by single spaces or dashes, passing the Luhn check.
pub fn contains_card_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let mut digits = Vec::with_capacity(19);
        let mut j = i;
        while j < b.len() {
            if b[j].is_ascii_digit() {
                digits.push(b[j] - b'0');
                j += 1;
            } else if (b[j] == b' ' || b[j] == b'-') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
                j += 1;
            } else {
                break;
            }
        }
        if (13..=19).contains(&digits.len()) && luhn(&digits) {
            return true;
        }
        i = j;
    }
    false
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if !i.is_multiple_of(2) {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn email_true_and_false_positives() {
        for yes in ["ann@example.com", "write to a.b+c@mail.example.co.uk today", "X@Y.io"] {
            assert!(contains_email(yes), "{yes}");
        }
        for no in ["@handle", "a@b", "user@localhost", "price 5@ 3", "foo@bar.c0m", "@example.com", "a@.com"] {
            assert!(!contains_email(no), "{no}");
        }
    }

    #[test]
    fn card_numbers_need_luhn() {
        for yes in ["4111111111111111", "card 4111 1111 1111 1111 exp", "5500-0000-0000-0004", "378282246310005"] {
            assert!(contains_card_number(yes), "{yes}");
        }
        for no in ["4111111111111112", "order 1234567890123", "12345", "2026-11-25 10:00", "41111111111111110000"] {
            assert!(!contains_card_number(no), "{no}");
        }
    }

    #[test]
    fn policy_reports_the_field_path() {
        let policy = PiiPolicy {
            disallowed_fields: vec!["properties.ssn".into(), "context.ip".into()],
            detectors: vec![PiiDetector::Email, PiiDetector::CardNumber],
        };
        let ok = raw(r#"{"plan":"pro","n":4111111111111111}"#);
        assert_eq!(check(&policy, 0, Some(&ok), None), Ok(()), "numbers are not strings; only strings are scanned");
        let ssn = raw(r#"{"ssn":"x"}"#);
        assert_eq!(check(&policy, 2, Some(&ssn), None).unwrap_err().field, "properties.ssn");
        let ip = raw(r#"{"ip":"1.2.3.4"}"#);
        assert_eq!(check(&policy, 2, None, Some(&ip)).unwrap_err().field, "context.ip");
        let nested = raw(r#"{"contact":{"emails":["none","bob@example.org"]}}"#);
        let v = check(&policy, 5, Some(&nested), None).unwrap_err();
        assert_eq!((v.index, v.field.as_str(), v.rule), (5, "properties.contact.emails.1", "email"));
        assert_eq!(check(&PiiPolicy::default(), 0, Some(&nested), None), Ok(()));
    }

    #[test]
    fn a_value_too_deep_to_check_is_refused_not_passed() {
        let policy = PiiPolicy { disallowed_fields: vec![], detectors: vec![PiiDetector::Email] };
        let deep =
            |levels: usize| raw(&format!("{}\"bob@example.org\"{}", r#"{"a":"#.repeat(levels), "}".repeat(levels)));
        let v = check(&policy, 3, Some(&deep(200)), None).unwrap_err();
        assert_eq!((v.index, v.field.as_str(), v.rule), (3, "properties", "too_deep_to_check"));
        let v = check(&policy, 3, None, Some(&deep(200))).unwrap_err();
        assert_eq!(v.field, "context");
        // Within the limit the value is scanned as usual, and the e-mail is found where it is.
        assert_eq!(check(&policy, 3, Some(&deep(100)), None).unwrap_err().rule, "email");
        // Without a policy nothing is parsed, deep or not.
        assert_eq!(check(&PiiPolicy::default(), 3, Some(&deep(200)), None), Ok(()));
    }
}
