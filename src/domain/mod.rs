//! The domain's plain data, shared by every layer and depending on none: a
//! deployment's state and a colour.

pub mod state;

pub use state::{Colour, State};
