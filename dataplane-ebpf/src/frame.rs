//! The kernel's packet buffers as frames for the shared parser (`dataplane_common::parse`).

use aya_ebpf::programs::{TcContext, XdpContext};
use dataplane_common::parse::Frame;

/// An XDP frame on ingress.
pub struct Xdp<'a>(pub &'a XdpContext);

impl Frame for Xdp<'_> {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        // Safety: reading two fields of the context the kernel handed us.
        unsafe {
            (core::ptr::read_volatile(&(*self.0.ctx).data) as usize, core::ptr::read_volatile(&(*self.0.ctx).data_end) as usize)
        }
    }
}

/// A socket buffer on tc egress.
pub struct Tc<'a>(pub &'a TcContext);

impl Frame for Tc<'_> {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        // Safety: as above, on the socket buffer.
        unsafe {
            (
                core::ptr::read_volatile(&(*self.0.skb.skb).data) as usize,
                core::ptr::read_volatile(&(*self.0.skb.skb).data_end) as usize,
            )
        }
    }
}
