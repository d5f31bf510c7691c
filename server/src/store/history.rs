//! History: stays, passages and the audit log, filtered and paged by a keyset cursor, so a page
//! deep in a year of history costs what the first page costs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parkpay_protocol::LotId;
use serde::Serialize;
use uuid::Uuid;

use super::StoreResult;
use crate::domain::{AuditEntry, Session, SessionStatus};

/// Where the next page starts: the sort instant and id of the last row of this page. Rows are
/// ordered newest first, then by id, so (instant, id) is unique and stable under inserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at_ms: i64,
    pub id: String,
}

impl Cursor {
    /// The opaque text a client sends back: `<millis>.<id>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.at_ms, self.id)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let (at, id) = text.split_once('.')?;
        let at_ms = at.parse().ok()?;
        // Ids are UUIDs; anything else is not a cursor this server gave out.
        let id = Uuid::parse_str(id).ok()?.to_string();
        Some(Cursor { at_ms, id })
    }
}

/// One page of rows and the cursor of the next, if there are more.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Stays present in a lot during a time range.
#[derive(Debug, Clone, Default)]
pub struct StayQuery {
    /// Only these lots (a filter, or the caller's grant); `None` is every lot.
    pub lots: Option<Vec<LotId>>,
    /// Entered or left by this lane.
    pub lane: Option<String>,
    /// Stays still inside at or after `from` (open, or left at or after it).
    pub from: Option<DateTime<Utc>>,
    /// Stays that entered before `to`.
    pub to: Option<DateTime<Utc>>,
    pub status: Option<SessionStatus>,
    pub plate: Option<String>,
    /// Plates whose match key holds this one (confusables alike; a part of a plate finds it).
    pub key: Option<String>,
    pub after: Option<Cursor>,
    pub limit: i64,
}

/// Passages (gateway events) captured during a time range.
#[derive(Debug, Clone, Default)]
pub struct PassageQuery {
    pub lots: Option<Vec<LotId>>,
    pub lane: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// `entry` or `exit`.
    pub direction: Option<String>,
    /// The decision's barrier action: `open` or `hold`.
    pub action: Option<String>,
    /// Passages read as one of these plates.
    pub plates: Option<Vec<String>>,
    pub after: Option<Cursor>,
    pub limit: i64,
}

/// Audit entries in a time range.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    /// Actions starting with this (`charge.` for every money action).
    pub action: Option<String>,
    /// Subjects or details containing this text.
    pub text: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub after: Option<Cursor>,
    pub limit: i64,
}

/// A passage as history shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PassageRecord {
    pub event_id: Uuid,
    pub lot: LotId,
    pub lane: String,
    pub gateway: String,
    pub direction: String,
    pub captured_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub plate: Option<String>,
    pub quality: String,
    pub resent: bool,
    pub session_id: Option<Uuid>,
    /// The decision sent to the lane, as sent.
    pub decision: serde_json::Value,
}

/// History queries. Every backend implements it beside [`super::Store`].
#[async_trait]
pub trait HistoryStore: Send + Sync {
    async fn stay_history(&self, q: &StayQuery) -> StoreResult<Page<Session>>;
    async fn passage_history(&self, q: &PassageQuery) -> StoreResult<Page<PassageRecord>>;
    async fn audit_history(&self, q: &AuditQuery) -> StoreResult<Page<AuditEntry>>;
}

/// The page size a query asks for, within bounds.
pub(crate) fn page_size(limit: i64) -> i64 {
    if limit <= 0 {
        50
    } else {
        limit.min(1_000)
    }
}

/// One page of `rows` (fetched with one row more than `limit`, to know whether more follow), and
/// the cursor after its last row, made by `key`.
pub(crate) fn page_of<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> Cursor) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|r| key(r).encode());
        Page { items: rows, next }
    } else {
        Page {
            items: rows,
            next: None,
        }
    }
}

/// `LIKE` text matching `text` anywhere, with the pattern characters escaped (by `\`).
pub(crate) fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_the_server_never_gave() {
        let c = Cursor {
            at_ms: 1_764_000_000_123,
            id: Uuid::nil().to_string(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", ".", "12", "x.y", "12.not-a-uuid", "1.2.3"] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_page_says_where_the_next_begins_only_when_more_rows_follow() {
        let key = |n: &i64| Cursor {
            at_ms: *n,
            id: Uuid::nil().to_string(),
        };
        let full = page_of(vec![5, 4, 3], 2, key);
        assert_eq!(full.items, vec![5, 4]);
        assert_eq!(full.next, Some(key(&4).encode()));
        let last = page_of(vec![5, 4], 2, key);
        assert_eq!((last.items, last.next), (vec![5, 4], None));
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
    }
}
