//! The induction loop in front of the barrier: says when a vehicle stands over it.

use parkpay_protocol::{DeviceId, LoopEvent, Topic};
use rumqttc::QoS;

use crate::error::SimError;
use crate::mqtt::{DeviceContext, Link};

#[derive(Debug)]
pub struct LoopDetector {
    link: Link,
}

impl LoopDetector {
    /// Returns once connected; the detector subscribes to nothing.
    pub async fn start(ctx: &DeviceContext, id: DeviceId) -> Result<LoopDetector, SimError> {
        let (link, _inbox) = Link::start(ctx, id, Vec::new()).await?;
        Ok(LoopDetector { link })
    }

    pub fn id(&self) -> &DeviceId {
        self.link.device()
    }

    /// Publishes a presence change, stamped with the shared clock.
    pub async fn set(&self, present: bool) -> Result<(), SimError> {
        let p = self.link.publisher();
        let msg = LoopEvent {
            device: p.device().clone(),
            present,
            at: p.now(),
        };
        p.publish(
            &Topic::Loop(p.device().clone()),
            &msg,
            QoS::AtLeastOnce,
            false,
        )
        .await
    }

    pub async fn shutdown(self) {
        self.link.shutdown().await;
    }
}
