//! kiln-runtime: devices and dispatch, sessions, the public API, batch jobs and the `kiln`
//! binary.
//!
//! Devices are values ([`DeviceInfo`]), probed at run time ([`probe_devices`]); the dispatch
//! policy reads them.

pub mod devices;
pub mod embed;
mod error;
pub mod inspect;
pub mod llm;
pub mod models_dir;
pub mod plan;
pub mod quantize;
pub mod tradeoffs;
pub mod tune;

pub use devices::{DeviceClass, DeviceId, DeviceInfo, Devices, probe_devices};
pub use error::{Result, RuntimeError};
