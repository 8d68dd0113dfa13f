//! vm-agent library.
