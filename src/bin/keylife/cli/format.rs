//! Human listings of the API's answers.

use jiff::Timestamp;
use keylife::api::{KeySummary, RotationEntry};
use keylife::{CreatedKey, KeyDetails, KeyStatus, RotationResponse};
use serde::Serialize;

use super::table::{Table, fields};

/// The human listing of `key create`.
pub(super) fn created(created: &CreatedKey) -> String {
    let mut text = format!(
        "Created key {} in zone {}.\n",
        created.id, created.origin_zone
    );
    text.push_str(&fields(&[
        ("id", created.id.to_string()),
        ("name", created.name.clone()),
        ("description", or_dash(created.description.as_deref())),
        ("status", status(created.status)),
        ("multi-zone", yes_no(created.multi_zone)),
        ("origin-zone", created.origin_zone.clone()),
        ("created-at", time(created.created_at)),
        ("revision", created.revision.seq.to_string()),
    ]));
    text
}

/// The table of `key list`.
pub(super) fn key_table(keys: &[KeySummary]) -> String {
    let mut table = Table::new(&[
        "ID", "NAME", "STATUS", "VERSION", "ROTATION", "ORIGIN", "REPLICAS",
    ]);
    for key in keys {
        table.row(vec![
            key.id.to_string(),
            key.name.clone(),
            status(key.status),
            key.material.version.to_string(),
            if key.rotation.automatic {
                format!("every {}d", key.rotation.rotation_period)
            } else {
                "off".to_owned()
            },
            key.origin_zone.clone(),
            list_or_dash(&key.replicas),
        ]);
    }
    table.render()
}

/// The table of `key list-rotations`.
pub(super) fn rotations_table(rotations: &[RotationEntry]) -> String {
    let mut table = Table::new(&["VERSION", "ROTATED-AT", "AUTOMATIC"]);
    for entry in rotations {
        table.row(vec![
            entry.version.to_string(),
            time(entry.rotated_at),
            yes_no(entry.automatic),
        ]);
    }
    table.render()
}

/// The human listing of `key get`.
pub(super) fn describe(details: &KeyDetails) -> String {
    let key: &KeySummary = &details.key;
    let mut pairs = vec![
        ("id", key.id.to_string()),
        ("name", key.name.clone()),
        ("description", or_dash(key.description.as_deref())),
        (
            "status",
            format!("{} since {}", status(key.status), time(key.status_since)),
        ),
    ];
    if let Some(delete_at) = key.delete_at {
        pairs.push(("delete-at", time(delete_at)));
    }
    pairs.extend([
        ("usage", api_name(&key.usage)),
        ("source", api_name(&key.source)),
        ("multi-zone", yes_no(key.multi_zone)),
        ("origin-zone", key.origin_zone.clone()),
        ("created-at", time(key.created_at)),
        (
            "revision",
            format!("{} at {}", key.revision.seq, time(key.revision.at)),
        ),
        (
            "material",
            format!(
                "version {}, made {} ({})",
                key.material.version,
                time(key.material.created_at),
                if key.material.automatic {
                    "automatic rotation"
                } else if key.material.version == 1 {
                    "creation"
                } else {
                    "manual rotation"
                }
            ),
        ),
        (
            "rotation",
            if key.rotation.automatic {
                format!(
                    "automatic, every {} days, next at {}",
                    key.rotation.rotation_period,
                    time(key.rotation.next_at)
                )
            } else {
                "manual only".to_owned()
            },
        ),
        ("manual-rotations", key.rotation.manual_count.to_string()),
        ("replicas", list_or_dash(&key.replicas)),
    ]);
    let mut text = fields(&pairs);
    if !details.replicas_status.is_empty() {
        let mut table = Table::new(&["REPLICA", "APPLIED-REVISION", "LAST-FAILURE"]);
        for replica in &details.replicas_status {
            table.row(vec![
                replica.zone.clone(),
                replica.last_applied_watermark.to_string(),
                replica.last_failure.as_ref().map_or_else(
                    || "-".to_owned(),
                    |failure| format!("{} at {}", failure.error, time(failure.failed_at)),
                ),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    text
}

/// The human listing of a rotation answer.
pub(super) fn rotation(answer: &RotationResponse) -> String {
    let rotation = &answer.rotation;
    fields(&[
        ("automatic", yes_no(rotation.automatic)),
        (
            "rotation-period",
            format!("{} days", rotation.rotation_period),
        ),
        ("next-at", time(rotation.next_at)),
        ("manual-count", rotation.manual_count.to_string()),
    ])
}

fn status(status: KeyStatus) -> String {
    api_name(&status)
}

/// The API's name of an enum value (`enabled`, `encrypt-decrypt`, ...): its JSON string.
fn api_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".to_owned(),
    }
}

/// A timestamp to the second, RFC 3339 UTC.
pub(super) fn time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

fn or_dash(text: Option<&str>) -> String {
    text.unwrap_or("-").to_owned()
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}
