//! The one-pass body parser: a decompressed body into its events, each with its typed fields and
//! its exact text (for the dead-letter topic), plus the envelope's `sent_at`.
//!
//! A JSON body is read by one serde pass: the array (or the `batch` array of the envelope) is
//! visited element by element, and each event object is read member by member into borrowed
//! [`Fields`]. Every key and value is taken as a `&RawValue` that borrows from the body, so where an
//! event ends is known from where its last value ends: no second pass over an event's text, and no
//! `serde_json::Value`. What the body may be, and how it fails, is what serde gives for the contract's
//! types (`Vec` of events, or `{"batch":[…],"sent_at"|"sentAt":…}`): a fault of the body is its
//! serde error, at its position in the body; a fault of one event (not an object, a duplicate
//! member) rejects that event only, with the message serde gives for the event's own text.
//!
//! NDJSON lines are read one serde pass per line, so one bad line is rejected on its own.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::ingest::body::{BodyError, BodyFormat};

/// A parsed body.
#[derive(Debug)]
pub struct Batch<'a> {
    pub events: Vec<Event<'a>>,
    /// The envelope's batch-level `sent_at` (`null` is none).
    pub sent_at: Option<&'a RawValue>,
}

/// One event of a body: its text as the client sent it, and its fields, or why it has none.
#[derive(Debug)]
pub struct Event<'a> {
    pub raw: &'a [u8],
    pub fields: Result<Fields<'a>, Fault>,
}

/// The members of an event that validation reads, as raw JSON borrowed from the body (`null` is
/// absent); other members are skipped.
#[derive(Debug, Default, Deserialize)]
pub struct Fields<'a> {
    #[serde(borrow, default)]
    pub event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub distinct_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub properties: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub context: Option<&'a RawValue>,
}

impl<'a> Fields<'a> {
    /// The member called `name`, and its bit in a set of members seen.
    fn slot(&mut self, name: &str) -> Option<(&'static str, u8, &mut Option<&'a RawValue>)> {
        Some(match name {
            "event" => ("event", 1, &mut self.event),
            "distinct_id" => ("distinct_id", 2, &mut self.distinct_id),
            "timestamp" => ("timestamp", 4, &mut self.timestamp),
            "event_id" => ("event_id", 8, &mut self.event_id),
            "properties" => ("properties", 16, &mut self.properties),
            "context" => ("context", 32, &mut self.context),
            _ => return None,
        })
    }
}

/// Why an event has no fields: a reject code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub code: &'static str,
    pub message: String,
}

impl Fault {
    fn of(e: &serde_json::Error, message: String) -> Self {
        Fault { code: if e.is_data() { "invalid_type" } else { "malformed_json" }, message }
    }
}

/// Parses a decompressed body into at most `max_events` events.
pub fn parse(body: &[u8], format: BodyFormat, max_events: usize) -> Result<Batch<'_>, BodyError> {
    let (events, count, sent_at) = match format {
        BodyFormat::JsonArray => json(body, max_events)?,
        BodyFormat::Ndjson => {
            let mut events = Vec::new();
            for line in body.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if events.len() == max_events {
                    return Err(BodyError::TooManyEvents { limit: max_events });
                }
                events.push(parse_line(line));
            }
            let count = events.len();
            (events, count, None)
        }
    };
    if count > max_events {
        return Err(BodyError::TooManyEvents { limit: max_events });
    }
    if count == 0 {
        return Err(BodyError::Empty);
    }
    Ok(Batch { events, sent_at })
}

/// Parses one event on its own (an NDJSON line).
pub fn parse_line(json: &[u8]) -> Event<'_> {
    Event { raw: json, fields: line_fields(json) }
}

fn line_fields(json: &[u8]) -> Result<Fields<'_>, Fault> {
    let Some(&first) = json.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Err(Fault { code: "malformed_json", message: "the event is empty".into() });
    };
    // serde reads a struct from an array too (field by field, in declaration order), so
    // `["signup","user-1",…]` would pass as an event: only an object is one.
    if first != b'{' {
        return Err(match serde_json::from_slice::<IgnoredAny>(json) {
            Err(e) => Fault { code: "malformed_json", message: e.to_string() },
            Ok(_) => not_an_object(first),
        });
    }
    serde_json::from_slice(json).map_err(|e| Fault::of(&e, e.to_string()))
}

