//! Trade bills (交易账单): the application answer and the CSV file.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, FixedOffset, NaiveDate, TimeZone, Utc};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use crate::{crypto, ApiError, Inner, State};

const DETAIL_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const SUMMARY_HEADER: &str =
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";
/// The simulator's fee rate: 0.60 %.
const FEE_PER_MILLE: i64 = 6;

fn tz() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00")
}

fn bill_day(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&tz()).date_naive()
}

fn bill_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&tz())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Fen as yuan with two decimals ("-0.01", "12.34").
pub(crate) fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let a = fen.abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

fn fee(fen: i64) -> i64 {
    (fen * FEE_PER_MILLE + 500) / 1000
}

/// GET /v3/bill/tradebill?bill_date=YYYY-MM-DD[&bill_type=ALL|SUCCESS|REFUND]
pub(crate) fn trade_bill(
    inner: &Arc<Inner>,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let date_s = q
        .get("bill_date")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            let mut e = ApiError::param("参数错误: bill_date 缺少必填参数");
            e.detail =
                Some(json!({"field": "bill_date", "location": "query", "issue": "缺少必填参数"}));
            e
        })?;
    let date = NaiveDate::parse_from_str(date_s, "%Y-%m-%d")
        .map_err(|_| ApiError::param("参数错误: bill_date 格式应为YYYY-MM-DD"))?;
    let bill_type = q.get("bill_type").cloned().unwrap_or_else(|| "ALL".into());
    if !["ALL", "SUCCESS", "REFUND"].contains(&bill_type.as_str()) {
        return Err(ApiError::param("参数错误: bill_type 取值不合法"));
    }
    if let Some(t) = q.get("tar_type") {
        if t != "GZIP" {
            return Err(ApiError::param("参数错误: tar_type 取值不合法"));
        }
        return Err(ApiError::invalid("模拟服务不提供GZIP压缩账单"));
    }
    let now = inner.now();
    let today = bill_day(now);
    if date >= today {
        return Err(ApiError::new(
            400,
            "NO_STATEMENT_EXIST",
            "请求的账单文件不存在",
        ));
    }
    if date < today - ChronoDuration::days(90) {
        return Err(ApiError::new(
            400,
            "NO_STATEMENT_EXIST",
            "请求的账单文件不存在",
        ));
    }
    let ready_at = tz()
        .from_local_datetime(
            &(date + ChronoDuration::days(1))
                .and_hms_opt(10, 0, 0)
                .expect("10:00"),
        )
        .single()
        .expect("fixed offset")
        .with_timezone(&Utc);
    let mut st = inner.lock();
    if now < ready_at || st.late_bill {
        return Err(ApiError::new(400, "STATEMENT_CREATING", "账单生成中"));
    }
    let Some(file) = build_csv(inner, &st, date, &bill_type) else {
        return Err(ApiError::new(
            400,
            "NO_STATEMENT_EXIST",
            "请求的账单文件不存在",
        ));
    };
    let hash = hex::encode(Sha1::digest(&file));
    let token = crypto::random_string(40);
    st.bill_files.insert(token.clone(), file);
    Ok(json!({
        "hash_type": "SHA1",
        "hash_value": hash,
        "download_url": format!("{}/v3/billdownload/file?token={token}", inner.base_url),
    }))
}

