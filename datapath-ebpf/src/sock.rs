//! Socket-level load balancing for processes on the node itself (docker needs a userland proxy
//! for this). connect()/sendmsg() to a published port are pointed at the chosen backend before
//! any packet exists; getpeername()/recvmsg() translate back so the application still sees the
//! address it asked for. Only sockets in the node's own network namespace are touched: containers
//! are balanced per packet on their veth.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use netbee_abi::{SockKey, SockRevNat, config, stat, svc_flags};

use crate::{
    lb,
    maps::{SOCK_REVNAT, config, count, count_backend},
};

const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    translate_to_backend(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate_to_backend(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    translate_to_frontend(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    translate_to_frontend(&ctx);
    ALLOW
}

#[inline(always)]
fn on_node(ctx: &SockAddrContext) -> bool {
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    cookie == config(config::NODE_NETNS_COOKIE)
}

#[inline(always)]
fn translate_to_backend(ctx: &SockAddrContext) {
    if !on_node(ctx) {
        return;
    }
    let sa = unsafe { &mut *ctx.sock_addr };
    let addr = sa.user_ip4;
    let port = sa.user_port as u16;
    let Some(svc) = lb::frontend(addr, port, sa.protocol as u8, false).or_else(|| {
        // 127.0.0.0/8 reaches every wildcard publish, as docker-proxy listening on 0.0.0.0 does
        if u32::from_be(addr) >> 24 == 127 { lb::frontend_wildcard(port, sa.protocol as u8) } else { None }
    }) else {
        return;
    };
    if svc.flags & svc_flags::VIP != 0 {
        return;
    }
    let Some((_, be)) = lb::select_backend(&svc) else { return };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey { cookie, addr: be.addr, port: be.port, _pad: 0 };
    let orig = SockRevNat { addr, port, _pad: 0 };
    if SOCK_REVNAT.insert(key, orig, 0).is_err() {
        return;
    }
    sa.user_ip4 = be.addr;
    sa.user_port = be.port as u32;
    count(stat::SOCK_LB);
    count_backend(svc.id, &be);
}

#[inline(always)]
fn translate_to_frontend(ctx: &SockAddrContext) {
    if !on_node(ctx) {
        return;
    }
    let sa = unsafe { &mut *ctx.sock_addr };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey { cookie, addr: sa.user_ip4, port: sa.user_port as u16, _pad: 0 };
    if let Some(orig) = unsafe { SOCK_REVNAT.get(key) } {
        sa.user_ip4 = orig.addr;
        sa.user_port = orig.port as u32;
    }
}
