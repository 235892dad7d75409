#!/usr/bin/env python3
"""Crafted packets for the hostile-input test, and the check of captures.

  hostile.py endpoint CONFIG   sends from inside an endpoint (its eth0)
  hostile.py world CONFIG      sends from the world (its uplink peer)
  hostile.py flood CONFIG      sends SYNs from the world to a published port
  hostile.py check PCAP NET... reads a capture
  hostile.py endpoint6 CONFIG, world6 CONFIG, check6 PCAP NET...
                               the same over IPv6

CONFIG is JSON with the interface, addresses and MACs to use. Senders print
one JSON object: packets sent per category. Categories named after a drop
reason must each raise that reason's counter by exactly their count; the
"any" category's packets may be forwarded, answered or dropped, and only
the captures judge them. `check` prints how many IPv4 packets the capture
holds, which of them carry an address of the networks NET (CIDR) in their
own header or in the packet an ICMP error quotes, and which are anything
but TCP or UDP to port 80 or an ICMP error.
"""

import ipaddress
import json
import sys

from scapy.all import (
    DNS,
    DNSQR,
    ICMP,
    IP,
    TCP,
    UDP,
    VXLAN,
    Dot1AD,
    Dot1Q,
    Ether,
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPOption_RR,
    Raw,
    conf,
    rdpcap,
    sendp,
)

conf.verb = 0
FLAG_BITS = "FSRPAUEC"


def frame(c, **ip):
    return Ether(src=c["src_mac"], dst=c["dst_mac"]) / IP(src=c["src_ip"], **ip)


def truncated_shapes(c, dst):
    """Frames whose headers end before they should."""
    eth = Ether(src=c["src_mac"], dst=c["dst_mac"], type=0x0800)
    whole_ip = bytes(IP(src=c["src_ip"], dst=dst, proto=17))
    shapes = [
        eth / Raw(whole_ip[:10]),  # half an IP header
        eth / Raw(bytes([0x4F]) + whole_ip[1:]),  # IHL 15, 20 bytes given
        eth / Raw(bytes([0x41]) + whole_ip[1:]),  # IHL 1
    ]
    for proto, keep in ((6, 10), (17, 4), (1, 2)):
        header = bytes(IP(src=c["src_ip"], dst=dst, proto=proto, len=20 + keep))
        shapes.append(eth / Raw(header + b"\x00" * keep))
    return shapes


def vni_frame(c, vni, inner):
    return (
        frame(c, dst=c["host_ip"])
        / UDP(sport=40000, dport=4789)
        / VXLAN(vni=vni, flags=0x08)
        / inner
    )


def any_shapes(c, dst, dport):
    """Packets a data path must survive whatever it does with them."""
    out = []
    for bits in range(256):
        flags = "".join(f for i, f in enumerate(FLAG_BITS) if bits >> i & 1)
        out.append(frame(c, dst=dst) / TCP(sport=30000 + bits, dport=dport, flags=flags))
    out += [
        frame(c, dst=dst, chksum=0x1234) / UDP(sport=31000, dport=dport) / b"bad ip sum",
        frame(c, dst=dst) / TCP(sport=31001, dport=dport, chksum=0x1234, flags="S"),
        frame(c, dst=dst) / UDP(sport=31002, dport=dport, chksum=0x1234) / b"bad udp sum",
        frame(c, dst=dst) / UDP(sport=31003, dport=dport, chksum=0) / b"no udp sum",
        frame(c, dst=dst, options=[IPOption_RR()]) / TCP(sport=31004, dport=dport, flags="S"),
        frame(c, dst=dst, ttl=0) / UDP(sport=31005, dport=dport),
        frame(c, dst=dst, ttl=1) / UDP(sport=31006, dport=dport),
        frame(c, dst=dst, len=200) / UDP(sport=31007, dport=dport) / b"ip longer than frame",
        frame(c, dst=dst) / UDP(sport=31008, dport=dport, len=300) / b"udp longer than ip",
        # A first fragment, then one overlapping it, then a later one.
        frame(c, dst=dst, id=77, flags="MF") / UDP(sport=31009, dport=dport) / (b"a" * 32),
        frame(c, dst=dst, id=77, flags="MF", frag=1, proto=17) / (b"b" * 32),
        frame(c, dst=dst, id=77, frag=4, proto=17) / (b"c" * 8),
        frame(c, dst=dst) / ICMP(type=8) / b"ping",
        frame(c, dst=dst, proto=47) / b"not a protocol netplane translates",
    ]
    return out


