//! The kernel side of the controller: the XDP object loaded with its maps sized and filled
//! ([`load`]), the policy images and run config as typed handles taken once after the load, and
//! the swap a reload makes ([`images`]), the maps by name ([`maps`]), attaching to interfaces ([`attach`]), what is pinned in
//! bpffs ([`pins`]) and the state file a run leaves ([`state`]), the `run --forward` device map
//! ([`forward`]), entering a network namespace ([`netns`]), and the few bpf(2) commands aya does
//! not wrap ([`bpf`]). Their errors: [`KernelError`], [`load::LoadError`], [`state::StateError`].

pub mod attach;
pub mod bpf;
pub mod error;
pub mod forward;
pub mod images;
pub mod load;
pub mod maps;
pub mod netns;
pub mod pins;
pub mod state;

pub use error::KernelError;
