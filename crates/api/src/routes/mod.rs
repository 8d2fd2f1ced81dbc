pub mod apps;
pub mod images;
pub mod machines;
