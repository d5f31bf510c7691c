//! History: stays, passages and the audit log, filtered, paged and exported as CSV.
//!
//! Every list answers `{"items": [...], "next": "<cursor>"|null}`; `after=<cursor>` gives the
//! next page. `format=csv` gives every matching row (up to [`CSV_MAX_ROWS`]) as a file.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use parkpay_protocol::LotId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    lot_id, param, plate_query, require, require_all_lots, require_on, without_driver, ApiError,
    ApiResult, Ctx, Q,
};
use crate::auth::{Action, Identity};
use crate::domain::SessionStatus;
use crate::store::{AuditQuery, Cursor, Page, PassageQuery, StayQuery};

/// The most rows one CSV export holds; a wider range is exported in parts.
pub const CSV_MAX_ROWS: usize = 100_000;

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/api/history/stays", get(stays))
        .route("/api/history/passages", get(passages))
        .route("/api/history/audit", get(audit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    lot: Option<String>,
    lane: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// Stays: open, closed, ... Passages: open or hold (the decision).
    status: Option<String>,
    /// Passages: entry or exit.
    direction: Option<String>,
    plate: Option<String>,
    /// Stays: a plate as someone remembers or misreads it (confusables fold alike).
    search: Option<String>,
    /// Audit: who, what (a prefix such as `charge.`), and text in the subject or detail.
    actor: Option<String>,
    action: Option<String>,
    text: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
    format: Option<String>,
}

impl HistoryQuery {
    fn csv(&self) -> ApiResult<bool> {
        match self.format.as_deref() {
            None | Some("json") => Ok(false),
            Some("csv") => Ok(true),
            Some(f) => Err(ApiError::BadRequest(format!(
                "format: {f:?} is not json or csv"
            ))),
        }
    }

    fn after(&self) -> ApiResult<Option<Cursor>> {
        self.after
            .as_deref()
            .map(|a| {
                Cursor::decode(a).ok_or_else(|| {
                    ApiError::BadRequest("after: not a cursor this server gave out".into())
                })
            })
            .transpose()
    }

    fn limit(&self) -> ApiResult<i64> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=1_000).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::BadRequest(format!(
                "limit: {n} is not between 1 and 1000"
            ))),
        }
    }
}

/// An instant from a query: RFC 3339 with its offset, or a wall time (`2026-12-05`,
/// `2026-12-05T08:30`) in the lot's time zone.
fn instant(text: &str, what: &str, zone: Option<Tz>) -> ApiResult<DateTime<Utc>> {
    let text = param(text, what, 40)?.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let wall = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{what}: {text:?} is not an instant (2026-12-05T08:30:00+08:00) or a date and time (2026-12-05, 2026-12-05T08:30)"
            ))
        })?;
    let zone = zone.ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{what}: a time without an offset is read in the lot's time zone; give a lot, or an offset"
        ))
    })?;
    // A wall time a clock change skipped is taken at the change; a repeated one at its first.
    zone.from_local_datetime(&wall)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(wall + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| ApiError::BadRequest(format!("{what}: {text:?} does not exist there")))
}

/// The lots a list covers: the one asked for (if the caller may see it), else the caller's.
/// Also the asked lot's time zone, for wall times.
async fn scope(
    ctx: &Ctx,
    me: &Identity,
    q: &HistoryQuery,
) -> ApiResult<(Option<Vec<LotId>>, Option<Tz>)> {
    require(me, Action::View)?;
    match &q.lot {
        Some(l) => {
            let lot = lot_id(l.clone())?;
            require_on(me, Action::View, &lot)?;
            let zone = ctx.app.store.lot(&lot).await?.map(|l| l.tariff.time_zone);
            Ok((Some(vec![lot]), zone))
        }
        None => Ok((me.grant.lots.clone(), None)),
    }
}