def untracked_errors(c, dst, dport):
    """ICMP errors quoting flows that were never seen, both ways."""
    return [
        frame(c, dst=dst) / ICMP(type=3, code=3) / bytes(IP(src=src, dst=qdst) / UDP(sport=31010, dport=dport))[:28]
        for src, qdst in ((c["src_ip"], dst), (dst, c["src_ip"]))
    ]


def send_all(c, packets):
    """Sends each category's packets and prints how many each had."""
    sent = {}
    for category, pkts in packets.items():
        sendp(pkts, iface=c["iface"])
        sent[category] = len(pkts)
    print(json.dumps(sent))


def endpoint(c):
    world = c["world_ip"]
    packets = {
        "spoofed": [
            frame(dict(c, src_ip=f"10.99.0.{i}"), dst=world) / UDP(sport=1000 + i, dport=9)
            for i in range(10)
        ]
        + [
            frame(dict(c, src_mac=f"02:66:00:00:00:{i:02x}"), dst=world) / UDP(dport=9)
            for i in range(10)
        ],
        "icc_denied": [
            frame(c, dst=c["victim_ip"], ttl=ttl) / p
            for p in (TCP(dport=80, flags="S"), UDP(dport=53), ICMP(type=8))
            # TTL 1 and 0 too: switched, not routed, the bridge would
            # deliver them whatever their TTL.
            for ttl in (64, 64, 64, 1, 0)
        ],
        "truncated": truncated_shapes(c, world),
        "fragment": [
            frame(c, dst=world, id=900 + i, frag=10, proto=17) / (b"x" * 16) for i in range(5)
        ],
        "untracked_icmp_error": untracked_errors(c, world, 9),
        "unknown_l3": [
            # IPv6 to another endpoint's link-local address, past --icc=false.
            Ether(src=c["src_mac"], dst="02:42:00:00:00:02")
            / IPv6(src="fe80::42:1", dst="fe80::42:2")
            / ICMPv6EchoRequest(),
            Ether(src=c["src_mac"], dst="33:33:00:00:00:01") / IPv6(dst="ff02::1") / ICMPv6EchoRequest(),
            # An EtherType nothing here speaks.
            Ether(src=c["src_mac"], dst=c["dst_mac"], type=0x88B5) / Raw(b"local experimental"),
        ],
        "vlan_tagged": [
            Ether(src=c["src_mac"], dst=c["dst_mac"]) / Dot1Q(vlan=v) / IP(src=c["src_ip"], dst=world) / UDP(dport=9)
            for v in (1, 5, 4094)
        ]
        + [
            # 802.1ad with a tag inside: the kernel takes the outer one off.
            Ether(src=c["src_mac"], dst=c["dst_mac"]) / Dot1AD(vlan=7) / Dot1Q(vlan=8) / IP(src=c["src_ip"], dst=world) / UDP(dport=9),
        ],
        "any": any_shapes(c, world, 9),
    }
    send_all(c, packets)