fn not_an_object(first: u8) -> Fault {
    let kind = match first {
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    };
    Fault { code: "invalid_type", message: format!("an event must be a JSON object, got {kind}") }
}

type Parsed<'a> = (Vec<Event<'a>>, usize, Option<&'a RawValue>);

fn json(body: &[u8], max_events: usize) -> Result<Parsed<'_>, BodyError> {
    let start = skip_ws(body, 0);
    let mut de = serde_json::Deserializer::from_slice(body);
    if body.get(start) == Some(&b'{') {
        let parsed = EnvelopeSeed { body, max_events }.deserialize(&mut de).and_then(|p| de.end().map(|()| p));
        parsed.map_err(|e| BodyError::Malformed(format!("expected an array or an object with a `batch` array: {e}")))
    } else {
        let parsed =
            EventsSeed { body, open: start, max_events }.deserialize(&mut de).and_then(|p| de.end().map(|()| p));
        parsed.map(|(events, count)| (events, count, None)).map_err(|e| BodyError::Malformed(e.to_string()))
    }
}

/// The index of the first byte at or after `at` that is not JSON whitespace.
fn skip_ws(body: &[u8], at: usize) -> usize {
    let rest = body.get(at..).unwrap_or_default();
    at + rest.iter().take_while(|b| matches!(b, b' ' | b'\n' | b'\t' | b'\r')).count()
}

/// Where `part` (borrowed from `body`) starts and ends in `body`.
fn span<E: de::Error>(body: &[u8], part: &[u8]) -> Result<(usize, usize), E> {
    (part.as_ptr() as usize)
        .checked_sub(body.as_ptr() as usize)
        .filter(|start| start + part.len() <= body.len())
        .map(|start| (start, start + part.len()))
        .ok_or_else(|| E::custom("internal: a parsed value is not borrowed from the body"))
}

fn raw_span<E: de::Error>(body: &[u8], raw: &RawValue) -> Result<(usize, usize), E> {
    span(body, raw.get().as_bytes())
}

/// A key's name: its text between the quotes, or decoded when it holds an escape.
fn key_name(raw: &RawValue) -> Result<Cow<'_, str>, serde_json::Error> {
    let text = raw.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Ok(inner.into()),
        _ => serde_json::from_str::<String>(text).map(Into::into),
    }
}

/// serde_json's line and column for having read `text[..at]`, as its errors report them.
fn position(text: &[u8], at: usize) -> (usize, usize) {
    let head = text.get(..at).unwrap_or(text);
    let line_start = head.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    (1 + head[..line_start].iter().filter(|&&b| b == b'\n').count(), head.len() - line_start)
}

/// The message of `e`, an error in text that starts at `text[at..]`, placed in `text`.
fn relocated(e: &serde_json::Error, text: &[u8], at: usize) -> String {
    let message = e.to_string();
    let Some(what) = message.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())) else {
        return message;
    };
    let (line, column) = position(text, at);
    let (line, column) = if e.line() == 1 { (line, column + e.column()) } else { (line + e.line() - 1, e.column()) };
    format!("{what} at line {line} column {column}")
}

