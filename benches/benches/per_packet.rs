//! Per-packet cost of the data path's programs under BPF_PROG_TEST_RUN,
//! with 1 to 100,000 published ports and tracked flows in the maps.
//!
//! Each sample is the kernel's own measurement of one run (a fresh copy of
//! the packet every time, so every run takes the path named), summed: no
//! syscall or user-space time is included, but the kernel's timer and the
//! test-run setup of each run are; `floor_empty_program` measures exactly
//! those, so a path's own cost is its time minus the floor's. Every run's
//! verdict is checked; a broken path fails the benchmark instead of winning.
//! `flow_table_read` times reading those flows back, in wall time.

use netplane_common::abi::addr_be;
use std::{net::Ipv4Addr, time::Duration};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use netplane_benches::lab::{
    ENDPOINT, Lab, PUBLISHED_PORT, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, UPLINK, WORLD,
    XDP_PASS, XDP_REDIRECT, endpoint_frame, tcp, tcp_syn, udp,
};
use netplane_common::{
    abi::{CtTimeouts, FlowKey, PortKey, PortTarget, programs, proto},
    nat::{FirstPacket, FlowPair, flow_entries},
};

const SIZES: [u32; 4] = [1, 1_000, 10_000, 100_000];

/// New flows made before the table is cleared of them (two entries each).
const NEW_FLOWS_PER_ROUND: u64 = 60_000;

/// Server ports of the new flows measured.
const NEW_FLOW_DPORTS: std::ops::Range<u16> = 1000..2000;

/// `n` published ports and `n` tracked flows that the measured packets never
/// match: what a busy host has in its maps.
fn seed(lab: &mut Lab, n: u32) {
    let ports: Vec<(PortKey, PortTarget)> = (0..n)
        .map(|i| {
            (
                PortKey {
                    // Addresses of no interface: these rules never match.
                    addr_be: addr_be(Ipv4Addr::from(0x0a64_0000 + (i >> 16))),
                    port_be: ((i & 0xffff) as u16).to_be(),
                    proto: proto::TCP,
                    _pad: 0,
                },
                PortTarget {
                    addr_be: addr_be(ENDPOINT.into()),
                    port_be: 80u16.to_be(),
                    flags: 0,
                    slot: 1,
                },
            )
        })
        .collect();
    lab.dp.publish(&ports).expect("seeding published ports");
    let mut flows = Vec::with_capacity(2 * n as usize);
    for i in 0..n {
        let original = FlowKey {
            saddr_be: addr_be(Ipv4Addr::from(0x0a5b_0000 + i)),
            daddr_be: addr_be(WORLD.into()),
            sport_be: 40000u16.to_be(),
            // Past 60,000 flows the translated ports repeat: another
            // server port keeps every reply key distinct.
            dport_be: (443 + (i / 60000) as u16).to_be(),
            proto: proto::TCP,
            _pad: [0; 3],
        };
        let translated = FlowKey {
            saddr_be: addr_be(UPLINK.into()),
            sport_be: ((i % 60000) as u16 + 1024).to_be(),
            ..original
        };
        let mut pair = FlowPair::default();
        flow_entries(
            &original,
            &translated,
            0,
            0,
            FirstPacket { len: 60, seen: 0 },
            &mut pair,
        );
        flows.push((pair.fwd_key, pair.fwd));
        flows.push((pair.reply_key, pair.reply));
    }
    lab.dp.insert_flows(&flows).expect("seeding flows");
}

/// Sum of the kernel-measured time of `iters` runs, each checked.
fn kernel_time(
    lab: &mut Lab,
    program: &str,
    ifindex: u32,
    iters: u64,
    mut packet: impl FnMut(u64) -> Vec<u8>,
    expect: i32,
) -> Duration {
    (0..iters)
        .map(|i| {
            let out = lab
                .dp
                .test_run(program, ifindex, &packet(i), 1)
                .expect("test run");
            assert_eq!(out.action, expect, "{program}: verdict of run {i}");
            out.duration
        })
        .sum()
}

