//! parkpay-sim: the physical world around parkpay.
//!
//! A lane is four pieces of hardware, each its own MQTT client speaking the contract in
//! `parkpay-protocol`: a [`devices::Camera`] (a smart camera publishing plate reads with
//! configurable misreads and no-reads, or a frame camera fed by a [`devices::FrameSource`]), a
//! [`devices::LoopDetector`], a [`devices::BarrierArm`] that takes real time to move and exposes
//! its position through a `watch`, and a [`devices::Display`] that keeps the last text and pay
//! link. [`rig::LaneRig`] puts the four together and plays a car's passage: loop present, capture,
//! wait for the arm (or a pay prompt), drive through, loop clear.
//!
//! Above the lanes, [`traffic`] plans a seeded population of cars (plates from [`plates`],
//! dwell-time mix, mandates, empty wallets) and runs each one: register through the HTTP API
//! ([`api`]), enter, stay on a [`parkpay_protocol::ScaledClock`] so a day passes in minutes,
//! leave, and pay by QR when held. Every physical fact goes into [`truth::GroundTruth`], and
//! [`report`] holds the server's ledger against it, pricing each true stay with
//! [`reference_tariff`], an independent reading of the tariff rules. [`world::drive`] is the
//! whole run, shared by the binary's `run` and `demo` commands. While it runs, [`tally::Tally`]
//! keeps live counts (cars in and out, held, exceptions), and in the demo
//! [`observer::DecisionObserver`] times each decision from the broker, as the lanes see it.
//!
//! Start reading at [`rig::LaneRig::pass`], then [`traffic::run_car`] and [`report::audit`].
//! [`bench`] measures the gateway's plate reader on the scenes the simulated cameras draw.

pub mod api;
pub mod bench;
pub mod bench_load;
pub mod bench_plot;
pub mod bench_quote;
pub mod chaos;
pub mod demo;
pub mod devices;
pub mod error;
pub mod mqtt;
pub mod observer;
pub mod plates;
pub mod reference_tariff;
pub mod report;
pub mod rig;
pub mod tally;
pub mod traffic;
pub mod truth;
pub mod world;

pub use error::SimError;
pub use mqtt::{DeviceContext, MqttUrl};
pub use report::{Audit, FeeFn, Ledger, Mismatch, MismatchKind, Report};
pub use rig::{LaneConfig, LaneRig, PassageOutcome, Vehicle};
pub use tally::{LatencySummary, Snapshot, Tally};
pub use traffic::{DwellMix, TrafficConfig};
pub use world::{drive, drive_audited, WorldConfig};
