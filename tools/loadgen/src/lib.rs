//! What the load generator (`loadgen`) and the fault-injection checker (`chaos`) share.

pub mod sse;
