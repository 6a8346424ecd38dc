//! Consul's wire format, translated to and from our lock types.
//!
//! Pure functions only: the HTTP handlers read a body or a query string, call
//! into here, and turn a [`CodecError`] into its status code. Everything here
//! copies what a real Consul agent does (see
//! `reference/locks-consul-etcd-patroni.md` sections 1-3), including its quirks,
//! because unmodified Consul clients (the Go `api` package, python-consul,
//! Patroni) depend on them. Where we deliberately differ, the item's doc says so.
//!
//! ```text
//!   request body / query ──► parse_* ──► SessionRequest, KvQuery, ReadOptions ──► LockBackend
//!   Session, KvEntry ──────► *_json ──► serde_json::Value ──► response body
//! ```

use std::fmt;
use std::time::Duration;

use serde::de::MapAccess;
use serde::de::Visitor;
use serde::Deserialize;
use serde_json::json;
use serde_json::Value;
use uuid::Uuid;

use crate::lock::backend::Behavior;
use crate::lock::state::KvEntry;
use crate::lock::state::Session;

/// Lock-delay of a session created without one (Consul's default).
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// Consul's default `session_ttl_min`.
pub const DEFAULT_SESSION_TTL_MIN: Duration = Duration::from_secs(10);
/// Consul's `SessionTTLMax` (24 h in current Consul).
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// Largest KV value accepted, in bytes (Consul's default `kv_max_value_size`, 512 KiB).
pub const MAX_VALUE_SIZE: usize = 524_288;
/// Blocking-query wait when the client gives none (or zero).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// Longest blocking-query wait; longer `?wait=` values are clamped.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// The jitter added to a blocking wait is at most `wait / WAIT_JITTER_FRACTION`.
pub const WAIT_JITTER_FRACTION: u32 = 16;

/// Consul multiplies lock-delays below this many nanoseconds by one second, so
/// that `"LockDelay": 5` means five seconds.
const LOCK_DELAY_MIN_THRESHOLD_NS: i128 = 1000;

/// A request Consul would refuse. Neither variant succeeds if retried unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The request is malformed (HTTP 400); the message names the field or parameter.
    #[error("{0}")]
    BadRequest(String),
    /// A KV value is larger than [`MAX_VALUE_SIZE`] (HTTP 413). Consul's wording.
    #[error("Request body({len} bytes) too large, max size: {max} bytes")]
    TooLarge {
        /// Size of the value sent, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
}

impl CodecError {
    /// The HTTP status code Consul answers with.
    pub fn status(&self) -> u16 {
        match self {
            CodecError::BadRequest(_) => 400,
            CodecError::TooLarge { .. } => 413,
        }
    }
}

fn bad_request(message: impl Into<String>) -> CodecError {
    CodecError::BadRequest(message.into())
}

// ---------------------------------------------------------------------------
// Session create

/// A `PUT /v1/session/create` body, validated and with Consul's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// Free-form name (`""` when not given).
    pub name: String,
    /// Owning node; the agent's own node name when not given.
    pub node: String,
    /// TTL; `None` when absent, `""` or zero: the session then never expires by time.
    pub ttl: Option<Duration>,
    /// Lock-delay as given (not clamped: [`crate::lock::state::MAX_LOCK_DELAY`] applies at invalidation).
    pub lock_delay: Duration,
    /// What happens to held keys on invalidation.
    pub behavior: Behavior,
}

/// Parses a session-create body the way Consul does.
///
/// * An empty (or all-whitespace) body or `null` gives all defaults: `node =
///   default_node`, lock-delay 15 s, behavior `release`, no TTL.
/// * Keys match case-insensitively (`Name`, `name`, `NAME`); when one field
///   appears twice the later one wins, as in Go's decoder.
/// * `LockDelay` is a Go duration string or a number of nanoseconds; a result
///   below 1000 ns is multiplied by one second. A negative value means no delay.
///   Values above 60 s are stored as given and clamped at invalidation.
/// * `TTL` is a Go duration string; `""` or zero means none; any other value
///   must lie in `[ttl_min, ttl_max]`.
/// * `Checks`, `NodeChecks`, `ServiceChecks` are accepted and ignored: failoverd
///   has no health checks, so only the TTL guards a session.
/// * Unknown keys are ignored, like Consul.
///
/// Deliberate differences from Consul, all stricter: a `LockDelay` that is
/// neither string nor number (Consul silently reads it as 0), and trailing
/// bytes after the JSON object, are 400s.
pub fn parse_session_create(
    body: &[u8],
    default_node: &str,
    ttl_min: Duration,
    ttl_max: Duration,
) -> Result<SessionRequest, CodecError> {
    let mut request = SessionRequest {
        name: String::new(),
        node: default_node.to_owned(),
        ttl: None,
        lock_delay: DEFAULT_LOCK_DELAY,
        behavior: Behavior::Release,
    };
    let mut behavior = String::new();
    let mut ttl = String::new();

    if !body.iter().all(u8::is_ascii_whitespace) {
        let object: Option<OrderedObject> = serde_json::from_slice(body).map_err(decode_failed)?;
        for (key, value) in object.map(|o| o.0).unwrap_or_default() {
            match key.to_ascii_lowercase().as_str() {
                "name" => set_string(&key, &value, &mut request.name)?,
                "node" => set_string(&key, &value, &mut request.node)?,
                "behavior" => set_string(&key, &value, &mut behavior)?,
                "ttl" => set_string(&key, &value, &mut ttl)?,
                "lockdelay" => {
                    if let Some(delay) = lock_delay_from_json(&key, &value)? {
                        request.lock_delay = delay;
                    }
                }
                "checks" | "nodechecks" => check_list(&key, &value, Value::is_string, "strings")?,
                "servicechecks" => check_list(&key, &value, Value::is_object, "objects")?,
                _ => {}
            }
        }
    }

    if request.node.is_empty() {
        return Err(bad_request("Must provide Node"));
    }
    request.behavior = match behavior.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => return Err(bad_request(format!("Invalid Behavior setting '{other}'"))),
    };
    request.ttl = parse_session_ttl(&ttl, ttl_min, ttl_max)?;
    Ok(request)
}

/// Validates a session TTL string as Consul does: `""` or zero means no TTL;
/// otherwise it must parse and lie in `[ttl_min, ttl_max]`.
///
/// The out-of-range message is Consul's, byte for byte: the TTL in nanoseconds
/// and the bounds in Go's notation, e.g. `Invalid Session TTL '5000000000', must
/// be between [10s=24h0m0s]`. Patroni matches the `Invalid Session TTL` prefix.
pub fn parse_session_ttl(ttl: &str, ttl_min: Duration, ttl_max: Duration) -> Result<Option<Duration>, CodecError> {
    if ttl.is_empty() {
        return Ok(None);
    }
    let nanos = go_duration_nanos(ttl).map_err(|e| bad_request(format!("Session TTL '{ttl}' invalid: {e}")))?;
    if nanos == 0 {
        return Ok(None);
    }
    let magnitude = u128::from(nanos.unsigned_abs());
    if nanos < 0 || magnitude < ttl_min.as_nanos() || magnitude > ttl_max.as_nanos() {
        return Err(bad_request(format!(
            "Invalid Session TTL '{nanos}', must be between [{}={}]",
            format_go_duration(ttl_min),
            format_go_duration(ttl_max)
        )));
    }
    Ok(Some(Duration::from_nanos(nanos.unsigned_abs())))
}

