//! One module per subcommand group.

pub mod caption;
pub mod convert;
pub mod dataset;
pub mod device;
pub mod generate;
pub mod gui;
pub mod inspect;
pub mod merge;
pub mod resize;
pub mod tags;
pub mod train;
