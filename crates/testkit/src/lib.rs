//! Hangar's test harness: real parts on loopback. A docker-registry with images built here
//! (never pulled from the internet), and (in `server`) a real `hangar server`.

pub mod fake_runtime;
pub mod image;
pub mod init;
pub mod registry;
pub mod server;

pub use fake_runtime::{Call, FakeRuntime};
pub use image::{Blob, BuiltImage, Compression, ImageBuilder, Layer};
pub use registry::{Registry, Request};