fn decode_failed(error: impl fmt::Display) -> CodecError {
    bad_request(format!("Request decode failed: {error}"))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Go leaves a string field unchanged on `null`.
fn set_string(key: &str, value: &Value, field: &mut String) -> Result<(), CodecError> {
    match value {
        Value::Null => Ok(()),
        Value::String(s) => {
            s.clone_into(field);
            Ok(())
        }
        other => Err(decode_failed(format!(
            "{key} must be a string, got {}",
            json_type(other)
        ))),
    }
}

fn check_list(key: &str, value: &Value, element_ok: fn(&Value) -> bool, elements: &str) -> Result<(), CodecError> {
    match value {
        Value::Null => Ok(()),
        Value::Array(items) if items.iter().all(element_ok) => Ok(()),
        other => Err(decode_failed(format!(
            "{key} must be an array of {elements}, got {}",
            json_type(other)
        ))),
    }
}

fn lock_delay_from_json(key: &str, value: &Value) -> Result<Option<Duration>, CodecError> {
    let nanos: i128 = match value {
        Value::Null => return Ok(None),
        Value::String(s) => go_duration_nanos(s)
            .map_err(|e| decode_failed(format!("{key}: {e}")))?
            .into(),
        Value::Number(n) => {
            // Go decodes the number as a float64 and truncates it to int64 nanoseconds.
            let nanos = match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => i128::from(i),
                (None, Some(u), _) => i128::from(u),
                (None, None, Some(f)) if f.is_finite() && f.abs() < 9.2e18 => f.trunc() as i128,
                _ => i128::MAX,
            };
            if i64::try_from(nanos).is_err() {
                return Err(decode_failed(format!("{key} {n} is out of range")));
            }
            nanos
        }
        other => {
            return Err(decode_failed(format!(
                "{key} must be a duration string or a number of nanoseconds, got {}",
                json_type(other)
            )))
        }
    };
    let nanos = if nanos < LOCK_DELAY_MIN_THRESHOLD_NS {
        nanos * 1_000_000_000
    } else {
        nanos
    };
    Ok(Some(Duration::from_nanos(
        u64::try_from(nanos.max(0)).unwrap_or(u64::MAX),
    )))
}

/// A JSON object with its members in document order, so that a field given
/// twice (say `Name` and `name`) resolves like Go: the later one wins.
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(OrderedObject(members))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

// ---------------------------------------------------------------------------
// Go durations

/// Parses a Go duration string (`time.ParseDuration`): a sequence of decimal
/// numbers with optional fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`,
/// `h`), e.g. `"1h2m3.5s"`, `"300ms"`, or the bare `"0"`. Error texts are Go's.
/// Negative durations, which Go allows, are an error here.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let nanos = go_duration_nanos(text)?;
    if nanos < 0 {
        return Err(format!("time: negative duration {text:?}"));
    }
    Ok(Duration::from_nanos(nanos.unsigned_abs()))
}

/// `time.ParseDuration`, returning signed nanoseconds within Go's `int64` range.
/// Fractions are computed exactly and truncated (Go goes through a float64 and
/// may differ by a nanosecond on long fractions).
fn go_duration_nanos(text: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let limit: u128 = if negative { 1 << 63 } else { (1 << 63) - 1 };
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        let mut frac_digits = "";
        rest = after_int;
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            (frac_digits, rest) = after_dot.split_at(frac_len);
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {text:?}"));
        }
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        };
        let mut whole: u128 = 0;
        for digit in int_digits.bytes() {
            whole = whole * 10 + u128::from(digit - b'0');
            if whole > limit {
                return Err(invalid());
            }
        }
        // Digits past the 24th cannot add a whole nanosecond (the largest unit is 3.6e12 ns).
        let frac_digits = &frac_digits[..frac_digits.len().min(24)];
        let mut frac: u128 = 0;
        for digit in frac_digits.bytes() {
            frac = frac * 10 + u128::from(digit - b'0');
        }
        let scale = 10u128.pow(frac_digits.len() as u32);
        total = whole
            .checked_mul(unit_nanos)
            .and_then(|v| v.checked_add(frac * unit_nanos / scale))
            .and_then(|v| v.checked_add(total))
            .filter(|v| *v <= limit)
            .ok_or_else(invalid)?;
    }
    let magnitude = i128::try_from(total).map_err(|_| invalid())?;
    i64::try_from(if negative { -magnitude } else { magnitude }).map_err(|_| invalid())
}

/// Formats a duration exactly like Go's `Duration.String`: `"0s"`, `"10ns"`,
/// `"1.5µs"`, `"500ms"`, `"1.5s"`, `"1m0s"`, `"24h0m0s"`.
pub fn format_go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (precision, unit) = match nanos {
            0..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "\u{b5}s"),
            _ => (6, "ms"),
        };
        let (whole, fraction) = split_fraction(nanos, precision);
        return format!("{whole}{fraction}{unit}");
    }
    let (seconds, fraction) = split_fraction(nanos, 9);
    let (minutes, hours) = (seconds / 60 % 60, seconds / 3600);
    match (hours, minutes) {
        (0, 0) => format!("{}{fraction}s", seconds % 60),
        (0, _) => format!("{minutes}m{}{fraction}s", seconds % 60),
        _ => format!("{hours}h{minutes}m{}{fraction}s", seconds % 60),
    }
}

/// Splits `value` into its part above `10^precision` and Go's fraction text
/// (`".5"`, trailing zeros dropped, `""` when zero).
fn split_fraction(value: u128, precision: u32) -> (u128, String) {
    let scale = 10u128.pow(precision);
    let (whole, fraction) = (value / scale, value % scale);
    if fraction == 0 {
        return (whole, String::new());
    }
    let digits = format!("{fraction:0width$}", width = precision as usize);
    (whole, format!(".{}", digits.trim_end_matches('0')))
}

/// The `TTL` string of a session. Consul echoes the string it was given; we
/// store a `Duration`, so whole seconds become `"<n>s"` (what every known
/// client sends: `"15s"`, `"30s"`) and anything else Go's notation (`"1.5s"`).
/// Both parse back to the same value with Go's `time.ParseDuration`.
pub fn format_ttl(ttl: Duration) -> String {
    if ttl.subsec_nanos() == 0 {
        format!("{}s", ttl.as_secs())
    } else {
        format_go_duration(ttl)
    }
}