/// A range `[from, to)`; either end may be open.
type Range = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The range `[from, to)`, checked.
fn range(q: &HistoryQuery, zone: Option<Tz>) -> ApiResult<Range> {
    let from = q
        .from
        .as_deref()
        .map(|t| instant(t, "from", zone))
        .transpose()?;
    let to =
        q.to.as_deref()
            .map(|t| instant(t, "to", zone))
            .transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if t <= f {
            return Err(ApiError::BadRequest("to: must be after from".into()));
        }
    }
    Ok((from, to))
}

fn lane(q: &HistoryQuery) -> ApiResult<Option<String>> {
    q.lane
        .as_deref()
        .map(|l| param(l, "lane", 64).map(str::to_string))
        .transpose()
}

/// The folded key of `search`: the whole plate or the part someone remembers.
fn search_key(q: &HistoryQuery) -> ApiResult<Option<String>> {
    let Some(text) = &q.search else {
        return Ok(None);
    };
    param(text, "search", 16)?;
    let key = parkpay_protocol::plate::match_key(&text.to_uppercase());
    if key.is_empty() {
        return Err(ApiError::Unprocessable(
            "search: give some letters or digits of the plate".into(),
        ));
    }
    Ok(Some(key))
}

/// Every page of a query, up to [`CSV_MAX_ROWS`] rows.
async fn all_pages<T, F, Fut>(mut page: F) -> ApiResult<Vec<T>>
where
    F: FnMut(Option<Cursor>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<Page<T>>>,
{
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let p = page(after).await?;
        rows.extend(p.items);
        match p.next.as_deref().and_then(Cursor::decode) {
            Some(c) if rows.len() < CSV_MAX_ROWS => after = Some(c),
            _ => break,
        }
    }
    rows.truncate(CSV_MAX_ROWS);
    Ok(rows)
}

