//! `keylife key ...`: one function per subcommand.

use keylife::{CreateKey, ImportOutcome, KeyId, SuccessStatus};

use super::Failure;
use super::args::{
    CreateArgs, EnableRotationArgs, IdArgs, ImportArgs, KeyCommand, ListArgs, ReplicateArgs,
    ScheduleDeletionArgs, StoreArgs,
};
use super::format::{created, describe, key_table, rotation, rotations_table, time};
use super::io::output;
use super::zones::{NewStore, Zones};

/// Runs `keylife key COMMAND`.
pub(super) fn run(command: KeyCommand) -> Result<(), Failure> {
    match command {
        KeyCommand::Create(args) => create(args),
        KeyCommand::List(args) => list(&args),
        KeyCommand::Get(args) => get(&args),
        KeyCommand::Enable(args) => set_enabled(&args, true),
        KeyCommand::Disable(args) => set_enabled(&args, false),
        KeyCommand::Rotate(args) => rotate(&args),
        KeyCommand::EnableRotation(args) => enable_rotation(&args),
        KeyCommand::DisableRotation(args) => disable_rotation(&args),
        KeyCommand::ListRotations(args) => list_rotations(&args),
        KeyCommand::ScheduleDeletion(args) => schedule_deletion(&args),
        KeyCommand::CancelDeletion(args) => cancel_deletion(&args),
        KeyCommand::Import(args) => import(&args),
        KeyCommand::Replicate(args) => replicate(&args),
    }
}

/// The zones of `store` (none created) and the key `key` names in the chosen one.
fn open(store: &StoreArgs, key: &str) -> Result<(Zones, KeyId), Failure> {
    let zones = Zones::open(store, NewStore::Never)?;
    let id = zones.key(key)?;
    Ok((zones, id))
}

fn create(args: CreateArgs) -> Result<(), Failure> {
    let zones = Zones::open(&args.store, NewStore::Chosen)?;
    let mut request = CreateKey::new(args.name).multi_zone(args.multi_zone);
    if let Some(description) = args.description {
        request = request.description(description);
    }
    let key = zones.kms().create_key(&request)?;
    output(args.store.json, &key, || created(&key))
}

fn import(args: &ImportArgs) -> Result<(), Failure> {
    // A bad file is refused before any store is opened or created.
    let seed = crate::config::load_seed(&args.file)?;
    let zones = Zones::open(&args.store, NewStore::Chosen)?;
    let report = seed.apply_with_default(&zones.all(), zones.kms().zone())?;
    output(args.store.json, &report, || {
        let mut text = String::new();
        for key in &report.keys {
            let what = match key.outcome {
                ImportOutcome::Created => "created",
                ImportOutcome::AlreadyPresent => "already present, left as it is",
            };
            text.push_str(&format!(
                "Key {} ({:?}) in zone {}: {what}.\n",
                key.id, key.name, key.zone
            ));
        }
        if report.keys.is_empty() {
            text.push_str("The seed file holds no key.\n");
        }
        text
    })
}

fn list(args: &ListArgs) -> Result<(), Failure> {
    let zones = Zones::open(&args.store, NewStore::Never)?;
    let list = zones.kms().list_keys()?;
    output(args.store.json, &list, || {
        if list.kms_keys.is_empty() {
            format!("No keys in zone {}.\n", zones.kms().zone())
        } else {
            key_table(&list.kms_keys)
        }
    })
}

fn get(args: &IdArgs) -> Result<(), Failure> {
    let (zones, id) = open(&args.store, &args.key)?;
    let details = zones.kms().get_key(id)?;
    output(args.store.json, &details, || describe(&details))
}

fn set_enabled(args: &IdArgs, enabled: bool) -> Result<(), Failure> {
    let (zones, id) = open(&args.store, &args.key)?;
    let kms = zones.kms();
    let answer = if enabled {
        kms.enable_key(id, None)?
    } else {
        kms.disable_key(id, None)?
    };
    let state = if enabled { "enabled" } else { "disabled" };
    output(args.store.json, &answer, || match answer.status {
        SuccessStatus::AlreadyApplied => format!("Key {id} was already {state}.\n"),
        _ => format!("Key {id} {state}.\n"),
    })
}