// ---------------------------------------------------------------------------
// Output JSON

fn behavior_str(behavior: Behavior) -> &'static str {
    match behavior {
        Behavior::Release => "release",
        Behavior::Delete => "delete",
    }
}

/// The `{"ID": "<uuid>"}` answer to a session create.
pub fn session_created_json(id: Uuid) -> Value {
    json!({ "ID": id.to_string() })
}

/// A session object as Consul returns it from info, list, node and renew.
///
/// `LockDelay` is integer nanoseconds, `TTL` a string (`""` for none, see
/// [`format_ttl`]). Sessions have no health checks, so `NodeChecks` is `[]`
/// and `ServiceChecks` is `null`, as Consul 1.7+ returns for a session created
/// with `"Checks": []`. We also send the deprecated `"Checks": []` (Consul 1.7+
/// omits it when empty) so that pre-1.7 clients that read it find a list.
pub fn session_json(session: &Session) -> Value {
    json!({
        "ID": session.id.to_string(),
        "Name": session.name,
        "Node": session.node,
        "LockDelay": u64::try_from(session.lock_delay.as_nanos()).unwrap_or(u64::MAX),
        "Behavior": behavior_str(session.behavior),
        "TTL": session.ttl.map(format_ttl).unwrap_or_default(),
        "Checks": [],
        "NodeChecks": [],
        "ServiceChecks": null,
        "CreateIndex": session.create_index,
        "ModifyIndex": session.modify_index,
    })
}

/// A JSON array of [`session_json`] objects (`[]` when empty, never `null`).
pub fn sessions_json(sessions: &[Session]) -> Value {
    Value::Array(sessions.iter().map(session_json).collect())
}

/// A KV entry as Consul returns it: `Value` is standard base64, or `null` when
/// the value is empty (Consul stores an empty PUT body as a nil value);
/// `Session` is present only while the key is locked.
pub fn kv_json(entry: &KvEntry) -> Value {
    let value = if entry.value.is_empty() {
        Value::Null
    } else {
        Value::String(base64_encode(&entry.value))
    };
    let mut object = json!({
        "LockIndex": entry.lock_index,
        "Key": entry.key,
        "Flags": entry.flags,
        "Value": value,
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    });
    if let (Some(session), Value::Object(members)) = (entry.session, &mut object) {
        members.insert("Session".to_owned(), Value::String(session.to_string()));
    }
    object
}

/// A JSON array of [`kv_json`] objects, the body of `GET /v1/kv/:key`.
pub fn kv_list_json(entries: &[KvEntry]) -> Value {
    Value::Array(entries.iter().map(kv_json).collect())
}

// ---------------------------------------------------------------------------
// Base64 (RFC 4648 standard alphabet, with padding), as Go's encoding/json uses for []byte.

const BASE64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes bytes as standard padded base64.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let group = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64_ALPHABET[(group >> (18 - 6 * i) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64. Strict: the length must be a multiple of 4,
/// `=` may only end the text, no whitespace, and unused trailing bits must be
/// zero (RFC 4648 section 3.5), so every value has exactly one encoding.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, CodecError> {
    let invalid = |why: String| bad_request(format!("Invalid base64: {why}"));
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return Err(invalid(format!("length {} is not a multiple of 4", bytes.len())));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, quad) in bytes.chunks(4).enumerate() {
        let last = (index + 1) * 4 == bytes.len();
        let padding = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return Err(invalid(format!("misplaced padding in group at offset {}", index * 4)));
        }
        let mut group: u32 = 0;
        for (i, &byte) in quad[..4 - padding].iter().enumerate() {
            let sextet = BASE64_ALPHABET
                .iter()
                .position(|&a| a == byte)
                .ok_or_else(|| invalid(format!("unexpected byte 0x{byte:02x} at offset {}", index * 4 + i)))?;
            group |= (sextet as u32) << (18 - 6 * i);
        }
        let kept = 3 - padding;
        if group & (0xff_ffff >> (8 * kept)) != 0 {
            return Err(invalid(format!(
                "non-zero trailing bits in final group at offset {}",
                index * 4
            )));
        }
        out.extend_from_slice(&group.to_be_bytes()[1..=kept]);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Query strings

/// Percent-decodes one query-string component (a name or a value), with `+`
/// meaning a space, as Go's `url.QueryUnescape`. Errors on a bad `%` escape or
/// on bytes that are not UTF-8. (Go's `URL.Query()` silently drops such a
/// parameter; we answer 400 instead so a typo is not mistaken for absence.)
pub fn decode_query_component(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("invalid escape at byte {i} of {text:?}"))?;
                out.push(byte);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} does not decode to UTF-8"))
}

/// Query parameters in order; lookups return the first occurrence, like Go's `Values.Get`.
struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    fn parse(query: &str) -> Result<Self, CodecError> {
        let query = query.strip_prefix('?').unwrap_or(query);
        let mut pairs = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode_query_component(raw_name)
                .map_err(|e| bad_request(format!("Invalid query parameter name: {e}")))?;
            let value = decode_query_component(raw_value)
                .map_err(|e| bad_request(format!("Invalid value for query parameter '{name}': {e}")))?;
            pairs.push((name, value));
        }
        Ok(QueryParams(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Consul tests flags by presence: `?recurse`, `?recurse=` and even `?recurse=false` all set it.
    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn get_u64(&self, name: &str) -> Result<Option<u64>, CodecError> {
        self.get(name).map(|value| parse_u64_param(name, value)).transpose()
    }

    fn get_session(&self, name: &str) -> Result<Option<Uuid>, CodecError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        if value.is_empty() {
            return Err(bad_request(format!("Invalid {name}: missing session")));
        }
        parse_canonical_uuid(value)
            .map(Some)
            .ok_or_else(|| bad_request(format!("Invalid {name} session '{value}': must be a UUID")))
    }
}

/// Digits only, like Go's `strconv.ParseUint(s, 10, 64)` (Rust's parser would also take a leading `+`).
fn parse_u64_param(name: &str, value: &str) -> Result<u64, CodecError> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| bad_request(format!("Invalid {name} '{value}': must be an unsigned 64-bit integer")))
}

/// Parameters of a `/v1/kv/:key` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvQuery {
    /// `?recurse`: every key under the prefix (GET, DELETE).
    pub recurse: bool,
    /// `?raw`: the bare value instead of JSON (GET).
    pub raw: bool,
    /// `?keys`: only key names (GET).
    pub keys: bool,
    /// `?separator=` (or Consul's historic `?seperator=`): list keys up to it; `None` if absent or empty.
    pub separator: Option<String>,
    /// `?cas=<index>`: write only if `ModifyIndex` matches (`0`: only if absent).
    pub cas: Option<u64>,
    /// `?flags=`: opaque client flags to store (PUT).
    pub flags: Option<u64>,
    /// `?acquire=<session>`: lock the key for the session (PUT).
    pub acquire: Option<Uuid>,
    /// `?release=<session>`: unlock the key if the session holds it (PUT).
    pub release: Option<Uuid>,
}

