//! Request authentication and the business endpoints.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, Method};
use chrono::{DateTime, FixedOffset, Utc};
use rand::Rng;
use serde_json::{json, Value};

use crate::notify::{self, beijing};
use crate::{bill, crypto, Answer, ApiError, Inner, Order, Parking, Refund, State};

const PLATE_COLOURS: [&str; 6] = ["BLUE", "GREEN", "YELLOW", "BLACK", "WHITE", "LIMEGREEN"];

// ---------------------------------------------------------------- authentication

/// `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",signature="..",timestamp="..",serial_no=".."`
/// over `METHOD\nPATH_WITH_QUERY\nTIMESTAMP\nNONCE\nBODY\n`.
pub(crate) fn verify_request(
    inner: &Inner,
    method: &str,
    path_q: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let auth = headers
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::sign("no Authorization header"))?;
    let rest = auth
        .strip_prefix("WECHATPAY2-SHA256-RSA2048 ")
        .ok_or_else(|| {
            ApiError::sign("the authorization scheme must be WECHATPAY2-SHA256-RSA2048")
        })?;
    let mut fields = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| ApiError::sign("malformed Authorization"))?;
        fields.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
    }
    let get = |k: &str| {
        fields
            .get(k)
            .cloned()
            .ok_or_else(|| ApiError::sign(format!("Authorization lacks {k}")))
    };
    let mchid = get("mchid")?;
    let nonce = get("nonce_str")?;
    let signature = get("signature")?;
    let timestamp = get("timestamp")?;
    let serial = get("serial_no")?;
    if mchid != inner.merchant.mchid {
        return Err(ApiError::sign("mchid does not match"));
    }
    if !serial.eq_ignore_ascii_case(&inner.merchant.merchant_serial) {
        return Err(ApiError::sign(
            "serial_no is not the merchant's certificate serial",
        ));
    }
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| ApiError::sign("timestamp is not a number"))?;
    if (Utc::now().timestamp() - ts).abs() > 300 {
        return Err(ApiError::sign("timestamp expired"));
    }
    let body = std::str::from_utf8(body).map_err(|_| ApiError::sign("body is not UTF-8"))?;
    let message = format!("{method}\n{path_q}\n{timestamp}\n{nonce}\n{body}\n");
    if !crypto::verify(&inner.merchant_key, &message, &signature) {
        return Err(ApiError::sign("sign not match"));
    }
    Ok(())
}

// ---------------------------------------------------------------- routing

pub(crate) fn route(
    inner: &Arc<Inner>,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<Answer, ApiError> {
    let q = parse_query(query);
    let json_body = || -> Result<Value, ApiError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|_| ApiError::param("请求的JSON格式不正确"))?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(ApiError::param("请求的JSON格式不正确"))
        }
    };
    let ok = |v: Value| Ok(Answer::Json(200, v));
    match (method.as_str(), path) {
        ("GET", "/v3/vehicle/parking/services/find") => ok(find_service(inner, &q)?),
        ("POST", "/v3/vehicle/parking/parkings") => ok(create_parking(inner, &json_body()?)?),
        ("POST", "/v3/vehicle/transactions/parking") => {
            ok(create_transaction(inner, &json_body()?)?)
        }
        ("GET", p) if p.starts_with("/v3/vehicle/transactions/out-trade-no/") => {
            let no = percent_decode(&p["/v3/vehicle/transactions/out-trade-no/".len()..]);
            let st = inner.lock();
            let o = st
                .orders
                .iter()
                .find(|o| o.out_trade_no == no)
                .ok_or_else(|| ApiError::new(404, "ORDER_NOT_EXIST", "订单不存在"))?;
            ok(order_json(inner, &st, o))
        }
        ("POST", "/v3/refund/domestic/refunds") => ok(create_refund(inner, &json_body()?)?),
        ("GET", p) if p.starts_with("/v3/refund/domestic/refunds/") => {
            let no = percent_decode(&p["/v3/refund/domestic/refunds/".len()..]);
            let st = inner.lock();
            let r = st
                .refunds
                .iter()
                .find(|r| r.out_refund_no == no)
                .ok_or_else(|| ApiError::new(404, "RESOURCE_NOT_EXISTS", "退款单不存在"))?;
            ok(refund_json(r))
        }
        ("GET", "/v3/bill/tradebill") => ok(bill::trade_bill(inner, &q)?),
        ("GET", "/v3/certificates") => ok(certificates(inner)?),
        ("GET", "/v3/billdownload/file") => {
            let token = q.get("token").cloned().unwrap_or_default();
            let st = inner.lock();
            let file = st.bill_files.get(&token).ok_or_else(|| {
                ApiError::new(404, "RESOURCE_NOT_EXISTS", "账单文件不存在或下载链接已失效")
            })?;
            Ok(Answer::File(file.clone()))
        }
        _ => Err(ApiError::new(404, "NOT_FOUND", "请求的资源不存在")),
    }
}

