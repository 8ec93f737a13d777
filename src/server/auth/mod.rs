//! Exoscale's `EXO2-HMAC-SHA256` request signing, as Exoscale's clients sign (the Python
//! `requests-exoscale-auth`, egoscale, the `exo` CLI).
//!
//! The signed message is five parts joined by `\n`: `"{METHOD} {path}"`, the raw body, the
//! values of the query parameters named in `signed-query-args` in that order, concatenated,
//! an empty part for headers, and the `expires` UNIX time. The signature is the base64 of
//! HMAC-SHA256 over it with the API secret, and the header reads
//! `EXO2-HMAC-SHA256 credential={key}[,signed-query-args=a;b],expires={ts},signature={b64}`.
//!
//! Verification is pure: the caller gives the time. The comparison is constant-time (HMAC's
//! own `verify_slice`), and no error message carries a secret or a signature. What does not
//! depend on the key is checked from the header first (its form: 401; the time window: 403);
//! then every request is HMAC'd over its body, with a random dummy secret when the key is
//! unknown, so that an unknown key, a wrong signature, an expired signature and one too far
//! ahead all read the same 403 ([`FORBIDDEN_DETAIL`]) and an unknown key costs what a wrong
//! signature costs.

use std::collections::HashMap;
use std::fmt;

mod grants;

pub use grants::{Glob, Grants};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// The scheme name that starts the `Authorization` header.
pub const SCHEME: &str = "EXO2-HMAC-SHA256";

/// How far in the future a signature's `expires` may be by default, in seconds: 15 minutes
/// (`keylife serve --max-signature-validity`). Exoscale's clients sign for ten minutes; a
/// signature valid for longer is refused, as its replay window would be longer.
pub const DEFAULT_MAX_VALIDITY_SECS: i64 = 900;

/// The one detail of every 403 refusal of authentication: unknown key, wrong signature,
/// expired, too far ahead. One text, byte for byte, so that an answer does not tell which keys
/// exist.
pub const FORBIDDEN_DETAIL: &str = "the request is not authenticated: the API key is unknown, \
     the signature does not match the request, or it is outside its validity window \
     (expires must be in the future and not too far ahead)";

/// The most query arguments a signature may name. No KMS operation takes any; Exoscale's
/// clients sign every argument of a request, and a few must do.
pub const MAX_SIGNED_QUERY_ARGS: usize = 16;

/// Why a request is not authenticated. `Missing` and `Malformed` answer 401, the others 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// A header that is not a well-formed `EXO2-HMAC-SHA256` authorization; says what is wrong.
    Malformed(&'static str),
    /// The API key is not one of the server's.
    UnknownKey,
    /// The signature does not match the request.
    BadSignature,
    /// `expires` is in the past.
    Expired,
    /// `expires` is further ahead than the server accepts.
    TooLong,
}

impl AuthError {
    /// 401 for a missing or malformed header, 403 for the rest.
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Malformed(_) => 401,
            _ => 403,
        }
    }

    /// The stable machine code and the title of its problem document: `unauthorized` and
    /// `Unauthorized` (401), or `forbidden` and `Forbidden` (403).
    #[must_use]
    pub fn code_and_title(&self) -> (&'static str, &'static str) {
        if self.http_status() == 401 {
            ("unauthorized", "Unauthorized")
        } else {
            ("forbidden", "Forbidden")
        }
    }

    /// The reason class, for an audit log (never for the client, who gets one answer for
    /// every 403): `missing`, `malformed`, `unknown-key`, `bad-signature`, `expired`,
    /// `too-far-ahead`.
    #[must_use]
    pub fn reason_class(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::UnknownKey => "unknown-key",
            AuthError::BadSignature => "bad-signature",
            AuthError::Expired => "expired",
            AuthError::TooLong => "too-far-ahead",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => write!(
                f,
                "the request has no Authorization header; sign it with {SCHEME}"
            ),
            AuthError::Malformed(what) => {
                write!(
                    f,
                    "the Authorization header is not a valid {SCHEME} authorization: {what}"
                )
            }
            // One message for all four, so that an answer does not tell which API keys exist.
            AuthError::UnknownKey
            | AuthError::BadSignature
            | AuthError::Expired
            | AuthError::TooLong => f.write_str(FORBIDDEN_DETAIL),
        }
    }
}

impl std::error::Error for AuthError {}

/// One credential: its secret (wiped on drop) and what it may do.
struct Entry {
    secret: Zeroizing<Vec<u8>>,
    grants: Grants,
}