def world(c):
    victims = [c["victim_ip"], c["published_ip"], c["overlay_ip"]]
    inner_eth = Ether(src="02:42:00:00:00:01", dst="02:42:00:00:00:02")
    peer_src = c["peer_lease_ip"]
    overlay_ip = c["overlay_ip"]
    packets = {
        "truncated": truncated_shapes(c, c["host_ip"])
        + [
            # Truncated inner frames: half an Ethernet header, half an IP one.
            vni_frame(c, c["vni"], Raw(b"\x02\x42\x00\x00\x00\x02")),
            vni_frame(c, c["vni"], Raw(bytes(inner_eth / IP(src=peer_src, dst=overlay_ip))[:24])),
        ],
        "not_published": [
            frame(c, dst=v) / p
            for v in victims
            for p in (TCP(sport=33000, dport=80, flags="S"), UDP(sport=33001, dport=80), ICMP(type=8))
        ]
        + [
            # The gateways' embedded DNS, asked from the uplink's side.
            frame(c, dst=gateway) / p
            for gateway in (c["gateway_ip"], c["overlay_gateway_ip"])
            for p in (UDP(sport=33002, dport=53) / DNS(rd=1, qd=DNSQR(qname="x")), TCP(sport=33003, dport=53, flags="S"), ICMP(type=8))
        ],
        "overlay_unknown_peer": [
            # The right peer and inner source, another network's VNI.
            vni_frame(c, c["vni"] + 1, inner_eth / IP(src=peer_src, dst=overlay_ip) / ICMP()),
            # An inner source outside the sending peer's lease.
            vni_frame(c, c["vni"], inner_eth / IP(src="10.201.77.1", dst=overlay_ip) / ICMP()),
            # From an address that is no peer.
            vni_frame(dict(c, src_ip="198.18.0.77"), c["vni"], inner_eth / IP(src=peer_src, dst=overlay_ip) / ICMP()),
        ],
        "other_network": [
            # Into the bridge network, which the overlay does not reach.
            vni_frame(c, c["vni"], inner_eth / IP(src=peer_src, dst=c["victim_ip"]) / ICMP()),
        ],
        "any": any_shapes(c, c["host_ip"], c["any_port"])
        + untracked_errors(c, c["host_ip"], c["any_port"])
        + [
            # Ports published on 127.0.0.1 and on another host address.
            frame(c, dst="127.0.0.1") / TCP(sport=34000, dport=c["loopback_port"], flags="S"),
            frame(c, dst=c["other_host_ip"]) / TCP(sport=34001, dport=c["host_ip_port"], flags="S"),
        ],
    }
    send_all(c, packets)


def check(pcap, nets):
    nets = [ipaddress.ip_network(n) for n in nets]
    inside = lambda a: any(ipaddress.ip_address(a) in n for n in nets)
    ipv4, leaked, unexpected = 0, [], []
    for p in rdpcap(pcap):
        if IP not in p:
            continue
        ipv4 += 1
        ip = p[IP]
        addrs = [ip.src, ip.dst]
        is_error = ICMP in ip and ip[ICMP].type in (3, 4, 5, 11, 12)
        if is_error and IP in ip[ICMP].payload:
            quoted = ip[ICMP].payload[IP]
            addrs += [quoted.src, quoted.dst]
        if any(inside(a) for a in addrs):
            leaked.append(p.summary())
        to_80 = (TCP in ip or UDP in ip) and ip.frag == 0 and (ip[TCP] if TCP in ip else ip[UDP]).dport == 80
        if not (to_80 or is_error):
            unexpected.append(p.summary())
    print(json.dumps({"ipv4": ipv4, "leaked": leaked, "unexpected": unexpected}))


def flood(c):
    """SYNs to a published port from as many source ports as asked."""
    syns = [
        frame(c, dst=c["host_ip"]) / TCP(sport=40000 + i, dport=c["port"], flags="S")
        for i in range(c["count"])
    ]
    sendp(syns, iface=c["iface"])
    print(json.dumps({"syn": len(syns)}))


def frame6(c, **ip):
    return Ether(src=c["src_mac"], dst=c["dst_mac"]) / IPv6(src=c["src_ip6"], **ip)


def truncated_shapes6(c, dst):
    """IPv6 frames whose headers end before they should."""
    eth = Ether(src=c["src_mac"], dst=c["dst_mac"], type=0x86DD)
    whole = bytes(IPv6(src=c["src_ip6"], dst=dst, nh=17, plen=8))
    return [
        eth / Raw(whole[:20]),  # half the fixed header
        eth / Raw(bytes([0x40]) + whole[1:]),  # version 4 in an IPv6 frame
        eth / Raw(bytes(IPv6(src=c["src_ip6"], dst=dst, nh=0, plen=4)) + b"\x11\x00\x00\x00"),  # half a hop-by-hop header
        eth / Raw(bytes(IPv6(src=c["src_ip6"], dst=dst, nh=6, plen=10)) + b"\x00" * 10),  # half a TCP header
        eth / Raw(bytes(IPv6(src=c["src_ip6"], dst=dst, nh=17, plen=4)) + b"\x00" * 4),  # half a UDP header
    ]


