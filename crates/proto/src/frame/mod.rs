//! Frames: the header codec and opcodes (RFC 6455 §5).

mod header;
mod opcode;

pub use header::FrameHeader;
pub use opcode::OpCode;