fn per_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_packet");
    for n in SIZES {
        // Room for the seeded flows and the new ones measured.
        let mut lab = Lab::new(2 * n + 2 * NEW_FLOWS_PER_ROUND as u32 + 1_000);
        seed(&mut lab, n);
        let (endpoint_if, uplink_if, bridge_mac) = (lab.endpoint_if, lab.uplink_if, lab.bridge_mac);

        // Establish the measured flows once.
        let dnat = tcp_syn(lab.world_frame(UPLINK), 5555, PUBLISHED_PORT);
        assert_eq!(lab.arriving_from_world(&dnat).0, TC_ACT_REDIRECT);
        // The endpoint's answer to the published-port client.
        let reverse = tcp_syn(lab.endpoint_frame(), 80, 5555);
        let snat = udp(lab.endpoint_frame(), 40000, 53, &[0; 18]);
        assert_eq!(lab.sent_by_endpoint(&snat).0, TC_ACT_REDIRECT);
        let miss = tcp_syn(lab.world_frame(UPLINK), 5555, 22);
        // A later segment of the published-port flow: XDP's to take.
        let ack = tcp(lab.world_frame(UPLINK), 5555, PUBLISHED_PORT, "ACK");

        let cases: [(&str, &str, u32, &Vec<u8>, i32); 8] = [
            (
                "floor_empty_program",
                programs::PASS,
                uplink_if,
                &miss,
                TC_ACT_OK,
            ),
            (
                "dnat_established",
                programs::UPLINK_INGRESS,
                uplink_if,
                &dnat,
                TC_ACT_REDIRECT,
            ),
            (
                "dnat_reverse",
                programs::ENDPOINT_INGRESS,
                endpoint_if,
                &reverse,
                TC_ACT_REDIRECT,
            ),
            (
                "snat_established",
                programs::ENDPOINT_INGRESS,
                endpoint_if,
                &snat,
                TC_ACT_REDIRECT,
            ),
            (
                "miss",
                programs::UPLINK_INGRESS,
                uplink_if,
                &miss,
                TC_ACT_OK,
            ),
            (
                "dnat_established_ack",
                programs::UPLINK_INGRESS,
                uplink_if,
                &ack,
                TC_ACT_REDIRECT,
            ),
            (
                "xdp_floor_empty_program",
                programs::XDP_PASS,
                uplink_if,
                &miss,
                XDP_PASS,
            ),
            (
                "xdp_dnat_established_ack",
                programs::UPLINK_XDP,
                uplink_if,
                &ack,
                XDP_REDIRECT,
            ),
        ];
        for (name, program, ifindex, packet, expect) in cases {
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| {
                    kernel_time(
                        &mut lab,
                        program,
                        ifindex,
                        iters,
                        |_| packet.clone(),
                        expect,
                    )
                })
            });
        }
        // Every run a new flow: a source port never used before.
        let mut next_flow = 0u64;
        group.bench_with_input(BenchmarkId::new("snat_new_flow", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    if next_flow == NEW_FLOWS_PER_ROUND {
                        // Forget the flows made here (untimed: only the
                        // kernel's run times are summed); keep the others.
                        lab.dp
                            .remove_flows(|k, _| {
                                (NEW_FLOW_DPORTS).contains(&u16::from_be(k.dport_be))
                                    && k.saddr_be == addr_be(ENDPOINT.into())
                            })
                            .expect("clearing measured flows");
                        next_flow = 0;
                    }
                    let chunk = (iters - done).min(NEW_FLOWS_PER_ROUND - next_flow);
                    let start = next_flow;
                    total += kernel_time(
                        &mut lab,
                        programs::ENDPOINT_INGRESS,
                        endpoint_if,
                        chunk,
                        |i| {
                            let flow = start + i;
                            // Spread over the server ports, so that no
                            // destination runs out of translated ports.
                            let ports = u64::from(NEW_FLOW_DPORTS.end - NEW_FLOW_DPORTS.start);
                            udp(
                                endpoint_frame(bridge_mac),
                                (flow / ports) as u16 + 1024,
                                NEW_FLOW_DPORTS.start + (flow % ports) as u16,
                                &[0; 18],
                            )
                        },
                        TC_ACT_REDIRECT,
                    );
                    next_flow += chunk;
                    done += chunk;
                }
                total
            })
        });
    }
    group.finish();
}

/// A new flow against a full table of `n` live flows: the programs sweep
/// the whole table for expired flows (finding none here) before refusing
/// it. They sweep at most once a second, so each measured run waits out
/// that second first; the kernel's measurement covers the run alone.
fn full_table_sweep(c: &mut Criterion) {
    let mut group = c.benchmark_group("full_table_sweep");
    group.sample_size(10);
    for n in [10_000, 100_000] {
        let mut lab = Lab::new(2 * n);
        seed(&mut lab, n);
        // Lifetimes no seeded flow outlives: the sweep reads every entry
        // and deletes none.
        lab.dp
            .set_ct_timeouts(CtTimeouts {
                tcp_syn_ns: u64::MAX / 2,
                tcp_established_ns: u64::MAX / 2,
                tcp_fin_wait_ns: u64::MAX / 2,
                tcp_closing_ns: u64::MAX / 2,
                udp_ns: u64::MAX / 2,
                icmp_ns: u64::MAX / 2,
            })
            .expect("lifetimes");
        let endpoint_if = lab.endpoint_if;
        let new_flow = tcp_syn(lab.endpoint_frame(), 41000, 80);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        std::thread::sleep(Duration::from_millis(1050));
                        kernel_time(
                            &mut lab,
                            programs::ENDPOINT_INGRESS,
                            endpoint_if,
                            1,
                            |_| new_flow.clone(),
                            TC_ACT_SHOT,
                        )
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

/// Wall time to read the whole flow table with `n` flows (two entries
/// each): what `ct ls`, a metrics scrape and every garbage collection do.
fn flow_table_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("flow_table_read");
    for n in SIZES {
        let mut lab = Lab::new(2 * n + 1_000);
        seed(&mut lab, n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                let flows = lab.dp.flows().expect("reading the flow table");
                assert_eq!(flows.len(), 2 * n as usize);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = per_packet, flow_table_read, full_table_sweep
}
criterion_main!(benches);
