pub mod apps;
pub mod egress;
pub mod images;
pub mod machines;
pub mod platform;
pub mod secrets;
pub mod sessions;
