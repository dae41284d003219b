//! The eBPF programs run under BPF_PROG_TEST_RUN on crafted packets: every program passes the
//! verifier, and malformed or forged frames are dropped (and counted), never mis-forwarded.
//! Needs root (bpf, a private bpffs mount), like the rest of the suite.
use std::{net::Ipv4Addr, path::PathBuf};

use aya::programs::SchedClassifier;
use netbee_abi::{
    Backend, BackendKey, CtKey, Endpoint, FrontendKey, Iface, LbCountKey, MacKey, Network, Service, ct_flags,
    drop_reason, iface_flags, net_flags, stat, svc_flags,
};

use crate::datapath::{Datapath, ip_be};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CMAC: [u8; 6] = [0x02, 0x42, 172, 30, 0, 2];
const HOST_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 1];
const PEER_MAC: [u8; 6] = [0x02, 0x42, 172, 30, 0, 3];
const OTHER_MAC: [u8; 6] = [0x02, 0x42, 172, 31, 0, 2];

/// A bpffs mounted for one test and unmounted after it.
struct Bpffs(PathBuf);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup() -> (Bpffs, Datapath) {
    let dir = std::env::temp_dir().join(format!("netbee-dp-test-{}-{}", std::process::id(), rand::random::<u32>()));
    let fs = Bpffs(dir.clone());
    let mut dp = Datapath::load(&dir, 1024).expect("every program passes the verifier");
    let net = |subnet: [u8; 4], flags| Network {
        subnet: ip_be(Ipv4Addr::from(subnet)),
        mask: ip_be(Ipv4Addr::new(255, 255, 0, 0)),
        gateway: ip_be(Ipv4Addr::new(subnet[0], subnet[1], 0, 1)),
        flags,
        vni: 0,
        _pad: 0,
    };
    dp.networks.insert(1, net([172, 30, 0, 0], 0), 0).unwrap();
    dp.networks.insert(2, net([172, 31, 0, 0], 0), 0).unwrap();
    // test runs see the packet on ifindex 1: give it a container identity
    dp.ifaces
        .insert(
            1,
            Iface { ip: ip_be(Ipv4Addr::new(172, 30, 0, 2)), net_id: 1, mac: CMAC, host_mac: HOST_MAC, flags: 0 },
            0,
        )
        .unwrap();
    let ep = |mac, net_id| Endpoint { ifindex: 1, net_id, mac, host_mac: HOST_MAC, node_ip: 0, flags: 0 };
    dp.insert_endpoint(ip_be(Ipv4Addr::new(172, 30, 0, 3)), ep(PEER_MAC, 1)).unwrap();
    dp.insert_endpoint(ip_be(Ipv4Addr::new(172, 31, 0, 2)), ep(OTHER_MAC, 2)).unwrap();
    dp.set_subnet("172.30.0.0/16".parse().unwrap(), 1).unwrap();
    dp.set_subnet("172.31.0.0/16".parse().unwrap(), 2).unwrap();
    (fs, dp)
}

#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs `prog` once on `pkt`; returns (verdict, packet as the program left it).
fn run(dp: &mut Datapath, prog: &str, pkt: &[u8]) -> (u32, Vec<u8>) {
    let (verdict, out, _) = run_repeated(dp, prog, pkt, 1);
    (verdict, out)
}

/// Runs `prog` `repeat` times on one copy of `pkt`; also returns the kernel's mean ns per run.
fn run_repeated(dp: &mut Datapath, prog: &str, pkt: &[u8], repeat: u32) -> (u32, Vec<u8>, u32) {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let p: &mut SchedClassifier = dp.program_mut(prog).try_into().unwrap();
    let fd = p.fd().unwrap().as_fd().as_raw_fd();
    let mut out = vec![0u8; pkt.len() + 256];
    let mut attr = TestAttr {
        prog_fd: fd as u32,
        data_size_in: pkt.len() as u32,
        data_size_out: out.len() as u32,
        data_in: pkt.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestAttr, size_of::<TestAttr>()) };
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN on a {}-byte frame: {}", pkt.len(), std::io::Error::last_os_error());
    out.truncate(attr.data_size_out as usize);
    (attr.retval, out, attr.duration)
}

fn drops(dp: &Datapath, reason: u32) -> u64 {
    dp.counters().unwrap().1[reason as usize].1
}

fn eth(dst: [u8; 6], src: [u8; 6], proto: u16) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&proto.to_be_bytes());
    v
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, options: usize, frag: u16, payload: &[u8]) -> Vec<u8> {
    let ihl = 5 + options / 4;
    let total = ihl * 4 + payload.len();
    let mut v = vec![(4 << 4) | ihl as u8, 0];
    v.extend_from_slice(&(total as u16).to_be_bytes());
    v.extend_from_slice(&[0, 1]);
    v.extend_from_slice(&frag.to_be_bytes());
    v.extend_from_slice(&[64, proto, 0, 0]);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend(std::iter::repeat_n(1u8, options));
    v.extend_from_slice(payload);
    v
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    v
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut v = eth([0xff; 6], sha, 0x0806);
    v.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(&sha);
    v.extend_from_slice(&spa);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&tpa);
    v
}