/// The API key / secret pairs a server accepts, each with its [`Grants`]. Secrets are wiped
/// on drop and never printed.
pub struct Credentials {
    entries: HashMap<String, Entry>,
    /// HMAC'd in place of a secret when the key is unknown: random, so no one can sign for it.
    dummy: Zeroizing<[u8; 32]>,
}

impl Default for Credentials {
    fn default() -> Credentials {
        let mut dummy = Zeroizing::new([0u8; 32]);
        rand::fill(dummy.as_mut());
        Credentials {
            entries: HashMap::new(),
            dummy,
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_struct("Credentials")
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// No credentials: every request is refused.
    #[must_use]
    pub fn new() -> Credentials {
        Credentials::default()
    }

    /// Adds (or replaces) the pair `key`, `secret`, which may call every API operation.
    #[must_use]
    pub fn with(self, key: impl Into<String>, secret: impl AsRef<[u8]>) -> Credentials {
        self.with_grants(key, secret, Grants::everything())
    }

    /// Adds (or replaces) the pair `key`, `secret`, which may do what `grants` allow.
    #[must_use]
    pub fn with_grants(
        mut self,
        key: impl Into<String>,
        secret: impl AsRef<[u8]>,
        grants: Grants,
    ) -> Credentials {
        let secret = Zeroizing::new(secret.as_ref().to_vec());
        self.entries.insert(key.into(), Entry { secret, grants });
        self
    }

    /// How many pairs there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The link keys derived from the secret of credential `key`, if it is one of these and
    /// a link credential (the `replicate` grant).
    #[must_use]
    pub fn link_key(&self, key: &str) -> Option<crate::crypto::LinkKey> {
        let entry = self.entries.get(key)?;
        entry
            .grants
            .may_replicate()
            .then(|| crate::crypto::LinkKey::derive(&entry.secret))
    }

    /// What the credential `key` may do, if it is one of these.
    #[must_use]
    pub fn grants(&self, key: &str) -> Option<&Grants> {
        self.entries.get(key).map(|entry| &entry.grants)
    }

    /// Parses the credentials file format: one credential per line,
    /// `KEY SECRET [operations=L] [names=L] [zones=L]`, words separated by whitespace (a `\`
    /// before a space keeps it in the word), attributes in any order, each at most once (see
    /// [`Grants`]); `#` at the start of a line or after whitespace starts a comment (a `#`
    /// inside a word is part of it: secrets may hold one); blank lines are skipped. At least
    /// one credential is required, and a key may appear once. The error names the line, never
    /// its secret.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let mut credentials = Credentials::new();
        for (index, line) in text.lines().enumerate() {
            let line = strip_comment(line).trim();
            if line.is_empty() {
                continue;
            }
            let words = split_words(line);
            let [key, secret, attributes @ ..] = words.as_slice() else {
                return Err(format!(
                    "line {}: expected `KEY SECRET [operations=L] [names=L] [zones=L]`",
                    index + 1
                ));
            };
            let grants = Grants::parse(attributes)
                .map_err(|error| format!("line {}: {error}", index + 1))?;
            if credentials.entries.contains_key(key.as_str()) {
                return Err(format!("line {}: key {key} is given twice", index + 1));
            }
            credentials = credentials.with_grants(key.as_str(), secret, grants);
        }
        if credentials.is_empty() {
            return Err("no `KEY SECRET` line".to_owned());
        }
        Ok(credentials)
    }

    /// Checks the `Authorization` header of a request (`None` if absent) against the method,
    /// the path (without query), the raw query string, the raw body and the time `now_unix`,
    /// with the default validity ([`DEFAULT_MAX_VALIDITY_SECS`]). Returns the API key that
    /// signed it. The same as [`Credentials::check_header`] then [`Pending::verify`].
    pub fn verify<'a>(
        &'a self,
        authorization: Option<&[u8]>,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<&'a str, AuthError> {
        self.check_header(authorization, now_unix, DEFAULT_MAX_VALIDITY_SECS)?
            .verify(method, path, query, body)
            .map(|verified| verified.key)
    }