/// The envelope `{"batch":[…],"sent_at":…}` (`sentAt` too); other members are skipped.
struct EnvelopeSeed<'b> {
    body: &'b [u8],
    max_events: usize,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'de> {
    type Value = Parsed<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'de> {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let body = self.body;
        let mut batch = None;
        let mut sent_at = None;
        while let Some(key) = map.next_key_seed(KeySeed { body })? {
            match &*key.name {
                "batch" => {
                    if batch.is_some() {
                        return Err(de::Error::duplicate_field("batch"));
                    }
                    let max_events = self.max_events;
                    batch = Some(match key.end {
                        // The value follows the colon after the key.
                        Some(end) => {
                            let open = skip_ws(body, skip_ws(body, end) + 1);
                            map.next_value_seed(EventsSeed { body, open, max_events })?
                        }
                        // A key written with escapes does not say where it ends: these events are
                        // found first, then each parsed from its own text.
                        None => {
                            let items = map.next_value::<Vec<&'de RawValue>>()?;
                            let kept = items.iter().take(max_events).map(|i| parse_line(i.get().as_bytes()));
                            (kept.collect(), items.len())
                        }
                    });
                }
                "sent_at" | "sentAt" => {
                    if sent_at.is_some() {
                        return Err(de::Error::duplicate_field("sent_at"));
                    }
                    sent_at = Some(map.next_value::<Option<&'de RawValue>>()?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let (events, count) = batch.ok_or_else(|| de::Error::missing_field("batch"))?;
        Ok((events, count, sent_at.flatten()))
    }
}

/// An envelope member's name, decoded as serde's derive reads it, and where its closing quote
/// ends in the body when it is borrowed from it (it holds no escape).
struct Key<'de> {
    name: Cow<'de, str>,
    end: Option<usize>,
}

struct KeySeed<'b> {
    body: &'b [u8],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'de> {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'de> {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<Self::Value, E> {
        let end = span::<E>(self.body, name.as_bytes())?.1 + 1;
        Ok(Key { name: name.into(), end: Some(end) })
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(Key { name: name.to_owned().into(), end: None })
    }
}

/// An array of events whose `[` is at `body[open]`: the events (at most `max_events` kept) and
/// how many there were.
struct EventsSeed<'b> {
    body: &'b [u8],
    open: usize,
    max_events: usize,
}

impl<'de> DeserializeSeed<'de> for EventsSeed<'de> {
    type Value = (Vec<Event<'de>>, usize);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'de> {
    type Value = (Vec<Event<'de>>, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let body = self.body;
        if body.get(self.open) != Some(&b'[') {
            return Err(de::Error::custom("internal: the events array is not where it was expected"));
        }
        let mut events = Vec::with_capacity(self.max_events.min(body.len() / 64 + 1));
        let mut count = 0;
        let mut cursor = self.open + 1;
        loop {
            // Where serde reads the next element: after whitespace, and a comma but before the first.
            let mut start = skip_ws(body, cursor);
            if count > 0 && body.get(start) == Some(&b',') {
                start = skip_ws(body, start + 1);
            }
            let Some(event) = seq.next_element_seed(EventSeed { body, start })? else { break };
            cursor = span(body, event.raw)?.1;
            count += 1;
            // Past the limit, events are still read (a malformed body is a 400 whatever its
            // size) but not kept.
            if events.len() < self.max_events {
                events.push(event);
            }
        }
        Ok((events, count))
    }
}

/// One element of an events array, which starts at `body[start]`.
struct EventSeed<'b> {
    body: &'b [u8],
    start: usize,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'de> {
    type Value = Event<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        match self.body.get(self.start) {
            Some(b'{') => deserializer.deserialize_map(self),
            _ => {
                let raw = <&'de RawValue>::deserialize(deserializer)?;
                let first = raw.get().as_bytes().first().copied().unwrap_or_default();
                Ok(Event { raw: raw.get().as_bytes(), fields: Err(not_an_object(first)) })
            }
        }
    }
}