pub(crate) fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /v3/certificates`: the platform certificate, encrypted with the APIv3 key (aad "certificate").
fn certificates(inner: &Inner) -> Result<Value, ApiError> {
    let nonce = crypto::random_string(12);
    let ciphertext = crypto::encrypt_resource(
        &inner.merchant.apiv3_key,
        &nonce,
        "certificate",
        &inner.certificate_pem,
    )
    .map_err(|_| ApiError::new(500, "SYSTEM_ERROR", "系统错误"))?;
    Ok(json!({"data": [{
        "serial_no": inner.certificate.serial,
        "effective_time": beijing(inner.certificate_not_before),
        "expire_time": beijing(inner.certificate_not_after),
        "encrypt_certificate": {
            "algorithm": "AEAD_AES_256_GCM",
            "nonce": nonce,
            "associated_data": "certificate",
            "ciphertext": ciphertext,
        }
    }]}))
}

// ---------------------------------------------------------------- field helpers

fn str_field(v: &Value, field: &str, max: usize) -> Result<String, ApiError> {
    match v.get(field) {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => Ok(s.clone()),
        Some(Value::String(s)) if s.is_empty() => Err(ApiError::param_field(field, "不能为空")),
        Some(Value::String(_)) => Err(ApiError::param_field(field, format!("长度不能超过{max}"))),
        Some(_) => Err(ApiError::param_field(field, "类型应为string")),
        None => Err(ApiError::param_field(field, "缺少必填参数")),
    }
}

fn opt_str(v: &Value, field: &str, max: usize) -> Result<Option<String>, ApiError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => str_field(v, field, max).map(Some),
    }
}

fn int_field(v: &Value, field: &str) -> Result<i64, ApiError> {
    match v.get(field) {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| ApiError::param_field(field, "应为整数")),
        Some(_) => Err(ApiError::param_field(field, "类型应为integer")),
        None => Err(ApiError::param_field(field, "缺少必填参数")),
    }
}

fn time_field(v: &Value, field: &str) -> Result<DateTime<FixedOffset>, ApiError> {
    let s = str_field(v, field, 32)?;
    DateTime::parse_from_rfc3339(&s)
        .map_err(|_| ApiError::param_field(field, "时间格式应为rfc3339"))
}

fn colour_field(v: &Value, field: &str) -> Result<String, ApiError> {
    let c = str_field(v, field, 16)?;
    if PLATE_COLOURS.contains(&c.as_str()) {
        Ok(c)
    } else {
        Err(ApiError::param_field(field, "车牌颜色取值不合法"))
    }
}

fn check_notify_url(url: &str) -> Result<(), ApiError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        if url.contains('?') {
            return Err(ApiError::param_field("notify_url", "通知URL不能携带参数"));
        }
        Ok(())
    } else {
        Err(ApiError::param_field("notify_url", "通知URL格式不正确"))
    }
}

fn next_seq(st: &mut State) -> u64 {
    st.seq += 1;
    st.seq
}

fn digits(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

fn yyyymmdd(t: DateTime<Utc>) -> String {
    let tz = FixedOffset::east_opt(8 * 3600).expect("+08:00");
    t.with_timezone(&tz).format("%Y%m%d").to_string()
}

// ---------------------------------------------------------------- plate service

/// How the plate shows in the service look-up: OVERDUE and EVALUATION_FAILED keep the service open.
fn service_state(state: &str) -> &'static str {
    match state {
        "PAUSE" => "PAUSE",
        "OUT_SERVICE" => "OUT_SERVICE",
        _ => "NORMAL",
    }
}

/// NORMAL, or BLOCKED with its reason, as a parking entry shows it.
fn entry_state(plate_state: Option<&str>) -> (String, Option<String>) {
    match plate_state {
        Some("NORMAL") => ("NORMAL".into(), None),
        Some(other) => ("BLOCKED".into(), Some(other.to_string())),
        None => ("BLOCKED".into(), Some("OUT_SERVICE".into())),
    }
}

fn find_service(inner: &Inner, q: &HashMap<String, String>) -> Result<Value, ApiError> {
    let need = |k: &str| {
        q.get(k).filter(|v| !v.is_empty()).cloned().ok_or_else(|| {
            let mut e = ApiError::param_field(k, "缺少必填参数");
            e.detail = Some(json!({"field": k, "location": "query", "issue": "缺少必填参数"}));
            e
        })
    };
    let appid = need("appid")?;
    let plate_number = need("plate_number")?;
    let plate_color = need("plate_color")?;
    let openid = need("openid")?;
    if !PLATE_COLOURS.contains(&plate_color.as_str()) {
        return Err(ApiError::param_field("plate_color", "车牌颜色取值不合法"));
    }
    if appid != inner.merchant.appid {
        return Err(ApiError::invalid("appid和mchid不匹配"));
    }
    let st = inner.lock();
    match st.plates.get(&plate_number) {
        Some(p) if p.colour == plate_color && p.openid == openid => Ok(json!({
            "plate_number": plate_number,
            "plate_color": plate_color,
            "service_open_time": beijing(p.open_time),
            "openid": openid,
            "service_state": service_state(&p.state),
        })),
        _ => Ok(json!({
            "plate_number": plate_number,
            "plate_color": plate_color,
            "openid": openid,
            "service_state": "OUT_SERVICE",
        })),
    }
}

fn parking_json(p: &Parking) -> Value {
    let mut v = json!({
        "id": p.id,
        "out_parking_no": p.out_parking_no,
        "plate_number": p.plate,
        "plate_color": p.colour,
        "notify_url": p.notify_url,
        "start_time": p.start_time,
        "parking_name": p.parking_name,
        "free_duration": p.free_duration,
        "state": p.state,
    });
    if let Some(r) = &p.block_reason {
        v["block_reason"] = json!(r);
    }
    v
}

fn create_parking(inner: &Arc<Inner>, body: &Value) -> Result<Value, ApiError> {
    let out_parking_no = str_field(body, "out_parking_no", 64)?;
    let plate = str_field(body, "plate_number", 32)?;
    let colour = colour_field(body, "plate_color")?;
    let notify_url = str_field(body, "notify_url", 256)?;
    check_notify_url(&notify_url)?;
    let start_time = str_field(body, "start_time", 32)?;
    let start_at = time_field(body, "start_time")?;
    let parking_name = str_field(body, "parking_name", 128)?;
    let free_duration = int_field(body, "free_duration")?;
    opt_str(body, "sub_mchid", 32)?;
    if free_duration < 0 {
        return Err(ApiError::param_field("free_duration", "不能为负数"));
    }
    let now = inner.now();
    if start_at.with_timezone(&Utc) > now {
        return Err(ApiError::invalid("入场时间不能晚于当前时间"));
    }
    let mut st = inner.lock();
    if let Some(p) = st
        .parkings
        .iter()
        .find(|p| p.out_parking_no == out_parking_no)
    {
        if p.request == *body {
            return Ok(parking_json(p));
        }
        return Err(ApiError::invalid(
            "商户入场ID已存在，且请求参数与原请求不一致",
        ));
    }
    let plate_state = st
        .plates
        .get(&plate)
        .filter(|p| p.colour == colour)
        .map(|p| p.state.clone());
    let (state, block_reason) = entry_state(plate_state.as_deref());
    // A plate holds one valid parking id at a time: the newer entry replaces an open one.
    for p in st
        .parkings
        .iter_mut()
        .filter(|p| p.plate == plate && p.valid && !p.charged)
    {
        p.valid = false;
    }
    let seq = next_seq(&mut st);
    let id = format!(
        "5000{}{:017}",
        yyyymmdd(now),
        seq * 1000 + rand::thread_rng().gen_range(0..1000)
    );
    let parking = Parking {
        id,
        out_parking_no,
        plate,
        colour,
        start_time,
        start_at,
        parking_name,
        free_duration,
        notify_url,
        state,
        block_reason,
        valid: true,
        charged: false,
        request: body.clone(),
    };
    let v = parking_json(&parking);
    st.parkings.push(parking);
    Ok(v)
}

/// `set_state`: the plate changes; open parkings whose entry state changes are told by notification.
pub(crate) fn set_plate_state(inner: &Arc<Inner>, plate: &str, state: &str) {
    let now = inner.now();
    let mut to_send = Vec::new();
    {
        let mut st = inner.lock();
        let Some(p) = st.plates.get_mut(plate) else {
            return;
        };
        p.state = state.to_string();
        let colour = p.colour.clone();
        let (new_state, reason) = entry_state(Some(state));
        for pk in st
            .parkings
            .iter_mut()
            .filter(|pk| pk.plate == plate && pk.colour == colour && pk.valid && !pk.charged)
        {
            if pk.state != new_state || pk.block_reason != reason {
                pk.state = new_state.clone();
                pk.block_reason = reason.clone();
                let mut resource = json!({
                    "sp_mchid": inner.merchant.mchid,
                    "parking_id": pk.id,
                    "out_parking_no": pk.out_parking_no,
                    "plate_number": pk.plate,
                    "plate_color": pk.colour,
                    "start_time": pk.start_time,
                    "parking_name": pk.parking_name,
                    "free_duration": pk.free_duration,
                    "parking_state": pk.state,
                    "state_update_time": beijing(now),
                });
                if let Some(r) = &pk.block_reason {
                    resource["blocked_state_description"] = json!(r);
                }
                to_send.push((pk.notify_url.clone(), resource));
            }
        }
    }
    for (url, resource) in to_send {
        notify::send(
            inner,
            &url,
            "VEHICLE.ENTRANCE_STATE_CHANGE",
            "停车入场状态变更",
            "",
            "",
            &resource,
        );
    }
}

// ---------------------------------------------------------------- deduction

pub(crate) fn refunded(st: &State, out_trade_no: &str) -> i64 {
    st.refunds
        .iter()
        .filter(|r| r.out_trade_no == out_trade_no && r.status != "CLOSED")
        .map(|r| r.amount)
        .sum()
}

pub(crate) fn visible_trade_state(st: &State, o: &Order) -> String {
    if o.trade_state == "SUCCESS"
        && st
            .refunds
            .iter()
            .any(|r| r.out_trade_no == o.out_trade_no && r.status != "CLOSED")
    {
        "REFUND".into()
    } else {
        o.trade_state.clone()
    }
}

pub(crate) fn order_json(inner: &Inner, st: &State, o: &Order) -> Value {
    let mut v = json!({
        "appid": o.appid,
        "sp_mchid": inner.merchant.mchid,
        "description": o.description,
        "create_time": beijing(o.create_time),
        "out_trade_no": o.out_trade_no,
        "transaction_id": o.transaction_id,
        "trade_state": visible_trade_state(st, o),
        "trade_scene": "PARKING",
        "parking_info": o.parking_info,
        "payer": {"openid": o.openid},
        "amount": {"total": o.total, "currency": "CNY", "payer_total": o.total, "discount_total": 0},
    });
    if let Some(d) = &o.trade_state_description {
        v["trade_state_description"] = json!(d);
    }
    if let Some(t) = o.success_time {
        v["success_time"] = json!(beijing(t));
    }
    if let Some(b) = &o.bank_type {
        v["bank_type"] = json!(b);
    }
    if let Some(r) = &o.user_repaid {
        v["user_repaid"] = json!(r);
    }
    if let Some(a) = &o.attach {
        v["attach"] = json!(a);
    }
    v
}

fn create_transaction(inner: &Arc<Inner>, body: &Value) -> Result<Value, ApiError> {
    let appid = str_field(body, "appid", 32)?;
    let description = str_field(body, "description", 128)?;
    let attach = opt_str(body, "attach", 128)?;
    let out_trade_no = str_field(body, "out_trade_no", 32)?;
    if !out_trade_no
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-*".contains(c))
    {
        return Err(ApiError::param_field(
            "out_trade_no",
            "只能是数字、大小写字母_-*",
        ));
    }
    let trade_scene = str_field(body, "trade_scene", 16)?;
    let notify_url = str_field(body, "notify_url", 256)?;
    check_notify_url(&notify_url)?;
    opt_str(body, "goods_tag", 32)?;
    opt_str(body, "sub_mchid", 32)?;
    let amount = body
        .get("amount")
        .filter(|a| a.is_object())
        .ok_or_else(|| ApiError::param_field("amount", "缺少必填参数"))?;
    let total = int_field(amount, "total")?;
    let currency = opt_str(amount, "currency", 16)?.unwrap_or_else(|| "CNY".into());
    let info = body
        .get("parking_info")
        .filter(|a| a.is_object())
        .ok_or_else(|| ApiError::param_field("parking_info", "缺少必填参数"))?;
    let parking_id = str_field(info, "parking_id", 32)?;
    let plate = str_field(info, "plate_number", 32)?;
    let colour = colour_field(info, "plate_color")?;
    let start_at = time_field(info, "start_time")?;
    let end_at = time_field(info, "end_time")?;
    let parking_name = str_field(info, "parking_name", 128)?;
    let charging_duration = int_field(info, "charging_duration")?;
    let device_id = str_field(info, "device_id", 128)?;
    if trade_scene != "PARKING" {
        return Err(ApiError::param_field("trade_scene", "交易场景取值不合法"));
    }
    if total <= 0 {
        return Err(ApiError::param_field("amount.total", "订单金额必须大于0"));
    }
    if currency != "CNY" {
        return Err(ApiError::param_field("amount.currency", "仅支持CNY"));
    }
    if charging_duration < 0 {
        return Err(ApiError::param_field(
            "parking_info.charging_duration",
            "不能为负数",
        ));
    }
    if appid != inner.merchant.appid {
        return Err(ApiError::invalid("appid和mchid不匹配"));
    }
    let now = inner.now();
    let mut st = inner.lock();
    if let Some(o) = st.orders.iter().find(|o| o.out_trade_no == out_trade_no) {
        if o.request == *body {
            return Ok(order_json(inner, &st, o));
        }
        return Err(ApiError::invalid(
            "商户订单号重复，且请求参数与原订单不一致",
        ));
    }
    if end_at == start_at {
        return Err(ApiError::invalid("出场时间不能等于入场时间"));
    }
    if end_at < start_at {
        return Err(ApiError::invalid("出场时间不能早于入场时间"));
    }
    if end_at.with_timezone(&Utc) > now {
        return Err(ApiError::invalid("出场时间不能晚于当前时间"));
    }
    let parking = st
        .parkings
        .iter()
        .find(|p| p.id == parking_id)
        .ok_or_else(|| ApiError::invalid("停车入场id不存在"))?;
    if parking.plate != plate
        || parking.colour != colour
        || parking.start_at != start_at
        || parking.parking_name != parking_name
    {
        return Err(ApiError::invalid("停车信息与创建停车入场时的信息不一致"));
    }
    if parking.charged {
        return Err(ApiError::invalid("该停车入场已扣费，不能重复扣费"));
    }
    if !parking.valid {
        return Err(ApiError::invalid("停车入场id已失效"));
    }
    if parking.state != "NORMAL" {
        return Err(ApiError::invalid(format!(
            "停车入场状态不可用: {}",
            parking.block_reason.clone().unwrap_or_default()
        )));
    }
    let openid = st
        .plates
        .get(&plate)
        .map(|p| p.openid.clone())
        .unwrap_or_default();
    let tz = FixedOffset::east_opt(8 * 3600).expect("+08:00");
    let parking_info = json!({
        "parking_id": parking_id,
        "plate_number": plate,
        "plate_color": colour,
        "start_time": start_at.with_timezone(&tz).format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "end_time": end_at.with_timezone(&tz).format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "parking_name": parking_name,
        "charging_duration": charging_duration,
        "device_id": device_id,
    });
    if let Some(p) = st.parkings.iter_mut().find(|p| p.id == parking_id) {
        p.charged = true;
    }
    let transaction_id = format!("420000{}{}{}", digits(4), yyyymmdd(now), digits(10));
    let order = Order {
        out_trade_no: out_trade_no.clone(),
        transaction_id,
        appid,
        description,
        attach,
        notify_url,
        total,
        parking_info,
        plate,
        openid,
        create_time: now,
        trade_state: "ACCEPTED".into(),
        trade_state_description: None,
        bank_type: None,
        user_repaid: None,
        success_time: None,
        debits: 0,
        request: body.clone(),
    };
    let v = order_json(inner, &st, &order);
    st.orders.push(order);
    drop(st);
    let task_inner = inner.clone();
    let delay = inner.deduct_after;
    inner.spawn(async move {
        tokio::time::sleep(delay).await;
        settle_order(&task_inner, &out_trade_no);
    });
    Ok(v)
}

/// The debit: from the user's balance, or advanced (垫资) when allowed, or a failure.
fn settle_order(inner: &Arc<Inner>, out_trade_no: &str) {
    let now = inner.now();
    let (url, event, summary, resource) = {
        let mut st = inner.lock();
        let advance = st.advance;
        let Some(i) = st
            .orders
            .iter()
            .position(|o| o.out_trade_no == out_trade_no && o.trade_state == "ACCEPTED")
        else {
            return;
        };
        let (plate, total) = (st.orders[i].plate.clone(), st.orders[i].total);
        let balance = st.plates.get(&plate).map(|p| p.balance).unwrap_or(0);
        let outcome = if balance >= total {
            if let Some(p) = st.plates.get_mut(&plate) {
                p.balance -= total;
            }
            Some(("OTHERS", "Y"))
        } else if advance {
            Some(("BPA", "N"))
        } else {
            None
        };
        let o = &mut st.orders[i];
        let (event, summary) = match outcome {
            Some((bank, repaid)) => {
                o.trade_state = "SUCCESS".into();
                o.bank_type = Some(bank.into());
                o.user_repaid = Some(repaid.into());
                o.success_time = Some(now);
                o.debits += 1;
                ("TRANSACTION.SUCCESS", "支付成功")
            }
            None => {
                o.trade_state = "PAY_FAIL".into();
                o.trade_state_description = Some("用户余额不足，扣款失败".into());
                ("TRANSACTION.FAIL", "支付失败")
            }
        };
        let o = &st.orders[i];
        (
            o.notify_url.clone(),
            event,
            summary,
            order_json(inner, &st, o),
        )
    };
    notify::send(
        inner,
        &url,
        event,
        summary,
        "transaction",
        "transaction",
        &resource,
    );
}

pub(crate) fn repay(inner: &Arc<Inner>, out_trade_no: &str) -> bool {
    let (url, resource) = {
        let mut st = inner.lock();
        let Some(o) = st.orders.iter_mut().find(|o| {
            o.out_trade_no == out_trade_no
                && o.bank_type.as_deref() == Some("BPA")
                && o.user_repaid.as_deref() == Some("N")
        }) else {
            return false;
        };
        o.user_repaid = Some("Y".into());
        let o = st
            .orders
            .iter()
            .find(|o| o.out_trade_no == out_trade_no)
            .expect("just found");
        let mut resource = order_json(inner, &st, o);
        // The repayment notification names its own state.
        resource["trade_state"] = json!("PAY_BACK");
        resource["trade_state_description"] = json!("用户还款");
        (o.notify_url.clone(), resource)
    };
    notify::send(
        inner,
        &url,
        "TRANSACTION.PAY_BACK",
        "用户还款成功",
        "transaction",
        "transaction",
        &resource,
    );
    true
}

// ---------------------------------------------------------------- refunds

pub(crate) fn refund_json(r: &Refund) -> Value {
    let mut v = json!({
        "refund_id": r.refund_id,
        "out_refund_no": r.out_refund_no,
        "transaction_id": r.transaction_id,
        "out_trade_no": r.out_trade_no,
        "channel": "ORIGINAL",
        "user_received_account": "支付用户零钱",
        "create_time": beijing(r.create_time),
        "status": r.status,
        "funds_account": "AVAILABLE",
        "amount": {
            "total": r.total,
            "refund": r.amount,
            "from": [],
            "payer_total": r.total,
            "payer_refund": r.amount,
            "settlement_refund": r.amount,
            "settlement_total": r.total,
            "discount_refund": 0,
            "currency": "CNY",
            "refund_fee": 0,
        },
        "promotion_detail": [],
    });
    if let Some(t) = r.success_time {
        v["success_time"] = json!(beijing(t));
    }
    v
}

fn create_refund(inner: &Arc<Inner>, body: &Value) -> Result<Value, ApiError> {
    let transaction_id = opt_str(body, "transaction_id", 32)?;
    let out_trade_no = opt_str(body, "out_trade_no", 32)?;
    let out_refund_no = str_field(body, "out_refund_no", 64)?;
    opt_str(body, "reason", 80)?;
    let notify_url = opt_str(body, "notify_url", 256)?;
    if let Some(u) = &notify_url {
        check_notify_url(u)?;
    }
    let amount = body
        .get("amount")
        .filter(|a| a.is_object())
        .ok_or_else(|| ApiError::param_field("amount", "缺少必填参数"))?;
    let refund = int_field(amount, "refund")?;
    let total = int_field(amount, "total")?;
    let currency = str_field(amount, "currency", 16)?;
    if transaction_id.is_none() && out_trade_no.is_none() {
        return Err(ApiError::param("transaction_id和out_trade_no必须二选一"));
    }
    if currency != "CNY" {
        return Err(ApiError::param_field("amount.currency", "仅支持CNY"));
    }
    if refund <= 0 {
        return Err(ApiError::param_field("amount.refund", "退款金额必须大于0"));
    }
    let now = inner.now();
    let mut st = inner.lock();
    if let Some(r) = st.refunds.iter().find(|r| r.out_refund_no == out_refund_no) {
        if r.request == *body {
            return Ok(refund_json(r));
        }
        return Err(ApiError::invalid(
            "订单金额或退款金额与之前请求不一致，请核实后再试",
        ));
    }
    let order = st
        .orders
        .iter()
        .find(|o| match (&transaction_id, &out_trade_no) {
            (Some(t), _) => o.transaction_id == *t,
            (None, Some(n)) => o.out_trade_no == *n,
            (None, None) => false,
        })
        .ok_or_else(|| ApiError::new(404, "RESOURCE_NOT_EXISTS", "订单不存在"))?;
    if let (Some(t), Some(n)) = (&transaction_id, &out_trade_no) {
        if order.transaction_id != *t || order.out_trade_no != *n {
            return Err(ApiError::invalid("transaction_id与out_trade_no不匹配"));
        }
    }
    if order.trade_state != "SUCCESS" {
        return Err(ApiError::invalid("订单未支付成功，不能退款"));
    }
    if total != order.total {
        return Err(ApiError::invalid("原订单金额与请求中的total不一致"));
    }
    let already = refunded(&st, &order.out_trade_no);
    if already + refund > order.total {
        return Err(ApiError::invalid("申请退款金额超过订单可退金额"));
    }
    let (otn, tid) = (order.out_trade_no.clone(), order.transaction_id.clone());
    let refund_id = format!("500000{}{}{}", digits(4), yyyymmdd(now), digits(11));
    let r = Refund {
        refund_id,
        out_refund_no: out_refund_no.clone(),
        out_trade_no: otn,
        transaction_id: tid,
        amount: refund,
        total,
        notify_url,
        status: "PROCESSING".into(),
        create_time: now,
        success_time: None,
        request: body.clone(),
    };
    let v = refund_json(&r);
    st.refunds.push(r);
    let outcome: &'static str = match st.refund_outcome.as_deref() {
        Some("ABNORMAL") => "ABNORMAL",
        Some("CLOSED") => "CLOSED",
        _ => "SUCCESS",
    };
    drop(st);
    let task_inner = inner.clone();
    let delay = inner.deduct_after;
    inner.spawn(async move {
        tokio::time::sleep(delay).await;
        settle_refund(&task_inner, &out_refund_no, outcome);
    });
    Ok(v)
}

fn settle_refund(inner: &Arc<Inner>, out_refund_no: &str, outcome: &str) {
    let now = inner.now();
    let sent = {
        let mut st = inner.lock();
        let Some(i) = st
            .refunds
            .iter()
            .position(|r| r.out_refund_no == out_refund_no && r.status == "PROCESSING")
        else {
            return;
        };
        st.refunds[i].status = outcome.to_string();
        if outcome == "SUCCESS" {
            st.refunds[i].success_time = Some(now);
            let (otn, amount) = (st.refunds[i].out_trade_no.clone(), st.refunds[i].amount);
            let plate = st
                .orders
                .iter()
                .find(|o| o.out_trade_no == otn && o.bank_type.as_deref() != Some("BPA"))
                .map(|o| o.plate.clone());
            if let Some(p) = plate.and_then(|p| st.plates.get_mut(&p)) {
                p.balance += amount;
            }
        }
        let r = &st.refunds[i];
        r.notify_url.clone().map(|url| {
            let mut resource = json!({
                "mchid": inner.merchant.mchid,
                "out_trade_no": r.out_trade_no,
                "transaction_id": r.transaction_id,
                "out_refund_no": r.out_refund_no,
                "refund_id": r.refund_id,
                "refund_status": r.status,
                "user_received_account": "支付用户零钱",
                "amount": {"total": r.total, "refund": r.amount, "payer_total": r.total, "payer_refund": r.amount},
            });
            if let Some(t) = r.success_time {
                resource["success_time"] = json!(beijing(t));
            }
            (url, resource)
        })
    };
    if let Some((url, resource)) = sent {
        let (event, summary) = match outcome {
            "ABNORMAL" => ("REFUND.ABNORMAL", "退款异常"),
            "CLOSED" => ("REFUND.CLOSED", "退款关闭"),
            _ => ("REFUND.SUCCESS", "退款成功"),
        };
        notify::send(inner, &url, event, summary, "refund", "refund", &resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_percent_decoded() {
        let q = parse_query("plate_number=%E7%B2%A4B12345&plate_color=BLUE&x=a+b&bad=%zz&tail=%4");
        assert_eq!(q["plate_number"], "粤B12345");
        assert_eq!(q["plate_color"], "BLUE");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["tail"], "%4");
    }

    #[test]
    fn entry_states_follow_the_plate() {
        assert_eq!(entry_state(Some("NORMAL")), ("NORMAL".into(), None));
        assert_eq!(
            entry_state(Some("OVERDUE")),
            ("BLOCKED".into(), Some("OVERDUE".into()))
        );
        assert_eq!(
            entry_state(None),
            ("BLOCKED".into(), Some("OUT_SERVICE".into()))
        );
        assert_eq!(service_state("EVALUATION_FAILED"), "NORMAL");
        assert_eq!(service_state("PAUSE"), "PAUSE");
    }
}
