//! Hostile inputs: see mod.rs.
