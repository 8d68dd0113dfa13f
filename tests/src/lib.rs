//! Shared helpers for workspace-level tests, and the DigitalOcean API simulator.