const ME: [u8; 4] = [172, 30, 0, 2];
const PEER: [u8; 4] = [172, 30, 0, 3];
const OTHER_NET: [u8; 4] = [172, 31, 0, 2];

fn from_me(dst_ip: [u8; 4], payload: Vec<u8>, proto: u8) -> Vec<u8> {
    let mut p = eth(HOST_MAC, CMAC, 0x0800);
    p.extend(ipv4(ME, dst_ip, proto, 0, 0, &payload));
    p
}

#[test]
fn arp_for_the_gateway_is_answered_with_the_host_mac() {
    let (_fs, mut dp) = setup();
    let (verdict, out) = run(&mut dp, "tc_from_container", &arp(1, CMAC, ME, [172, 30, 0, 1]));
    assert_eq!(verdict, TC_ACT_REDIRECT, "the reply goes back out of the same veth");
    assert_eq!(&out[0..6], &CMAC, "to the asker");
    assert_eq!(&out[6..12], &HOST_MAC);
    assert_eq!(u16::from_be_bytes([out[20], out[21]]), 2, "an ARP reply");
    assert_eq!(&out[22..28], &HOST_MAC, "sender hardware address = gateway MAC");
    assert_eq!(&out[28..32], &[172, 30, 0, 1]);
    // for a peer: the peer's real MAC
    let (verdict, out) = run(&mut dp, "tc_from_container", &arp(1, CMAC, ME, PEER));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[22..28], &PEER_MAC);
}

#[test]
fn forged_arp_ip_and_mac_are_dropped_and_counted() {
    let (_fs, mut dp) = setup();
    let before = drops(&dp, drop_reason::SPOOFED_ARP);
    let (v, _) = run(&mut dp, "tc_from_container", &arp(1, CMAC, [172, 30, 0, 99], [172, 30, 0, 1]));
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&dp, drop_reason::SPOOFED_ARP), before + 1);
    // an ARP request for a container of another network learns nothing
    let (v, _) = run(&mut dp, "tc_from_container", &arp(1, CMAC, ME, OTHER_NET));
    assert_eq!(v, TC_ACT_SHOT);

    let mut forged_ip = eth(HOST_MAC, CMAC, 0x0800);
    forged_ip.extend(ipv4([172, 30, 0, 99], PEER, 6, 0, 0, &tcp(1000, 80, 0x02)));
    let before = drops(&dp, drop_reason::SPOOFED_IP);
    assert_eq!(run(&mut dp, "tc_from_container", &forged_ip).0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, drop_reason::SPOOFED_IP), before + 1);

    let mut forged_mac = eth(HOST_MAC, [0x02, 0xde, 0xad, 0xbe, 0xef, 0], 0x0800);
    forged_mac.extend(ipv4(ME, PEER, 6, 0, 0, &tcp(1000, 80, 0x02)));
    let before = drops(&dp, drop_reason::SPOOFED_MAC);
    assert_eq!(run(&mut dp, "tc_from_container", &forged_mac).0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, drop_reason::SPOOFED_MAC), before + 1);
}

#[test]
fn same_network_tcp_udp_icmp_are_redirected_with_the_peers_mac() {
    let (_fs, mut dp) = setup();
    for (proto, payload) in
        [(6u8, tcp(1000, 80, 0x02)), (17, vec![0x13, 0x88, 0, 53, 0, 8, 0, 0]), (1, vec![8, 0, 0, 0, 0, 1, 0, 1])]
    {
        let (v, out) = run(&mut dp, "tc_from_container", &from_me(PEER, payload, proto));
        assert_eq!(v, TC_ACT_REDIRECT, "proto {proto}");
        assert_eq!(&out[0..6], &PEER_MAC, "delivered with the peer's MAC");
        assert_eq!(&out[6..12], &HOST_MAC);
    }
    // a frame already addressed to the peer goes in untouched (no write, no header copy)
    let mut direct = eth(PEER_MAC, CMAC, 0x0800);
    direct.extend(ipv4(ME, PEER, 6, 0, 0, &tcp(1000, 80, 0x10)));
    let (v, out) = run(&mut dp, "tc_from_container", &direct);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(out, direct);
    // IP options do not confuse the parser
    let mut p = eth(HOST_MAC, CMAC, 0x0800);
    p.extend(ipv4(ME, PEER, 6, 8, 0, &tcp(1000, 80, 0x10)));
    assert_eq!(run(&mut dp, "tc_from_container", &p).0, TC_ACT_REDIRECT);
    // a backend container takes the conntrack path and still reaches its peer
    dp.ifaces
        .insert(
            1,
            Iface {
                ip: ip_be(Ipv4Addr::from(ME)),
                net_id: 1,
                mac: CMAC,
                host_mac: HOST_MAC,
                flags: iface_flags::BACKEND,
            },
            0,
        )
        .unwrap();
    assert_eq!(run(&mut dp, "tc_from_container", &from_me(PEER, tcp(1000, 80, 0x10), 6)).0, TC_ACT_REDIRECT);
}

