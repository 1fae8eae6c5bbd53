//! One module per subcommand group.

pub mod dataset;
pub mod inspect;
pub mod resize;
pub mod tags;