    /// The checks that need neither the body nor the key: the header's form (at most
    /// [`MAX_SIGNED_QUERY_ARGS`] distinct signed query arguments) and the time window, `expires`
    /// from `now_unix` to `max_validity_secs` ahead. A key that is not one of these
    /// credentials passes too, and fails in [`Pending::verify`], after its body is HMAC'd
    /// with a dummy secret.
    pub fn check_header<'a>(
        &'a self,
        authorization: Option<&[u8]>,
        now_unix: i64,
        max_validity_secs: i64,
    ) -> Result<Pending<'a>, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let header =
            std::str::from_utf8(header).map_err(|_| AuthError::Malformed("it is not UTF-8"))?;
        let parsed = Authorization::parse(header)?;
        let signature = BASE64
            .decode(parsed.signature)
            .map_err(|_| AuthError::Malformed("`signature` is not base64"))?;
        let mut names: Vec<String> = Vec::new();
        if let Some(signed) = parsed.signed_query_args {
            for name in signed.split(';') {
                if name.is_empty() || names.iter().any(|n| n == name) {
                    return Err(AuthError::Malformed(
                        "`signed-query-args` has an empty or repeated name",
                    ));
                }
                if names.len() == MAX_SIGNED_QUERY_ARGS {
                    return Err(AuthError::Malformed("`signed-query-args` names too many"));
                }
                names.push(name.to_owned());
            }
        }
        if parsed.expires < now_unix {
            return Err(AuthError::Expired);
        }
        if parsed.expires > now_unix.saturating_add(max_validity_secs) {
            return Err(AuthError::TooLong);
        }
        let known = self.entries.get_key_value(parsed.credential);
        Ok(Pending {
            known: known.map(|(key, entry)| (key.as_str(), entry)),
            secret: known.map_or(self.dummy.as_slice(), |(_, entry)| entry.secret.as_slice()),
            signature,
            signed_query_args: names,
            expires: parsed.expires,
        })
    }
}

/// A request whose `Authorization` header passed [`Credentials::check_header`]: its
/// signature remains to be checked against the request.
pub struct Pending<'a> {
    known: Option<(&'a str, &'a Entry)>,
    secret: &'a [u8],
    signature: Vec<u8>,
    signed_query_args: Vec<String>,
    expires: i64,
}

impl fmt::Debug for Pending<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("known", &self.known.is_some())
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// A request whose signature checked out.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a> {
    /// The API key that signed it.
    pub key: &'a str,
    /// What that key may do.
    pub grants: &'a Grants,
    /// The signature's `expires`, UNIX time.
    pub expires: i64,
}

impl<'a> Pending<'a> {
    /// The signature's bytes, as sent (for a replay cache).
    #[must_use]
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The signature's `expires`, UNIX time.
    #[must_use]
    pub fn expires(&self) -> i64 {
        self.expires
    }

    /// Checks the signature (in constant time) over the method, the path (without query), the
    /// raw query string and the raw body; an unknown key is HMAC'd all the same, with a dummy
    /// secret, and refused after.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Verified<'a>, AuthError> {
        let values = signed_query_values(query, &self.signed_query_args);
        let mac = message_mac(self.secret, method, path, body, &values, self.expires);
        let matches = mac.verify_slice(&self.signature).is_ok();
        match self.known {
            Some((key, entry)) if matches => Ok(Verified {
                key,
                grants: &entry.grants,
                expires: self.expires,
            }),
            Some(_) => Err(AuthError::BadSignature),
            None => Err(AuthError::UnknownKey),
        }
    }
}

/// The API key an `Authorization` header names, if it is well-formed enough to name one:
/// for an audit log of refused requests.
#[must_use]
pub fn claimed_key(authorization: &[u8]) -> Option<String> {
    let header = std::str::from_utf8(authorization).ok()?;
    Authorization::parse(header)
        .ok()
        .map(|parsed| parsed.credential.to_owned())
}

/// The words of a credentials line: split on whitespace, except a whitespace character right
/// after a `\`, which stays in the word with its `\` (the attributes' lists resolve escapes).
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut escaped = false;
    for c in line.chars() {
        if c.is_whitespace() && !escaped {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            continue;
        }
        escaped = c == '\\' && !escaped;
        word.push(c);
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `line` up to its comment: a `#` at the start or after whitespace.
fn strip_comment(line: &str) -> &str {
    let mut previous_is_space = true;
    for (index, c) in line.char_indices() {
        if c == '#' && previous_is_space {
            return &line[..index];
        }
        previous_is_space = c.is_whitespace();
    }
    line
}

/// The parts of an `Authorization` header.
struct Authorization<'a> {
    credential: &'a str,
    signed_query_args: Option<&'a str>,
    expires: i64,
    signature: &'a str,
}

