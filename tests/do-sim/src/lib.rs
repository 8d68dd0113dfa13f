//! DigitalOcean API simulator.
