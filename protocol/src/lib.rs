//! parkpay-protocol: the wire contract between barrier hardware, edge gateways and the server.
//!
//! Everything that crosses MQTT is defined here and nowhere else:
//! - [`topics`]: the topic tree, built and parsed in one place;
//! - [`envelope`]: the versioned JSON envelope every message travels in, with HMAC signing;
//! - [`messages`]: the message bodies (passage events, decisions, hardware messages);
//! - [`plate`]: the `Plate` value type (parse, correct by layout, format, match key);
//! - [`ids`] and [`money`]: validated identifiers and integer money.
//!
//! This crate does no I/O. Start with `messages::PassageEvent` and `messages::Decision`: they are
//! the hot path.

pub mod clock;
pub mod envelope;
pub mod ids;
pub mod messages;
pub mod money;
pub mod plate;
pub mod topics;

pub use clock::{Clock, ManualClock, ScaledClock, SystemClock};
pub use envelope::{decode, encode, sign, DecodeError, Decoded, Message, Opened};
pub use ids::{DeviceId, EventId, GatewayId, IdError, LaneId, LotId};
pub use messages::*;
pub use money::{Currency, Money};
pub use plate::{Plate, PlateColour, PlateError, Region};
pub use topics::Topic;
