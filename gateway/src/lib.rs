//! parkpay-gateway: the edge process at a site's barriers.
pub mod reader;
