//! The ways in: each adapter turns bytes into calls on [`Chat`](crate::core::Chat) and events back
//! into bytes. They hold no chat logic.

pub mod http;
pub mod tcp;