#[test]
fn other_networks_unknown_hosts_and_malformed_frames_are_dropped() {
    let (_fs, mut dp) = setup();
    let before = drops(&dp, drop_reason::CROSS_NETWORK);
    assert_eq!(run(&mut dp, "tc_from_container", &from_me(OTHER_NET, tcp(1, 2, 0x02), 6)).0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, drop_reason::CROSS_NETWORK), before + 1);
    // an address of another network with no container behind it
    assert_eq!(run(&mut dp, "tc_from_container", &from_me([172, 31, 9, 9], tcp(1, 2, 0x02), 6)).0, TC_ACT_SHOT);
    // an unknown address of its own subnet
    assert_eq!(run(&mut dp, "tc_from_container", &from_me([172, 30, 9, 9], tcp(1, 2, 0x02), 6)).0, TC_ACT_SHOT);

    let malformed = drops(&dp, drop_reason::MALFORMED);
    let full = from_me(PEER, tcp(1000, 80, 0x02), 6);
    // (the kernel refuses IPv4 test frames shorter than Ethernet + IPv4 headers): TCP cut short
    // to a backend, which parses L4, is never forwarded half-read
    dp.ifaces
        .insert(
            1,
            Iface {
                ip: ip_be(Ipv4Addr::from(ME)),
                net_id: 1,
                mac: CMAC,
                host_mac: HOST_MAC,
                flags: iface_flags::BACKEND,
            },
            0,
        )
        .unwrap();
    let to_vip_like = from_me([172, 30, 0, 1], tcp(1000, 80, 0x02), 6);
    for cut in [34usize, 36, 40] {
        let (v, _) = run(&mut dp, "tc_from_container", &to_vip_like[..cut]);
        assert_ne!(v, TC_ACT_REDIRECT, "a frame cut at {cut} bytes is not forwarded to a container");
    }
    let short_arp = arp(1, CMAC, ME, PEER);
    for cut in [16usize, 22, 30] {
        let (v, _) = run(&mut dp, "tc_from_container", &short_arp[..cut]);
        assert_eq!(v, TC_ACT_SHOT, "an ARP frame cut at {cut} bytes is dropped");
    }
    assert!(drops(&dp, drop_reason::MALFORMED) > malformed);
    // IPv4 header claiming a length under 20 bytes
    let mut bad = full.clone();
    bad[14] = 0x44;
    assert_eq!(run(&mut dp, "tc_from_container", &bad).0, TC_ACT_SHOT);
    // IPv6 is not spoken
    let mut v6 = eth(HOST_MAC, CMAC, 0x86dd);
    v6.extend_from_slice(&[0x60; 40]);
    let before = drops(&dp, drop_reason::UNSUPPORTED_L3);
    assert_eq!(run(&mut dp, "tc_from_container", &v6).0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, drop_reason::UNSUPPORTED_L3), before + 1);
}

#[test]
fn gateway_and_outside_traffic_go_to_the_stack_fragments_included() {
    let (_fs, mut dp) = setup();
    assert_eq!(
        run(&mut dp, "tc_from_container", &from_me([172, 30, 0, 1], vec![8, 0, 0, 0, 0, 1, 0, 1], 1)).0,
        TC_ACT_OK
    );
    assert_eq!(run(&mut dp, "tc_from_container", &from_me([10, 9, 9, 9], tcp(1000, 443, 0x02), 6)).0, TC_ACT_OK);
    // a non-first fragment towards the outside: no L4 header to translate, routed as it is
    let mut frag = eth(HOST_MAC, CMAC, 0x0800);
    frag.extend(ipv4(ME, [10, 9, 9, 9], 17, 0, 0x00b9, &[0u8; 32]));
    assert_eq!(run(&mut dp, "tc_from_container", &frag).0, TC_ACT_OK);
    // an internal network keeps everything but its gateway inside
    dp.networks.insert(1, Network { flags: net_flags::INTERNAL, ..dp.networks.get(&1, 0).unwrap() }, 0).unwrap();
    assert_eq!(run(&mut dp, "tc_from_container", &from_me([10, 9, 9, 9], tcp(1000, 443, 0x02), 6)).0, TC_ACT_SHOT);
    assert_eq!(run(&mut dp, "tc_from_container", &from_me([172, 30, 0, 1], tcp(1000, 53, 0x02), 6)).0, TC_ACT_OK);
}

#[test]
fn uplink_programs_pass_unrelated_and_malformed_traffic() {
    let (_fs, mut dp) = setup();
    let mut p = eth([1; 6], [2; 6], 0x0800);
    p.extend(ipv4([10, 0, 0, 9], [10, 0, 0, 1], 6, 0, 0, &tcp(1, 22, 0x02)));
    for prog in ["tc_uplink_ingress", "tc_uplink_egress"] {
        assert_eq!(run(&mut dp, prog, &p).0, TC_ACT_OK, "{prog}: not ours, untouched");
        assert_eq!(run(&mut dp, prog, &p[..36]).0, TC_ACT_OK, "{prog}: truncated, left to the stack");
        let (v, out) = run(&mut dp, prog, &p);
        assert_eq!((v, &out[..]), (TC_ACT_OK, &p[..]), "{prog}: bytes unchanged");
    }
}

