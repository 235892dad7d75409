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
use netplane_common::abi::{SockRevKey, SockRevValue, proto};

#[map(name = "NP_SOCK_REV")]
pub(crate) static SOCK_REV: LruHashMap<SockRevKey, SockRevValue> =
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
/// port of the host. For UDP, datagrams read later are given the published
/// address back.
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
    if protocol == proto::UDP {
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
}

/// Gives a datagram from an endpoint the published address its socket sent
/// to.
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
        // SAFETY: these fields are writable in recvmsg4.
        unsafe {
            (*sa).user_ip4 = orig.addr_be;
            (*sa).user_port = u32::from(orig.port_be);
        }
    }
}
