//! Published ports for the host's own processes, translated at the socket
//! (cgroup sock_addr hooks) instead of per packet: a connect to 127.0.0.1
//! or a host address and a published port goes straight to the endpoint.
//! No route_localnet, no proxy. The programs are attached to a whole
//! cgroup tree, so they act only on sockets of the daemon's namespace.

use aya_ebpf::{macros::map, maps::LruHashMap};
use core::ffi::c_void;
use netplane_common::abi::MAX_SOCK_REV;

use crate::{config::NET_CONFIG, nat};
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use netplane_common::abi::{SockRevKey, SockRevKey6, SockRevValue, SockRevValue6, proto};

#[map(name = "NP_SOCK_REV")]
pub(crate) static SOCK_REV: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::pinned(MAX_SOCK_REV, 0);

#[map(name = "NP_SOCK_REV6")]
pub(crate) static SOCK_REV6: LruHashMap<SockRevKey6, SockRevValue6> =
    LruHashMap::pinned(MAX_SOCK_REV, 0);

/// Whether the socket belongs to the namespace netplane manages.
fn ours(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = NET_CONFIG.get(0) else {
        return false;
    };
    // SAFETY: a sock_addr context, as the helper expects.
    cfg.netns_cookie != 0
        && unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut c_void) } == cfg.netns_cookie
}

/// Rewrites the destination of a connect or sendmsg aimed at a published
/// port of the host, and remembers it: datagrams read later, and the
/// socket's peer, are given the published address back.
pub fn redirect(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: `sock_addr` points at this invocation's bpf_sock_addr.
    let (dst, port, protocol) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol) };
    let Ok(protocol) = u8::try_from(protocol) else {
        return;
    };
    if !matches!(protocol, proto::TCP | proto::UDP) {
        return;
    }
    let loopback = dst.to_ne_bytes()[0] == 127;
    if !loopback && !nat::is_host_addr(dst) {
        return;
    }
    let Some(target) = nat::published(dst, port, protocol) else {
        return;
    };
    // SAFETY: as above; these fields are writable in connect4/sendmsg4.
    unsafe {
        (*sa).user_ip4 = target.addr_be;
        (*sa).user_port = u32::from(target.port_be);
    }
    let key = SockRevKey {
        // SAFETY: a sock_addr context, as the helper expects.
        cookie: unsafe { bpf_get_socket_cookie(sa as *mut c_void) },
        addr_be: target.addr_be,
        port_be: target.port_be,
        _pad: 0,
    };
    let value = SockRevValue {
        addr_be: dst,
        port_be: port,
        _pad: 0,
    };
    let _ = SOCK_REV.insert(&key, &value, 0);
}

/// Gives a datagram from an endpoint, or the peer of a connected socket,
/// the published address its socket asked for.
pub fn restore(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: `sock_addr` points at this invocation's bpf_sock_addr.
    let key = unsafe {
        SockRevKey {
            cookie: bpf_get_socket_cookie(sa as *mut c_void),
            addr_be: (*sa).user_ip4,
            port_be: (*sa).user_port as u16,
            _pad: 0,
        }
    };
    // SAFETY: a map value, copied out.
    if let Some(orig) = unsafe { SOCK_REV.get(&key) }.copied() {
        // SAFETY: these fields are writable in recvmsg4 and getpeername4.
        unsafe {
            (*sa).user_ip4 = orig.addr_be;
            (*sa).user_port = u32::from(orig.port_be);
        }
    }
}

/// An IPv6 socket address's words (network order), as 16 bytes.
fn bytes_of(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    for (i, w) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    out
}

fn words_of(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The endpoint address and port behind IPv6 socket address `dst`:`port`
/// if it is a published port of the host. An IPv4-mapped address (a
/// dual-stack socket talking IPv4) is looked up as IPv4, and the endpoint
/// given back mapped.
fn published6(dst: &[u8; 16], port: u16, protocol: u8) -> Option<([u8; 16], u16)> {
    if dst[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        let v4 = u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]);
        if dst[12] != 127 && !nat::is_host_addr(v4) {
            return None;
        }
        let target = nat::published(v4, port, protocol)?;
        let mut mapped = *dst;
        mapped[12..].copy_from_slice(&target.addr_be.to_ne_bytes());
        return Some((mapped, target.port_be));
    }
    if *dst != LOOPBACK6 && nat::host_addr6_bits(dst).is_none() {
        return None;
    }
    let target = nat::published6(dst, port, protocol)?;
    Some((target.addr, target.port_be))
}

/// [`redirect`] for IPv6 sockets.
pub fn redirect6(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: `sock_addr` points at this invocation's bpf_sock_addr.
    let (dst, port, protocol) = unsafe {
        (
            bytes_of((*sa).user_ip6),
            (*sa).user_port as u16,
            (*sa).protocol,
        )
    };
    let Ok(protocol) = u8::try_from(protocol) else {
        return;
    };
    if !matches!(protocol, proto::TCP | proto::UDP) {
        return;
    }
    let Some((addr, port_be)) = published6(&dst, port, protocol) else {
        return;
    };
    let words = words_of(&addr);
    // SAFETY: as above; these fields are writable in connect6/sendmsg6,
    // one 32-bit word at a time.
    unsafe {
        (*sa).user_ip6[0] = words[0];
        (*sa).user_ip6[1] = words[1];
        (*sa).user_ip6[2] = words[2];
        (*sa).user_ip6[3] = words[3];
        (*sa).user_port = u32::from(port_be);
    }
    let key = SockRevKey6 {
        // SAFETY: a sock_addr context, as the helper expects.
        cookie: unsafe { bpf_get_socket_cookie(sa as *mut c_void) },
        addr,
        port_be,
        _pad: [0; 6],
    };
    let value = SockRevValue6 {
        addr: dst,
        port_be: port,
        _pad: 0,
    };
    let _ = SOCK_REV6.insert(&key, &value, 0);
}

/// [`restore`] for IPv6 sockets.
pub fn restore6(ctx: &SockAddrContext) {
    if !ours(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: `sock_addr` points at this invocation's bpf_sock_addr.
    let key = unsafe {
        SockRevKey6 {
            cookie: bpf_get_socket_cookie(sa as *mut c_void),
            addr: bytes_of((*sa).user_ip6),
            port_be: (*sa).user_port as u16,
            _pad: [0; 6],
        }
    };
    // SAFETY: a map value, copied out.
    if let Some(orig) = unsafe { SOCK_REV6.get(&key) }.copied() {
        let words = words_of(&orig.addr);
        // SAFETY: these fields are writable in recvmsg6 and getpeername6.
        unsafe {
            (*sa).user_ip6[0] = words[0];
            (*sa).user_ip6[1] = words[1];
            (*sa).user_ip6[2] = words[2];
            (*sa).user_ip6[3] = words[3];
            (*sa).user_port = u32::from(orig.port_be);
        }
    }
}
