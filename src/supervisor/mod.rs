//! The validator supervisor: runs neard, takes the validator lock through the
//! `LockBackend`, and makes sure a signer never outlives its lease.
//!
//! * `run`: the state machine (kuutamod's states) driving everything.
//! * `neard`: neard's home (keys, config.json), process and health.
//! * `lease`: the holder's lease deadline on CLOCK_BOOTTIME.
//! * `fence`: the process that kills validator neard at the deadline, or at
//!   once if the agent dies.
//! * `status`: what `status`, the metrics and `handover` see.

pub mod fence;
pub mod lease;
pub mod neard;
pub mod run;
pub mod status;