#[test]
fn from_the_wire_a_container_address_is_reached_only_through_published_ports() {
    let (_fs, mut dp) = setup();
    let before = drops(&dp, drop_reason::UNPUBLISHED);
    let icmp_echo = vec![8, 0, 0, 0, 0, 1, 0, 1];
    let probes = [(6u8, tcp(1000, 80, 0x02)), (17, vec![0x13, 0x88, 0, 53, 0, 8, 0, 0]), (1, icmp_echo)];
    for (proto, payload) in probes.iter().cloned() {
        let mut p = eth([1; 6], [2; 6], 0x0800);
        p.extend(ipv4([10, 0, 0, 9], PEER, proto, 0, 0, &payload));
        assert_eq!(run(&mut dp, "tc_uplink_ingress", &p).0, TC_ACT_SHOT, "proto {proto} routed to a container");
    }
    // a fragment carries no port, and is dropped the same way
    let mut frag = eth([1; 6], [2; 6], 0x0800);
    frag.extend(ipv4([10, 0, 0, 9], PEER, 17, 0, 0x00b9, &[0u8; 32]));
    assert_eq!(run(&mut dp, "tc_uplink_ingress", &frag).0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, drop_reason::UNPUBLISHED), before + 4);
}

#[test]
fn native_mesh_frames_are_accepted_only_from_peer_nodes_for_local_overlay_tasks() {
    let (_fs, mut dp) = setup();
    let overlay = Network {
        subnet: ip_be(Ipv4Addr::new(10, 0, 0, 0)),
        mask: ip_be(Ipv4Addr::new(255, 255, 0, 0)),
        gateway: ip_be(Ipv4Addr::new(10, 0, 0, 1)),
        flags: net_flags::OVERLAY,
        vni: 4097,
        _pad: 0,
    };
    dp.networks.insert(3, overlay, 0).unwrap();
    dp.set_config(netbee_abi::config::MESH_NATIVE, 1).unwrap();
    dp.set_subnet("10.0.0.0/16".parse().unwrap(), 3).unwrap();
    let task = Ipv4Addr::new(10, 0, 9, 5);
    dp.insert_endpoint(
        ip_be(task),
        Endpoint { ifindex: 1, net_id: 3, mac: PEER_MAC, host_mac: HOST_MAC, node_ip: 0, flags: 0 },
    )
    .unwrap();
    let (peer_mac, stranger_mac, node_mac) = ([0x0a, 0, 0, 0, 0, 2], [0x0a, 0, 0, 0, 0, 9], [0x0a, 0, 0, 0, 0, 3]);
    let peer_ip = u32::from(Ipv4Addr::new(192, 168, 50, 2));
    let client = [192, 168, 50, 200];
    let syn = |src_mac, dst: Ipv4Addr| {
        let mut p = eth(node_mac, src_mac, 0x0800);
        p.extend(ipv4(client, dst.octets(), 6, 0, 0, &tcp(40000, 8080, 0x02)));
        p
    };
    let set_backend = |dp: &mut Datapath, flags| {
        let mut i = dp.ifaces.get(&1, 0).unwrap();
        i.flags = flags;
        dp.ifaces.insert(1, i, 0).unwrap();
    };
    set_backend(&mut dp, iface_flags::BACKEND);
    let before = drops(&dp, drop_reason::UNPUBLISHED);
    // a host that is not a registered peer reaches nothing
    assert_eq!(run(&mut dp, "tc_uplink_ingress", &syn(stranger_mac, task)).0, TC_ACT_SHOT);
    dp.peer_nodes.insert(MacKey { mac: peer_mac, _pad: [0; 2] }, peer_ip, 0).unwrap();
    assert_eq!(run(&mut dp, "tc_uplink_ingress", &syn(stranger_mac, task)).0, TC_ACT_SHOT);
    // a peer reaches a service task on an overlay; the frame is readdressed to the task and the
    // flow's replies are bound to go back to that peer natively
    let (v, out) = run(&mut dp, "tc_uplink_ingress", &syn(peer_mac, task));
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!((&out[..6], &out[6..12]), (&PEER_MAC[..], &HOST_MAC[..]));
    let reply = CtKey::new(ip_be(task), ip_be(Ipv4Addr::from(client)), 8080u16.to_be(), 40000u16.to_be(), 6);
    let e = dp.ct.get(&reply, 0).expect("return entry for the reply direction");
    assert_eq!(e.flags & (ct_flags::TUNNEL_RETURN | ct_flags::DIRECT), ct_flags::TUNNEL_RETURN | ct_flags::DIRECT);
    assert_eq!((e.tunnel_node, e.vni), (peer_ip, 4097));
    // but not a container that is nobody's backend, nor one on a bridge network
    set_backend(&mut dp, 0);
    assert_eq!(run(&mut dp, "tc_uplink_ingress", &syn(peer_mac, task)).0, TC_ACT_SHOT);
    set_backend(&mut dp, iface_flags::BACKEND);
    assert_eq!(run(&mut dp, "tc_uplink_ingress", &syn(peer_mac, Ipv4Addr::new(172, 30, 0, 3))).0, TC_ACT_SHOT);
    // a node in the default tunnel mode accepts native frames from nobody
    dp.set_config(netbee_abi::config::MESH_NATIVE, 0).unwrap();
    assert_eq!(run(&mut dp, "tc_uplink_ingress", &syn(peer_mac, task)).0, TC_ACT_SHOT);
    assert_eq!(drops(&dp, drop_reason::UNPUBLISHED), before + 5);
}

