//! The binary's log: lines on standard error. A closed or full stderr is not a reason to stop.

use keylife::server::Event;
use keylife::{DueReport, DueRun, Error};

/// Writes `line` on standard error.
pub(crate) fn log(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Logs what failed in a run of what is due in `zone` (rotations, deletions, deliveries to
/// replicas); the failures stay due. `keylife serve` logs every background run, the local
/// commands the run they make first.
pub(crate) fn due(zone: &str, result: &Result<DueReport, Error>) {
    match result {
        Ok(report) => {
            for (id, error) in &report.failed {
                log(format_args!(
                    "keylife: zone {zone}: the due work of key {id} failed: {error} [{}]",
                    error.code()
                ));
            }
            for (id, target, error) in &report.replication.failed {
                log(format_args!(
                    "keylife: zone {zone}: key {id} did not reach its replica in zone {target}: \
                     {error} [{}]",
                    error.code()
                ));
            }
        }
        Err(error) => log(format_args!(
            "keylife: zone {zone}: cannot run the due rotations and deletions: {error} [{}]",
            error.code()
        )),
    }
}

/// Logs what `keylife serve` reports.
pub(crate) fn server_event(event: &Event<'_>) {
    match event {
        Event::AcceptFailed { count: 1, last } => {
            log(format_args!(
                "keylife: accepting a connection failed: {last}"
            ));
        }
        Event::AcceptFailed { count, last } => log(format_args!(
            "keylife: accepting a connection failed {count} times since the last report; \
             the latest: {last}"
        )),
        Event::ConnectionsRefused { count, limit } => log(format_args!(
            "keylife: {limit} connections open (--max-connections): {count} new connection(s) \
             closed at once since the last report"
        )),
        Event::ConnectionsDropped { open, grace } => log(format_args!(
            "keylife: {} s after the stop, {open} connection(s) still open are dropped",
            grace.as_secs()
        )),
        Event::DueRun {
            zone,
            run: DueRun::Ran(result),
        } => due(zone, result),
        Event::DueRun {
            zone,
            run: DueRun::Panicked(message),
        } => log(format_args!(
            "keylife: zone {zone}: run_due panicked ({message}); it runs again at the next interval"
        )),
        // Events added later are not logged until the binary learns them.
        _ => {}
    }
}

/// One line for a seed file applied at start: how many keys were created and how many were
/// already present.
pub(crate) fn seeded(path: &std::path::Path, report: &keylife::SeedReport) {
    let created = report
        .keys
        .iter()
        .filter(|key| key.outcome == keylife::ImportOutcome::Created)
        .count();
    log(format_args!(
        "keylife: seed {}: {created} keys created, {} already present",
        path.display(),
        report.keys.len() - created
    ));
}
