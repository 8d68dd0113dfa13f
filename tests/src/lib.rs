//! The workspace-level test package. Its tests are in `tests/`: `contracts.rs` (what
//! image-builder writes for the agent, read by vm-agent's parser) and `e2e.rs` (bake, boot a
//! worker under QEMU, artifacts, jobs, idle power-off). This library is empty on purpose:
//! cargo needs a target besides the tests.
