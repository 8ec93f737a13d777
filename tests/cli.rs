//! The `keylife` command line on a local store (`key ...`, `encrypt`, `decrypt`,
//! `generate-data-key`), run as a process: every command's answer, human and `--json`, against
//! lifecycle.md; encrypt/decrypt round trips through files and pipes; the errors and their exit
//! codes; `--help` everywhere; replication between two zones of one data directory.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_keylife");
const ZONE_A: &str = "ch-gva-2";
const ZONE_B: &str = "de-fra-1";

/// What a run of the binary did.
struct Run {
    /// The exit status (-1 if killed by a signal).
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
    /// The command line, for failure messages.
    line: String,
}

impl Run {
    /// Asserts exit status 0 and returns self.
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(
            self.code,
            0,
            "`{}` failed\nstderr: {}\nstdout: {}",
            self.line,
            self.stderr,
            self.text()
        );
        self
    }

    /// Asserts exit status 1 with one `keylife: MESSAGE [CODE]` line on stderr and nothing on
    /// stdout; returns the message.
    #[track_caller]
    fn refused(self, code: &str) -> String {
        assert_eq!(
            self.code,
            1,
            "`{}` should fail with [{code}]\nstderr: {}\nstdout: {}",
            self.line,
            self.stderr,
            self.text()
        );
        let line = self.stderr.trim_end();
        assert!(
            line.starts_with("keylife: ") && line.ends_with(&format!(" [{code}]")),
            "`{}`: expected `keylife: ... [{code}]`, got {line:?}",
            self.line
        );
        assert_eq!(line.lines().count(), 1, "one line of error: {line:?}");
        assert!(
            self.stdout.is_empty(),
            "stdout of a failure: {:?}",
            self.text()
        );
        line.to_owned()
    }

    /// Asserts exit status 1 (an error without a library code) and returns stderr.
    #[track_caller]
    fn fails(self) -> String {
        assert_eq!(
            self.code,
            1,
            "`{}` should fail\nstderr: {}\nstdout: {}",
            self.line,
            self.stderr,
            self.text()
        );
        assert!(self.stderr.starts_with("keylife: "), "{:?}", self.stderr);
        assert!(
            self.stdout.is_empty(),
            "stdout of a failure: {:?}",
            self.text()
        );
        self.stderr
    }

    /// Asserts a clap usage error: exit status 2, nothing on stdout.
    #[track_caller]
    fn usage_error(self) -> String {
        assert_eq!(
            self.code, 2,
            "`{}` should be a usage error\nstderr: {}",
            self.line, self.stderr
        );
        assert!(self.stdout.is_empty());
        self.stderr
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|error| panic!("`{}`: not JSON ({error}): {}", self.line, self.text()))
    }
}

/// Runs `command` with `stdin` and collects everything.
fn run(mut command: Command, stdin: &[u8]) -> Run {
    let line = format!("{command:?}");
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn keylife");
    {
        let mut input = child.stdin.take().unwrap();
        // A command that does not read its input may exit first: ignore the broken pipe.
        let _ = input.write_all(stdin);
    }
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        line,
    }
}

/// The binary with no `KEYLIFE_*` variable of the caller's environment.
fn bare() -> Command {
    let mut command = Command::new(BIN);
    for variable in [
        "KEYLIFE_DATA",
        "KEYLIFE_ZONE",
        "KEYLIFE_ROOT_KEY",
        "KEYLIFE_CREDENTIALS",
    ] {
        command.env_remove(variable);
    }
    command
}

/// A new root key from `keylife root-key generate`.
fn new_root_key() -> String {
    let mut command = bare();
    command.args(["root-key", "generate"]);
    let text = run(command, b"").ok().text();
    let root = text.trim().to_owned();
    assert_eq!(BASE64.decode(&root).unwrap().len(), 32, "{root:?}");
    root
}

/// A data directory in a temporary directory, and its root key (given in `KEYLIFE_ROOT_KEY`,
/// the data directory in `KEYLIFE_DATA`).
struct Store {
    dir: TempDir,
    root: String,
}

