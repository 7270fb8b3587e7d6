//! XDP forwarding of allowed packets (`dataplane run --forward`, `CONFIG_FORWARD`): on a gateway,
//! a packet the policy admits to a protected server is routed here instead of in the kernel's
//! stack. The kernel's FIB and neighbour table decide (`bpf_fib_lookup`): when they give an
//! egress interface and its next hop's MAC, and that interface is one of this run's
//! (`FORWARD_PORTS`, filled by the controller), the MACs are rewritten, the TTL or hop limit
//! decremented and the frame redirected. Anything else goes to the stack unchanged (XDP_PASS),
//! which does what it always does: unresolved neighbours, TTL 1 (ICMP time exceeded), MTU
//! exceeded (ICMP fragmentation needed / packet too big), local delivery, IP options,
//! fragments, VLAN tags.
//!
//! Only packets to protected servers (verdicts `flow` and `reply`) come here: the servers' own
//! packets keep the stack's path, so the tc egress program on the outside interface still sees
//! (and records) every connection they open, which a redirected frame would skip.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    macros::map,
    maps::{DevMapHash, PerCpuArray},
    programs::XdpContext,
    EbpfContext,
};
use dataplane_common::forward::{FWD_STAT_COUNT, FWD_STAT_INELIGIBLE, FWD_STAT_NOT_OURS, FWD_STAT_REDIRECTED, FWD_STAT_STACK};
use dataplane_common::parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6};

/// ifindex -> the same ifindex: the interfaces a forwarded frame may leave through.
#[map]
static FORWARD_PORTS: DevMapHash = DevMapHash::with_max_entries(64, 0);
/// Packets per `FWD_STAT_*` outcome, per CPU.
#[map]
static FORWARD_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FWD_STAT_COUNT, 0);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(always)]
fn stat(i: u32) {
    if let Some(c) = FORWARD_STATS.get_ptr_mut(i) {
        // Safety: this CPU's slot.
        unsafe { *c += 1 };
    }
}

/// The action for an allowed packet: XDP_REDIRECT when it was forwarded, else XDP_PASS.
#[inline(always)]
pub fn forward(ctx: &XdpContext) -> u32 {
    // Safety: every access below is bounds-checked against data_end first.
    match unsafe { try_forward(ctx) } {
        Ok(action) => {
            stat(FWD_STAT_REDIRECTED);
            action
        }
        Err(why) => {
            stat(why);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
unsafe fn try_forward(ctx: &XdpContext) -> Result<u32, u32> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_HLEN > end {
        return Err(FWD_STAT_INELIGIBLE);
    }
    let eth = start as *mut u8;
    let ethertype = u16::from_be_bytes([*eth.add(12), *eth.add(13)]);
    let mut fib: bpf_fib_lookup = core::mem::zeroed();
    let ip = eth.add(ETH_HLEN);
    let v6 = match ethertype {
        ETH_P_IP => {
            if start + ETH_HLEN + 20 > end {
                return Err(FWD_STAT_INELIGIBLE);
            }
            // No options (the stack handles those), not a fragment, and a TTL left to spend.
            let frag = u16::from_be_bytes([*ip.add(6), *ip.add(7)]);
            if *ip != 0x45 || frag & 0x3fff != 0 || *ip.add(8) <= 1 {
                return Err(FWD_STAT_INELIGIBLE);
            }
            fib.family = AF_INET;
            fib.__bindgen_anon_2.tos = *ip.add(1);
            fib.l4_protocol = *ip.add(9);
            fib.__bindgen_anon_1.tot_len = u16::from_be_bytes([*ip.add(2), *ip.add(3)]);
            fib.__bindgen_anon_3.ipv4_src = (ip.add(12) as *const u32).read_unaligned();
            fib.__bindgen_anon_4.ipv4_dst = (ip.add(16) as *const u32).read_unaligned();
            false
        }
        ETH_P_IPV6 => {
            if start + ETH_HLEN + 40 > end {
                return Err(FWD_STAT_INELIGIBLE);
            }
            if *ip.add(7) <= 1 {
                return Err(FWD_STAT_INELIGIBLE);
            }
            fib.family = AF_INET6;
            // Traffic class and flow label: the first word without the version.
            fib.__bindgen_anon_2.flowinfo = (ip as *const u32).read_unaligned() & u32::to_be(0x0fff_ffff);
            fib.l4_protocol = *ip.add(6);
            fib.__bindgen_anon_1.tot_len = u16::from_be_bytes([*ip.add(4), *ip.add(5)]).wrapping_add(40);
            for i in 0..4 {
                fib.__bindgen_anon_3.ipv6_src[i] = (ip.add(8 + 4 * i) as *const u32).read_unaligned();
                fib.__bindgen_anon_4.ipv6_dst[i] = (ip.add(24 + 4 * i) as *const u32).read_unaligned();
            }
            true
        }
        // VLAN-tagged or not IP: the stack.
        _ => return Err(FWD_STAT_INELIGIBLE),
    };
    fib.ifindex = ctx.ingress_ifindex() as u32;
    let rc = fib_lookup(ctx.as_ptr(), &mut fib, core::mem::size_of::<bpf_fib_lookup>() as i32, 0);
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(FWD_STAT_STACK);
    }
    // Only interfaces this run knows; the frame is still untouched if not.
    if FORWARD_PORTS.get_ifindex(fib.ifindex).is_none() {
        return Err(FWD_STAT_NOT_OURS);
    }
    if v6 {
        *ip.add(7) -= 1;
    } else {
        decrease_ttl(ip);
    }
    for i in 0..6 {
        *eth.add(i) = fib.dmac[i];
        *eth.add(6 + i) = fib.smac[i];
    }
    FORWARD_PORTS.redirect(fib.ifindex, 0).map_err(|_| FWD_STAT_NOT_OURS)
}

/// TTL minus one, with the header checksum updated incrementally (RFC 1624, as the kernel's
/// `ip_decrease_ttl`): the TTL is the high byte of the checksummed word it shares.
#[inline(always)]
unsafe fn decrease_ttl(ip: *mut u8) {
    let sum = ip.add(10) as *mut u16;
    let mut check = sum.read_unaligned() as u32;
    check += u16::to_be(0x0100) as u32;
    sum.write_unaligned((check + (check >= 0xffff) as u32) as u16);
    *ip.add(8) -= 1;
}
