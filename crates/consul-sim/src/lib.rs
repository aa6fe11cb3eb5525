//! consul-sim