impl KvQuery {
    /// A PUT may carry at most one of `cas`, `acquire`, `release` (Consul: 400 "Conflicting flags").
    pub fn check_put(&self) -> Result<(), CodecError> {
        let given = [
            ("cas", self.cas.is_some()),
            ("acquire", self.acquire.is_some()),
            ("release", self.release.is_some()),
        ];
        conflicting_flags(&given)
    }

    /// A DELETE may not carry both `recurse` and `cas` (Consul: 400 "Conflicting flags").
    pub fn check_delete(&self) -> Result<(), CodecError> {
        conflicting_flags(&[("recurse", self.recurse), ("cas", self.cas.is_some())])
    }
}

fn conflicting_flags(given: &[(&str, bool)]) -> Result<(), CodecError> {
    let present: Vec<&str> = given.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
    if present.len() > 1 {
        return Err(bad_request(format!("Conflicting flags: {}", present.join(", "))));
    }
    Ok(())
}

/// Parses the KV parameters of a raw query string (`a=1&b&c=x`, no leading `?`
/// needed). Malformed numbers and session ids are 400s naming the parameter.
pub fn parse_kv_query(query: &str) -> Result<KvQuery, CodecError> {
    let params = QueryParams::parse(query)?;
    let separator = params.get("separator").or_else(|| params.get("seperator"));
    Ok(KvQuery {
        recurse: params.has("recurse"),
        raw: params.has("raw"),
        keys: params.has("keys"),
        separator: separator.filter(|s| !s.is_empty()).map(str::to_owned),
        cas: params.get_u64("cas")?,
        flags: params.get_u64("flags")?,
        acquire: params.get_session("acquire")?,
        release: params.get_session("release")?,
    })
}

/// How a read may be served (Consul's consistency modes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Served by the leader without a quorum check (also `?leader`).
    #[default]
    Default,
    /// `?consistent`: the leader confirms with a quorum first.
    Consistent,
    /// `?stale`: any node answers from its own state.
    Stale,
}

/// Parameters common to all reads, blocking ones in particular.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// `?index=`: block until the result's index exceeds it (`0` does not block).
    pub index: Option<u64>,
    /// `?wait=`, clamped to [`MAX_WAIT`]; `None` when absent or not positive, in
    /// which case Consul waits [`DEFAULT_WAIT`] (see [`wait_with_jitter`]).
    pub wait: Option<Duration>,
    /// `?stale` / `?consistent`.
    pub consistency: Consistency,
    /// `?token=` (an ACL token; the `X-Consul-Token` header is the caller's job).
    pub token: Option<String>,
}

/// Parses `index`, `wait`, `stale`/`consistent` and `token` from a raw query string.
pub fn parse_read_options(query: &str) -> Result<ReadOptions, CodecError> {
    let params = QueryParams::parse(query)?;
    let index = match params.get("index") {
        None | Some("") => None,
        Some(value) => Some(parse_u64_param("index", value)?),
    };
    let wait = match params.get("wait") {
        None | Some("") => None,
        Some(value) => {
            let nanos =
                go_duration_nanos(value).map_err(|e| bad_request(format!("Invalid wait time '{value}': {e}")))?;
            (nanos > 0).then(|| Duration::from_nanos(nanos.unsigned_abs()).min(MAX_WAIT))
        }
    };
    let consistency = match (params.has("stale"), params.has("consistent")) {
        (true, true) => {
            return Err(bad_request(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ))
        }
        (true, false) => Consistency::Stale,
        (false, true) => Consistency::Consistent,
        (false, false) => Consistency::Default,
    };
    let token = params.get("token").filter(|t| !t.is_empty()).map(str::to_owned);
    Ok(ReadOptions {
        index,
        wait,
        consistency,
        token,
    })
}

/// How long a blocking query may hang: `wait` (zero means [`DEFAULT_WAIT`],
/// clamped to [`MAX_WAIT`]) plus a jitter of `random_0_to_1 * wait / 16`, as
/// Consul adds to spread out clients that all watch the same key. The caller
/// passes the randomness; values outside `[0, 1]` are clamped, NaN means none.
pub fn wait_with_jitter(wait: Duration, random_0_to_1: f64) -> Duration {
    let wait = if wait.is_zero() {
        DEFAULT_WAIT
    } else {
        wait.min(MAX_WAIT)
    };
    let random = if random_0_to_1.is_nan() {
        0.0
    } else {
        random_0_to_1.clamp(0.0, 1.0)
    };
    wait + (wait / WAIT_JITTER_FRACTION).mul_f64(random)
}

// ---------------------------------------------------------------------------
// Path segments

/// Parses the `:uuid` of `/v1/session/{destroy,renew,info}/:uuid`. Only the
/// 36-character hyphenated form Consul issues is accepted (hex in either
/// case); an empty segment gets Consul's "Missing session".
pub fn parse_uuid(segment: &str) -> Result<Uuid, CodecError> {
    if segment.is_empty() {
        return Err(bad_request("Missing session"));
    }
    parse_canonical_uuid(segment).ok_or_else(|| bad_request(format!("Invalid session id '{segment}': must be a UUID")))
}

fn parse_canonical_uuid(text: &str) -> Option<Uuid> {
    (text.len() == 36).then(|| Uuid::try_parse(text).ok()).flatten()
}

