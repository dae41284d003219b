#!/usr/bin/env python3
"""Where each system's CPU goes per connection, from one bench run under `perf record -a -g`.

    python3 bench/profile.py published-port [--rounds N] [--keep DIR]
    python3 bench/profile.py routing-mesh

Runs `target/release/netbee-bench --only SCENARIO` (build it first: `cargo xtask bench --list`)
while perf samples every CPU with call graphs, then splits the samples into one-second windows
and gives each window to the system that was under load in it (the bench measures the systems
one after the other): netbee when its tc programs are on the stacks, netbee-tunnel when they
encapsulate too (routing-mesh), iptables when netfilter NAT is, socat or haproxy by process
name. Each system's samples, per category of kernel or user work, are divided by the
connections it served (its median conn/s from the run's JSON), so the table shows microseconds
of CPU per connection side by side: the part a datapath can change (its programs, netfilter,
bridges, forwarding) next to the part it cannot (client, server, TCP). Windows where no system
dominates (setup, fairness checks) are left out.
"""
import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

FREQ = 499  # samples per second per CPU
SCENARIOS = ("published-port", "routing-mesh")

# (category, regex on the whole stack); the first match wins, so datapath work is charged to the
# datapath even when it runs inside a client's or server's system call
STACK_CATEGORIES = [
    ("netbee tc programs", re.compile(r"bpf_prog_\w+_tc_|\[bpf_prog\]")),
    ("netfilter (conntrack, NAT, rules)", re.compile(r"nf_hook_slow|ipt_do_table|nf_conntrack|nf_nat|nft_do_chain")),
    ("VXLAN encap/decap", re.compile(r"vxlan_|udp_tunnel")),
    ("Linux bridges", re.compile(r"br_handle_frame|br_forward|br_dev_xmit|br_nf_")),
    ("IP forwarding and routing", re.compile(r"ip_forward|ip_route_input|fib_table_lookup|ip_rcv_finish_core")),
]
# by the innermost frame, for the rest
LEAF_CATEGORIES = [
    ("TCP and sockets", re.compile(r"^(tcp_|inet_|__inet|reqsk|sk_|__sk|sock_|__sock|inet_csk|bbr_)")),
    ("skb and memory", re.compile(r"^(kmem_|kfree|__alloc|skb_release|__slab|___slab|consume_skb|kmalloc|__kmalloc|skb_clone|pskb_|__build_skb|__memcg|mod_objcg|obj_cgroup)")),
    ("IP and devices (veth, backlog)", re.compile(r"^(ip_|__ip|ipv4_|dst_|rt_|veth_|netif_|__netif|__dev_|dev_|process_backlog|net_rx|enqueue_to_backlog|eth_type|skb_|__skb_)")),
    ("locks", re.compile(r"(spin_lock|spin_unlock|queued_spin)")),
    ("system calls, epoll, scheduler", re.compile(r"^(entry_|do_syscall|syscall|__x64|__fget|fput|__fput|fdget|ep_|do_epoll|__sys|schedule|__schedule|finish_task|pick_next|dequeue|enqueue|update_|psi_|try_to_wake|ttwu|select_task)")),
    ("idle", re.compile(r"(safe_halt|default_idle|cpuidle|acpi_idle)")),
]


def signature(comm, stack):
    """Which system a sample is evidence of, if any."""
    s = " ".join(stack)
    if re.search(r"bpf_prog_\w+_tc_", s):
        return "netbee"
    if re.search(r"ipt_do_table|nf_nat_inet_fn|nft_do_chain", s):
        return "iptables"
    if comm in ("socat", "haproxy"):
        return comm
    return None


def category(comm, stack):
    s = " ".join(stack)
    for name, rx in STACK_CATEGORIES:
        if rx.search(s):
            return name
    leaf = stack[0] if stack else ""
    for name, rx in LEAF_CATEGORIES:
        if rx.search(leaf):
            return name
    if leaf.startswith("[unknown]") or comm in ("wrk", "nginx", "socat", "haproxy"):
        return f"other: {comm}"
    return "kernel, other"