/// 10.0.0.1:8080 published to 172.30.0.3:80 and 172.30.0.4:80 in turn, both local (a replicated
/// service's publish, datapath id 3): the frontend's key and the node address.
fn publish_to_two_backends(dp: &mut Datapath) -> (FrontendKey, Ipv4Addr) {
    let node = Ipv4Addr::new(10, 0, 0, 1);
    let key = FrontendKey { addr: ip_be(node), port: 8080u16.to_be(), proto: 6, _pad: 0 };
    dp.frontends.insert(key, Service { id: 3, count: 2, net_id: 1, flags: 0 }, 0).unwrap();
    for (slot, b) in [Ipv4Addr::new(172, 30, 0, 3), Ipv4Addr::new(172, 30, 0, 4)].iter().enumerate() {
        let be = Backend { addr: ip_be(*b), port: 80u16.to_be(), _pad: 0 };
        dp.backends.insert(BackendKey { service: 3, slot: slot as u32 + 1 }, be, 0).unwrap();
        let ep = Endpoint { ifindex: 1, net_id: 1, mac: PEER_MAC, host_mac: HOST_MAC, node_ip: 0, flags: 0 };
        dp.insert_endpoint(ip_be(*b), ep).unwrap();
    }
    (key, node)
}

#[test]
fn a_closed_flows_tuple_opens_a_new_translated_flow() {
    let (_fs, mut dp) = setup();
    let (key, node) = publish_to_two_backends(&mut dp);
    let client = [10, 0, 0, 9];
    let segment = |flags| {
        let mut p = eth([1; 6], [2; 6], 0x0800);
        p.extend(ipv4(client, node.octets(), 6, 0, 0, &tcp(40000, 8080, flags)));
        p
    };
    let dst = |out: &[u8]| (Ipv4Addr::new(out[30], out[31], out[32], out[33]), u16::from_be_bytes([out[36], out[37]]));
    let forward = CtKey::new(ip_be(Ipv4Addr::from(client)), ip_be(node), 40000u16.to_be(), 8080u16.to_be(), 6);
    let reply_of =
        |b: Ipv4Addr| CtKey::new(ip_be(b), ip_be(Ipv4Addr::from(client)), 80u16.to_be(), 40000u16.to_be(), 6);

    let (v, out) = run(&mut dp, "tc_uplink_ingress", &segment(0x02));
    assert_eq!(v, TC_ACT_REDIRECT);
    let first = dst(&out).0;
    assert_eq!(dst(&out).1, 80);
    // the same connection's later segments keep its backend, even its FIN
    for flags in [0x10, 0x11] {
        assert_eq!(dst(&run(&mut dp, "tc_uplink_ingress", &segment(flags)).1).0, first);
    }
    assert_ne!(dp.ct.get(&forward, 0).unwrap().flags & ct_flags::SEEN_FIN, 0);
    // the client reuses its port for a new connection before the closed flow expired: a fresh
    // choice (the next backend), written over the closed entries, not a stale one
    let (v, out) = run(&mut dp, "tc_uplink_ingress", &segment(0x02));
    assert_eq!(v, TC_ACT_REDIRECT);
    let second = dst(&out).0;
    assert_ne!(second, first, "round robin moves on for the new connection");
    let e = dp.ct.get(&forward, 0).unwrap();
    assert_eq!((e.nat_addr, e.flags & (ct_flags::DNAT | ct_flags::SEEN_FIN)), (ip_be(second), ct_flags::DNAT));
    let r = dp.ct.get(&reply_of(second), 0).expect("reply entry of the new flow");
    assert_eq!((r.nat_addr, r.nat_port, r.flags & ct_flags::REVNAT), (ip_be(node), 8080u16.to_be(), ct_flags::REVNAT));
    assert_eq!(dst(&run(&mut dp, "tc_uplink_ingress", &segment(0x10)).1).0, second);
    // a reset ends it too; the third connection returns to the first backend, over its old entries
    run(&mut dp, "tc_uplink_ingress", &segment(0x04));
    assert_ne!(dp.ct.get(&forward, 0).unwrap().flags & ct_flags::SEEN_RST, 0);
    assert_eq!(dst(&run(&mut dp, "tc_uplink_ingress", &segment(0x02)).1).0, first);
    let e = dp.ct.get(&forward, 0).unwrap();
    assert_eq!((e.nat_addr, e.flags & (ct_flags::SEEN_FIN | ct_flags::SEEN_RST)), (ip_be(first), 0));

    // each new connection counted once against its frontend and backend (LB_CONNS), later
    // segments not; a frontend that is no routing-mesh port counts no mesh connection
    let count = |dp: &Datapath, b: Ipv4Addr| {
        dp.lb_counts().get(&LbCountKey { service: 3, addr: ip_be(b), port: 80u16.to_be(), _pad: 0 }).copied()
    };
    let mesh = |dp: &Datapath| dp.counters().unwrap().0[stat::MESH_RECEIVED as usize].1;
    assert_eq!((count(&dp, first), count(&dp, second), mesh(&dp)), (Some(2), Some(1), 0));
    dp.frontends.insert(key, Service { id: 3, count: 2, net_id: 1, flags: svc_flags::MESH }, 0).unwrap();
    run(&mut dp, "tc_uplink_ingress", &segment(0x04));
    assert_eq!(dst(&run(&mut dp, "tc_uplink_ingress", &segment(0x02)).1).0, second);
    assert_eq!((count(&dp, first), count(&dp, second), mesh(&dp)), (Some(2), Some(2), 1));
    // the daemon removes the counters of backends that left
    dp.prune_lb_counts(|k| k.addr != ip_be(first)).unwrap();
    assert_eq!((count(&dp, first), count(&dp, second)), (None, Some(2)));
}