/// Rejects a KV value longer than [`MAX_VALUE_SIZE`] bytes with 413.
pub fn check_value_size(len: usize) -> Result<(), CodecError> {
    if len > MAX_VALUE_SIZE {
        return Err(CodecError::TooLarge {
            len,
            max: MAX_VALUE_SIZE,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = DEFAULT_SESSION_TTL_MIN;
    const MAX: Duration = SESSION_TTL_MAX;
    const SESSION_ID: &str = "adf4238a-882b-9ddc-4a9d-5b6758e4159e";

    fn create(body: &str) -> Result<SessionRequest, CodecError> {
        parse_session_create(body.as_bytes(), "node-a", MIN, MAX)
    }

    fn message(error: CodecError) -> String {
        assert_eq!(error.status(), 400, "expected a 400, got {error:?}");
        error.to_string()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Go duration syntax: compound sequences, fractions, every unit spelling, signs and the bare zero.
    #[test]
    fn go_duration_parses_go_syntax() {
        let cases = [
            ("0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("10ns", Duration::from_nanos(10)),
            ("2us", Duration::from_micros(2)),
            ("2µs", Duration::from_micros(2)),
            ("2μs", Duration::from_micros(2)),
            ("300ms", Duration::from_millis(300)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("1.s", secs(1)),
            ("+5s", secs(5)),
            ("1m", secs(60)),
            ("1h2m3.5s", Duration::from_millis(3_723_500)),
            ("1h1h", secs(7200)),
            ("1.0000000001s", Duration::from_nanos(1_000_000_000)),
            ("0.3333333333333h", Duration::from_nanos(1_199_999_999_999)),
            ("2562047h47m16.854775807s", Duration::from_nanos(i64::MAX as u64)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_go_duration(text), Ok(expected), "{text}");
        }
    }

    /// Malformed, unit-less, unknown-unit, negative and overflowing durations fail with Go's messages.
    #[test]
    fn go_duration_rejects_bad_input_with_go_messages() {
        let cases = [
            ("", "time: invalid duration \"\""),
            ("-", "time: invalid duration \"-\""),
            ("s", "time: invalid duration \"s\""),
            (".s", "time: invalid duration \".s\""),
            ("5", "time: missing unit in duration \"5\""),
            ("00", "time: missing unit in duration \"00\""),
            ("1s5", "time: missing unit in duration \"1s5\""),
            ("5x", "time: unknown unit \"x\" in duration \"5x\""),
            ("5 s", "time: unknown unit \" s\" in duration \"5 s\""),
            ("-5s", "time: negative duration \"-5s\""),
            (
                "2562047h47m16.854775808s",
                "time: invalid duration \"2562047h47m16.854775808s\"",
            ),
            (
                "99999999999999999999h",
                "time: invalid duration \"99999999999999999999h\"",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_go_duration(text), Err(expected.to_owned()), "{text}");
        }
        assert_eq!(go_duration_nanos("-2562047h47m16.854775808s"), Ok(i64::MIN));
    }

    /// Duration formatting matches Go's Duration.String for every unit range.
    #[test]
    fn go_duration_formats_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(999), "999ns"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_micros(1_500), "1.5ms"),
            (Duration::from_millis(500), "500ms"),
            (secs(1), "1s"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_nanos(1_000_000_001), "1.000000001s"),
            (secs(60), "1m0s"),
            (secs(90), "1m30s"),
            (secs(3600), "1h0m0s"),
            (Duration::from_millis(3_661_500), "1h1m1.5s"),
            (MAX, "24h0m0s"),
        ];
        for (duration, expected) in cases {
            assert_eq!(format_go_duration(duration), expected, "{duration:?}");
        }
    }

    /// No body, a whitespace body and a JSON null all give Consul's defaults.
    #[test]
    fn session_create_without_body_gives_defaults() {
        let defaults = SessionRequest {
            name: String::new(),
            node: "node-a".to_owned(),
            ttl: None,
            lock_delay: secs(15),
            behavior: Behavior::Release,
        };
        for body in ["", " \n", "null", "{}"] {
            assert_eq!(create(body), Ok(defaults.clone()), "{body:?}");
        }
    }

    /// PascalCase (npm consul, Go), lower-case (python-consul, Patroni) and upper-case keys all work.
    #[test]
    fn session_create_matches_keys_case_insensitively() {
        let expected = SessionRequest {
            name: "validator".to_owned(),
            node: "node-b".to_owned(),
            ttl: Some(secs(30)),
            lock_delay: secs(5),
            behavior: Behavior::Delete,
        };
        let bodies = [
            r#"{"Name":"validator","Node":"node-b","TTL":"30s","LockDelay":"5s","Behavior":"delete","Checks":[]}"#,
            r#"{"name":"validator","node":"node-b","ttl":"30s","lockdelay":"5s","behavior":"delete","checks":[]}"#,
            r#"{"NAME":"validator","NODE":"node-b","Ttl":"30s","LOCKDELAY":"5s","BEHAVIOR":"delete"}"#,
        ];
        for body in bodies {
            assert_eq!(create(body), Ok(expected.clone()), "{body}");
        }
    }

    /// A field given twice under different casings resolves to the later one, as in Go.
    #[test]
    fn session_create_later_duplicate_key_wins() {
        let request = create(r#"{"name":"first","Name":"second","TTL":"10s","ttl":"20s"}"#).unwrap();
        assert_eq!(request.name, "second");
        assert_eq!(request.ttl, Some(secs(20)));
        let request = create(r#"{"Name":"second","name":"first"}"#).unwrap();
        assert_eq!(request.name, "first");
    }

    /// LockDelay as a Go duration string is taken as written.
    #[test]
    fn lock_delay_string_is_a_go_duration() {
        let cases = [
            ("15s", secs(15)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("500ms", Duration::from_millis(500)),
            ("1m", secs(60)),
        ];
        for (text, expected) in cases {
            let request = create(&format!(r#"{{"LockDelay":"{text}"}}"#)).unwrap();
            assert_eq!(request.lock_delay, expected, "{text}");
        }
    }

    /// LockDelay numbers are nanoseconds, except below 1000 where they are seconds (so 5 means 5 s).
    #[test]
    fn lock_delay_number_is_nanoseconds_with_small_values_in_seconds() {
        let cases = [
            ("15000000000", secs(15)),
            ("1000", Duration::from_micros(1)),
            ("999", secs(999)),
            ("5", secs(5)),
            ("5.7", secs(5)),
            ("1e3", Duration::from_micros(1)),
            ("0", Duration::ZERO),
            ("-5", Duration::ZERO),
            ("-15000000000", Duration::ZERO),
        ];
        for (number, expected) in cases {
            let request = create(&format!(r#"{{"lockdelay":{number}}}"#)).unwrap();
            assert_eq!(request.lock_delay, expected, "{number}");
        }
        // The small-value rule applies to strings too, as in Consul: "5ns" is 5 s.
        assert_eq!(create(r#"{"LockDelay":"5ns"}"#).unwrap().lock_delay, secs(5));
        assert_eq!(
            create(r#"{"LockDelay":"1us"}"#).unwrap().lock_delay,
            Duration::from_micros(1)
        );
    }

    /// A null LockDelay keeps the 15 s default, and values above 60 s are stored unclamped.
    #[test]
    fn lock_delay_null_is_default_and_large_values_are_kept() {
        assert_eq!(create(r#"{"LockDelay":null}"#).unwrap().lock_delay, secs(15));
        assert_eq!(create(r#"{"LockDelay":"2m"}"#).unwrap().lock_delay, secs(120));
    }

    /// A LockDelay that is a bad duration, the wrong type or out of range is a 400 naming the field.
    #[test]
    fn lock_delay_rejects_bad_values() {
        let text = message(create(r#"{"LockDelay":"soon"}"#).unwrap_err());
        assert_eq!(
            text,
            "Request decode failed: LockDelay: time: invalid duration \"soon\""
        );
        let cases = [
            (
                r#"{"lockDelay":true}"#,
                "lockDelay must be a duration string or a number of nanoseconds, got bool",
            ),
            (
                r#"{"LockDelay":[]}"#,
                "LockDelay must be a duration string or a number of nanoseconds, got array",
            ),
            (r#"{"LockDelay":1e300}"#, "LockDelay 1e+300 is out of range"),
            (
                r#"{"LockDelay":9223372036854775808}"#,
                "LockDelay 9223372036854775808 is out of range",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                message(create(body).unwrap_err()),
                format!("Request decode failed: {expected}")
            );
        }
    }

    /// TTLs inside the bounds (inclusive) parse; empty and zero TTLs mean none.
    #[test]
    fn ttl_within_bounds_or_empty_is_accepted() {
        let cases = [
            ("10s", Some(secs(10))),
            ("30s", Some(secs(30))),
            ("1h", Some(secs(3600))),
            ("24h", Some(MAX)),
            ("10500ms", Some(Duration::from_millis(10_500))),
            ("", None),
            ("0s", None),
            ("0", None),
        ];
        for (ttl, expected) in cases {
            assert_eq!(create(&format!(r#"{{"TTL":"{ttl}"}}"#)).unwrap().ttl, expected, "{ttl}");
        }
    }

    /// Out-of-range TTLs get Consul's exact message, which starts with the prefix Patroni matches.
    #[test]
    fn ttl_out_of_bounds_gets_consuls_message() {
        let cases = [
            ("5s", "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"),
            (
                "9.999s",
                "Invalid Session TTL '9999000000', must be between [10s=24h0m0s]",
            ),
            (
                "24h0m1s",
                "Invalid Session TTL '86401000000000', must be between [10s=24h0m0s]",
            ),
            (
                "-10s",
                "Invalid Session TTL '-10000000000', must be between [10s=24h0m0s]",
            ),
        ];
        for (ttl, expected) in cases {
            let text = message(create(&format!(r#"{{"ttl":"{ttl}"}}"#)).unwrap_err());
            assert_eq!(text, expected);
            assert!(text.starts_with("Invalid Session TTL"));
        }
        let text = message(parse_session_ttl("15s", secs(20), secs(60)).unwrap_err());
        assert_eq!(text, "Invalid Session TTL '15000000000', must be between [20s=1m0s]");
    }

    /// An unparsable or non-string TTL is a 400 naming the TTL.
    #[test]
    fn ttl_that_does_not_parse_is_rejected() {
        let text = message(create(r#"{"TTL":"10"}"#).unwrap_err());
        assert_eq!(text, "Session TTL '10' invalid: time: missing unit in duration \"10\"");
        let text = message(create(r#"{"TTL":10}"#).unwrap_err());
        assert_eq!(text, "Request decode failed: TTL must be a string, got number");
    }

    /// Behavior accepts "", "release" and "delete" only, case-sensitively, like Consul.
    #[test]
    fn behavior_is_validated() {
        for (behavior, expected) in [
            ("", Behavior::Release),
            ("release", Behavior::Release),
            ("delete", Behavior::Delete),
        ] {
            assert_eq!(
                create(&format!(r#"{{"Behavior":"{behavior}"}}"#)).unwrap().behavior,
                expected
            );
        }
        for behavior in ["Release", "destroy"] {
            let text = message(create(&format!(r#"{{"Behavior":"{behavior}"}}"#)).unwrap_err());
            assert_eq!(text, format!("Invalid Behavior setting '{behavior}'"));
        }
    }

    /// Check lists (any of the three keys, empty, full or null) are accepted and change nothing.
    #[test]
    fn checks_are_accepted_and_ignored() {
        let plain = create(r#"{"Name":"x"}"#).unwrap();
        let bodies = [
            r#"{"Name":"x","Checks":[]}"#,
            r#"{"Name":"x","Checks":["serfHealth"]}"#,
            r#"{"Name":"x","NodeChecks":["serfHealth"],"ServiceChecks":[{"ID":"redis","Namespace":""}]}"#,
            r#"{"Name":"x","checks":null,"nodechecks":null,"servicechecks":null}"#,
        ];
        for body in bodies {
            assert_eq!(create(body), Ok(plain.clone()), "{body}");
        }
        for body in [
            r#"{"Checks":"serfHealth"}"#,
            r#"{"NodeChecks":[1]}"#,
            r#"{"ServiceChecks":["a"]}"#,
        ] {
            assert!(
                message(create(body).unwrap_err()).starts_with("Request decode failed: "),
                "{body}"
            );
        }
    }

    /// Unknown keys, and keys we compute ourselves such as ID, are ignored like Consul does.
    #[test]
    fn unknown_keys_are_ignored() {
        let request = create(r#"{"ID":"x","Namespace":"default","Whatever":{"a":[1]},"Name":"n"}"#).unwrap();
        assert_eq!(request.name, "n");
        assert_eq!(request.node, "node-a");
    }

    /// Malformed JSON, a non-object body and trailing bytes are 400s that say what is wrong.
    #[test]
    fn malformed_body_is_rejected() {
        let text = message(create(r#"{"Name": }"#).unwrap_err());
        assert!(
            text.starts_with("Request decode failed: expected value at line 1 column 10"),
            "{text}"
        );
        let text = message(create("[]").unwrap_err());
        assert!(text.contains("expected a JSON object"), "{text}");
        let text = message(create(r#"{"Name":"x"} {}"#).unwrap_err());
        assert!(text.contains("trailing characters"), "{text}");
        let text = message(create(r#"{"Name":5}"#).unwrap_err());
        assert_eq!(text, "Request decode failed: Name must be a string, got number");
    }

    /// An explicit empty Node is refused like Consul; a null Node keeps the agent's node.
    #[test]
    fn node_must_not_be_empty() {
        assert_eq!(message(create(r#"{"Node":""}"#).unwrap_err()), "Must provide Node");
        assert_eq!(create(r#"{"Node":null}"#).unwrap().node, "node-a");
    }

    fn session(ttl: Option<Duration>) -> Session {
        Session {
            id: Uuid::parse_str(SESSION_ID).unwrap(),
            name: "test-session".to_owned(),
            node: "raja-laptop-02".to_owned(),
            ttl,
            lock_delay: secs(15),
            behavior: Behavior::Release,
            create_index: 1086449,
            modify_index: 1086450,
        }
    }

    /// A session renders with every field Consul returns: LockDelay in ns, TTL as a string, empty checks.
    #[test]
    fn session_json_matches_consul() {
        let expected = json!({
            "ID": SESSION_ID,
            "Name": "test-session",
            "Node": "raja-laptop-02",
            "LockDelay": 15_000_000_000u64,
            "Behavior": "release",
            "TTL": "30s",
            "Checks": [],
            "NodeChecks": [],
            "ServiceChecks": null,
            "CreateIndex": 1086449,
            "ModifyIndex": 1086450,
        });
        assert_eq!(session_json(&session(Some(secs(30)))), expected);
        let mut deleting = session(None);
        deleting.behavior = Behavior::Delete;
        let value = session_json(&deleting);
        assert_eq!(value["TTL"], "");
        assert_eq!(value["Behavior"], "delete");
        assert_eq!(sessions_json(&[]), json!([]));
        assert_eq!(sessions_json(&[session(None)])[0]["ID"], SESSION_ID);
        assert_eq!(
            session_created_json(Uuid::parse_str(SESSION_ID).unwrap()),
            json!({ "ID": SESSION_ID })
        );
    }

    /// TTLs render as whole seconds when they are whole, else in Go's notation, and both parse back.
    #[test]
    fn ttl_formatting_round_trips() {
        for (ttl, text) in [
            (secs(10), "10s"),
            (secs(60), "60s"),
            (secs(86400), "86400s"),
            (Duration::from_millis(1500), "1.5s"),
        ] {
            assert_eq!(format_ttl(ttl), text);
            assert_eq!(parse_go_duration(text), Ok(ttl));
        }
    }

    fn entry(value: &[u8], session: Option<Uuid>) -> KvEntry {
        KvEntry {
            key: "service/validator/leader".to_owned(),
            value: value.to_vec(),
            flags: 0x2ddccbc058a50c18,
            session,
            lock_index: 3,
            create_index: 100,
            modify_index: 200,
        }
    }

    /// A locked entry carries Session and a base64 Value; an unlocked one omits Session; empty values are null.
    #[test]
    fn kv_json_matches_consul() {
        let id = Uuid::parse_str(SESSION_ID).unwrap();
        let expected = json!({
            "LockIndex": 3,
            "Key": "service/validator/leader",
            "Flags": 0x2ddccbc058a50c18u64,
            "Value": "dGVzdA==",
            "Session": SESSION_ID,
            "CreateIndex": 100,
            "ModifyIndex": 200,
        });
        assert_eq!(kv_json(&entry(b"test", Some(id))), expected);
        let unlocked = kv_json(&entry(b"", None));
        assert_eq!(unlocked["Value"], Value::Null);
        assert!(unlocked.get("Session").is_none(), "{unlocked}");
        let list = kv_list_json(&[entry(b"a", None), entry(b"b", Some(id))]);
        assert_eq!(list.as_array().map(Vec::len), Some(2));
        assert_eq!(list[1]["Session"], SESSION_ID);
        assert_eq!(kv_list_json(&[]), json!([]));
    }

    /// Base64 matches the RFC 4648 section 10 test vectors both ways.
    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded), Ok(plain.as_bytes().to_vec()));
        }
        assert_eq!(base64_encode(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    /// Every byte value and every length up to 70 survives an encode-decode round trip.
    #[test]
    fn base64_round_trips_all_bytes_and_lengths() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)), Ok(all.clone()));
        for len in 0..=70 {
            let data: Vec<u8> = all.iter().rev().take(len).copied().collect();
            let encoded = base64_encode(&data);
            assert_eq!(encoded.len(), len.div_ceil(3) * 4);
            assert_eq!(base64_decode(&encoded), Ok(data));
        }
    }

    /// Decoding refuses bad lengths, bad bytes, misplaced padding, whitespace and non-canonical trailing bits.
    #[test]
    fn base64_rejects_bad_input() {
        for bad in [
            "Zg", "Zg=", "Z===", "====", "Zm9v!A==", "Zg==Zg==", "Zm=v", "Zm9v\n", "Zh==", "Zm9=", "Zm9vYg-=",
        ] {
            let error = base64_decode(bad).unwrap_err();
            assert_eq!(error.status(), 400);
            assert!(error.to_string().starts_with("Invalid base64: "), "{bad}: {error}");
        }
    }

    /// Query components decode %XX escapes and '+', and refuse broken escapes or non-UTF-8 results.
    #[test]
    fn percent_decoding_follows_query_rules() {
        let cases = [
            ("plain", "plain"),
            ("a%20b", "a b"),
            ("a+b", "a b"),
            ("%2B", "+"),
            ("%2f%2F", "//"),
            ("%e2%82%ac", "€"),
            ("100%25", "100%"),
            ("", ""),
        ];
        for (raw, decoded) in cases {
            assert_eq!(decode_query_component(raw).as_deref(), Ok(decoded), "{raw}");
        }
        for bad in ["%", "%2", "%zz", "a%g1", "%ff", "%e2%82"] {
            assert!(decode_query_component(bad).is_err(), "{bad}");
        }
        let text = message(parse_kv_query("separator=%zz").unwrap_err());
        assert!(
            text.starts_with("Invalid value for query parameter 'separator'"),
            "{text}"
        );
    }

    /// Flags count by presence: bare, empty, "true" and even "false" set them; absence leaves them unset.
    #[test]
    fn flag_params_count_by_presence() {
        for query in [
            "recurse",
            "recurse=",
            "recurse=true",
            "recurse=false",
            "?recurse",
            "dc=dc1&recurse&x=1",
        ] {
            assert!(parse_kv_query(query).unwrap().recurse, "{query}");
        }
        let query = parse_kv_query("raw&keys").unwrap();
        assert!(query.raw && query.keys && !query.recurse);
        assert_eq!(parse_kv_query(""), Ok(KvQuery::default()));
    }

    /// A full KV query parses every parameter, decoding values and taking the first duplicate.
    #[test]
    fn kv_query_parses_all_parameters() {
        let id = Uuid::parse_str(SESSION_ID).unwrap();
        let query = parse_kv_query(&format!("cas=0&flags=42&acquire={SESSION_ID}&flags=7")).unwrap();
        assert_eq!(query.cas, Some(0));
        assert_eq!(query.flags, Some(42));
        assert_eq!(query.acquire, Some(id));
        assert_eq!(query.release, None);
        let upper = SESSION_ID.to_uppercase();
        assert_eq!(parse_kv_query(&format!("release={upper}")).unwrap().release, Some(id));
        assert_eq!(
            parse_kv_query("keys&separator=%2F").unwrap().separator.as_deref(),
            Some("/")
        );
        assert_eq!(
            parse_kv_query("keys&seperator=/").unwrap().separator.as_deref(),
            Some("/")
        );
        assert_eq!(
            parse_kv_query("keys&seperator=-&separator=/")
                .unwrap()
                .separator
                .as_deref(),
            Some("/")
        );
        assert_eq!(parse_kv_query("keys&separator=").unwrap().separator, None);
        assert_eq!(
            parse_kv_query("flags=18446744073709551615").unwrap().flags,
            Some(u64::MAX)
        );
    }

    /// Malformed cas, flags and index values are 400s naming the parameter.
    #[test]
    fn bad_numbers_are_rejected_naming_the_parameter() {
        for (query, name) in [
            ("cas=abc", "cas"),
            ("cas=", "cas"),
            ("cas", "cas"),
            ("cas=-1", "cas"),
            ("cas=+1", "cas"),
            ("flags=1.5", "flags"),
            ("flags=18446744073709551616", "flags"),
        ] {
            let text = message(parse_kv_query(query).unwrap_err());
            assert!(text.starts_with(&format!("Invalid {name} '")), "{query}: {text}");
        }
        let text = message(parse_read_options("index=x1").unwrap_err());
        assert_eq!(text, "Invalid index 'x1': must be an unsigned 64-bit integer");
    }

    /// Malformed or empty session ids in acquire and release are 400s naming the parameter.
    #[test]
    fn bad_session_params_are_rejected() {
        let text = message(parse_kv_query("acquire=not-a-uuid").unwrap_err());
        assert_eq!(text, "Invalid acquire session 'not-a-uuid': must be a UUID");
        let text = message(parse_kv_query("release=adf4238a882b9ddc4a9d5b6758e4159e").unwrap_err());
        assert!(text.starts_with("Invalid release session"), "{text}");
        assert_eq!(
            message(parse_kv_query("acquire=").unwrap_err()),
            "Invalid acquire: missing session"
        );
        assert_eq!(
            message(parse_kv_query("release").unwrap_err()),
            "Invalid release: missing session"
        );
    }

    /// PUT allows one of cas/acquire/release and DELETE not recurse with cas, as Consul's conflictingFlags.
    #[test]
    fn conflicting_flags_are_rejected() {
        let ok = |q: &str| parse_kv_query(q).unwrap();
        assert_eq!(ok(&format!("acquire={SESSION_ID}&flags=1")).check_put(), Ok(()));
        assert_eq!(ok("cas=3").check_put(), Ok(()));
        let text = message(ok(&format!("cas=0&acquire={SESSION_ID}")).check_put().unwrap_err());
        assert_eq!(text, "Conflicting flags: cas, acquire");
        assert!(ok(&format!("acquire={SESSION_ID}&release={SESSION_ID}"))
            .check_put()
            .is_err());
        assert_eq!(ok("recurse").check_delete(), Ok(()));
        assert_eq!(ok("cas=5").check_delete(), Ok(()));
        assert_eq!(
            message(ok("recurse&cas=5").check_delete().unwrap_err()),
            "Conflicting flags: recurse, cas"
        );
    }

    /// Read options parse index, wait (clamped, zero meaning default), consistency and token.
    #[test]
    fn read_options_parse_and_clamp() {
        let options = parse_read_options("index=42&wait=30s&consistent&token=s%3Dcr%2Bet").unwrap();
        assert_eq!(
            options,
            ReadOptions {
                index: Some(42),
                wait: Some(secs(30)),
                consistency: Consistency::Consistent,
                token: Some("s=cr+et".to_owned()),
            }
        );
        assert_eq!(parse_read_options(""), Ok(ReadOptions::default()));
        assert_eq!(
            parse_read_options("index=&wait=&token=").unwrap(),
            ReadOptions::default()
        );
        assert_eq!(parse_read_options("index=0").unwrap().index, Some(0));
        assert_eq!(parse_read_options("wait=20m").unwrap().wait, Some(MAX_WAIT));
        assert_eq!(parse_read_options("wait=0s").unwrap().wait, None);
        assert_eq!(parse_read_options("wait=-5s").unwrap().wait, None);
        assert_eq!(parse_read_options("stale").unwrap().consistency, Consistency::Stale);
        assert_eq!(parse_read_options("leader").unwrap().consistency, Consistency::Default);
    }

    /// A bad wait, a bad index and stale with consistent are 400s with Consul's wording.
    #[test]
    fn read_options_reject_bad_values() {
        let text = message(parse_read_options("wait=5").unwrap_err());
        assert_eq!(text, "Invalid wait time '5': time: missing unit in duration \"5\"");
        assert!(message(parse_read_options("index=-1").unwrap_err()).starts_with("Invalid index"));
        let text = message(parse_read_options("stale&consistent=1").unwrap_err());
        assert_eq!(text, "Cannot specify ?stale with ?consistent, conflicting semantics.");
    }

    /// Session path segments must be 36-character UUIDs; empty is "Missing session"; other forms are refused.
    #[test]
    fn parse_uuid_accepts_only_hyphenated_uuids() {
        let id = Uuid::parse_str(SESSION_ID).unwrap();
        assert_eq!(parse_uuid(SESSION_ID), Ok(id));
        assert_eq!(parse_uuid(&SESSION_ID.to_uppercase()), Ok(id));
        assert_eq!(message(parse_uuid("").unwrap_err()), "Missing session");
        let braced = format!("{{{SESSION_ID}}}");
        let urn = format!("urn:uuid:{SESSION_ID}");
        for bad in [
            "nope",
            "adf4238a882b9ddc4a9d5b6758e4159e",
            braced.as_str(),
            urn.as_str(),
            "adf4238a-882b-9ddc-4a9d-5b6758e4159g",
        ] {
            let text = message(parse_uuid(bad).unwrap_err());
            assert_eq!(text, format!("Invalid session id '{bad}': must be a UUID"));
        }
    }

    /// 524288 bytes is accepted; one byte more is a 413 with Consul's wording.
    #[test]
    fn value_size_limit_is_512_kib() {
        assert_eq!(check_value_size(0), Ok(()));
        assert_eq!(check_value_size(524_288), Ok(()));
        let error = check_value_size(524_289).unwrap_err();
        assert_eq!(error.status(), 413);
        assert_eq!(
            error.to_string(),
            "Request body(524289 bytes) too large, max size: 524288 bytes"
        );
        assert_eq!(CodecError::BadRequest("x".to_owned()).status(), 400);
    }

    /// Jitter adds between 0 and wait/16; zero wait means 5 min and longer waits are cut to 10 min first.
    #[test]
    fn wait_jitter_is_bounded() {
        assert_eq!(wait_with_jitter(secs(160), 0.0), secs(160));
        assert_eq!(wait_with_jitter(secs(160), 1.0), secs(170));
        assert_eq!(wait_with_jitter(secs(160), 0.5), secs(165));
        assert_eq!(wait_with_jitter(Duration::ZERO, 0.0), DEFAULT_WAIT);
        assert_eq!(wait_with_jitter(secs(3600), 0.0), MAX_WAIT);
        assert_eq!(wait_with_jitter(secs(3600), 1.0), MAX_WAIT + MAX_WAIT / 16);
        assert_eq!(wait_with_jitter(secs(160), 7.0), secs(170));
        assert_eq!(wait_with_jitter(secs(160), -1.0), secs(160));
        assert_eq!(wait_with_jitter(secs(160), f64::NAN), secs(160));
    }
}
