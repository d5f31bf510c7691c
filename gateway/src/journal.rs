//! Store-and-forward: every passage event is on disk before it is published, and stays there
//! until its decision arrives, so an outage or a crash never loses a vehicle's passage.
//!
//! One file per event, `{event_id}.json`, written as a temporary file, fsynced, then renamed
//! into place (and the directory fsynced), so a file with the final name is always complete.
//! Files that cannot be read back are moved to `corrupt/` and reported, never fatal: one bad
//! sector must not stop a lane.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use parkpay_protocol::{EventId, PassageEvent};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A journal file that could not be read back, and where it was moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptEntry {
    pub moved_to: PathBuf,
    pub reason: String,
}

/// What [`Journal::read`] found under an event id.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Found(PassageEvent),
    /// Not journaled (any more): decided, or never written.
    Missing,
    Corrupt(CorruptEntry),
}

#[derive(Debug, Default)]
pub struct Listing {
    /// Oldest first (event ids are UUIDv7).
    pub events: Vec<PassageEvent>,
    pub corrupt: Vec<CorruptEntry>,
}

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// Ids on disk, so the pending count never touches the file system.
    pending: Mutex<BTreeSet<EventId>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Opens (creating) the journal in `dir`. Leftover temporary files are from writes that
    /// never completed, so their events were never published either: they are deleted.
    pub fn open(dir: impl Into<PathBuf>) -> Result<(Journal, Listing), JournalError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let journal = Journal {
            dir,
            pending: Mutex::new(BTreeSet::new()),
        };
        let listing = journal.list()?;
        Ok((journal, listing))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: EventId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn pending_set(&self) -> std::sync::MutexGuard<'_, BTreeSet<EventId>> {
        // The set is only ever inserted into or removed from; a panic elsewhere while holding
        // the lock cannot leave it half-updated, so a poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Durably records `event`; returns once it would survive a power cut.
    pub fn write(&self, event: &PassageEvent) -> Result<(), JournalError> {
        let path = self.path_of(event.event_id);
        let tmp = self.dir.join(format!("{}.json.tmp", event.event_id));
        // Our own plain data types always serialise.
        let bytes = serde_json::to_vec(event).expect("PassageEvent serialises to JSON");
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        // The rename is durable only once the directory entry is.
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.pending_set().insert(event.event_id);
        Ok(())
    }

    /// Forgets a decided event. Returns false when it was not journaled (already removed, or
    /// decided twice): that is not an error.
    pub fn remove(&self, id: EventId) -> Result<bool, JournalError> {
        let path = self.path_of(id);
        let removed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(&path)(e)),
        };
        self.pending_set().remove(&id);
        Ok(removed)
    }

    /// One journaled event, read back for a resend. A file that cannot be read back is moved
    /// aside like in [`Journal::list`].
    pub fn read(&self, id: EventId) -> Result<Entry, JournalError> {
        let path = self.path_of(id);
        let name = format!("{id}.json");
        if !path.exists() {
            self.pending_set().remove(&id);
            return Ok(Entry::Missing);
        }
        match read_entry(&path, &name) {
            Ok(event) => Ok(Entry::Found(event)),
            // Removed between the check and the read: decided meanwhile.
            Err(_) if !path.exists() => {
                self.pending_set().remove(&id);
                Ok(Entry::Missing)
            }
            Err(reason) => {
                let moved_to = self.move_aside(&path, &name)?;
                self.pending_set().remove(&id);
                tracing::warn!(file = %moved_to.display(), %reason, "corrupt journal entry moved aside");
                Ok(Entry::Corrupt(CorruptEntry { moved_to, reason }))
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.pending_set().len()
    }

    pub fn contains(&self, id: EventId) -> bool {
        self.pending_set().contains(&id)
    }

    /// Every journaled event, oldest first. Unreadable files are moved aside and reported.
    pub fn list(&self) -> Result<Listing, JournalError> {
        let mut listing = Listing::default();
        let entries = fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let path = entry.path();
            if !entry.file_type().map_err(io_err(&path))?.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json.tmp") {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            match read_entry(&path, &name) {
                Ok(event) => listing.events.push(event),
                Err(reason) => {
                    let moved_to = self.move_aside(&path, &name)?;
                    tracing::warn!(file = %moved_to.display(), %reason, "corrupt journal entry moved aside");
                    listing.corrupt.push(CorruptEntry { moved_to, reason });
                }
            }
        }
        listing.events.sort_by_key(|e| e.event_id);
        let mut pending = self.pending_set();
        pending.clear();
        pending.extend(listing.events.iter().map(|e| e.event_id));
        Ok(listing)
    }

    fn move_aside(&self, path: &Path, name: &str) -> Result<PathBuf, JournalError> {
        let dir = self.dir.join("corrupt");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let to = dir.join(name);
        fs::rename(path, &to).map_err(io_err(path))?;
        Ok(to)
    }
}

