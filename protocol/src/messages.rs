//! Message bodies, one per topic. Field names are the wire contract documented in `docs/mqtt.md`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Message;
use crate::ids::{DeviceId, EventId, GatewayId, LaneId, LotId};
use crate::money::Money;
use crate::plate::PlateColour;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Entry,
    Exit,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Entry => "entry",
            Direction::Exit => "exit",
        }
    }
}

/// One reading of a plate with the reader's confidence in it (0.0 to 1.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateCandidate {
    pub plate: String,
    pub confidence: f32,
    #[serde(default)]
    pub colour: PlateColour,
}

/// How sure the gateway is of its read as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadQuality {
    /// The top candidate is above the accept threshold.
    Confident,
    /// Something was read, but not surely enough to charge anybody for it.
    LowConfidence,
    /// A vehicle was detected and no plate was read.
    NoRead,
}

impl ReadQuality {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadQuality::Confident => "confident",
            ReadQuality::LowConfidence => "low_confidence",
            ReadQuality::NoRead => "no_read",
        }
    }
}

/// A vehicle passed (or stands at) a lane's barrier. Gateway -> server, QoS 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassageEvent {
    pub event_id: EventId,
    pub lot: LotId,
    pub lane: LaneId,
    pub gateway: GatewayId,
    pub direction: Direction,
    /// When the camera captured the vehicle; stays are priced from these instants.
    pub captured_at: DateTime<Utc>,
    /// Best first; empty for a no-read.
    pub candidates: Vec<PlateCandidate>,
    pub quality: ReadQuality,
    /// SHA-256 (hex) of the evidence image, when the gateway kept one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_digest: Option<String>,
    /// True when this event is replayed from the gateway's journal after an outage.
    #[serde(default)]
    pub resent: bool,
}

impl Message for PassageEvent {
    const KIND: &'static str = "passage";
}

/// The picture of a passage the gateway would not vouch for (no read, a low-confidence read, or
/// frames that disagree), so an attendant can check the plate against the car. Gateway ->
/// server, QoS 1, signed like the passage it belongs to; see `docs/mqtt.md`, `evidence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The passage event this picture is the evidence of.
    pub event_id: EventId,
    pub lot: LotId,
    pub lane: LaneId,
    pub gateway: GatewayId,
    pub captured_at: DateTime<Utc>,
    /// `jpeg` or `png`.
    pub format: String,
    /// SHA-256 (hex) of the image bytes: the passage's `evidence_digest`.
    pub digest: String,
    /// The image file, base64 (standard alphabet, padded).
    pub image: String,
}

impl Message for Evidence {
    const KIND: &'static str = "evidence";
}

/// The largest `evidence` payload (the whole envelope) a server takes.
pub const MAX_EVIDENCE_PAYLOAD: usize = 512 * 1024;

/// The largest evidence image (the file, before base64) a gateway sends: its base64 text and
/// the envelope stay within [`MAX_EVIDENCE_PAYLOAD`].
pub const MAX_EVIDENCE_IMAGE: usize = 368 * 1024;

/// The image format of a picture by its first bytes: `jpeg`, `png`, or `None`.
pub fn image_format(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BarrierAction {
    Open,
    Hold,
}

/// Why the server decided what it did; shown to operators and on receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionReason {
    /// Entry accepted, session opened.
    Entered,
    /// Exit within the grace period: nothing to pay.
    Grace,
    /// Whitelisted vehicle.
    Whitelisted,
    /// Holds a valid pass (a pass that ended during the stay is charged for the rest).
    Pass,
    /// A visitor grant covers the stay or discounts it.
    Visitor,
    /// Active mandate: open now, deduct after.
    Mandate,
    /// The fee was paid (at the exit, by QR or kiosk).
    Paid,
    /// A fee is due and there is no usable mandate: pay to leave.
    PaymentRequired,
    /// Unpaid arrears block "open now".
    Arrears,
    /// The driver has a mandate, but the payment provider will not deduct for this stay (the
    /// driver paused the service, owes the provider, or left it): pay to leave.
    DeductionBlocked,
    /// Exit with no matching entry: an operator must look.
    NoEntry,
    /// No plate was read.
    Unreadable,
    /// A plate was read, but not surely enough to charge anybody for it.
    LowConfidence,
    /// Two open sessions are equally close to the read: never guess.
    Ambiguous,
    /// Blacklisted vehicle: entry refused.
    Blacklisted,
    /// The owner has locked the car: its exit is refused until it is unlocked.
    Locked,
    /// The lot is full (the spaces left are reserved for pass holders): entry refused.
    LotFull,
    /// An operator opened the barrier by hand.
    Operator,
    /// The lot is not configured on this server.
    UnknownLot,
    /// The capture instant is too far from the server's clock to be believed.
    ClockSkew,
    /// The exit was captured before the entry of the only session it could close.
    ExitBeforeEntry,
    /// The lot's tariff could not price this stay: an operator must look.
    CannotPrice,
    /// The server could not process the event; it is kept as a dead letter.
    Rejected,
}

/// The two lines a lane display shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DisplayText {
    pub line1: String,
    #[serde(default)]
    pub line2: String,
}

