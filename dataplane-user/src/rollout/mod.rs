//! The rollout tools: what the operator asks before and while a site enforces. [`diff`] (what a
//! site would change), [`suggest`] (what the documents say of the traffic it dropped) and
//! [`lockout`] (the guard that refuses a site cutting the administrators off). Each judges
//! tuples with `classify::judge`, so every claim it makes, `explain` agrees with.

pub mod baseline;
pub mod diff;
pub mod lockout;
pub mod suggest;
