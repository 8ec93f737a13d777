//! What one credential may do: the attributes of its line in the credentials file,
//! `KEY SECRET [operations=L] [names=L] [zones=L]`.
//!
//! - `operations`: the API's operation ids (`encrypt`, `rotate-kms-key`, ...) and the groups
//!   `read` (get, list, list rotations), `crypto` (encrypt, decrypt, re-encrypt,
//!   generate-data-key), `manage` (the other nine), `all` (the 16); and keylife's own grants
//!   outside `/v2`, which no group implies: `admin` and `replicate`.
//! - `names`: globs over key names. create checks the requested name, list shows only the
//!   matching keys, every other call needs the key's name to match (re-encrypt: both keys).
//! - `zones`: globs over zone names: the zones the credential acts in, or, for `replicate`, the
//!   origin zones whose updates it may deliver (and whose replicas it may speak for when it asks
//!   an origin for a new version).
//!
//! A list is comma-separated; a glob has `*` (any run of characters) and `?` (one character);
//! `\` makes the next character literal, so `\ `, `\,`, `\*`, `\?` and `\\` stand for
//! themselves. An absent attribute allows everything of its kind, except that `admin` and
//! `replicate` are granted only by name. `replicate` is granted alone (`operations=replicate`,
//! no `names=`), and with `zones=` (required): a link credential can do nothing else, and its
//! zones are never read as the zones it may act in.

use std::fmt;

use crate::{Access, Operation, Target};

/// The 16 operations of the API, in the spec's order of groups: read, crypto, manage.
const API_OPERATIONS: [Operation; 16] = [
    Operation::GetKey,
    Operation::ListKeys,
    Operation::ListKeyRotations,
    Operation::Encrypt,
    Operation::Decrypt,
    Operation::ReEncrypt,
    Operation::GenerateDataKey,
    Operation::CreateKey,
    Operation::EnableKey,
    Operation::DisableKey,
    Operation::ScheduleKeyDeletion,
    Operation::CancelKeyDeletion,
    Operation::RotateKey,
    Operation::EnableKeyRotation,
    Operation::DisableKeyRotation,
    Operation::ReplicateKey,
];

/// The bit of each API operation in [`Grants::operations`]: its index in [`API_OPERATIONS`].
fn bit(operation: Operation) -> Option<u32> {
    API_OPERATIONS
        .iter()
        .position(|&known| known == operation)
        .map(|index| 1 << index)
}

const READ: u32 = 0b111;
const CRYPTO: u32 = 0b1111 << 3;
const ALL: u32 = (1 << 16) - 1;
const MANAGE: u32 = ALL & !READ & !CRYPTO;
/// keylife's own grants, outside `/v2`.
const ADMIN: u32 = 1 << 16;
const REPLICATE: u32 = 1 << 17;

/// The names a credential may use in `operations=`: groups, keylife's grants, operation ids.
fn operation_bits(name: &str) -> Option<u32> {
    match name {
        "read" => Some(READ),
        "crypto" => Some(CRYPTO),
        "manage" => Some(MANAGE),
        "all" => Some(ALL),
        "admin" => Some(ADMIN),
        "replicate" => Some(REPLICATE),
        _ => API_OPERATIONS
            .iter()
            .find(|operation| operation.name() == name)
            .and_then(|&operation| bit(operation)),
    }
}

/// What a credential may do. The default (a plain `KEY SECRET` line) may call every API
/// operation on every key in every zone, and neither `admin` nor `replicate`.
#[derive(Clone, PartialEq, Eq)]
pub struct Grants {
    operations: u32,
    names: Option<Vec<Glob>>,
    zones: Option<Vec<Glob>>,
}

impl Default for Grants {
    fn default() -> Grants {
        Grants {
            operations: ALL,
            names: None,
            zones: None,
        }
    }
}

impl fmt::Debug for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grants")
            .field("operations", &format_args!("{:#x}", self.operations))
            .field("names", &self.names)
            .field("zones", &self.zones)
            .finish()
    }
}

impl Grants {
    /// Everything a plain `KEY SECRET` line may do.
    #[must_use]
    pub fn everything() -> Grants {
        Grants::default()
    }