/// A CSV file. Text cells that a spreadsheet would run as a formula (`=`, `+`, `-`, `@` first)
/// are given a leading `'`.
fn csv_file(name: &str, header: &[&str], rows: Vec<Vec<String>>) -> ApiResult<Response> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| ApiError::Internal(format!("csv: {e}"));
    w.write_record(header).map_err(io)?;
    for row in rows {
        w.write_record(row).map_err(io)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| ApiError::Internal(format!("csv: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.csv\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// Text from outside (a reason, a plate) made safe for a spreadsheet.
fn cell(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

fn yuan(minor: i64) -> String {
    format!(
        "{}{}.{:02}",
        if minor < 0 { "-" } else { "" },
        minor.unsigned_abs() / 100,
        minor.unsigned_abs() % 100
    )
}

/// Each lot's time zone, so exported times read as the lot's clock (with their offset).
async fn zones(ctx: &Ctx) -> ApiResult<HashMap<String, Tz>> {
    Ok(ctx
        .app
        .store
        .lots()
        .await?
        .into_iter()
        .map(|l| (l.id.to_string(), l.tariff.time_zone))
        .collect())
}

fn local(t: DateTime<Utc>, lot: &str, zones: &HashMap<String, Tz>) -> String {
    match zones.get(lot) {
        Some(z) => t.with_timezone(z).to_rfc3339(),
        None => t.to_rfc3339(),
    }
}

async fn stays(State(ctx): State<Ctx>, me: Identity, Q(q): Q<HistoryQuery>) -> ApiResult<Response> {
    let csv = q.csv()?;
    let (lots, zone) = scope(&ctx, &me, &q).await?;
    let (from, to) = range(&q, zone)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            SessionStatus::parse(s)
                .ok_or_else(|| ApiError::BadRequest(format!("status: unknown stay status {s:?}")))
        })
        .transpose()?;
    let key = search_key(&q)?;
    let base = StayQuery {
        lots,
        lane: lane(&q)?,
        from,
        to,
        status,
        plate: q.plate.clone().map(plate_query).transpose()?,
        key,
        after: q.after()?,
        limit: q.limit()?,
    };
    if !csv {
        let page = ctx.app.store.stay_history(&base).await?;
        return Ok(Json(json!({
            "items": page.items.into_iter().map(|s| without_driver(json!(s), &me)).collect::<Vec<Value>>(),
            "next": page.next,
        }))
        .into_response());
    }
    let rows = all_pages(|after| {
        let q = StayQuery {
            after,
            limit: 1_000,
            ..base.clone()
        };
        let store = ctx.app.store.clone();
        async move { Ok(store.stay_history(&q).await?) }
    })
    .await?;
    let zones = zones(&ctx).await?;
    let rows = rows
        .into_iter()
        .map(|s| {
            let lot = s.lot.to_string();
            vec![
                s.id.to_string(),
                lot.clone(),
                cell(&s.plate),
                s.status.as_str().to_string(),
                local(s.entry_at, &lot, &zones),
                s.entry_lane.map(|l| cell(l.as_str())).unwrap_or_default(),
                s.exit_at
                    .map(|t| local(t, &lot, &zones))
                    .unwrap_or_default(),
                s.exit_lane.map(|l| cell(l.as_str())).unwrap_or_default(),
                s.exit_at
                    .map(|t| (t - s.entry_at).num_minutes().to_string())
                    .unwrap_or_default(),
                s.fee.map(|f| yuan(f.minor)).unwrap_or_default(),
                s.fee
                    .map(|f| f.currency.as_str().to_string())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    csv_file(
        "stays",
        &[
            "stay",
            "lot",
            "plate",
            "status",
            "entered",
            "entry_lane",
            "left",
            "exit_lane",
            "minutes",
            "fee",
            "currency",
        ],
        rows,
    )
}

async fn passages(
    State(ctx): State<Ctx>,
    me: Identity,
    Q(q): Q<HistoryQuery>,
) -> ApiResult<Response> {
    let csv = q.csv()?;
    let (lots, zone) = scope(&ctx, &me, &q).await?;
    let (from, to) = range(&q, zone)?;
    let action = match q.status.as_deref() {
        None => None,
        Some(a @ ("open" | "hold")) => Some(a.to_string()),
        Some(a) => {
            return Err(ApiError::BadRequest(format!(
                "status: a passage was decided open or hold, not {a:?}"
            )))
        }
    };
    let direction = match q.direction.as_deref() {
        None => None,
        Some(d @ ("entry" | "exit")) => Some(d.to_string()),
        Some(d) => {
            return Err(ApiError::BadRequest(format!(
                "direction: entry or exit, not {d:?}"
            )))
        }
    };
    // A search reads as the plates of the stays it finds (passages keep no folded key): the
    // passages of those cars, not of every plate one edit away.
    let plates = match (
        search_key(&q)?,
        q.plate.clone().map(plate_query).transpose()?,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "plate and search: give one or the other".into(),
            ))
        }
        (None, Some(p)) => Some(vec![p]),
        (Some(key), None) => {
            let stays = ctx
                .app
                .store
                .stay_history(&StayQuery {
                    lots: lots.clone(),
                    key: Some(key),
                    limit: 1_000,
                    ..StayQuery::default()
                })
                .await?;
            let mut plates: Vec<String> = stays.items.into_iter().map(|s| s.plate).collect();
            plates.sort();
            plates.dedup();
            Some(plates)
        }
        (None, None) => None,
    };
    let base = PassageQuery {
        lots,
        lane: lane(&q)?,
        from,
        to,
        direction,
        action,
        plates,
        after: q.after()?,
        limit: q.limit()?,
    };
    if !csv {
        let page = ctx.app.store.passage_history(&base).await?;
        return Ok(Json(json!(page)).into_response());
    }
    let rows = all_pages(|after| {
        let q = PassageQuery {
            after,
            limit: 1_000,
            ..base.clone()
        };
        let store = ctx.app.store.clone();
        async move { Ok(store.passage_history(&q).await?) }
    })
    .await?;
    let zones = zones(&ctx).await?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let rows = rows
        .into_iter()
        .map(|p| {
            let lot = p.lot.to_string();
            let fee = p
                .decision
                .get("fee")
                .and_then(|f| f.get("minor"))
                .and_then(Value::as_i64);
            vec![
                p.event_id.to_string(),
                lot.clone(),
                cell(&p.lane),
                p.direction.clone(),
                local(p.captured_at, &lot, &zones),
                p.plate.as_deref().map(cell).unwrap_or_default(),
                p.quality.clone(),
                text(&p.decision, "action"),
                text(&p.decision, "reason"),
                fee.map(yuan).unwrap_or_default(),
                p.session_id.map(|s| s.to_string()).unwrap_or_default(),
                p.resent.to_string(),
            ]
        })
        .collect();
    csv_file(
        "passages",
        &[
            "event",
            "lot",
            "lane",
            "direction",
            "captured",
            "plate",
            "quality",
            "decision",
            "reason",
            "fee",
            "stay",
            "resent",
        ],
        rows,
    )
}

async fn audit(State(ctx): State<Ctx>, me: Identity, Q(q): Q<HistoryQuery>) -> ApiResult<Response> {
    require_all_lots(&me, Action::ReadAudit)?;
    let csv = q.csv()?;
    if q.lot.is_some() || q.lane.is_some() {
        return Err(ApiError::BadRequest(
            "the audit log is not kept per lot: filter by actor, action or text".into(),
        ));
    }
    // Wall times in the audit log are read in UTC: it spans every lot.
    let (from, to) = range(&q, Some(Tz::UTC))?;
    let text = |v: &Option<String>, what: &str| {
        v.as_deref()
            .map(|t| param(t, what, 200).map(str::to_string))
            .transpose()
    };
    let base = AuditQuery {
        actor: text(&q.actor, "actor")?,
        action: text(&q.action, "action")?,
        text: text(&q.text, "text")?,
        from,
        to,
        after: q.after()?,
        limit: q.limit()?,
    };
    if !csv {
        return Ok(Json(json!(ctx.app.store.audit_history(&base).await?)).into_response());
    }
    let rows = all_pages(|after| {
        let q = AuditQuery {
            after,
            limit: 1_000,
            ..base.clone()
        };
        let store = ctx.app.store.clone();
        async move { Ok(store.audit_history(&q).await?) }
    })
    .await?;
    let rows = rows
        .into_iter()
        .map(|e| {
            vec![
                e.at.to_rfc3339(),
                cell(&e.actor),
                cell(&e.action),
                cell(&e.subject),
                cell(&e.detail),
            ]
        })
        .collect();
    csv_file(
        "audit",
        &["at", "actor", "action", "subject", "detail"],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_times_are_read_in_the_lots_zone_and_instants_as_given() {
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(
            instant("2026-12-05", "from", Some(shanghai)).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 4, 16, 0, 0).unwrap()
        );
        assert_eq!(
            instant("2026-12-05T08:30", "from", Some(shanghai)).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 5, 0, 30, 0).unwrap()
        );
        assert_eq!(
            instant("2026-12-05T08:30:00+01:00", "from", None).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 5, 7, 30, 0).unwrap()
        );
        assert!(instant("2026-12-05", "from", None).is_err());
        assert!(instant("yesterday", "from", Some(shanghai)).is_err());
        // Berlin skips 02:00-03:00 on 2026-03-29: a skipped wall time is taken at the change.
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            instant("2026-03-29T02:30", "from", Some(berlin)).unwrap(),
            Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0).unwrap()
        );
    }

    #[test]
    fn spreadsheet_formulas_are_defused() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("京A12345"), "京A12345");
        assert_eq!(yuan(-1205), "-12.05");
        assert_eq!(yuan(7), "0.07");
    }
}