fn line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| format!("`{f}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The file, or None when the day has no row.
fn build_csv(inner: &Inner, st: &State, date: NaiveDate, bill_type: &str) -> Option<Vec<u8>> {
    let m = &inner.merchant;
    let mut rows: Vec<(DateTime<Utc>, String)> = Vec::new();
    let (mut settle_sum, mut refund_sum, mut fee_sum, mut order_sum, mut applied_sum) =
        (0i64, 0i64, 0i64, 0i64, 0i64);
    let want_pay = bill_type != "REFUND";
    let want_refund = bill_type != "SUCCESS";
    if want_pay {
        for o in &st.orders {
            let Some(at) = o.success_time else { continue };
            if bill_day(at) != date || st.bill_omit.contains(&o.out_trade_no) {
                continue;
            }
            let amount = st
                .bill_amount
                .get(&o.out_trade_no)
                .copied()
                .unwrap_or(o.total);
            let f = fee(amount);
            settle_sum += amount;
            order_sum += amount;
            fee_sum += f;
            rows.push((
                at,
                line(&[
                    bill_time(at),
                    o.appid.clone(),
                    m.mchid.clone(),
                    "0".into(),
                    String::new(),
                    o.transaction_id.clone(),
                    o.out_trade_no.clone(),
                    o.openid.clone(),
                    "PAP".into(),
                    "SUCCESS".into(),
                    o.bank_type.clone().unwrap_or_else(|| "OTHERS".into()),
                    "CNY".into(),
                    yuan(amount),
                    "0.00".into(),
                    "0".into(),
                    "0".into(),
                    "0.00".into(),
                    "0.00".into(),
                    String::new(),
                    String::new(),
                    o.description.clone(),
                    o.attach.clone().unwrap_or_default(),
                    yuan(f),
                    "0.60%".into(),
                    yuan(amount),
                    "0.00".into(),
                    String::new(),
                ]),
            ));
        }
        for (no, fen, at) in &st.bill_foreign {
            if bill_day(*at) != date {
                continue;
            }
            let f = fee(*fen);
            settle_sum += fen;
            order_sum += fen;
            fee_sum += f;
            rows.push((
                *at,
                line(&[
                    bill_time(*at),
                    m.appid.clone(),
                    m.mchid.clone(),
                    "0".into(),
                    String::new(),
                    format!(
                        "4200009999{}{:08}",
                        at.with_timezone(&tz()).format("%Y%m%d"),
                        fen.unsigned_abs() % 100_000_000
                    ),
                    no.clone(),
                    "o-unknown-payer".into(),
                    "PAP".into(),
                    "SUCCESS".into(),
                    "OTHERS".into(),
                    "CNY".into(),
                    yuan(*fen),
                    "0.00".into(),
                    "0".into(),
                    "0".into(),
                    "0.00".into(),
                    "0.00".into(),
                    String::new(),
                    String::new(),
                    "停车场扣费".into(),
                    String::new(),
                    yuan(f),
                    "0.60%".into(),
                    yuan(*fen),
                    "0.00".into(),
                    String::new(),
                ]),
            ));
        }
    }
    if want_refund {
        for r in &st.refunds {
            let Some(at) = r.success_time else { continue };
            if bill_day(at) != date || st.bill_omit.contains(&r.out_trade_no) {
                continue;
            }
            let order = st
                .orders
                .iter()
                .find(|o| o.out_trade_no == r.out_trade_no)?;
            let f = -fee(r.amount);
            refund_sum += r.amount;
            applied_sum += r.amount;
            fee_sum += f;
            rows.push((
                at,
                line(&[
                    bill_time(at),
                    order.appid.clone(),
                    m.mchid.clone(),
                    "0".into(),
                    String::new(),
                    r.transaction_id.clone(),
                    r.out_trade_no.clone(),
                    order.openid.clone(),
                    "PAP".into(),
                    "REFUND".into(),
                    order.bank_type.clone().unwrap_or_else(|| "OTHERS".into()),
                    "CNY".into(),
                    "0.00".into(),
                    "0.00".into(),
                    r.refund_id.clone(),
                    r.out_refund_no.clone(),
                    yuan(r.amount),
                    "0.00".into(),
                    "ORIGINAL".into(),
                    r.status.clone(),
                    order.description.clone(),
                    order.attach.clone().unwrap_or_default(),
                    yuan(f),
                    "0.60%".into(),
                    "0.00".into(),
                    yuan(r.amount),
                    String::new(),
                ]),
            ));
        }
    }
    if rows.is_empty() {
        return None;
    }
    rows.sort_by_key(|(at, _)| *at);
    let mut out = String::new();
    out.push_str(DETAIL_HEADER);
    out.push_str("\r\n");
    for (_, row) in &rows {
        out.push_str(row);
        out.push_str("\r\n");
    }
    out.push_str(SUMMARY_HEADER);
    out.push_str("\r\n");
    out.push_str(&line(&[
        rows.len().to_string(),
        yuan(settle_sum),
        yuan(refund_sum),
        "0.00".into(),
        yuan(fee_sum),
        yuan(order_sum),
        yuan(applied_sum),
    ]));
    out.push_str("\r\n");
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_has_two_decimals() {
        assert_eq!(yuan(0), "0.00");
        assert_eq!(yuan(5), "0.05");
        assert_eq!(yuan(1234), "12.34");
        assert_eq!(yuan(-1), "-0.01");
        assert_eq!(fee(1000), 6);
        assert_eq!(fee(84), 1);
    }
}