    /// Parses the attributes that follow `KEY SECRET` on a line (already split into words;
    /// `\` escapes kept). Each attribute at most once; an unknown one is an error.
    pub(super) fn parse(words: &[String]) -> Result<Grants, String> {
        let mut grants = Grants::default();
        let (mut operations, mut names, mut zones) = (false, false, false);
        for word in words {
            // The word is not echoed: a secret written with a space in it would show.
            let (name, value) = word.split_once('=').ok_or(
                "expected `KEY SECRET` then `NAME=LIST` attributes (operations, names, zones)",
            )?;
            let seen = match name {
                "operations" => &mut operations,
                "names" => &mut names,
                "zones" => &mut zones,
                _ => {
                    return Err(format!(
                        "unknown attribute {name:?}; the attributes are operations, names, zones"
                    ));
                }
            };
            if std::mem::replace(seen, true) {
                return Err(format!("attribute {name} is given twice"));
            }
            let entries = split_list(value).map_err(|error| format!("{name}: {error}"))?;
            match name {
                "operations" => {
                    grants.operations = 0;
                    for entry in entries {
                        grants.operations |= operation_bits(&entry).ok_or_else(|| {
                            format!(
                                "operations: unknown operation {entry:?}; use the API's \
                                 operation ids or read, crypto, manage, all, admin, replicate"
                            )
                        })?;
                    }
                }
                "names" => grants.names = Some(entries.iter().map(|e| Glob::new(e)).collect()),
                _ => grants.zones = Some(entries.iter().map(|e| Glob::new(e)).collect()),
            }
        }
        if grants.may_replicate() {
            if grants.operations != REPLICATE {
                return Err("operations: replicate is granted alone (a link credential \
                            may do nothing else)"
                    .to_owned());
            }
            if names {
                return Err(
                    "names: not for a replicate credential, which speaks for whole \
                            zones"
                        .to_owned(),
                );
            }
            if !zones {
                return Err(
                    "zones: required with replicate: the origin zones whose updates \
                            this credential may deliver"
                        .to_owned(),
                );
            }
        }
        Ok(grants)
    }

    /// Whether the credential may call `operation` at all, in some zone and on some key: an
    /// API operation it was granted, [`Operation::Backup`] with the `admin` grant, or the
    /// receiving side of a link ([`Operation::ReceiveUpdate`], [`Operation::RetireVersion`])
    /// with the `replicate` grant.
    #[must_use]
    pub fn allows_operation(&self, operation: Operation) -> bool {
        match operation {
            Operation::Backup => self.is_admin(),
            Operation::ReceiveUpdate | Operation::RetireVersion => self.may_replicate(),
            operation => bit(operation).is_some_and(|bit| self.operations & bit != 0),
        }
    }

    /// Whether the credential has the `admin` grant (keylife's routes for operators).
    #[must_use]
    pub fn is_admin(&self) -> bool {
        self.operations & ADMIN != 0
    }

    /// Whether the credential has the `replicate` grant (zones in other processes).
    #[must_use]
    pub fn may_replicate(&self) -> bool {
        self.operations & REPLICATE != 0
    }

    /// Whether the credential may act in `zone`.
    #[must_use]
    pub fn allows_zone(&self, zone: &str) -> bool {
        matches_any(self.zones.as_deref(), zone)
    }

    /// Whether the credential is a link credential that may speak for zone `zone`: deliver
    /// the updates of keys whose origin is `zone`, or ask for a new version on behalf of a
    /// replica in `zone`.
    #[must_use]
    pub fn speaks_for(&self, zone: &str) -> bool {
        self.may_replicate() && self.zones.is_some() && self.allows_zone(zone)
    }

    /// Whether the credential may use a key named `name`; `None` (a key the zone does not
    /// hold) only when names are not restricted, so that a restricted credential gets the same
    /// refusal whether the key exists or not.
    #[must_use]
    pub fn allows_name(&self, name: Option<&str>) -> bool {
        match (&self.names, name) {
            (None, _) => true,
            (Some(globs), Some(name)) => matches_any(Some(globs), name),
            (Some(_), None) => false,
        }
    }

    /// Whether names are restricted (a list of keys must then be filtered).
    #[must_use]
    pub fn restricts_names(&self) -> bool {
        self.names.is_some()
    }

    /// Whether everything is allowed that a plain line allows: no check is needed per call.
    #[must_use]
    pub fn is_unrestricted(&self) -> bool {
        self.operations & ALL == ALL && self.names.is_none() && self.zones.is_none()
    }

    /// The check of a call as the library asks it ([`crate::Caller::permit`]).
    #[must_use]
    pub fn permits(&self, access: &Access<'_>) -> bool {
        let operation_ok = match access.operation {
            // What the server runs itself, never for a caller.
            Operation::RunDue | Operation::Sync => true,
            operation => self.allows_operation(operation),
        };
        operation_ok
            && self.allows_zone(access.zone)
            && match access.target {
                Target::Zone => true,
                Target::NewKey { name } => self.allows_name(Some(name)),
                Target::Key { name, .. } => self.allows_name(name),
            }
    }
}

fn matches_any(globs: Option<&[Glob]>, text: &str) -> bool {
    globs.is_none_or(|globs| globs.iter().any(|glob| glob.matches(text)))
}