impl Store {
    fn new() -> Store {
        Store {
            dir: tempfile::tempdir().unwrap(),
            root: new_root_key(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The root key, for opening the store with the library.
    fn root_key(&self) -> keylife::RootKey {
        keylife::RootKey::from_slice(&BASE64.decode(self.root.trim()).unwrap()).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = bare();
        command
            .env("KEYLIFE_ROOT_KEY", &self.root)
            .env("KEYLIFE_DATA", self.data())
            .args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Run {
        run(self.command(args), b"")
    }

    fn run_with(&self, args: &[&str], stdin: &[u8]) -> Run {
        run(self.command(args), stdin)
    }

    /// `key create --name NAME --json` plus `extra`: the answer.
    fn create(&self, name: &str, extra: &[&str]) -> Value {
        let mut args = vec!["key", "create", "--name", name, "--json"];
        args.extend_from_slice(extra);
        self.run(&args).ok().json()
    }

    /// `key get ID --json` plus `extra`.
    fn get(&self, id: &str, extra: &[&str]) -> Value {
        let mut args = vec!["key", "get", id, "--json"];
        args.extend_from_slice(extra);
        self.run(&args).ok().json()
    }
}

fn id_of(key: &Value) -> String {
    key["id"].as_str().expect("id").to_owned()
}

fn ts(value: &Value) -> Timestamp {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"))
        .parse()
        .unwrap_or_else(|error| panic!("not RFC 3339 ({error}): {value}"))
}

fn days(days: i64) -> SignedDuration {
    SignedDuration::from_hours(days * 24)
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

fn unb64(value: &Value) -> Vec<u8> {
    BASE64
        .decode(
            value
                .as_str()
                .unwrap_or_else(|| panic!("not a string: {value}")),
        )
        .unwrap_or_else(|error| panic!("not base64 ({error}): {value}"))
}

/// The value of the `label:` line of a human listing.
#[track_caller]
fn field(text: &str, label: &str) -> String {
    let prefix = format!("{label}:");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{label}:` line in:\n{text}"))
        .trim()
        .to_owned()
}

/// A well-formed version-7 UUID that names no key.
const UNKNOWN_ID: &str = "01900000-0000-7000-8000-000000000000";

// ----- help -----------------------------------------------------------------------------

#[test]
fn every_command_has_help() {
    let local: &[&[&str]] = &[
        &["key", "create"],
        &["key", "list"],
        &["key", "get"],
        &["key", "enable"],
        &["key", "disable"],
        &["key", "rotate"],
        &["key", "enable-rotation"],
        &["key", "disable-rotation"],
        &["key", "list-rotations"],
        &["key", "schedule-deletion"],
        &["key", "cancel-deletion"],
        &["key", "replicate"],
        &["encrypt"],
        &["decrypt"],
        &["generate-data-key"],
    ];
    for path in local {
        let mut command = bare();
        command.args(*path).arg("--help");
        let out = run(command, b"").ok();
        let text = out.text();
        let usage = format!("Usage: keylife {}", path.join(" "));
        assert!(text.contains(&usage), "{usage:?} in:\n{text}");
        for option in [
            "--data <DIR>",
            "--zone <NAME>",
            "--root-key-file <FILE>",
            "--json",
        ] {
            assert!(
                text.contains(option),
                "{path:?} --help lacks {option}:\n{text}"
            );
        }
        assert!(text.contains("Exit status"), "{path:?}:\n{text}");
        // The store's heading holds the store's options, none of the command's own.
        let store = text
            .split("\nStore:")
            .nth(1)
            .and_then(|rest| rest.split("\nOutput:").next())
            .unwrap_or_default();
        let listed: Vec<&str> = store
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("--"))
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert_eq!(
            listed,
            ["data", "zone", "root-key-file", "engine"],
            "{path:?}:\n{text}"
        );
        // A description above the usage line.
        assert!(
            !text.starts_with("Usage"),
            "{path:?} has no description:\n{text}"
        );
    }
    let mut command = bare();
    command.arg("--help");
    let top = run(command, b"").ok().text();
    for name in [
        "key",
        "encrypt",
        "decrypt",
        "generate-data-key",
        "serve",
        "root-key",
    ] {
        assert!(
            top.lines().any(|line| line.trim_start().starts_with(name)),
            "{name} in:\n{top}"
        );
    }
    let mut command = bare();
    command.args(["key", "--help"]);
    let key = run(command, b"").ok().text();
    for path in local.iter().filter(|path| path[0] == "key") {
        assert!(
            key.lines()
                .any(|line| line.trim_start().starts_with(path[1])),
            "{} in:\n{key}",
            path[1]
        );
    }
}

// ----- key management -------------------------------------------------------------------

#[test]
fn a_new_key_is_enabled_with_version_1_and_yearly_rotation() {
    let store = Store::new();
    let before = Timestamp::now();
    let created = store.create("payments", &["--description", "card numbers"]);
    assert_eq!(
        keys(&created),
        set(&[
            "id",
            "name",
            "description",
            "usage",
            "source",
            "status",
            "status-since",
            "multi-zone",
            "origin-zone",
            "created-at",
            "revision",
        ])
    );
    let id = id_of(&created);
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    assert_eq!(created["name"], "payments");
    assert_eq!(created["description"], "card numbers");
    assert_eq!(created["usage"], "encrypt-decrypt");
    assert_eq!(created["source"], "exoscale-kms");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["multi-zone"], false);
    // No zone given and none in the data directory: the default zone.
    assert_eq!(created["origin-zone"], "local");
    assert_eq!(created["revision"]["seq"], 1);
    let created_at = ts(&created["created-at"]);
    assert!(before <= created_at && created_at <= Timestamp::now());
    assert_eq!(ts(&created["status-since"]), created_at);

    let key = store.get(&id, &[]);
    assert_eq!(key["status"], "enabled");
    assert_eq!(key["material"]["version"], 1);
    assert_eq!(key["material"]["automatic"], false);
    assert_eq!(key["rotation"]["automatic"], true);
    assert_eq!(key["rotation"]["rotation-period"], 365);
    assert_eq!(key["rotation"]["manual-count"], 0);
    assert_eq!(ts(&key["rotation"]["next-at"]), created_at + days(365));
    assert_eq!(key["replicas"], serde_json::json!([]));
    assert_eq!(key["replicas-status"], serde_json::json!([]));
    assert!(key.get("delete-at").is_none(), "{key}");

    // Human forms.
    let human = store.run(&["key", "get", &id]).ok().text();
    assert_eq!(field(&human, "id"), id);
    assert_eq!(field(&human, "name"), "payments");
    assert!(field(&human, "status").starts_with("enabled"), "{human}");
    assert!(
        field(&human, "material").starts_with("version 1"),
        "{human}"
    );
    assert!(
        field(&human, "rotation").contains("every 365 days"),
        "{human}"
    );
    let human = store
        .run(&["key", "create", "--name", "backups", "--multi-zone"])
        .ok()
        .text();
    assert!(human.starts_with("Created key "), "{human}");
    assert_eq!(field(&human, "name"), "backups");
    assert_eq!(field(&human, "status"), "enabled");
    assert_eq!(field(&human, "multi-zone"), "yes");
    let second = field(&human, "id");

    // The list: both keys in creation order, with the fields of a key.
    let list = store.run(&["key", "list", "--json"]).ok().json();
    assert_eq!(keys(&list), set(&["kms-keys"]));
    let entries = list["kms-keys"].as_array().unwrap();
    let ids: Vec<&str> = entries.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str(), second.as_str()]);
    assert_eq!(entries[0]["rotation"]["rotation-period"], 365);
    assert_eq!(entries[1]["multi-zone"], true);
    let table = store.run(&["key", "list"]).ok().text();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("STATUS"),
        "{table}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..4],
        [id.as_str(), "payments", "enabled", "1"],
        "{table}"
    );
    // Columns are aligned: NAME starts at the same place on every line.
    let at = lines[0].find("NAME").unwrap();
    assert_eq!(lines[1].find("payments"), Some(at), "{table}");
    assert_eq!(lines[2].find("backups"), Some(at), "{table}");

    // Names are unique in a zone.
    let message = store
        .run(&["key", "create", "--name", "payments"])
        .refused("name-conflict");
    assert!(message.contains("payments"), "{message}");
}

#[test]
fn only_key_create_makes_a_store() {
    let store = Store::new();
    // Nothing to list in a data directory without a store; nothing is created.
    let message = store.run(&["key", "list"]).fails();
    assert!(
        message.contains("no key store") && message.contains("key create"),
        "{message}"
    );
    assert!(!store.data().exists());
    store.run(&["key", "get", UNKNOWN_ID]).fails();
    assert!(!store.data().exists());

    // An empty store (made by the library) lists no keys.
    let root = store.root_key();
    drop(
        keylife::Kms::open(
            store.data().join("local"),
            root,
            keylife::KmsOptions::new("local"),
        )
        .unwrap(),
    );
    assert_eq!(
        store.run(&["key", "list", "--json"]).ok().json(),
        serde_json::json!({"kms-keys": []})
    );
    let text = store.run(&["key", "list"]).ok().text();
    assert_eq!(text, "No keys in zone local.\n");

    // A zone without a store is refused, not created, except by key create.
    let message = store.run(&["key", "list", "--zone", ZONE_A]).fails();
    assert!(
        message.contains(&format!("no store of zone {ZONE_A}")),
        "{message}"
    );
    assert!(
        message.contains("local"),
        "names the zones there: {message}"
    );
    assert!(!store.data().join(ZONE_A).exists());
    let created = store.create("k", &["--zone", ZONE_A]);
    assert_eq!(created["origin-zone"], ZONE_A);
    assert!(store.data().join(ZONE_A).is_dir());
}

#[test]
fn enable_and_disable_answer_success_then_already_applied() {
    let store = Store::new();
    let id = id_of(&store.create("k", &[]));
    let answer = |args: &[&str]| store.run(args).ok().json();
    assert_eq!(
        answer(&["key", "enable", &id, "--json"]),
        serde_json::json!({"status": "already-applied"})
    );
    assert_eq!(
        answer(&["key", "disable", &id, "--json"]),
        serde_json::json!({"status": "success"})
    );
    assert_eq!(store.get(&id, &[])["status"], "disabled");
    assert_eq!(store.get(&id, &[])["revision"]["seq"], 2);
    assert_eq!(
        answer(&["key", "disable", &id, "--json"]),
        serde_json::json!({"status": "already-applied"})
    );
    // already-applied changes nothing, not even the revision.
    assert_eq!(store.get(&id, &[])["revision"]["seq"], 2);
    let text = store.run(&["key", "disable", &id]).ok().text();
    assert!(text.contains("already disabled"), "{text}");
    let text = store.run(&["key", "enable", &id]).ok().text();
    assert_eq!(text, format!("Key {id} enabled.\n"));
    assert_eq!(store.get(&id, &[])["status"], "enabled");
    let text = store.run(&["key", "enable", &id]).ok().text();
    assert!(text.contains("already enabled"), "{text}");
}

#[test]
fn manual_rotations_count_list_and_stop_at_ten() {
    let store = Store::new();
    let created = store.create("k", &[]);
    let id = id_of(&created);
    let next_at = created_next_at(&created);
    assert_eq!(
        store
            .run(&["key", "list-rotations", &id, "--json"])
            .ok()
            .json(),
        serde_json::json!({"rotations": []})
    );
    let text = store.run(&["key", "list-rotations", &id]).ok().text();
    assert!(text.contains("not been rotated"), "{text}");

    for count in 1..=2 {
        let answer = store.run(&["key", "rotate", &id, "--json"]).ok().json();
        assert_eq!(keys(&answer), set(&["rotation"]));
        assert_eq!(answer["rotation"]["manual-count"], count);
        assert_eq!(answer["rotation"]["automatic"], true);
        assert_eq!(answer["rotation"]["rotation-period"], 365);
        // A manual rotation leaves next-at as it was.
        assert_eq!(ts(&answer["rotation"]["next-at"]), next_at);
    }
    let rotations = store
        .run(&["key", "list-rotations", &id, "--json"])
        .ok()
        .json();
    let entries = rotations["rotations"].as_array().unwrap();
    let versions: Vec<u64> = entries
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3]);
    for entry in entries {
        assert_eq!(keys(entry), set(&["version", "rotated-at", "automatic"]));
        assert_eq!(entry["automatic"], false);
    }
    assert!(ts(&entries[0]["rotated-at"]) <= ts(&entries[1]["rotated-at"]));
    let key = store.get(&id, &[]);
    assert_eq!(key["material"]["version"], 3);
    assert_eq!(key["material"]["automatic"], false);

    let text = store.run(&["key", "rotate", &id]).ok().text();
    assert!(text.contains("material version 4"), "{text}");
    assert_eq!(field(&text, "manual-count"), "3");
    let table = store.run(&["key", "list-rotations", &id]).ok().text();
    let firsts: Vec<&str> = table
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(firsts, ["VERSION", "2", "3", "4"], "{table}");

    for _ in 4..=10 {
        store.run(&["key", "rotate", &id]).ok();
    }
    assert_eq!(store.get(&id, &[])["rotation"]["manual-count"], 10);
    let message = store
        .run(&["key", "rotate", &id])
        .refused("manual-rotation-limit");
    assert!(message.contains(&id) && message.contains("10"), "{message}");
    assert_eq!(store.get(&id, &[])["material"]["version"], 11);
}

fn created_next_at(created: &Value) -> Timestamp {
    ts(&created["created-at"]) + days(365)
}

#[test]
fn rotation_settings_follow_the_contract() {
    let store = Store::new();
    let created = store.create("k", &[]);
    let id = id_of(&created);
    let next_at = created_next_at(&created);

    let answer = store
        .run(&["key", "disable-rotation", &id, "--json"])
        .ok()
        .json();
    assert_eq!(answer["rotation"]["automatic"], false);
    assert_eq!(ts(&answer["rotation"]["next-at"]), next_at);
    store
        .run(&["key", "disable-rotation", &id])
        .refused("conflict");
    assert_eq!(store.get(&id, &[])["rotation"]["automatic"], false);

    for period in ["89", "2561", "0"] {
        let message = store
            .run(&["key", "enable-rotation", &id, "--period", period])
            .refused("bad-request");
        assert!(message.contains("rotation-period"), "{message}");
    }
    let before = Timestamp::now();
    let answer = store
        .run(&["key", "enable-rotation", &id, "--period", "90", "--json"])
        .ok()
        .json();
    let after = Timestamp::now();
    assert_eq!(answer["rotation"]["automatic"], true);
    assert_eq!(answer["rotation"]["rotation-period"], 90);
    let next = ts(&answer["rotation"]["next-at"]);
    assert!(
        before + days(90) <= next && next <= after + days(90),
        "{next}"
    );
    store
        .run(&["key", "enable-rotation", &id])
        .refused("conflict");

    let text = store.run(&["key", "disable-rotation", &id]).ok().text();
    assert_eq!(field(&text, "automatic"), "no");
    let text = store
        .run(&["key", "enable-rotation", &id, "--period", "2560"])
        .ok()
        .text();
    assert_eq!(field(&text, "automatic"), "yes");
    assert_eq!(field(&text, "rotation-period"), "2560 days");

    // A disabled key refuses rotation and its settings.
    store.run(&["key", "disable", &id]).ok();
    for args in [
        vec!["key", "rotate", id.as_str()],
        vec!["key", "disable-rotation", id.as_str()],
    ] {
        store.run(&args).refused("key-disabled");
    }
}

#[test]
fn deletion_is_scheduled_refuses_use_and_cancels_to_disabled() {
    let store = Store::new();
    let id = id_of(&store.create("k", &[]));
    for delay in ["6", "31"] {
        let message = store
            .run(&["key", "schedule-deletion", &id, "--days", delay])
            .refused("bad-request");
        assert!(
            message.contains("delay") || message.contains("days"),
            "{message}"
        );
    }
    assert_eq!(store.get(&id, &[])["status"], "enabled");

    let before = Timestamp::now();
    let answer = store
        .run(&["key", "schedule-deletion", &id, "--days", "7", "--json"])
        .ok()
        .json();
    let after = Timestamp::now();
    assert_eq!(keys(&answer), set(&["delete-at"]));
    let delete_at = ts(&answer["delete-at"]);
    assert!(before + days(7) <= delete_at && delete_at <= after + days(7));
    let key = store.get(&id, &[]);
    assert_eq!(key["status"], "pending-deletion");
    assert_eq!(ts(&key["delete-at"]), delete_at);

    let encrypted = store.run_with(&["encrypt", "--key", &id, "--base64"], b"x");
    encrypted.refused("key-pending-deletion");
    store
        .run(&["key", "enable", &id])
        .refused("key-pending-deletion");
    store
        .run(&["key", "rotate", &id])
        .refused("key-pending-deletion");
    store
        .run(&["key", "schedule-deletion", &id])
        .refused("key-pending-deletion");
    // Reads still work.
    store.run(&["key", "list-rotations", &id]).ok();

    assert_eq!(
        store
            .run(&["key", "cancel-deletion", &id, "--json"])
            .ok()
            .json(),
        serde_json::json!({"status": "success"})
    );
    let key = store.get(&id, &[]);
    assert_eq!(key["status"], "disabled");
    assert!(key.get("delete-at").is_none(), "{key}");
    store
        .run(&["key", "cancel-deletion", &id])
        .refused("not-pending-deletion");

    // The default delay is 30 days; the human form says when.
    let other = id_of(&store.create("other", &[]));
    let before = Timestamp::now();
    let text = store.run(&["key", "schedule-deletion", &other]).ok().text();
    let after = Timestamp::now();
    assert!(text.contains("pending deletion"), "{text}");
    let delete_at = ts(&store.get(&other, &[])["delete-at"]);
    assert!(before + days(30) <= delete_at);
    assert!(delete_at <= after + days(30));
    assert!(
        text.contains(&delete_at.strftime("%Y-%m-%dT%H:%M").to_string()),
        "{text}"
    );
    let text = store.run(&["key", "cancel-deletion", &other]).ok().text();
    assert!(text.contains("disabled"), "{text}");
}

// ----- cryptography ---------------------------------------------------------------------

#[test]
fn encrypt_and_decrypt_files_with_a_context() {
    let store = Store::new();
    let id = id_of(&store.create("files", &[]));
    let plaintext: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let (input, sealed, opened) = (store.path("in"), store.path("sealed"), store.path("out"));
    std::fs::write(&input, &plaintext).unwrap();
    let s = |path: &Path| path.to_str().unwrap().to_owned();
    let out = store
        .run(&[
            "encrypt",
            "--key",
            &id,
            "--context",
            "order=17",
            "--input",
            &s(&input),
            "--output",
            &s(&sealed),
        ])
        .ok();
    assert!(out.stdout.is_empty(), "the ciphertext went to the file");
    let ciphertext = std::fs::read(&sealed).unwrap();
    // README: format 0x01 | key id (16) | version (4) | nonce (12) | ciphertext | tag (16).
    assert_eq!(ciphertext.len(), plaintext.len() + 49);
    assert_eq!(ciphertext[0], 1);
    assert_eq!(
        &ciphertext[1..17],
        uuid::Uuid::parse_str(&id).unwrap().as_bytes()
    );
    assert_eq!(&ciphertext[17..21], [0, 0, 0, 1]);
    assert!(!ciphertext.windows(16).any(|w| w == &plaintext[..16]));

    store
        .run(&[
            "decrypt",
            "--key",
            &id,
            "--context",
            "order=17",
            "--input",
            &s(&sealed),
            "--output",
            &s(&opened),
        ])
        .ok();
    assert_eq!(std::fs::read(&opened).unwrap(), plaintext);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&opened).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "a plaintext file is its owner's only: {mode:o}"
        );
    }

    // A wrong or missing context is the one opaque error, and writes nothing.
    let nothing = store.path("nothing");
    for context in [&["--context", "order=18"][..], &[][..]] {
        let mut args = vec!["decrypt", "--key", &id, "--input"];
        let (sealed, nothing) = (s(&sealed), s(&nothing));
        args.extend([sealed.as_str(), "--output", nothing.as_str()]);
        args.extend_from_slice(context);
        let message = store.run(&args).refused("invalid-ciphertext");
        assert_eq!(message, "keylife: invalid ciphertext [invalid-ciphertext]");
        assert!(!store.path("nothing").exists());
    }

    // An existing world-readable file gets the plaintext with its owner's permissions only;
    // a symbolic link is replaced, not written through; a failed decrypt leaves it as it was.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let existing = store.path("existing");
        std::fs::write(&existing, b"old").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
        let decrypt_to = |context: &str, output: &Path| {
            store.run(&[
                "decrypt",
                "--key",
                &id,
                "--context",
                context,
                "--input",
                &s(&sealed),
                "--output",
                &s(output),
            ])
        };
        decrypt_to("order=18", &existing).refused("invalid-ciphertext");
        assert_eq!(std::fs::read(&existing).unwrap(), b"old");
        decrypt_to("order=17", &existing).ok();
        assert_eq!(std::fs::read(&existing).unwrap(), plaintext);
        let mode = std::fs::metadata(&existing).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "an overwritten plaintext file: {mode:o}");

        let victim = store.path("victim");
        std::fs::write(&victim, b"victim").unwrap();
        let link = store.path("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        decrypt_to("order=17", &link).ok();
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
        assert!(
            !std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&link).unwrap(), plaintext);
    }

    // After a rotation the old ciphertext still decrypts, and new ones use version 2.
    store.run(&["key", "rotate", &id]).ok();
    let out = store
        .run(&[
            "decrypt",
            "--key",
            &id,
            "--context",
            "order=17",
            "--input",
            &s(&sealed),
        ])
        .ok();
    assert_eq!(out.stdout, plaintext);
    let newer = store
        .run_with(&["encrypt", "--key", &id, "--input", "-"], b"abc")
        .ok()
        .stdout;
    assert_eq!(&newer[17..21], [0, 0, 0, 2]);
}

#[test]
fn encrypt_and_decrypt_through_pipes() {
    let store = Store::new();
    let id = id_of(&store.create("pipes", &[]));
    let other = id_of(&store.create("other", &[]));
    let plaintext = b"4242 4242 4242 4242\n\x00\xff";

    // Raw bytes, no context; an empty context is the same as none.
    let ciphertext = store
        .run_with(&["encrypt", "--key", &id], plaintext)
        .ok()
        .stdout;
    assert_eq!(ciphertext.len(), plaintext.len() + 49);
    let out = store.run_with(&["decrypt", "--key", &id], &ciphertext).ok();
    assert_eq!(out.stdout, plaintext);
    let out = store
        .run_with(&["decrypt", "--key", &id, "--context", ""], &ciphertext)
        .ok();
    assert_eq!(out.stdout, plaintext);
    store
        .run_with(&["decrypt", "--key", &id, "--context", "x"], &ciphertext)
        .refused("invalid-ciphertext");

    // A ciphertext of another key, a damaged one.
    let message = store
        .run_with(&["decrypt", "--key", &other], &ciphertext)
        .refused("incorrect-key");
    assert!(message.contains(&other), "{message}");
    let mut damaged = ciphertext.clone();
    *damaged.last_mut().unwrap() ^= 1;
    store
        .run_with(&["decrypt", "--key", &id], &damaged)
        .refused("invalid-ciphertext");
    store
        .run_with(&["decrypt", "--key", &id], &ciphertext[..40])
        .refused("invalid-ciphertext");

    // Base64 text both ways, with a context.
    let text = store
        .run_with(
            &["encrypt", "--key", &id, "--context", "c", "--base64"],
            plaintext,
        )
        .ok()
        .text();
    assert!(
        text.ends_with('\n') && text.trim_end().lines().count() == 1,
        "{text:?}"
    );
    assert_eq!(
        BASE64.decode(text.trim()).unwrap().len(),
        plaintext.len() + 49
    );
    let out = store
        .run_with(
            &["decrypt", "--key", &id, "--context", "c", "--base64"],
            text.as_bytes(),
        )
        .ok();
    assert_eq!(out.stdout, plaintext);
    store
        .run_with(&["decrypt", "--key", &id, "--base64"], b"not base64!")
        .refused("bad-request");

    // The API's JSON both ways.
    let sealed = store
        .run_with(&["encrypt", "--key", &id, "--json"], plaintext)
        .ok()
        .json();
    assert_eq!(keys(&sealed), set(&["ciphertext"]));
    let raw = unb64(&sealed["ciphertext"]);
    assert_eq!(raw.len(), plaintext.len() + 49);
    let opened = store
        .run_with(&["decrypt", "--key", &id, "--json"], &raw)
        .ok()
        .json();
    assert_eq!(keys(&opened), set(&["plaintext"]));
    assert_eq!(unb64(&opened["plaintext"]), plaintext);

    // An empty plaintext round-trips.
    let empty = store.run_with(&["encrypt", "--key", &id], b"").ok().stdout;
    assert_eq!(empty.len(), 49);
    let out = store.run_with(&["decrypt", "--key", &id], &empty).ok();
    assert!(out.stdout.is_empty());
}

#[test]
fn generate_data_key_gives_a_key_that_decrypt_returns() {
    let store = Store::new();
    let id = id_of(&store.create("envelope", &[]));
    let answer = store
        .run(&[
            "generate-data-key",
            "--key",
            &id,
            "--context",
            "file=a",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(keys(&answer), set(&["plaintext", "ciphertext"]));
    let data_key = unb64(&answer["plaintext"]);
    let ciphertext = unb64(&answer["ciphertext"]);
    assert_eq!(data_key.len(), 32, "AES-256 by default");
    assert_eq!(ciphertext.len(), 32 + 49);
    let out = store
        .run_with(
            &["decrypt", "--key", &id, "--context", "file=a"],
            &ciphertext,
        )
        .ok();
    assert_eq!(out.stdout, data_key);
    store
        .run_with(&["decrypt", "--key", &id], &ciphertext)
        .refused("invalid-ciphertext");

    let answer = store
        .run(&["generate-data-key", "--key", &id, "--bytes", "16", "--json"])
        .ok()
        .json();
    assert_eq!(unb64(&answer["plaintext"]).len(), 16);
    for count in ["0", "1025"] {
        let message = store
            .run(&["generate-data-key", "--key", &id, "--bytes", count])
            .refused("bad-request");
        assert!(message.contains("bytes-count"), "{message}");
    }

    let text = store.run(&["generate-data-key", "--key", &id]).ok().text();
    let plaintext = BASE64.decode(field(&text, "plaintext")).unwrap();
    let ciphertext = BASE64.decode(field(&text, "ciphertext")).unwrap();
    assert_eq!(plaintext.len(), 32);
    assert_ne!(plaintext, data_key, "every data key is new");
    let out = store.run_with(&["decrypt", "--key", &id], &ciphertext).ok();
    assert_eq!(out.stdout, plaintext);
}

// ----- keys by name ---------------------------------------------------------------------

#[test]
fn every_command_that_takes_a_key_takes_its_name_too() {
    let store = Store::new();
    let id = id_of(&store.create("payments", &["--multi-zone"]));
    let by_name = |args: &[&str]| store.run(args).ok().json();
    assert_eq!(
        by_name(&["key", "get", "payments", "--json"])["id"],
        id.as_str()
    );
    assert_eq!(
        by_name(&["key", "disable", "payments", "--json"])["status"],
        "success"
    );
    assert_eq!(
        by_name(&["key", "enable", "payments", "--json"])["status"],
        "success"
    );
    assert_eq!(
        by_name(&["key", "rotate", "payments", "--json"])["rotation"]["manual-count"],
        1
    );
    assert_eq!(
        by_name(&["key", "list-rotations", "payments", "--json"])["rotations"][0]["version"],
        2
    );
    assert_eq!(
        by_name(&["key", "disable-rotation", "payments", "--json"])["rotation"]["automatic"],
        false
    );
    assert_eq!(
        by_name(&[
            "key",
            "enable-rotation",
            "payments",
            "--period",
            "90",
            "--json"
        ])["rotation"]["rotation-period"],
        90
    );
    let sealed = store
        .run_with(&["encrypt", "--key", "payments", "--base64"], b"card 4242")
        .ok()
        .stdout;
    let opened = store
        .run_with(&["decrypt", "--key", "payments", "--base64"], &sealed)
        .ok()
        .stdout;
    assert_eq!(opened, b"card 4242");
    let data_key = by_name(&["generate-data-key", "--key", "payments", "--json"]);
    assert_eq!(unb64(&data_key["plaintext"]).len(), 32);
    let replicated = store
        .run(&["key", "replicate", "payments", "--to", "de-fra-1", "--json"])
        .ok()
        .json();
    assert_eq!(replicated["status"], "target-registered");
    let scheduled = by_name(&[
        "key",
        "schedule-deletion",
        "payments",
        "--zone",
        "local",
        "--json",
    ]);
    assert!(scheduled["delete-at"].is_string(), "{scheduled}");
    assert_eq!(
        by_name(&[
            "key",
            "cancel-deletion",
            "payments",
            "--zone",
            "local",
            "--json"
        ])["status"],
        "success"
    );
}

/// A name that is a well-formed UUID: the key with that id comes first, then the key with
/// that name.
#[test]
fn an_id_is_looked_up_before_a_name() {
    let store = Store::new();
    let first = id_of(&store.create("first", &[]));
    // A second key named after the first one's id, and a third named after an unknown id.
    let second = id_of(&store.create(&first, &[]));
    let third = id_of(&store.create(UNKNOWN_ID, &[]));
    let get = |key: &str| store.run(&["key", "get", key, "--json"]).ok().json();
    assert_eq!(get(&first)["id"], first.as_str(), "the id wins");
    assert_eq!(get(&first)["name"], "first");
    assert_eq!(
        get(UNKNOWN_ID)["id"],
        third.as_str(),
        "no such id: the name"
    );
    assert_eq!(get(&second)["name"], first.as_str());
}

// ----- errors ---------------------------------------------------------------------------

#[test]
fn refusals_name_the_rule_and_exit_1() {
    let store = Store::new();
    let id = id_of(&store.create("k", &[]));

    // A well-formed id of no key; an id that is not a UUID.
    for args in [
        vec!["key", "get", UNKNOWN_ID],
        vec!["key", "disable", UNKNOWN_ID],
        vec!["key", "list-rotations", UNKNOWN_ID],
        vec!["generate-data-key", "--key", UNKNOWN_ID],
    ] {
        let message = store.run(&args).refused("key-not-found");
        assert_eq!(
            message,
            format!("keylife: key {UNKNOWN_ID} not found [key-not-found]")
        );
    }
    // Neither the id nor the name of a key of the zone.
    for (args, given) in [
        (vec!["key", "get", "not-a-uuid"], "not-a-uuid"),
        (vec!["key", "rotate", "12345"], "12345"),
        (vec!["encrypt", "--key", "payments"], "payments"),
    ] {
        let message = store.run(&args).refused("key-not-found");
        assert_eq!(
            message,
            format!("keylife: no key with the id or name {given:?} in zone local [key-not-found]")
        );
    }

    // A disabled key refuses cryptography.
    let ciphertext = store.run_with(&["encrypt", "--key", &id], b"x").ok().stdout;
    store.run(&["key", "disable", &id]).ok();
    let message = store
        .run_with(&["encrypt", "--key", &id], b"x")
        .refused("key-disabled");
    assert!(message.contains(&id), "{message}");
    store
        .run_with(&["decrypt", "--key", &id], &ciphertext)
        .refused("key-disabled");
    store
        .run(&["generate-data-key", "--key", &id])
        .refused("key-disabled");

    // Usage errors are clap's: exit 2.
    for args in [
        vec!["key", "frobnicate", &id],
        vec!["key", "create"],
        vec!["key", "get"],
        vec!["key", "schedule-deletion", &id, "--days", "soon"],
        vec!["key", "enable-rotation", &id, "--period", "-5"],
        vec!["key", "replicate", &id],
        vec!["encrypt"],
        vec!["encrypt", "--key", &id, "--json", "--base64"],
        vec!["key", "list", "--root-key", "abc"],
    ] {
        store.run(&args).usage_error();
    }
    // --data is required when KEYLIFE_DATA is not set.
    let mut command = bare();
    command
        .env("KEYLIFE_ROOT_KEY", &store.root)
        .args(["key", "list"]);
    let message = run(command, b"").usage_error();
    assert!(message.contains("--data"), "{message}");
}

#[test]
fn root_key_problems_are_reported_without_the_key() {
    let store = Store::new();
    let id = id_of(&store.create("k", &[]));

    // No root key: nothing is opened or created.
    let empty = store.path("fresh");
    let mut command = bare();
    command.arg("key").arg("list").arg("--data").arg(&empty);
    let message = run(command, b"").fails();
    assert!(
        message.contains("KEYLIFE_ROOT_KEY") && message.contains("--root-key-file"),
        "{message}"
    );
    assert!(!empty.exists());

    // Another root key for an existing store.
    let other = new_root_key();
    let mut command = store.command(&["key", "get", &id]);
    command.env("KEYLIFE_ROOT_KEY", &other);
    let message = run(command, b"").fails();
    assert!(
        message.contains("root key does not open this store")
            && message.contains("[wrong-root-key]"),
        "{message}"
    );
    assert!(
        !message.contains(&other) && !message.contains(&store.root),
        "{message}"
    );

    // A root key that is not base64 of 32 bytes.
    let mut command = store.command(&["key", "list"]);
    command.env("KEYLIFE_ROOT_KEY", BASE64.encode([7u8; 16]));
    let message = run(command, b"").fails();
    assert!(message.contains("32 bytes"), "{message}");

    // From a file (and --data given as an option): the file wins over the variable.
    let file = store.path("root.key");
    std::fs::write(&file, format!("{}\n", store.root)).unwrap();
    let mut command = bare();
    command
        .env("KEYLIFE_ROOT_KEY", &other)
        .args(["key", "list", "--json", "--root-key-file"])
        .arg(&file)
        .arg("--data")
        .arg(store.data());
    let list = run(command, b"").ok().json();
    assert_eq!(list["kms-keys"][0]["id"], id.as_str());
    let mut command = bare();
    command
        .args(["key", "list", "--root-key-file"])
        .arg(store.path("missing.key"))
        .arg("--data")
        .arg(store.data());
    let message = run(command, b"").fails();
    assert!(message.contains("missing.key"), "{message}");
}

#[test]
fn a_store_in_use_is_refused_clearly() {
    let store = Store::new();
    let id = id_of(&store.create("k", &[]));
    let root = store.root_key();
    let kms = keylife::Kms::open(
        store.data().join("local"),
        root,
        keylife::KmsOptions::new("local"),
    )
    .unwrap();
    let message = store.run(&["key", "get", &id]).fails();
    assert!(message.contains("in use"), "{message}");
    assert!(message.contains("keylife serve"), "{message}");
    drop(kms);
    store.run(&["key", "get", &id]).ok();
}

// ----- zones and replication ------------------------------------------------------------

#[test]
fn the_zone_defaults_to_the_only_one_in_the_data_directory() {
    let store = Store::new();
    let created = store.create("k", &["--zone", ZONE_A]);
    assert_eq!(created["origin-zone"], ZONE_A);
    assert!(store.data().join(ZONE_A).is_dir());
    // Without --zone, the only zone of the data directory.
    let created = store.create("k2", &[]);
    assert_eq!(created["origin-zone"], ZONE_A);
    assert!(!store.data().join("local").exists());
    // With two zones, --zone (or KEYLIFE_ZONE) is needed.
    store.create("k", &["--zone", ZONE_B]);
    let message = store.run(&["key", "list"]).fails();
    assert!(
        message.contains("several zones") && message.contains(ZONE_A) && message.contains(ZONE_B),
        "{message}"
    );
    let mut command = store.command(&["key", "list", "--json"]);
    command.env("KEYLIFE_ZONE", ZONE_B);
    let list = run(command, b"").ok().json();
    assert_eq!(list["kms-keys"].as_array().unwrap().len(), 1);
    assert_eq!(list["kms-keys"][0]["origin-zone"], ZONE_B);
    let message = store.run(&["key", "list", "--zone", "../etc"]).fails();
    assert!(message.contains("invalid zone name"), "{message}");
}

/// `args` followed by `zone` (`--zone NAME`).
fn with<'a>(zone: &[&'a str; 2], args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend_from_slice(zone);
    all
}

#[test]
fn a_replica_in_another_zone_decrypts_and_follows_its_origin() {
    let store = Store::new();
    let a = ["--zone", ZONE_A];
    let b = ["--zone", ZONE_B];
    let key = store.create("orders", &["--multi-zone", "--zone", ZONE_A]);
    let id = id_of(&key);
    let single = id_of(&store.create("single", &a));

    // The target zone's store is created by the replication.
    let answer = store
        .run(&with(
            &a,
            &["key", "replicate", &id, "--to", ZONE_B, "--json"],
        ))
        .ok()
        .json();
    assert_eq!(answer, serde_json::json!({"status": "target-registered"}));
    let origin = store.get(&id, &a);
    assert_eq!(origin["replicas"], serde_json::json!([ZONE_B]));
    let states = origin["replicas-status"].as_array().unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0]["zone"], ZONE_B);
    assert_eq!(
        states[0]["last-applied-watermark"],
        origin["revision"]["seq"]
    );
    assert!(states[0].get("last-failure").is_none(), "{origin}");
    let replica = store.get(&id, &b);
    assert_eq!(replica["origin-zone"], ZONE_A);
    assert_eq!(replica["status"], "enabled");
    assert_eq!(replica["multi-zone"], true);

    // A ciphertext of one zone decrypts in the other.
    let sealed = store
        .run_with(
            &with(&a, &["encrypt", "--key", &id, "--context", "o=1"]),
            b"ship it",
        )
        .ok()
        .stdout;
    let mut command = store.command(&["decrypt", "--key", &id, "--context", "o=1"]);
    command.env("KEYLIFE_ZONE", ZONE_B);
    assert_eq!(run(command, &sealed).ok().stdout, b"ship it");
    let back = store
        .run_with(&with(&b, &["encrypt", "--key", &id]), b"reply")
        .ok()
        .stdout;
    let out = store
        .run_with(&with(&a, &["decrypt", "--key", &id]), &back)
        .ok();
    assert_eq!(out.stdout, b"reply");

    // Rotations reach the replica at once; the replica cannot rotate.
    store.run(&with(&a, &["key", "rotate", &id])).ok();
    let rotations = store
        .run(&with(&b, &["key", "list-rotations", &id, "--json"]))
        .ok()
        .json();
    assert_eq!(rotations["rotations"][0]["version"], 2);
    store
        .run(&with(&b, &["key", "rotate", &id]))
        .refused("not-on-replica");
    store
        .run(&with(&b, &["key", "schedule-deletion", &id]))
        .refused("not-on-replica");

    // Enable and disable are each zone's own.
    store.run(&with(&b, &["key", "disable", &id])).ok();
    assert_eq!(store.get(&id, &b)["status"], "disabled");
    assert_eq!(store.get(&id, &a)["status"], "enabled");
    store.run(&with(&b, &["key", "enable", &id])).ok();

    // Deletion and its cancellation follow the origin (the replica becomes disabled).
    store
        .run(&with(&a, &["key", "schedule-deletion", &id, "--days", "7"]))
        .ok();
    assert_eq!(store.get(&id, &b)["status"], "pending-deletion");
    store.run(&with(&a, &["key", "cancel-deletion", &id])).ok();
    assert_eq!(store.get(&id, &b)["status"], "disabled");
    store.run(&with(&a, &["key", "enable", &id])).ok();

    // The refusals of replicate.
    store
        .run(&with(&a, &["key", "replicate", &id, "--to", ZONE_B]))
        .refused("conflict");
    store
        .run(&with(&a, &["key", "replicate", &single, "--to", ZONE_B]))
        .refused("not-multi-zone");
    // A refused replication to a new zone leaves no store of it behind.
    store
        .run(&with(
            &a,
            &["key", "replicate", &single, "--to", "xx-new-1"],
        ))
        .refused("not-multi-zone");
    assert!(!store.data().join("xx-new-1").exists());
    store
        .run(&with(&a, &["key", "replicate", &id, "--to", "../up"]))
        .fails();
    store
        .run(&with(&a, &["key", "replicate", &id, "--to", ZONE_A]))
        .refused("invalid-argument");

    // The human form, to a third zone.
    let third = id_of(&store.create("third", &["--multi-zone", "--zone", ZONE_A]));
    let text = store
        .run(&with(&a, &["key", "replicate", &third, "--to", "at-vie-1"]))
        .ok()
        .text();
    assert!(
        text.contains("replica registered in zone at-vie-1"),
        "{text}"
    );
    assert!(text.contains("Delivered"), "{text}");
    let human = store.run(&with(&a, &["key", "get", &third])).ok().text();
    assert_eq!(field(&human, "replicas"), "at-vie-1");
    let listed = store
        .run(&["key", "list", "--zone", "at-vie-1"])
        .ok()
        .text();
    assert!(
        listed.contains(&third) && listed.contains(ZONE_A),
        "{listed}"
    );
}

#[test]
fn the_engine_is_chosen_at_creation_and_kept() {
    let store = Store::new();
    let key = store.create("k", &["--engine", "redb"]);
    let zone = store.data().join("local");
    assert!(zone.join(keylife::store::REDB_FILE).is_file());
    assert!(!zone.join("db").exists(), "no sled files");
    // Without --engine, the store opens with its own engine.
    let listed = store.run(&["key", "list", "--json"]).ok().json();
    assert_eq!(listed["kms-keys"][0]["id"], key["id"]);
    // Naming another engine for an existing store is refused, with both names.
    let message = store
        .run(&["key", "list", "--engine", "sled"])
        .refused("bad-request");
    assert!(
        message.contains("created with redb, not sled") && message.contains("engine"),
        "{message}"
    );
    // An engine keylife does not have is a usage error naming the two it has.
    let usage = store
        .run(&["key", "list", "--engine", "rocksdb"])
        .usage_error();
    assert!(usage.contains("sled or redb"), "{usage}");
    // And the store recorded the engine it was created with.
    let backend = keylife::store::Engine::open(&zone, None).unwrap();
    let (view, _) = keylife::store::AuthenticatedBackend::open(backend, &store.root_key()).unwrap();
    let recorded = keylife::store::Store::new(std::sync::Arc::new(view))
        .engine()
        .unwrap();
    assert_eq!(recorded.as_deref(), Some("redb"));
}