fn rotate(args: &IdArgs) -> Result<(), Failure> {
    let (zones, id) = open(&args.store, &args.key)?;
    let answer = zones.kms().rotate_key(id, None)?;
    let version = if args.store.json {
        None
    } else {
        let key = zones.kms().get_key(id).ok();
        key.map(|key| key.key.material.version)
    };
    output(args.store.json, &answer, || {
        let headline = match version {
            Some(version) => format!("Key {id} rotated: material version {version}.\n"),
            None => format!("Key {id} rotated.\n"),
        };
        headline + &rotation(&answer)
    })
}

fn enable_rotation(args: &EnableRotationArgs) -> Result<(), Failure> {
    let (zones, id) = open(&args.target.store, &args.target.key)?;
    let answer = zones.kms().enable_key_rotation(id, args.period, None)?;
    output(args.target.store.json, &answer, || {
        let period = answer.rotation.rotation_period;
        format!("Key {id}: automatic rotation every {period} days.\n") + &rotation(&answer)
    })
}

fn disable_rotation(args: &IdArgs) -> Result<(), Failure> {
    let (zones, id) = open(&args.store, &args.key)?;
    let answer = zones.kms().disable_key_rotation(id, None)?;
    output(args.store.json, &answer, || {
        format!("Key {id}: automatic rotation disabled.\n") + &rotation(&answer)
    })
}

fn list_rotations(args: &IdArgs) -> Result<(), Failure> {
    let (zones, id) = open(&args.store, &args.key)?;
    let list = zones.kms().list_key_rotations(id)?;
    output(args.store.json, &list, || {
        if list.rotations.is_empty() {
            format!("Key {id} has not been rotated: version 1 is its only version.\n")
        } else {
            rotations_table(&list.rotations)
        }
    })
}

fn schedule_deletion(args: &ScheduleDeletionArgs) -> Result<(), Failure> {
    let (zones, id) = open(&args.target.store, &args.target.key)?;
    let answer = zones.kms().schedule_key_deletion(id, args.days, None)?;
    output(args.target.store.json, &answer, || {
        format!(
            "Key {id} is pending deletion: it will be destroyed at {}.\n\
             Until then, `keylife key cancel-deletion {id}` cancels the deletion.\n",
            time(answer.delete_at)
        )
    })
}

fn cancel_deletion(args: &IdArgs) -> Result<(), Failure> {
    let (zones, id) = open(&args.store, &args.key)?;
    let answer = zones.kms().cancel_key_deletion(id, None)?;
    output(args.store.json, &answer, || {
        format!(
            "Key {id}: deletion cancelled; the key is disabled \
             (`keylife key enable {id}` to use it again).\n"
        )
    })
}

fn replicate(args: &ReplicateArgs) -> Result<(), Failure> {
    let IdArgs { key, store } = &args.target;
    let zones = Zones::open(store, NewStore::Target(&args.to))?;
    let replicated = zones
        .key(key)
        .and_then(|id| Ok((id, zones.kms().replicate_key(id, &args.to, None)?)));
    let (id, answer) = match replicated {
        Ok(replicated) => replicated,
        Err(failure) => {
            zones.close_and_forget_target();
            return Err(failure);
        }
    };
    // The first delivery is made in the background at once: see it through.
    zones.kms().wait_for_deliveries();
    let state = if store.json {
        None
    } else {
        let key = zones.kms().get_key(id).ok();
        key.and_then(|key| key.replicas_status.into_iter().find(|r| r.zone == args.to))
    };
    output(store.json, &answer, || {
        let mut text = format!("Key {id}: replica registered in zone {}.\n", args.to);
        if let Some(state) = &state {
            text.push_str(&match &state.last_failure {
                None => format!(
                    "Delivered: the replica is at the key's revision {}.\n",
                    state.last_applied_watermark
                ),
                Some(failure) => format!(
                    "Delivery failed ({}); the next command retries it.\n",
                    failure.error
                ),
            });
        }
        text
    })
}