fn read_entry(path: &Path, name: &str) -> Result<PassageEvent, String> {
    let id: EventId = name
        .strip_suffix(".json")
        .and_then(|stem| stem.parse().ok())
        .ok_or_else(|| "file name is not {event_id}.json".to_string())?;
    let bytes = fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    let event: PassageEvent =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a passage event: {e}"))?;
    if event.event_id != id {
        return Err(format!(
            "holds event {} under the name of {id}",
            event.event_id
        ));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use parkpay_protocol::{Direction, GatewayId, LaneId, LotId, ReadQuality};

    fn ev() -> PassageEvent {
        PassageEvent {
            event_id: EventId::new(),
            lot: LotId::parse("lot1").unwrap(),
            lane: LaneId::parse("x1").unwrap(),
            gateway: GatewayId::parse("gw").unwrap(),
            direction: Direction::Exit,
            captured_at: Utc::now(),
            candidates: vec![],
            quality: ReadQuality::NoRead,
            evidence_digest: None,
            resent: false,
        }
    }

    #[test]
    fn write_list_remove_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (j, listing) = Journal::open(dir.path()).unwrap();
        assert!(listing.events.is_empty());
        let (a, b) = (ev(), ev());
        j.write(&a).unwrap();
        j.write(&b).unwrap();
        assert_eq!(j.pending(), 2);
        drop(j);

        let (j, listing) = Journal::open(dir.path()).unwrap();
        assert_eq!(listing.events, vec![a.clone(), b.clone()], "oldest first");
        assert_eq!(j.pending(), 2);
        assert!(j.remove(a.event_id).unwrap());
        assert!(
            !j.remove(a.event_id).unwrap(),
            "a second removal is harmless"
        );
        assert!(!j.contains(a.event_id));
        drop(j);

        let (j, listing) = Journal::open(dir.path()).unwrap();
        assert_eq!(listing.events, vec![b]);
        assert_eq!(j.pending(), 1);
    }

    #[test]
    fn read_finds_one_entry_and_tells_missing_from_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let a = ev();
        j.write(&a).unwrap();
        assert_eq!(j.read(a.event_id).unwrap(), Entry::Found(a.clone()));
        j.remove(a.event_id).unwrap();
        assert_eq!(j.read(a.event_id).unwrap(), Entry::Missing);

        let b = ev();
        j.write(&b).unwrap();
        fs::write(dir.path().join(format!("{}.json", b.event_id)), b"{\"eve").unwrap();
        match j.read(b.event_id).unwrap() {
            Entry::Corrupt(c) => assert!(c.moved_to.starts_with(dir.path().join("corrupt"))),
            other => panic!("expected a corrupt entry, got {other:?}"),
        }
        assert_eq!(j.pending(), 0, "a corrupt entry is no longer pending");
    }

    #[test]
    fn corrupt_files_are_moved_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let good = ev();
        j.write(&good).unwrap();
        let bad_id = EventId::new();
        fs::write(
            dir.path().join(format!("{bad_id}.json")),
            b"{\"event_id\": tru",
        )
        .unwrap();
        fs::write(dir.path().join("notes.json"), b"{}").unwrap();
        let other = ev();
        fs::write(
            dir.path().join(format!("{bad_id}x.json")),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        fs::write(
            dir.path().join(format!("{}.json.tmp", EventId::new())),
            b"half",
        )
        .unwrap();

        let listing = j.list().unwrap();
        assert_eq!(listing.events, vec![good]);
        assert_eq!(listing.corrupt.len(), 3, "{:?}", listing.corrupt);
        assert!(listing
            .corrupt
            .iter()
            .all(|c| c.moved_to.starts_with(dir.path().join("corrupt")) && c.moved_to.exists()));
        assert_eq!(j.pending(), 1);
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "the good entry and corrupt/: {left:?}");
    }
}