impl<'a> Authorization<'a> {
    fn parse(header: &'a str) -> Result<Authorization<'a>, AuthError> {
        let rest = header
            .strip_prefix(SCHEME)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(AuthError::Malformed(
                "it does not start with `EXO2-HMAC-SHA256 `",
            ))?;
        let (mut credential, mut signed, mut expires, mut signature) = (None, None, None, None);
        for part in rest.split(',') {
            let (name, value) = part
                .trim()
                .split_once('=')
                .ok_or(AuthError::Malformed("a part is not `name=value`"))?;
            let slot = match name {
                "credential" => &mut credential,
                "signed-query-args" => &mut signed,
                "expires" => &mut expires,
                "signature" => &mut signature,
                _ => return Err(AuthError::Malformed("unknown part")),
            };
            if slot.replace(value).is_some() {
                return Err(AuthError::Malformed("a part is given twice"));
            }
        }
        let credential = credential
            .filter(|c| !c.is_empty())
            .ok_or(AuthError::Malformed("no `credential`"))?;
        let expires = expires
            .ok_or(AuthError::Malformed("no `expires`"))?
            .parse::<i64>()
            .map_err(|_| AuthError::Malformed("`expires` is not a UNIX time"))?;
        let signature = signature.ok_or(AuthError::Malformed("no `signature`"))?;
        Ok(Authorization {
            credential,
            signed_query_args: signed,
            expires,
            signature,
        })
    }
}

/// The values of the query parameters named in `signed`, in that order. As the Python client
/// signs: a parameter contributes its value only when it appears exactly once with a non-empty
/// value.
fn signed_query_values(query: Option<&str>, signed: &[String]) -> String {
    let Some(query) = query.filter(|_| !signed.is_empty()) else {
        return String::new();
    };
    // name -> (its value, how many times it appears), for the signed names only.
    let mut found: HashMap<&str, (String, usize)> = signed
        .iter()
        .map(|name| (name.as_str(), (String::new(), 0)))
        .collect();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if value.is_empty() {
            continue;
        }
        if let Some((slot, count)) = found.get_mut(name.as_ref()) {
            *count += 1;
            if *count == 1 {
                *slot = value.into_owned();
            }
        }
    }
    let mut values = String::new();
    for name in signed {
        if let Some((value, 1)) = found.get(name.as_str()) {
            values.push_str(value);
        }
    }
    values
}

fn message_mac(
    secret: &[u8],
    method: &str,
    path: &str,
    body: &[u8],
    query_values: &str,
    expires: i64,
) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(method.as_bytes());
    mac.update(b" ");
    mac.update(path.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac.update(b"\n");
    mac.update(query_values.as_bytes());
    mac.update(b"\n\n");
    mac.update(expires.to_string().as_bytes());
    mac
}

/// The `Authorization` header value a client sends: signs `method`, `path` (without query),
/// `body` and `expires`, with no signed query arguments. For tests and the load generator;
/// real clients use Exoscale's SDKs.
#[must_use]
pub fn sign(
    key: &str,
    secret: &[u8],
    method: &str,
    path: &str,
    body: &[u8],
    expires: i64,
) -> String {
    sign_with_query(key, secret, method, path, &[], body, expires)
}

/// The signature's bytes of an `Authorization` header value (its `signature=`, decoded): what
/// the server's replay cache keys on, and what a link's answer is authenticated over. `None`
/// for a header that is not a well-formed authorization.
#[must_use]
pub fn signature_of(authorization: &str) -> Option<Vec<u8>> {
    let parsed = Authorization::parse(authorization).ok()?;
    BASE64.decode(parsed.signature).ok()
}

/// Like [`sign`], with query arguments: `query` is the pairs in the order the URL has them;
/// they are signed in name order, as the Python client does.
#[must_use]
pub fn sign_with_query(
    key: &str,
    secret: &[u8],
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: &[u8],
    expires: i64,
) -> String {
    let mut names: Vec<&str> = query.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    names.dedup();
    let signed = names.join(";");
    let encoded: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let values = signed_query_values(Some(&encoded), &names);
    let mac = message_mac(secret, method, path, body, &values, expires);
    let signature = BASE64.encode(mac.finalize().into_bytes());
    if signed.is_empty() {
        format!("{SCHEME} credential={key},expires={expires},signature={signature}")
    } else {
        format!(
            "{SCHEME} credential={key},signed-query-args={signed},expires={expires},signature={signature}"
        )
    }
}

#[cfg(test)]
mod tests;