def too_many_extensions(c, dst):
    """Seven extension headers: more than the programs walk."""
    out = []
    for dport in (9, 80, 8080):
        chain = IPv6ExtHdrHopByHop()
        for _ in range(6):
            chain = chain / IPv6ExtHdrDestOpt()
        out.append(frame6(c, dst=dst) / chain / UDP(sport=35000, dport=dport))
    return out


def any_shapes6(c, dst, dport):
    """IPv6 packets a data path must survive whatever it does with them."""
    out = []
    for bits in range(256):
        flags = "".join(f for i, f in enumerate(FLAG_BITS) if bits >> i & 1)
        out.append(frame6(c, dst=dst) / TCP(sport=36000 + bits, dport=dport, flags=flags))
    out += [
        frame6(c, dst=dst) / TCP(sport=36300, dport=dport, chksum=0x1234, flags="S"),
        frame6(c, dst=dst) / UDP(sport=36301, dport=dport, chksum=0x1234) / b"bad udp sum",
        frame6(c, dst=dst) / UDP(sport=36302, dport=dport, chksum=0) / b"no udp sum: invalid in IPv6",
        frame6(c, dst=dst, hlim=0) / UDP(sport=36303, dport=dport),
        frame6(c, dst=dst, hlim=1) / UDP(sport=36304, dport=dport),
        frame6(c, dst=dst, plen=300) / UDP(sport=36305, dport=dport) / b"payload longer than frame",
        frame6(c, dst=dst) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(sport=36306, dport=dport),
        # A first fragment, then the rest of its datagram.
        frame6(c, dst=dst) / IPv6ExtHdrFragment(id=4242, m=1, nh=17) / UDP(sport=36307, dport=dport, len=40) / (b"a" * 24),
        frame6(c, dst=dst) / IPv6ExtHdrFragment(id=4242, offset=4, nh=17) / (b"b" * 8),
        frame6(c, dst=dst) / ICMPv6EchoRequest() / b"ping",
        frame6(c, dst=dst, nh=47) / b"not a protocol netplane translates",
    ]
    return out


def untracked_errors6(c, dst, dport):
    """ICMPv6 errors quoting flows that were never seen, both ways."""
    return [
        frame6(c, dst=dst) / kind / IPv6(src=src, dst=qdst) / UDP(sport=36400, dport=dport)
        for src, qdst in ((c["src_ip6"], dst), (dst, c["src_ip6"]))
        for kind in (ICMPv6DestUnreach(code=4), ICMPv6PacketTooBig(mtu=1280))
    ]


def endpoint6(c):
    world = c["world_ip6"]
    victims = [c["victim_ip6"], c["victim_ll"]]
    link_local = c["src_ll"]
    all_nodes = "ff02::1"
    packets = {
        "spoofed": [
            frame6(dict(c, src_ip6=f"fd00:61::99:{i:x}"), dst=world) / UDP(sport=37000 + i, dport=9)
            for i in range(10)
        ]
        + [
            frame6(dict(c, src_mac=f"02:66:00:00:00:{i:02x}"), dst=world) / UDP(dport=9)
            for i in range(5)
        ]
        + [
            # Neighbour advertisements for addresses it does not own, a
            # router advertisement and a redirect.
            frame6(dict(c, src_ip6=link_local), dst=all_nodes, hlim=255) / ICMPv6ND_NA(tgt=t, R=0, S=0, O=1)
            for t in (c["gateway_ip6"], c["victim_ip6"])
        ]
        + [
            frame6(dict(c, src_ip6=link_local), dst=all_nodes, hlim=255) / ICMPv6ND_RA(),
            frame6(dict(c, src_ip6=link_local), dst=c["victim_ll"], hlim=255)
            / ICMPv6ND_Redirect(tgt=c["gateway_ip6"], dst=world),
        ],
        "icc_denied": [
            frame6(c, dst=v, hlim=hops) / p
            for v in victims
            for p in (TCP(sport=37100, dport=80, flags="S"), UDP(sport=37101, dport=53), ICMPv6EchoRequest())
            # The bridge switches them whatever their hop limit.
            for hops in (64, 1, 0)
        ],
        "unknown_ext": too_many_extensions(c, world),
        "truncated": truncated_shapes6(c, world),
        "fragment": [
            frame6(c, dst=world) / IPv6ExtHdrFragment(id=5000 + i, offset=10, nh=17) / (b"x" * 16)
            for i in range(5)
        ],
        "untracked_icmp_error": untracked_errors6(c, world, 9),
        "any": any_shapes6(c, world, 9),
    }
    send_all(c, packets)


