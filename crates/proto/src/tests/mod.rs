//! Whole-protocol tests.
