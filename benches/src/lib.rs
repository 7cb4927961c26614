//! Benchmarks and, later, the load generator operators run against a relay.