def world6(c):
    host = c["host_ip6"]
    packets = {
        "truncated": truncated_shapes6(c, host),
        "unknown_ext": too_many_extensions(c, host),
        "not_published": [
            frame6(c, dst=v) / p
            for v in (c["victim_ip6"], c["published_ip6"])
            for p in (TCP(sport=38000, dport=80, flags="S"), UDP(sport=38001, dport=80), ICMPv6EchoRequest())
        ]
        + [
            # The gateway's embedded DNS, asked from the uplink's side.
            frame6(c, dst=c["gateway_ip6"]) / p
            for p in (UDP(sport=38002, dport=53) / DNS(rd=1, qd=DNSQR(qname="x")), TCP(sport=38003, dport=53, flags="S"), ICMPv6EchoRequest())
        ],
        "any": any_shapes6(c, host, c["any_port"])
        + untracked_errors6(c, host, c["any_port"])
        # A port published on [::1] only.
        + [frame6(c, dst="::1") / TCP(sport=38100, dport=c["loopback_port"], flags="S")],
    }
    send_all(c, packets)


# Neighbour discovery and multicast listener messages: the stack's own.
NDP_MLD = {130, 131, 132, 133, 134, 135, 136, 137, 143}


def check6(pcap, nets):
    """`check` for IPv6: packets other than neighbour discovery, those
    carrying an address of NET (quoted in an ICMPv6 error too), and those
    that are neither to port 80 nor ICMPv6 errors."""
    nets = [ipaddress.ip_network(n) for n in nets]
    inside = lambda a: any(ipaddress.ip_address(a) in n for n in nets)
    ipv6, leaked, unexpected = 0, [], []
    for p in rdpcap(pcap):
        if IPv6 not in p:
            continue
        ip = p[IPv6]
        icmp_type = None
        layer = ip.payload
        while layer is not None and layer.name != "NoPayload":
            if hasattr(layer, "type") and layer.__class__.__name__.startswith("ICMPv6"):
                icmp_type = layer.type
                break
            layer = layer.payload
        if icmp_type in NDP_MLD:
            continue
        ipv6 += 1
        addrs = [ip.src, ip.dst]
        is_error = icmp_type is not None and icmp_type < 128
        if is_error and IPv6 in layer.payload:
            quoted = layer.payload[IPv6]
            addrs += [quoted.src, quoted.dst]
        if any(inside(a) for a in addrs):
            leaked.append(p.summary())
        l4 = ip[TCP] if TCP in ip else ip[UDP] if UDP in ip else None
        to_80 = l4 is not None and not is_error and l4.dport == 80
        if not (to_80 or is_error):
            unexpected.append(p.summary())
    print(json.dumps({"ipv6": ipv6, "leaked": leaked, "unexpected": unexpected}))


if sys.argv[1] in ("check", "check6"):
    {"check": check, "check6": check6}[sys.argv[1]](sys.argv[2], sys.argv[3:])
else:
    senders = {"endpoint": endpoint, "world": world, "flood": flood, "endpoint6": endpoint6, "world6": world6}
    senders[sys.argv[1]](json.loads(sys.argv[2]))
