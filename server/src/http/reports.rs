//! The reports (`/reports`, `GET /api/reports/...`, JSON or CSV) and the tariff editor
//! (`/tariffs`, with `POST /api/lots/{lot}/tariff/preview`: a quote under a draft tariff that
//! is not saved).

use axum::extract::Path;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{lot_id, lot_or_404, page, require_on, ApiError, ApiResult, Body, Ctx, Q};
use crate::auth::{Action, Identity};
use crate::domain::VehicleClass;
use crate::reports::{self, DayRange};
use crate::tariff::{self, Tariff};

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/reports", get(reports_page))
        .route("/tariffs", get(tariffs_page))
        .route("/api/reports/occupancy", get(occupancy))
        .route("/api/reports/takings", get(takings))
        .route("/api/reports/stay-lengths", get(stay_lengths))
        .route("/api/reports/turnover", get(turnover))
}

async fn reports_page() -> Response {
    let p = page("reports");
    p.respond(p.html.clone())
}

async fn tariffs_page() -> Response {
    let p = page("tariffs");
    p.respond(p.html.clone())
}

#[derive(Deserialize)]
struct ReportQuery {
    lot: String,
    from: String,
    to: String,
    /// `json` (the default) or `csv`.
    format: Option<String>,
}

enum Format {
    Json,
    Csv,
}

/// The lot (403 outside the caller's grant, then 404), the days and the format a report asks
/// for; a bad range or format is a 4xx that names the parameter.
async fn report_args(
    ctx: &Ctx,
    me: &Identity,
    q: &ReportQuery,
) -> ApiResult<(crate::domain::Lot, DayRange, Format)> {
    let lot = lot_id(q.lot.clone())?;
    require_on(me, Action::View, &lot)?;
    let format = match q.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format: json or csv, not {other:?}"
            )))
        }
    };
    let range = DayRange::parse(&q.from, &q.to).map_err(ApiError::Unprocessable)?;
    let lot = lot_or_404(ctx, &lot).await?;
    Ok((lot, range, format))
}

fn answer<T: serde::Serialize>(
    format: Format,
    name: &str,
    head: &reports::Head,
    report: &T,
    csv: impl FnOnce(&T) -> String,
) -> Response {
    match format {
        Format::Json => Json(report).into_response(),
        Format::Csv => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    // A lot id is [A-Za-z0-9_-]: nothing in it needs quoting in a header.
                    format!(
                        "attachment; filename=\"{name}-{}-{}-{}.csv\"",
                        head.lot, head.from, head.to
                    ),
                ),
            ],
            csv(report),
        )
            .into_response(),
    }
}

async fn occupancy(
    State(ctx): State<Ctx>,
    me: Identity,
    Q(q): Q<ReportQuery>,
) -> ApiResult<Response> {
    let (lot, range, format) = report_args(&ctx, &me, &q).await?;
    let r = reports::occupancy(&*ctx.app.store, &lot, range, ctx.app.clock.now()).await?;
    Ok(answer(
        format,
        "occupancy",
        &r.head,
        &r,
        reports::occupancy_csv,
    ))
}

async fn takings(
    State(ctx): State<Ctx>,
    me: Identity,
    Q(q): Q<ReportQuery>,
) -> ApiResult<Response> {
    let (lot, range, format) = report_args(&ctx, &me, &q).await?;
    let r = reports::takings(&*ctx.app.store, &lot, range).await?;
    Ok(answer(format, "takings", &r.head, &r, reports::takings_csv))
}

async fn stay_lengths(
    State(ctx): State<Ctx>,
    me: Identity,
    Q(q): Q<ReportQuery>,
) -> ApiResult<Response> {
    let (lot, range, format) = report_args(&ctx, &me, &q).await?;
    let r = reports::stay_lengths(&*ctx.app.store, &lot, range).await?;
    Ok(answer(
        format,
        "stay-lengths",
        &r.head,
        &r,
        reports::stay_lengths_csv,
    ))
}

async fn turnover(
    State(ctx): State<Ctx>,
    me: Identity,
    Q(q): Q<ReportQuery>,
) -> ApiResult<Response> {
    let (lot, range, format) = report_args(&ctx, &me, &q).await?;
    let r = reports::turnover(&*ctx.app.store, &lot, range).await?;
    Ok(answer(
        format,
        "turnover",
        &r.head,
        &r,
        reports::turnover_csv,
    ))
}

/// A stay priced under a draft tariff, which is checked like a saved one but not saved.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DraftPreview {
    tariff: Tariff,
    entry: DateTime<Utc>,
    exit: DateTime<Utc>,
    /// Price as this class (small when absent).
    #[serde(default)]
    class: Option<String>,
}

/// What the lot would charge under a draft tariff: the editor's live preview. Looking needs
/// `View` on the lot (saving needs `Configure`); bounded and run like the saved tariff's
/// preview, one at a time off the async workers.
pub(super) async fn preview_draft(
    State(ctx): State<Ctx>,
    me: Identity,
    Path(lot): Path<String>,
    Body(d): Body<DraftPreview>,
) -> ApiResult<Json<tariff::Quote>> {
    let lot = lot_id(lot)?;
    require_on(&me, Action::View, &lot)?;
    lot_or_404(&ctx, &lot).await?;
    if d.exit - d.entry > chrono::Duration::days(super::MAX_PREVIEW_DAYS) {
        return Err(ApiError::Unprocessable(format!(
            "exit: a preview prices at most {} days",
            super::MAX_PREVIEW_DAYS
        )));
    }
    d.tariff
        .validate()
        .map_err(|e| ApiError::Unprocessable(format!("tariff.{e}")))?;
    let mut terms = tariff::Terms::default();
    if let Some(c) = &d.class {
        terms.class = Some(VehicleClass::parse(c).ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "class: {c:?} is not small, large, new_energy or motorcycle"
            ))
        })?);
    }
    let _turn = ctx
        .previews
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (t, entry, exit) = (d.tariff, d.entry, d.exit);
    tokio::task::spawn_blocking(move || tariff::quote_with(&t, entry, exit, &terms))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map(Json)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))
}