/// ```text
///   client 10.0.0.9:40000 ──SYN──▶ uplink: 10.0.0.1:8080 ──DNAT──▶ 172.30.0.3:80 (not listening)
///                          ◀──RST── uplink ◀──REVNAT─────────────── 172.30.0.3   (refused)
///   client 10.0.0.9:40000 ──SYN──▶ (the same port, reused) ──────▶ 172.30.0.4:80, the next one
/// ```
/// A backend that refuses (a lost node's task, one that stopped listening) sends its reset on the
/// reply entry; the client's entry must end with it, or a client that reuses the port follows the
/// old choice to the refusing backend for as long as the entry lives (the SYN timeout, 60 s).
#[test]
fn a_backends_reset_ends_the_flow_for_the_clients_next_syn() {
    let (_fs, mut dp) = setup();
    let (_, node) = publish_to_two_backends(&mut dp);
    let client = [10, 0, 0, 9];
    let forward = CtKey::new(ip_be(Ipv4Addr::from(client)), ip_be(node), 40000u16.to_be(), 8080u16.to_be(), 6);
    let syn = {
        let mut p = eth([1; 6], [2; 6], 0x0800);
        p.extend(ipv4(client, node.octets(), 6, 0, 0, &tcp(40000, 8080, 0x02)));
        p
    };
    let dst = |out: &[u8]| Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    let (v, out) = run(&mut dp, "tc_uplink_ingress", &syn);
    assert_eq!(v, TC_ACT_REDIRECT);
    let refusing = dst(&out);
    // the refusing backend answers from its veth (ifindex 1 of the test runs is that backend)
    dp.ifaces
        .insert(
            1,
            Iface { ip: ip_be(refusing), net_id: 1, mac: PEER_MAC, host_mac: HOST_MAC, flags: iface_flags::BACKEND },
            0,
        )
        .unwrap();
    let mut rst = eth(HOST_MAC, PEER_MAC, 0x0800);
    rst.extend(ipv4(refusing.octets(), client, 6, 0, 0, &tcp(80, 40000, 0x14)));
    let (_, out) = run(&mut dp, "tc_from_container", &rst);
    let src = Ipv4Addr::new(out[26], out[27], out[28], out[29]);
    assert_eq!(src, node, "the reset leaves with the frontend's address (source)");
    let flags = dp.ct.get(&forward, 0).expect("the client's entry").flags;
    assert_ne!(flags & ct_flags::SEEN_RST, 0, "client's entry flags {flags:#x}: the backend's reset not recorded");
    let (v, out) = run(&mut dp, "tc_uplink_ingress", &syn);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_ne!(dst(&out), refusing, "destination of the reused port's SYN: still the refusing backend");
    let e = dp.ct.get(&forward, 0).unwrap();
    assert_eq!((e.nat_addr, e.flags & ct_flags::SEEN_RST), (ip_be(dst(&out)), 0), "the new flow's entry");
}

/// The plain forwarding path's cost per packet as the kernel measures it under
/// BPF_PROG_TEST_RUN (a profile, not a benchmark: `cargo test --release -p netbee
/// per_packet_cost -- --ignored --nocapture`).
#[test]
#[ignore]
fn per_packet_cost_of_the_plain_path() {
    let (_fs, mut dp) = setup();
    let mut pkt = eth(PEER_MAC, CMAC, 0x0800);
    pkt.extend(ipv4(ME, PEER, 6, 0, 0, &tcp(1000, 80, 0x10)));
    pkt.extend(std::iter::repeat_n(0u8, 64));
    let mut runs = Vec::new();
    for _ in 0..5 {
        let (v, out, ns) = run_repeated(&mut dp, "tc_from_container", &pkt, 1_000_000);
        assert_eq!((v, &out), (TC_ACT_REDIRECT, &pkt), "redirected untouched on every run");
        runs.push(ns);
    }
    runs.sort();
    eprintln!("tc_from_container, same-network TCP segment: median {} ns/packet (runs {runs:?})", runs[2]);
}

