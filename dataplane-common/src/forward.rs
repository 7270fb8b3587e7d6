//! XDP forwarding (`dataplane run --forward`): what the program tells the controller about the
//! allowed packets it tried to forward (the `FORWARD_STATS` per-CPU array).

/// Redirected out of an interface of the run, routed in XDP.
pub const FWD_STAT_REDIRECTED: u32 = 0;
/// The FIB had no forwarding answer (local delivery, no route, neighbour not resolved, MTU
/// exceeded, forwarding disabled): passed to the stack.
pub const FWD_STAT_STACK: u32 = 1;
/// Not for XDP forwarding (VLAN tag, IPv4 options or fragment, TTL or hop limit of 1 or less):
/// passed to the stack.
pub const FWD_STAT_INELIGIBLE: u32 = 2;
/// Routed out of an interface this run does not know: passed to the stack.
pub const FWD_STAT_NOT_OURS: u32 = 3;
/// Slots of `FORWARD_STATS`.
pub const FWD_STAT_COUNT: u32 = 4;

/// Names of the outcomes, by index, for `stats`.
pub const FWD_STAT_NAMES: [&str; FWD_STAT_COUNT as usize] =
    ["forwarded", "stack_fib", "stack_ineligible", "stack_other_interface"];
