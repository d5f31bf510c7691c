//! The four pieces of hardware at a lane, each its own MQTT client.

pub mod arm;
pub mod camera;
pub mod display;
pub mod loop_detector;
pub mod scene_camera;

pub use arm::{ArmConfig, ArmState, BarrierArm};
pub use camera::{Camera, CameraConfig, CameraMode, Capture, FrameSource};
pub use display::{Display, DisplayState};
pub use loop_detector::LoopDetector;
pub use scene_camera::SceneCamera;