/// Splits a list on the commas that are not escaped, keeping the escapes in each entry.
fn split_list(value: &str) -> Result<Vec<String>, String> {
    let mut entries = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars
                    .next()
                    .ok_or("a `\\` ends the list; it escapes the next character")?;
                let entry = entries.last_mut().unwrap_or_else(|| unreachable!());
                entry.push('\\');
                entry.push(next);
            }
            ',' => entries.push(String::new()),
            c => entries.last_mut().unwrap_or_else(|| unreachable!()).push(c),
        }
    }
    if entries.iter().any(String::is_empty) {
        return Err("an entry of the list is empty".to_owned());
    }
    Ok(entries)
}

/// One piece of a glob.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Piece {
    Char(char),
    /// `?`
    One,
    /// `*`
    Any,
}

/// A glob over names: `*`, `?`, `\` escapes.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob(Vec<Piece>);

impl Glob {
    /// The glob of `pattern` (escapes resolved: `\x` is the character `x`).
    fn new(pattern: &str) -> Glob {
        let mut pieces = Vec::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            pieces.push(match c {
                '\\' => Piece::Char(chars.next().unwrap_or('\\')),
                '*' => Piece::Any,
                '?' => Piece::One,
                c => Piece::Char(c),
            });
        }
        Glob(pieces)
    }

    /// Whether `text` matches, whole.
    fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let pattern = &self.0;
        // Iterative matching with one backtrack point (the last `*`): linear in practice,
        // never exponential.
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match pattern.get(p) {
                Some(Piece::Any) => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(Piece::One) => {
                    p += 1;
                    t += 1;
                }
                Some(Piece::Char(c)) if *c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((star_p, star_t)) => {
                        p = star_p + 1;
                        t = star_t + 1;
                        star = Some((star_p, star_t + 1));
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|piece| *piece == Piece::Any)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: String = self
            .0
            .iter()
            .map(|piece| match piece {
                Piece::Any => "*".to_owned(),
                Piece::One => "?".to_owned(),
                Piece::Char(c @ ('*' | '?' | '\\' | ',' | ' ')) => format!("\\{c}"),
                Piece::Char(c) => c.to_string(),
            })
            .collect();
        write!(f, "{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn globs_match_whole_names() {
        let glob = |p: &str| Glob::new(p);
        assert!(glob("app-*").matches("app-orders"));
        assert!(glob("app-*").matches("app-"));
        assert!(!glob("app-*").matches("xapp-orders"));
        assert!(glob("*-prod").matches("db-prod"));
        assert!(!glob("*-prod").matches("db-prod2"));
        assert!(glob("a?c").matches("abc"));
        assert!(!glob("a?c").matches("ac"));
        assert!(glob("*a*b*c*").matches("xxaxxbxxcxx"));
        assert!(!glob("*a*b*c*").matches("xxaxxcxxbxx"));
        assert!(glob("\\*").matches("*"));
        assert!(!glob("\\*").matches("x"));
        assert!(glob("a\\ b").matches("a b"));
        assert!(glob("é?").matches("éé"));
        assert!(glob("*").matches(""));
        assert!(!glob("").matches("x"));
        // Many stars and a long miss: still quick (no exponential backtracking).
        let many = "*a".repeat(30);
        assert!(!glob(&many).matches(&"a".repeat(29)));
    }

    /// The obvious recursive matcher, exponential but plain: the reference.
    fn reference(pattern: &[Piece], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((Piece::Any, rest)) => (0..=text.len()).any(|skip| reference(rest, &text[skip..])),
            Some((Piece::One, rest)) => !text.is_empty() && reference(rest, &text[1..]),
            Some((Piece::Char(c), rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    proptest::proptest! {
        /// Over a small alphabet (so that matches are common), the matcher agrees with the
        /// reference on every pattern and text.
        #[test]
        fn globs_agree_with_the_reference(
            pattern in "[ab*?\\\\]{0,8}",
            text in "[ab*]{0,10}",
        ) {
            let glob = Glob::new(&pattern);
            let chars: Vec<char> = text.chars().collect();
            proptest::prop_assert_eq!(glob.matches(&text), reference(&glob.0, &chars));
        }
    }

    #[test]
    fn lists_split_on_unescaped_commas() {
        assert_eq!(split_list("a,b").unwrap(), ["a", "b"]);
        assert_eq!(split_list("a\\,b,c").unwrap(), ["a\\,b", "c"]);
        assert!(split_list("a,,b").is_err());
        assert!(split_list("").is_err());
        assert!(split_list("a\\").is_err());
        let grants = Grants::parse(&words("names=pay\\,ments,app-*")).unwrap();
        assert!(grants.allows_name(Some("pay,ments")));
        assert!(grants.allows_name(Some("app-x")));
        assert!(!grants.allows_name(Some("pay")));
    }

    #[test]
    fn groups_are_the_issue_s() {
        let grants = |line: &str| Grants::parse(&words(line)).unwrap();
        let read = grants("operations=read");
        for operation in API_OPERATIONS {
            let expected = matches!(
                operation,
                Operation::GetKey | Operation::ListKeys | Operation::ListKeyRotations
            );
            assert_eq!(read.allows_operation(operation), expected, "{operation:?}");
        }
        let crypto = grants("operations=crypto");
        let manage = grants("operations=manage");
        let mut crypto_count = 0;
        for operation in API_OPERATIONS {
            let is_crypto = matches!(
                operation,
                Operation::Encrypt
                    | Operation::Decrypt
                    | Operation::ReEncrypt
                    | Operation::GenerateDataKey
            );
            crypto_count += usize::from(is_crypto);
            assert_eq!(crypto.allows_operation(operation), is_crypto);
            let is_read = read.allows_operation(operation);
            assert_eq!(manage.allows_operation(operation), !is_crypto && !is_read);
        }
        assert_eq!(crypto_count, 4);
        let all = grants("operations=all");
        assert!(API_OPERATIONS.iter().all(|&o| all.allows_operation(o)));
        assert!(!all.is_admin() && !all.may_replicate());
        assert!(!Grants::everything().is_admin());
        let admin = grants("operations=all,admin");
        assert!(admin.is_admin() && !admin.may_replicate());
        let replicate = grants("operations=replicate zones=ch-gva-2,at-*");
        assert!(replicate.may_replicate());
        assert!(
            !API_OPERATIONS
                .iter()
                .any(|&o| replicate.allows_operation(o))
        );
        assert!(replicate.allows_operation(Operation::ReceiveUpdate));
        assert!(replicate.allows_operation(Operation::RetireVersion));
        assert!(!replicate.allows_operation(Operation::Backup));
        assert!(replicate.speaks_for("ch-gva-2") && replicate.speaks_for("at-vie-1"));
        assert!(!replicate.speaks_for("de-fra-1"));
        // Only a link credential speaks for a zone; no other receives updates.
        for other in [&all, &admin, &Grants::everything()] {
            assert!(!other.speaks_for("ch-gva-2"));
            assert!(!other.allows_operation(Operation::ReceiveUpdate));
            assert!(!other.allows_operation(Operation::RetireVersion));
        }
        let one = grants("operations=encrypt,rotate-kms-key");
        assert!(one.allows_operation(Operation::Encrypt));
        assert!(one.allows_operation(Operation::RotateKey));
        assert!(!one.allows_operation(Operation::Decrypt));
    }

    #[test]
    fn bad_attributes_are_errors() {
        for (line, says) in [
            ("colour=blue", "unknown attribute"),
            ("operations=read operations=crypto", "twice"),
            ("operations=fly", "unknown operation"),
            ("names=", "empty"),
            ("zones", "NAME=LIST"),
            ("operations=replicate", "zones: required with replicate"),
            ("operations=replicate,read zones=a", "granted alone"),
            ("operations=all,replicate zones=a", "granted alone"),
            (
                "operations=replicate zones=a names=x",
                "names: not for a replicate",
            ),
        ] {
            let error = Grants::parse(&words(line)).unwrap_err();
            assert!(error.contains(says), "{line}: {error}");
        }
    }

    #[test]
    fn permits_checks_operation_zone_and_name() {
        let grants = Grants::parse(&words("operations=crypto names=app-* zones=ch-*")).unwrap();
        let id = crate::KeyId::from_bytes([1; 16]);
        let access = |operation, zone, name| Access {
            operation,
            zone,
            target: Target::Key { id, name },
        };
        assert!(grants.permits(&access(Operation::Encrypt, "ch-gva-2", Some("app-a"))));
        assert!(!grants.permits(&access(Operation::Encrypt, "de-fra-1", Some("app-a"))));
        assert!(!grants.permits(&access(Operation::Encrypt, "ch-gva-2", Some("db"))));
        assert!(!grants.permits(&access(Operation::Encrypt, "ch-gva-2", None)));
        assert!(!grants.permits(&access(Operation::RotateKey, "ch-gva-2", Some("app-a"))));
        let create = Access {
            operation: Operation::CreateKey,
            zone: "ch-gva-2",
            target: Target::NewKey { name: "app-b" },
        };
        assert!(!grants.permits(&create), "create is not in crypto");
        let everything = Grants::everything();
        assert!(everything.permits(&access(Operation::RotateKey, "x", None)));
        assert!(everything.is_unrestricted());
        assert!(!grants.is_unrestricted());
    }
}
