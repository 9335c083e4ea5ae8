//! Durations written as strings with a unit (`"250ms"`, `"5s"`, `"2m"`, `"1h"`): the one
//! implementation lives in the plugin API, shared with every plugin's configuration.

pub use switchyard_plugin::duration::{parse_duration, ConfigDuration};