impl<'de> Visitor<'de> for EventSeed<'de> {
    type Value = Event<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    /// Reads every member once. Like serde's derive for [`Fields`] reading the event's own text,
    /// the first duplicate member or undecodable key is the event's fault; the rest of the object
    /// is still read, to find where it ends.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (body, start) = (self.body, self.start);
        let text = body.get(start..).unwrap_or_default();
        let mut fields = Fields::default();
        let mut seen = 0u8;
        let mut fault = None;
        let mut end = start + 1;
        while let Some(key) = map.next_key::<&'de RawValue>()? {
            let (key_start, key_end) = raw_span(body, key)?;
            let value = map.next_value::<&'de RawValue>()?;
            end = raw_span(body, value)?.1;
            if fault.is_some() {
                continue;
            }
            let name = match key_name(key) {
                Ok(name) => name,
                Err(e) => {
                    fault = Some(Fault::of(&e, relocated(&e, text, key_start.saturating_sub(start))));
                    continue;
                }
            };
            let Some((name, bit, slot)) = fields.slot(&name) else { continue };
            if seen & bit != 0 {
                // Where serde_json places the derive's error: past the whitespace after the key.
                let (line, column) = position(text, skip_ws(body, key_end).saturating_sub(start));
                let message = format!("duplicate field `{name}` at line {line} column {column}");
                fault = Some(Fault { code: "invalid_type", message });
                continue;
            }
            seen |= bit;
            *slot = Some(value).filter(|v| v.get() != "null");
        }
        // Only whitespace is left before the `}` serde saw.
        let end = skip_ws(body, end) + 1;
        let raw = body.get(start..end).ok_or_else(|| de::Error::custom("internal: an event ends past the body"))?;
        Ok(Event { raw, fields: fault.map_or(Ok(fields), Err) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(body: &[u8]) -> Vec<Event<'_>> {
        parse(body, BodyFormat::JsonArray, 10).unwrap().events
    }

    fn malformed(body: &[u8]) -> String {
        match parse(body, BodyFormat::JsonArray, 10) {
            Err(BodyError::Malformed(m)) => m,
            other => panic!("{}: expected Malformed, got {other:?}", String::from_utf8_lossy(body)),
        }
    }

    fn raw(f: Option<&RawValue>) -> Option<&str> {
        f.map(RawValue::get)
    }

    #[test]
    fn reads_every_field_and_keeps_each_event_text() {
        let body = br#" [ {"event":"a","distinct_id":"u","timestamp":1,"event_id":"e","properties":{"p":[1,{}]},"context":{},"x":{"event":2}} ,
            {"distinct_id" : 7 , "event":null}, {} ,{ }] "#;
        let e = events(body);
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].raw, &br#"{"event":"a","distinct_id":"u","timestamp":1,"event_id":"e","properties":{"p":[1,{}]},"context":{},"x":{"event":2}}"#[..]);
        let f = e[0].fields.as_ref().unwrap();
        assert_eq!(
            [f.event, f.distinct_id, f.timestamp, f.event_id, f.properties, f.context].map(raw),
            [Some(r#""a""#), Some(r#""u""#), Some("1"), Some(r#""e""#), Some(r#"{"p":[1,{}]}"#), Some("{}")]
        );
        assert_eq!(e[1].raw, &br#"{"distinct_id" : 7 , "event":null}"#[..]);
        let f = e[1].fields.as_ref().unwrap();
        assert_eq!((raw(f.distinct_id), raw(f.event)), (Some("7"), None), "null is absent");
        assert_eq!((e[2].raw, e[3].raw), (&b"{}"[..], &b"{ }"[..]));
    }

    #[test]
    fn reads_the_envelope() {
        let body = br#"{"api_key":"k","sentAt":"2026-01-01T00:00:00Z","batch":[{"event":"a"}, 5],"x":[{}]}"#;
        let b = parse(body, BodyFormat::JsonArray, 10).unwrap();
        assert_eq!(raw(b.sent_at), Some(r#""2026-01-01T00:00:00Z""#));
        assert_eq!(b.events.iter().map(|e| e.raw).collect::<Vec<_>>(), [&br#"{"event":"a"}"#[..], b"5"]);
        let null = parse(br#"{"batch":[{}],"sent_at":null}"#, BodyFormat::JsonArray, 10).unwrap();
        assert!(null.sent_at.is_none(), "null is the same as absent");
        let escaped = parse(br#"{"b\u0061tch":[{"\u0065vent":"a"}]}"#, BodyFormat::JsonArray, 10).unwrap();
        assert_eq!(raw(escaped.events[0].fields.as_ref().unwrap().event), Some(r#""a""#), "keys are decoded");
    }

    #[test]
    fn events_that_are_not_objects_or_repeat_a_member_are_faults_of_their_own() {
        let e = events(
            br#"[[1], "s", true, null, -1.5, {"event":"a","x":1,
 "event":"b"}, {"event":"a"}]"#,
        );
        let faults: Vec<_> = e.iter().map(|e| e.fields.as_ref().err().map(|f| (f.code, f.message.as_str()))).collect();
        assert_eq!(
            faults[..5],
            [
                Some(("invalid_type", "an event must be a JSON object, got an array")),
                Some(("invalid_type", "an event must be a JSON object, got a string")),
                Some(("invalid_type", "an event must be a JSON object, got a boolean")),
                Some(("invalid_type", "an event must be a JSON object, got null")),
                Some(("invalid_type", "an event must be a JSON object, got a number")),
            ]
        );
        // What serde's derive says reading the event's own text, position included.
        assert_eq!(faults[5], Some(("invalid_type", "duplicate field `event` at line 2 column 8")));
        assert_eq!(e[5].raw, b"{\"event\":\"a\",\"x\":1,\n \"event\":\"b\"}");
        let alone = parse_line(e[5].raw).fields.unwrap_err();
        assert_eq!(faults[5], Some((alone.code, alone.message.as_str())));
        assert!(e[6].fields.is_ok());
        let surrogate = br#"[{"a\ud800":1}]"#;
        let fault = events(surrogate).remove(0).fields.unwrap_err();
        assert_eq!(fault, parse_line(&surrogate[1..surrogate.len() - 1]).fields.unwrap_err());
        assert_eq!(fault.code, "malformed_json");
    }

    /// The parser this one replaced, two passes: the body into `&RawValue`s, then each event's
    /// text on its own.
    fn reference(body: &[u8], max_events: usize) -> Result<Batch<'_>, BodyError> {
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            batch: Vec<&'a RawValue>,
            #[serde(borrow, default, alias = "sentAt")]
            sent_at: Option<&'a RawValue>,
        }
        let (items, sent_at): (Vec<&RawValue>, _) = if body.get(skip_ws(body, 0)) == Some(&b'{') {
            let env: Envelope<'_> = serde_json::from_slice(body).map_err(|e| {
                BodyError::Malformed(format!("expected an array or an object with a `batch` array: {e}"))
            })?;
            (env.batch, env.sent_at)
        } else {
            (serde_json::from_slice(body).map_err(|e| BodyError::Malformed(e.to_string()))?, None)
        };
        if items.len() > max_events {
            return Err(BodyError::TooManyEvents { limit: max_events });
        }
        if items.is_empty() {
            return Err(BodyError::Empty);
        }
        Ok(Batch { events: items.iter().map(|i| parse_line(i.get().as_bytes())).collect(), sent_at })
    }

    type View<'a> = (&'a [u8], Result<[Option<&'a str>; 6], Fault>);

    fn view<'a>(b: &'a Result<Batch<'a>, BodyError>) -> Result<(Vec<View<'a>>, Option<&'a str>), &'a BodyError> {
        let b = b.as_ref()?;
        let fields =
            |f: &'a Fields<'a>| [f.event, f.distinct_id, f.timestamp, f.event_id, f.properties, f.context].map(raw);
        let events = b.events.iter().map(|e| (e.raw, e.fields.as_ref().map(fields).map_err(Clone::clone))).collect();
        Ok((events, raw(b.sent_at)))
    }

    /// Where a body fault is: the line and column its message ends with.
    fn place(message: &str) -> Option<(usize, usize)> {
        let (_, at) = message.rsplit_once(" at line ")?;
        let (line, column) = at.split_once(" column ")?;
        Some((line.parse().ok()?, column.parse().ok()?))
    }

    /// Both refuse the body with the same message, but for what serde's two ways of reading an
    /// object name differently: its map access (now) and its value skipper (the first pass
    /// then) call a comma before `}` and an end after a comma inside an event differently, at the
    /// same place; and the first pass checked an event's UTF-8 only after skipping all of it, so
    /// of an invalid byte and a later syntax error in one event it named the later one.
    fn same_refusal(now: &str, then: &str) -> bool {
        const RENAMED: [(&str, &str); 2] =
            [("trailing comma", "key must be a string"), ("EOF while parsing a value", "EOF while parsing an object")];
        let renamed =
            RENAMED.iter().any(|(n, t)| now.starts_with(n) && then.starts_with(t) && place(now) == place(then));
        let utf8_first = now.starts_with("invalid unicode code point") && place(now) < place(then);
        now == then || renamed || utf8_first
    }

    fn agree(body: &[u8], max_events: usize) {
        let (new, old) = (parse(body, BodyFormat::JsonArray, max_events), reference(body, max_events));
        let envelope = "expected an array or an object with a `batch` array: ";
        if let (Err(BodyError::Malformed(n)), Err(BodyError::Malformed(o))) = (&new, &old) {
            let (n, o) = (n.strip_prefix(envelope).unwrap_or(n), o.strip_prefix(envelope).unwrap_or(o));
            assert!(same_refusal(n, o), "{}: {n} / {o}", String::from_utf8_lossy(body));
            return;
        }
        assert_eq!(view(&new), view(&old), "{}", String::from_utf8_lossy(body));
    }

    #[test]
    fn malformed_bodies_fail_with_serdes_error_for_the_body() {
        assert_eq!(malformed(b"[1,"), "EOF while parsing a value at line 1 column 3");
        let env = "expected an array or an object with a `batch` array: ";
        assert_eq!(malformed(b"{}"), format!("{env}missing field `batch` at line 1 column 2"));
        for body in [
            &b"[1,"[..],
            b"[{\"a\":1},]",
            b"[{\"a\":1},,{}]",
            b"[,{}]",
            b"[{\"a\" 1}]",
            b"[{\"a\":1 \"b\":2}]",
            b"[{}] x",
            b"[{}]]",
            b"5",
            b"",
            b" \n ",
            b"\"[]\"",
            b"[{\"a\":\"\xff\"}]",
            b"[{\"\xff\":1}]",
            b"[{\"a\":\"\x01\"}]",
            b"[{\"a\":\"\\x\"}]",
            b"[{\"a\":tru}]",
            b"[{\"a\":01}]",
            b"[{1:2}]",
            b"{}",
            b"{\"batch\":{}}",
            b"{\"batch\":null}",
            b"{\"batch\":[{}] ,}",
            br#"{"batch":[],"batch":[]}"#,
            br#"{"batch":[{}],"sent_at":1,"sentAt":2}"#,
            br#"{"\ud800":1,"batch":[{}]}"#,
            br#"{"batch":[{}],"sent_at":nul}"#,
            b"{\"batch\":[{}]}{}",
        ] {
            assert!(matches!(parse(body, BodyFormat::JsonArray, 10), Err(BodyError::Malformed(_))), "{body:?}");
            agree(body, 10);
        }
    }

    #[test]
    fn agrees_with_the_two_pass_parser_on_valid_bodies() {
        for body in [
            &br#"[{"event":"a","distinct_id":"u","timestamp":1,"event_id":"e","properties":{"p":[1,{}]},"context":{}}]"#[..],
            b" [ {\"event\" : \"a\" } ,\n\t{ } , 5 , [ 1 ] , \"s\" , null , {\"event\":1,\"event\":2} ] ",
            br#"{"x":{"batch":1},"batch":[{"\u0065vent":"a","\ud800":1}],"sentAt":null,"historical_migration":false}"#,
            br#"{"batch":[{"event":"a"}],"sent_at":"2026-01-01T00:00:00Z"}"#,
            br#"{"x":1,"b\u0061tch":[{"event":"a","event":"b"}, 5, { }],"sentAt":"2026-01-01T00:00:00Z"}"#,
            br#"[{"event":null,"event":"b"}, {"properties":{"event":1,"event":2}}]"#,
        ] {
            assert!(parse(body, BodyFormat::JsonArray, 10).is_ok(), "{}", String::from_utf8_lossy(body));
            agree(body, 10);
        }
        agree(b"[1,2,3]", 2);
        agree(br#"{"b\u0061tch":[1,2,3]}"#, 2);
        agree(b"[]", 2);
    }

    mod random {
        use super::*;
        use proptest::prelude::*;

        const WS: [&str; 4] = ["", " ", "\n", " \r\n\t"];
        const KEYS: [&str; 10] = [
            "event",
            "distinct_id",
            "timestamp",
            "event_id",
            "properties",
            "context",
            "x",
            "ev\\u0065nt",
            "\\ud800",
            "batch",
        ];
        const VALUES: [&str; 9] =
            ["\"a\"", "1", "-2.5e3", "null", "{}", "[1,{\"event\":2}]", "{\"a\":[]}", "true", "\"\\n\\u00e9\""];
        /// Bytes the mutations insert: JSON's punctuation, and some that are never valid.
        const BYTES: &[u8] = b"{}[],:\"\\ \n0aenu\xff\x01";

        fn member() -> impl Strategy<Value = String> {
            (0..KEYS.len(), 0..VALUES.len(), 0..WS.len())
                .prop_map(|(k, v, w)| format!("{w}\"{}\"{w}:{w}{}", KEYS[k], VALUES[v], w = WS[w]))
        }

        fn element() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => prop::collection::vec(member(), 0..5).prop_map(|m| format!("{{{}}}", m.join(","))),
                1 => (0..VALUES.len()).prop_map(|v| VALUES[v].to_string()),
            ]
        }

        fn array() -> impl Strategy<Value = String> {
            prop::collection::vec(element(), 0..6).prop_map(|e| format!("[{}]", e.join(" , ")))
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            let envelope = (array(), prop::collection::vec(member(), 0..3), any::<bool>()).prop_map(
                |(batch, mut members, sent_at)| {
                    members.push(format!("\"batch\":{batch}"));
                    if sent_at {
                        members.insert(0, "\"sentAt\":\"2026-01-01T00:00:00Z\"".into());
                    }
                    format!("{{{}}}", members.join(","))
                },
            );
            prop_oneof![array(), envelope].prop_map(String::into_bytes)
        }

        fn mutated() -> impl Strategy<Value = Vec<u8>> {
            let edits = prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, 0..BYTES.len()), 0..3);
            (body(), edits).prop_map(|(mut body, edits)| {
                for (at, kind, byte) in edits {
                    let i = at.index(body.len() + 1);
                    match kind {
                        0 => body.insert(i, BYTES[byte]),
                        1 if i < body.len() => {
                            body.remove(i);
                        }
                        _ if i < body.len() => body[i] = BYTES[byte],
                        _ => {}
                    }
                }
                body
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]
            #[test]
            fn agrees_with_the_two_pass_parser(body in mutated(), max_events in 1..6usize) {
                agree(&body, max_events);
            }
        }
    }

    #[test]
    fn limits() {
        assert_eq!(parse(b"[1,2,3]", BodyFormat::JsonArray, 2).unwrap_err(), BodyError::TooManyEvents { limit: 2 });
        assert_eq!(parse(b"1\n2\n3\n", BodyFormat::Ndjson, 2).unwrap_err(), BodyError::TooManyEvents { limit: 2 });
        assert!(
            matches!(parse(b"[1,2,3,", BodyFormat::JsonArray, 2), Err(BodyError::Malformed(_))),
            "malformed wins over too many"
        );
        assert_eq!(parse(b"[]", BodyFormat::JsonArray, 2).unwrap_err(), BodyError::Empty);
        assert_eq!(parse(br#"{"batch":[]}"#, BodyFormat::JsonArray, 2).unwrap_err(), BodyError::Empty);
        assert_eq!(parse(b"\n \r\n", BodyFormat::Ndjson, 2).unwrap_err(), BodyError::Empty);
        let deep = format!("[{{\"p\":{}{}}}]", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(events(deep.as_bytes())[0].raw.len(), deep.len() - 2, "values are skipped without recursion");
        agree(deep.as_bytes(), 10);
        let deep_envelope = format!(
            "{{\"x\":{}{},\"batch\":[{}{}]}}",
            "[".repeat(5000),
            "]".repeat(5000),
            "[".repeat(5000),
            "]".repeat(5000)
        );
        agree(deep_envelope.as_bytes(), 10);
    }

    #[test]
    fn ndjson_lines_are_parsed_alone() {
        let b = parse(b"{\"event\":\"a\"}\r\n\n{bad\n[1]\n", BodyFormat::Ndjson, 10).unwrap();
        let raws: Vec<_> = b.events.iter().map(|e| e.raw).collect();
        assert_eq!(raws, [&b"{\"event\":\"a\"}"[..], b"{bad", b"[1]"]);
        assert!(b.events[0].fields.is_ok());
        assert_eq!(b.events[1].fields.as_ref().unwrap_err().code, "malformed_json");
        assert_eq!(b.events[2].fields.as_ref().unwrap_err().code, "invalid_type");
    }
}