/// The server's answer to a passage event. Server -> gateway, QoS 1. Keyed by the event id; a
/// later decision for the same event (the fee was paid) supersedes the earlier one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub event_id: EventId,
    pub lot: LotId,
    pub lane: LaneId,
    pub action: BarrierAction,
    pub reason: DecisionReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee: Option<Money>,
    /// Everything the driver owes when unpaid arrears hold the car: arrears plus this stay's fee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owed: Option<Money>,
    /// Where a driver without a mandate pays (shown as a QR code on the display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_url: Option<String>,
    pub display: DisplayText,
    pub decided_at: DateTime<Utc>,
}

impl Message for Decision {
    const KIND: &'static str = "decision";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaneAction {
    OpenBarrier,
    CloseBarrier,
}

/// An operator's command to a lane, e.g. an audited manual lift. Server -> gateway, QoS 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorCommand {
    pub command_id: Uuid,
    pub lot: LotId,
    pub lane: LaneId,
    pub action: LaneAction,
    pub reason: String,
    pub operator: String,
    pub issued_at: DateTime<Utc>,
}

impl Message for OperatorCommand {
    const KIND: &'static str = "command";
}

/// The gateway carried out (or could not carry out) an operator command. Gateway -> server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandAck {
    pub command_id: Uuid,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
}

impl Message for CommandAck {
    const KIND: &'static str = "ack";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArmPosition {
    Closed,
    Opening,
    Open,
    Closing,
    Fault,
}

impl ArmPosition {
    pub fn as_str(self) -> &'static str {
        match self {
            ArmPosition::Closed => "closed",
            ArmPosition::Opening => "opening",
            ArmPosition::Open => "open",
            ArmPosition::Closing => "closing",
            ArmPosition::Fault => "fault",
        }
    }
}

/// A lane's physical state as its gateway knows it. Gateway -> server, retained, QoS 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneState {
    pub lot: LotId,
    pub lane: LaneId,
    pub gateway: GatewayId,
    pub direction: Direction,
    pub arm: ArmPosition,
    pub vehicle_present: bool,
    pub at: DateTime<Utc>,
}

impl Message for LaneState {
    const KIND: &'static str = "lane_state";
}

/// A gateway's liveness. Retained; the broker publishes `online: false` as its last will.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub gateway: GatewayId,
    pub lot: LotId,
    pub online: bool,
    #[serde(default)]
    pub lanes: Vec<LaneId>,
    /// Events written to the journal and not yet decided.
    #[serde(default)]
    pub journal_pending: u32,
    pub at: DateTime<Utc>,
}

impl Message for GatewayStatus {
    const KIND: &'static str = "gateway_status";
}

/// Plates a gateway may let out on its own while it cannot reach the server. Retained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowlist {
    pub lot: LotId,
    pub plates: Vec<String>,
    pub version: i64,
}

impl Message for Allowlist {
    const KIND: &'static str = "allowlist";
}

// ---- hardware <-> gateway -------------------------------------------------------------------

/// A smart camera's plate read. Camera -> gateway, QoS 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateRead {
    pub device: DeviceId,
    pub captured_at: DateTime<Utc>,
    /// Best first; empty when the camera saw a vehicle but read no plate.
    pub candidates: Vec<PlateCandidate>,
}

impl Message for PlateRead {
    const KIND: &'static str = "plate_read";
}

/// One camera frame. Camera -> gateway, QoS 0 (a lost frame is replaced by the next one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub device: DeviceId,
    pub captured_at: DateTime<Utc>,
    /// Frames of one passage share this number; the gateway votes across them.
    pub burst: u64,
    /// Position in the burst, and how many frames the burst has.
    pub seq: u32,
    pub of: u32,
    /// `jpeg` or `png`.
    pub format: String,
    /// The image, base64 (standard alphabet, padded).
    pub image: String,
}

impl Message for Frame {
    const KIND: &'static str = "frame";
}

/// An induction loop's presence change. Loop detector -> gateway, QoS 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopEvent {
    pub device: DeviceId,
    pub present: bool,
    pub at: DateTime<Utc>,
}

impl Message for LoopEvent {
    const KIND: &'static str = "loop";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArmCommand {
    Open,
    Close,
}

/// Gateway -> barrier arm, QoS 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarrierCommand {
    pub command_id: Uuid,
    pub action: ArmCommand,
    /// `normal`, or `abnormal` for a manual lift (vendor protocols flag these on the pass record).
    pub release: Release,
    pub at: DateTime<Utc>,
}

impl Message for BarrierCommand {
    const KIND: &'static str = "barrier_cmd";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Release {
    Normal,
    Abnormal,
}

/// The arm's position changed. Barrier arm -> gateway, QoS 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarrierStateReport {
    pub device: DeviceId,
    pub arm: ArmPosition,
    pub at: DateTime<Utc>,
}

impl Message for BarrierStateReport {
    const KIND: &'static str = "barrier_state";
}

/// Gateway -> lane display, QoS 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayCommand {
    pub text: DisplayText,
    /// A URL to show as a QR code, when payment is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr: Option<String>,
    pub at: DateTime<Utc>,
}

impl Message for DisplayCommand {
    const KIND: &'static str = "display";
}

/// A device's liveness. Retained; the device sets `online: false` as its last will.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device: DeviceId,
    pub online: bool,
    pub at: DateTime<Utc>,
}

impl Message for DeviceStatus {
    const KIND: &'static str = "device_status";
}
