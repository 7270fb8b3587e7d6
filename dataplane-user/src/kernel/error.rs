//! What can go wrong in the kernel's maps, pins, links and namespaces once the program is loaded
//! (loading itself: [`LoadError`](super::load::LoadError); the state file:
//! [`StateError`](super::state::StateError)). Each variant prints what `run` printed when these
//! were strings; the cause stays as its source, so `{:#}` prints the same chain.

use aya::{
    maps::MapError,
    pin::PinError,
    programs::{links::LinkError, ProgramError},
};

use super::{
    maps::{MAP_CONFIG, MAP_FORWARD_PORTS},
    pins::{LinkKind, PIN_DIR},
};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A map the controller needs is not in the loaded object.
    #[error("map {0} missing from the XDP object")]
    MissingMap(String),
    /// A map of another type than the one asked for.
    #[error("{0} is not an array map")]
    NotArray(&'static str),
    #[error("{MAP_CONFIG}: not an array of RunConfig")]
    ConfigType(#[source] MapError),
    /// A policy image larger than the image map it should go into (the caller loads larger maps).
    #[error("a policy image of {words} words does not fit the {map} map of {room}")]
    ImageTooLarge { words: usize, map: &'static str, room: usize },
    #[error("reading {0}'s size")]
    MapSize(&'static str, #[source] MapError),
    #[error("reading {MAP_CONFIG}")]
    ReadConfig(#[source] MapError),
    #[error("writing {MAP_CONFIG}")]
    WriteConfig(#[source] MapError),
    #[error("mapping an array map ({len} bytes)")]
    Mmap {
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning {name} under {PIN_DIR}")]
    PinMap {
        name: String,
        #[source]
        source: PinError,
    },
    #[error("creating {PIN_DIR}")]
    CreatePinDir(#[source] std::io::Error),
    #[error("could not mount bpffs at /sys/fs/bpf: maps cannot be pinned")]
    MountBpffs(#[source] nix::Error),
    /// A link aya made another way than with bpf_link (old kernels): it cannot be pinned.
    #[error("only bpf_link attachments can be persisted")]
    NotBpfLink(#[source] LinkError),
    #[error("pinning the {} link of {iface}", link_name(*.kind))]
    PinLink {
        kind: LinkKind,
        iface: String,
        #[source]
        source: PinError,
    },
    /// `--mode native` on an interface whose driver has no XDP.
    #[error("attaching natively to {iface} (try --mode skb)")]
    AttachNative {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("attaching to {iface} in skb mode")]
    AttachSkb {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("attaching the egress program to {iface}")]
    AttachEgress {
        iface: String,
        #[source]
        source: ProgramError,
    },
    /// Another operation on a program: taking a link out, attaching to a link.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// A link of another program type.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A map of another type, or a failed read or write of it.
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("{MAP_FORWARD_PORTS} map missing")]
    MissingForwardPorts,
    #[error("adding interface index {ifindex} to {MAP_FORWARD_PORTS}")]
    ForwardPort {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    /// This thread's own network namespace could not be opened.
    #[error(transparent)]
    OwnNetns(std::io::Error),
    /// `/var/run/netns/{ns}` could not be opened: no such namespace.
    #[error("netns {ns}")]
    NoNetns {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setns({ns})")]
    EnterNetns {
        ns: String,
        #[source]
        source: nix::Error,
    },
    #[error("setns back from {ns}")]
    LeaveNetns {
        ns: String,
        #[source]
        source: nix::Error,
    },
}

/// As the messages name a link's kind.
fn link_name(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Xdp => "XDP",
        LinkKind::Tc => "tc",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{:#}` prints the message, then the causes, as the `anyhow` contexts did.
    #[test]
    fn messages_keep_their_causes() {
        let e = KernelError::MountBpffs(nix::Error::EPERM);
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "could not mount bpffs at /sys/fs/bpf: maps cannot be pinned: EPERM: Operation not permitted"
        );
        let no_fd = || PinError::NoFd { name: "l".into() };
        let e = KernelError::PinLink { kind: LinkKind::Tc, iface: "eth0".into(), source: no_fd() };
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "pinning the tc link of eth0: the BPF object `l`'s FD is not known");
        let e = KernelError::PinLink { kind: LinkKind::Xdp, iface: "eth0".into(), source: no_fd() };
        assert_eq!(e.to_string(), "pinning the XDP link of eth0");
        assert_eq!(KernelError::MissingForwardPorts.to_string(), "FORWARD_PORTS map missing");
        assert_eq!(KernelError::NotArray("POLICY_A").to_string(), "POLICY_A is not an array map");
        let e = KernelError::ImageTooLarge { words: 300_000, map: "POLICY_B", room: 262_144 };
        assert_eq!(e.to_string(), "a policy image of 300000 words does not fit the POLICY_B map of 262144");
    }
}
