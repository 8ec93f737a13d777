//! A tour of keylife in one run: create a store, a key, encrypt, rotate, decrypt the old
//! ciphertext, disable and see the refusal, schedule deletion, move a manual clock past it,
//! and see the key gone; then a second zone, a multi-zone key replicated to it, and a
//! ciphertext made in one zone opened in the other.
//!
//! Run it with `cargo run --example quickstart`.

use std::sync::Arc;

use keylife::{CreateKey, Kms, KmsOptions, LocalLink, ManualClock, RootKey};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new("2026-01-01T00:00:00Z".parse()?);
    let link = LocalLink::new();
    let options = KmsOptions::new("ch-gva-2")
        .clock(clock.clone())
        .link(link.clone());
    let kms = Arc::new(Kms::open(dir.path(), RootKey::generate()?, options)?);
    link.attach(&kms);
    println!(
        "1. opened a store in {} for zone {}",
        dir.path().display(),
        kms.zone()
    );

    let key = kms.create_key(&CreateKey::new("payments").description("card tokens"))?;
    println!(
        "2. created key {} ({:?}), status {:?}",
        key.id, key.name, key.status
    );

    let context: &[u8] = b"order=17";
    let sealed = kms.encrypt(key.id, b"4242 4242 4242 4242", Some(context))?;
    println!(
        "3. encrypted 19 bytes into {} bytes (material version 1)",
        sealed.ciphertext.len()
    );

    let rotation = kms.rotate_key(key.id, None)?;
    let details = kms.get_key(key.id)?;
    println!(
        "4. rotated: material version {}, manual rotations {}",
        details.key.material.version, rotation.rotation.manual_count
    );

    let opened = kms.decrypt(key.id, &sealed.ciphertext, Some(context))?;
    println!(
        "5. decrypted the version-1 ciphertext after the rotation: {:?}",
        String::from_utf8_lossy(opened.plaintext.as_bytes())
    );

    kms.disable_key(key.id, None)?;
    match kms.encrypt(key.id, b"more", None) {
        Err(error) => println!(
            "6. disabled the key; encrypt is refused: [{}] {error}",
            error.code()
        ),
        Ok(_) => return Err("a disabled key encrypted".into()),
    }

    let scheduled = kms.schedule_key_deletion(key.id, Some(7), None)?;
    println!("7. scheduled deletion at {}", scheduled.delete_at);

    clock.advance_days(8);
    let report = kms.run_due()?;
    let deleted: Vec<String> = report.deleted.iter().map(ToString::to_string).collect();
    println!(
        "8. moved the clock to {} and ran what was due: deleted {deleted:?}",
        kms.now()
    );

    match kms.get_key(key.id) {
        Err(error) => println!("9. the key is gone: [{}] {error}", error.code()),
        Ok(_) => return Err("the key survived its deletion".into()),
    }

    let other_dir = tempfile::tempdir()?;
    let options = KmsOptions::new("de-fra-1")
        .clock(clock.clone())
        .link(link.clone());
    let fra = Arc::new(Kms::open(other_dir.path(), RootKey::generate()?, options)?);
    link.attach(&fra);
    let shared = kms.create_key(&CreateKey::new("orders").multi_zone(true))?;
    let answer = kms.replicate_key(shared.id, "de-fra-1", None)?;
    // The delivery runs in the background, off this call; wait for it.
    kms.wait_for_deliveries();
    println!(
        "10. opened zone {} (its own store and root key) and replicated multi-zone key {} to it: {:?}",
        fra.zone(),
        shared.id,
        answer.status
    );

    let sealed = kms.encrypt(shared.id, b"ship to Bern", None)?;
    let opened = fra.decrypt(shared.id, &sealed.ciphertext, None)?;
    println!(
        "11. encrypted in ch-gva-2, decrypted in de-fra-1: {:?}",
        String::from_utf8_lossy(opened.plaintext.as_bytes())
    );

    kms.rotate_key(shared.id, None)?;
    kms.wait_for_deliveries();
    let origin = kms.get_key(shared.id)?;
    let replica = fra.get_key(shared.id)?;
    println!(
        "12. rotated in ch-gva-2: de-fra-1 holds material version {}; ch-gva-2 sees it at \
         revision {} of {}",
        replica.key.material.version,
        origin.replicas_status[0].last_applied_watermark,
        origin.key.revision.seq
    );
    Ok(())
}