def read_samples(perf_data):
    out = subprocess.run(["perf", "script", "-i", perf_data, "-F", "comm,tid,time,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    samples, cur = [], None
    for line in out.splitlines():
        if not line.strip():
            if cur:
                samples.append(cur)
            cur = None
        elif not line[0].isspace():
            head = line.split()
            cur = (head[0], float(head[-1].rstrip(":")), [])
        elif cur:
            parts = line.split(None, 1)
            cur[2].append(parts[1] if len(parts) > 1 else "?")
    if cur:
        samples.append(cur)
    return samples


def conn_rates(results_dir):
    """system -> median new connections/s, from the run's JSON."""
    rates = {}
    for path in glob.glob(os.path.join(results_dir, "*.json")):
        for sc in json.load(open(path))["scenarios"]:
            for m in sc["metrics"]:
                if m["unit"] != "conn/s":
                    continue
                rates["netbee"] = m["netbee"]["median"]
                for b in m["baselines"]:
                    rates[b["system"]] = b["stats"]["median"]
    return rates


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keep", help="keep perf.data and the bench results in this directory")
    ap.add_argument("--analyze", metavar="DIR", help="only analyze DIR/perf.data and DIR/results of an earlier run")
    args = ap.parse_args()
    bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "netbee-bench")
    if not args.analyze and not os.path.exists(bench):
        sys.exit(f"{bench} is missing: run `cargo xtask bench --list` first")
    work = args.analyze or args.keep or tempfile.mkdtemp(prefix="netbee-profile-")
    os.makedirs(work, exist_ok=True)
    perf_data, results = os.path.join(work, "perf.data"), os.path.join(work, "results")
    if not args.analyze:
        cmd = ["perf", "record", "-q", "-a", "-g", "-F", str(FREQ), "-o", perf_data, "--",
               bench, "--only", args.scenario, "--rounds", str(args.rounds), "--out", results]
        print("running:", " ".join(cmd), flush=True)
        with open(os.path.join(work, "bench.log"), "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    rates = conn_rates(results)
    samples = read_samples(perf_data)
    # the bench names its iptables baseline per scenario ("iptables", "iptables-nth")
    named = {sig: next((s for s in rates if s.startswith(sig)), sig) for sig in ("iptables", "socat", "haproxy")}

    votes = collections.defaultdict(collections.Counter)
    vxlan = collections.Counter()
    for comm, t, stack in samples:
        sig = signature(comm, stack)
        if sig:
            votes[int(t)][sig] += 1
        if any(f.startswith("vxlan_") for f in stack):
            vxlan[int(t)] += 1
    owner = {}
    for sec, v in votes.items():
        sig, n = v.most_common(1)[0]
        if n >= 5 and n >= 0.8 * sum(v.values()):
            # netbee's second swarm (routing-mesh) runs in the default tunnel mode
            owner[sec] = "netbee-tunnel" if sig == "netbee" and vxlan[sec] >= 0.2 * n else named.get(sig, sig)
    per = collections.defaultdict(collections.Counter)
    seconds = collections.defaultdict(set)
    for comm, t, stack in samples:
        sig = owner.get(int(t))
        if sig:
            per[sig][category(comm, stack)] += 1
            seconds[sig].add(int(t))

    systems = [s for s in rates if s in per]
    cats = sorted({c for s in systems for c in per[s]}, key=lambda c: -sum(per[s][c] for s in systems))

    def us_per_conn(sig, n):
        return n / FREQ / len(seconds[sig]) * 1e6 / rates[sig]

    print(f"\n{args.scenario}: CPU microseconds per connection (perf -F {FREQ} on all CPUs; "
          f"samples in {work})")
    print(f"{'':38s}" + "".join(f"{s:>15s}" for s in systems))
    print(f"{'connections/s (median of the run)':38s}" + "".join(f"{rates[s]:15.0f}" for s in systems))
    print(f"{'seconds profiled':38s}" + "".join(f"{len(seconds[s]):15d}" for s in systems))
    for c in cats:
        print(f"{c:38s}" + "".join(f"{us_per_conn(s, per[s][c]):15.1f}" for s in systems))
    print(f"{'total':38s}" + "".join(f"{us_per_conn(s, sum(per[s].values())):15.1f}" for s in systems))


if __name__ == "__main__":
    main()
