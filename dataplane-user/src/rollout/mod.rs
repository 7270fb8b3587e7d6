//! The rollout tools: what the operator asks before and while a site enforces. [`diff`] (what a
//! site would change), [`suggest`] (what the documents say of the traffic it dropped) and
//! [`lockout`] (the guard that refuses a site cutting the administrators off). Each judges
//! tuples with `classify::judge`, so every claim it makes, `explain` agrees with. [`diff`] and
//! [`suggest`] fail with a [`RolloutError`]; the guard refuses with a [`lockout::LockoutError`].

pub mod baseline;
pub mod diff;
pub mod error;
pub mod lockout;
pub mod suggest;

pub use error::RolloutError;
