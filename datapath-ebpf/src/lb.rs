//! Service load balancing: frontend lookup and round-robin backend choice. The cursor is one
//! counter per service shared by all CPUs, so sequential new connections visit backends in a
//! strict rotation whichever CPU they land on (a per-CPU cursor would not). It is advanced with a
//! plain read-modify-write: an atomic fetch-add needs BPF ISA v3, which aya-build 0.2.0 gives no
//! way to select; two CPUs racing on the same nanosecond may pick the same backend once, which
//! shifts the rotation but not the shares.
use netbee_abi::{Backend, BackendKey, FrontendKey, Service, svc_flags};

use crate::maps::{BACKENDS, FRONTENDS, NODE_ADDRS, RR, VIPS};

/// Finds the service behind (addr, port, proto): an exact frontend first, then a VIP's any-port
/// frontend (port 0: the port is kept), then the publish on every node address when `addr` is
/// one of this node's addresses.
#[inline(always)]
pub fn frontend(addr: u32, port: u16, proto: u8, from_wire: bool) -> Option<Service> {
    let key = FrontendKey { addr, port, proto, _pad: 0 };
    let svc = match unsafe { FRONTENDS.get(key) } {
        Some(s) => *s,
        None => {
            if unsafe { VIPS.get(addr) }.is_some() {
                *unsafe { FRONTENDS.get(FrontendKey { addr, port: 0, proto, _pad: 0 }) }?
            } else {
                unsafe { NODE_ADDRS.get(addr) }?;
                frontend_wildcard(port, proto)?
            }
        }
    };
    if from_wire && svc.flags & svc_flags::LOCAL_ONLY != 0 {
        return None;
    }
    Some(svc)
}

/// The publish that answers on every node address.
#[inline(always)]
pub fn frontend_wildcard(port: u16, proto: u8) -> Option<Service> {
    unsafe { FRONTENDS.get(FrontendKey { addr: 0, port, proto, _pad: 0 }) }.copied()
}

#[inline(always)]
pub fn select_backend(svc: &Service) -> Option<Backend> {
    if svc.count == 0 {
        return None;
    }
    let cursor = RR.get_ptr_mut(svc.id)?;
    let n = unsafe { *cursor };
    unsafe { *cursor = n.wrapping_add(1) };
    let slot = n % svc.count + 1;
    unsafe { BACKENDS.get(BackendKey { service: svc.id, slot }) }.copied()
}