/// A published port's DNAT on the uplink: a connection's first packet (backend choice, both
/// conntrack entries created, destination rewritten) and an established one (conntrack hit,
/// rewrite). Timed one run per packet, since a repeated run would see its own rewrite: each
/// figure includes the kernel timer's own reads, so compare it only between builds (`cargo test
/// --release -p netbee per_packet_cost -- --ignored --nocapture`).
#[test]
#[ignore]
fn per_packet_cost_of_the_published_port_path() {
    let (_fs, mut dp) = setup();
    let node = Ipv4Addr::new(10, 0, 0, 1);
    let key = FrontendKey { addr: ip_be(node), port: 8080u16.to_be(), proto: 6, _pad: 0 };
    dp.frontends.insert(key, Service { id: 3, count: 1, net_id: 1, flags: 0 }, 0).unwrap();
    let backend = Backend { addr: ip_be(Ipv4Addr::from(PEER)), port: 80u16.to_be(), _pad: 0 };
    dp.backends.insert(BackendKey { service: 3, slot: 1 }, backend, 0).unwrap();
    let client = [10, 0, 0, 9];
    let segment = |flags| {
        let mut p = eth([1; 6], [2; 6], 0x0800);
        p.extend(ipv4(client, node.octets(), 6, 0, 0, &tcp(40000, 8080, flags)));
        p.extend(std::iter::repeat_n(0u8, 64));
        p
    };
    let forward = CtKey::new(ip_be(Ipv4Addr::from(client)), ip_be(node), 40000u16.to_be(), 8080u16.to_be(), 6);
    let reply = CtKey::new(backend.addr, ip_be(Ipv4Addr::from(client)), 80u16.to_be(), 40000u16.to_be(), 6);
    let median = |mut v: Vec<u32>| {
        v.sort();
        v[v.len() / 2]
    };
    const N: usize = 20_000;
    let (syn, ack) = (segment(0x02), segment(0x10));
    let mut first = Vec::with_capacity(N);
    for _ in 0..N {
        let _ = dp.ct.remove(&forward);
        let _ = dp.ct.remove(&reply);
        let (v, _, ns) = run_repeated(&mut dp, "tc_uplink_ingress", &syn, 1);
        assert_eq!(v, TC_ACT_REDIRECT, "first packet translated and redirected");
        first.push(ns);
    }
    let mut established = Vec::with_capacity(N);
    for _ in 0..N {
        let (v, _, ns) = run_repeated(&mut dp, "tc_uplink_ingress", &ack, 1);
        assert_eq!(v, TC_ACT_REDIRECT, "established packet translated and redirected");
        established.push(ns);
    }
    eprintln!(
        "tc_uplink_ingress, published port: first packet median {} ns, established median {} ns (single runs)",
        median(first),
        median(established)
    );
}

/// The round-robin cursor is advanced with BPF's atomic fetch-and-add (ISA v3: opcode 0xdb =
/// STX|ATOMIC|DW, imm 0x01 = ADD|FETCH), not a load and a store two CPUs can interleave; the
/// instruction is written out in `mem::fetch_add` because the compiler will not emit it for this
/// target, so check that it is really in the object.
#[test]
fn the_round_robin_cursor_is_an_atomic_fetch_and_add() {
    use object::{Object as _, ObjectSection as _, SectionKind};
    let file = object::File::parse(crate::datapath::OBJECT).expect("the eBPF object parses");
    let with_fetch_add: Vec<String> = file
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .filter(|s| {
            s.data().unwrap_or_default().chunks_exact(8).any(|insn| insn[0] == 0xdb && insn[4..8] == [1, 0, 0, 0])
        })
        .map(|s| s.name().unwrap_or("?").to_string())
        .collect();
    // backends are chosen in the socket programs and on the container and uplink TC paths
    assert!(with_fetch_add.len() >= 2, "atomic_fetch_add (0xdb, imm 1) found only in sections {with_fetch_add:?}");
}

/// Every event waiting in the monitor's ring buffer.
fn monitor_events(maps: &mut crate::datapath::MonitorMaps) -> Vec<netbee_abi::MonitorEvent> {
    let mut out = Vec::new();
    while let Some(item) = maps.events.next() {
        out.push(crate::monitor::decode(&item).expect("a whole record"));
    }
    out
}

