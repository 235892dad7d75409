//! Benchmarks of netplane against iptables NAT, and the lab they share with
//! the data path's BPF_PROG_TEST_RUN tests.

pub mod lab;
