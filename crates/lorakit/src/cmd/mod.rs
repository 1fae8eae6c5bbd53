//! One module per subcommand group.

pub mod dataset;
pub mod tags;