#[test]
fn the_monitor_reports_drops_and_lb_decisions_only_while_enabled_and_within_its_rate() {
    use netbee_abi::{MONITOR_EVENTS_PER_WINDOW, config, monitor_kind, monitor_via};
    let (_fs, mut dp) = setup();
    let mut maps = dp.take_monitor_maps().unwrap();
    let cross = from_me(OTHER_NET, tcp(40000, 8080, 0x02), 6);
    // nobody listens: nothing emitted, nothing counted as suppressed
    assert_eq!(run(&mut dp, "tc_from_container", &cross).0, TC_ACT_SHOT);
    assert!(monitor_events(&mut maps).is_empty());
    assert_eq!(maps.suppressed(), 0);

    dp.set_config(config::MONITOR, monitor_kind::DROP as u64).unwrap();
    assert_eq!(run(&mut dp, "tc_from_container", &cross).0, TC_ACT_SHOT);
    let evs = monitor_events(&mut maps);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let e = evs[0];
    assert_eq!((e.kind, e.reason, e.proto, e.ethertype), (monitor_kind::DROP, drop_reason::CROSS_NETWORK, 6, 0x0800));
    assert_eq!((e.saddr, e.daddr), (ip_be(Ipv4Addr::from(ME)), ip_be(Ipv4Addr::from(OTHER_NET))));
    assert_eq!((u16::from_be(e.sport), u16::from_be(e.dport)), (40000, 8080));
    // a forwarded packet emits nothing, and leaves nothing pending for a later verdict
    assert_eq!(run(&mut dp, "tc_from_container", &from_me(PEER, tcp(1, 2, 0x02), 6)).0, TC_ACT_REDIRECT);
    assert!(monitor_events(&mut maps).is_empty());

    // a flood: the window's share, the rest counted
    let (_, _, _) = run_repeated(&mut dp, "tc_from_container", &cross, MONITOR_EVENTS_PER_WINDOW as u32 + 50);
    let evs = monitor_events(&mut maps);
    // one test run of a few hundred packets takes well under the 100 ms window, unless it
    // straddles a window's end: then both windows' shares may go through
    assert!(
        evs.len() as u64 >= MONITOR_EVENTS_PER_WINDOW - 1 && evs.len() as u64 <= 2 * MONITOR_EVENTS_PER_WINDOW,
        "{} events",
        evs.len()
    );
    assert_eq!(evs.len() as u64 + maps.suppressed(), MONITOR_EVENTS_PER_WINDOW + 50, "each packet emitted or counted");
    std::thread::sleep(std::time::Duration::from_millis(110));

    // LB decisions: only with their own bit
    let node = Ipv4Addr::new(10, 0, 0, 1);
    let key = FrontendKey { addr: ip_be(node), port: 8080u16.to_be(), proto: 6, _pad: 0 };
    dp.frontends.insert(key, Service { id: 3, count: 1, net_id: 1, flags: 0 }, 0).unwrap();
    let backend = Ipv4Addr::from(PEER);
    dp.backends
        .insert(BackendKey { service: 3, slot: 1 }, Backend { addr: ip_be(backend), port: 80u16.to_be(), _pad: 0 }, 0)
        .unwrap();
    let syn = |sport| {
        let mut p = eth([1; 6], [2; 6], 0x0800);
        p.extend(ipv4([10, 0, 0, 9], node.octets(), 6, 0, 0, &tcp(sport, 8080, 0x02)));
        p
    };
    assert_eq!(run(&mut dp, "tc_uplink_ingress", &syn(50000)).0, TC_ACT_REDIRECT);
    assert!(monitor_events(&mut maps).is_empty(), "drops only");
    dp.set_config(config::MONITOR, monitor_kind::LB as u64).unwrap();
    assert_eq!(run(&mut dp, "tc_uplink_ingress", &syn(50001)).0, TC_ACT_REDIRECT);
    let evs = monitor_events(&mut maps);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let e = evs[0];
    assert_eq!((e.kind, e.via, e.service, e.slot), (monitor_kind::LB, monitor_via::WIRE, 3, 1));
    assert_eq!((e.daddr, u16::from_be(e.dport)), (ip_be(node), 8080));
    assert_eq!((e.backend_addr, u16::from_be(e.backend_port)), (ip_be(backend), 80));
    assert_eq!(u16::from_be(e.sport), 50001);
}

/// What one conntrack entry costs the kernel, as it charges it (the map's `memlock` in fdinfo):
/// the default size is derived from this figure (`datapath::CT_ENTRY_BYTES`), so it must hold.
#[test]
fn a_conntrack_entry_costs_what_the_default_size_assumes() {
    let dir = std::env::temp_dir().join(format!("netbee-dp-ct-{}-{}", std::process::id(), rand::random::<u32>()));
    let _fs = Bpffs(dir.clone());
    // a size no other map of the object has (SOCK_REVNAT is an LRU hash of 65,536)
    let entries = 40960u64;
    let _dp = Datapath::load(&dir, entries as u32).expect("loads");
    // the CT map is the one LRU hash of this size among this process's descriptors
    let memlock = std::fs::read_dir("/proc/self/fdinfo")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|info| info.contains("map_type:\t9\n") && info.contains(&format!("max_entries:\t{entries}\n")))
        .find_map(|info| info.lines().find_map(|l| l.strip_prefix("memlock:\t")?.trim().parse::<u64>().ok()))
        .expect("the CT map's fdinfo");
    let per_entry = memlock / entries;
    // neither more than assumed (the default would overrun its budget) nor much less (it would
    // give away flows for nothing); a size between powers of two pays most for its buckets
    let assumed = crate::datapath::CT_ENTRY_BYTES;
    assert!(
        per_entry <= assumed && per_entry * 10 >= assumed * 8,
        "a conntrack entry costs {per_entry} bytes ({memlock} for {entries}), the default size assumes {assumed}"
    );
}
