//! The domain's plain data, shared by every layer and depending on none: a
//! deployment's state and trigger, colours, the plan of steps, routing, image
//! references and their grammars, and what a replica is asked to be.

pub mod deployment;
pub mod image;
pub mod plan;
pub mod replica;
pub mod routing;

pub use deployment::{Colour, State};
