//! placeholder during build-up
pub mod devices;
pub mod error;
pub mod mqtt;
pub mod plates;
pub mod rig;
