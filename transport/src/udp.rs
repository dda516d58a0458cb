//! The cluster endpoint's UDP socket: quinn's own socket for the running
//! runtime, with every GSO batch kept within what one `sendmsg` may carry.
//!
//! quinn builds a send batch of up to ten packets of the path MTU and hands
//! it to the kernel as one GSO `sendmsg`. The kernel refuses a batch whose
//! total is over one IP datagram's payload (64 KiB) with EMSGSIZE, and
//! quinn-udp treats that error as sent (it is how a too-large MTU probe is
//! meant to fail). So on any path whose MTU is above 6.5 KB (loopback, or a
//! LAN with 9000-byte jumbo frames) most full batches were dropped whole:
//! quinn saw losses where the network had none, cut its congestion window,
//! and after three such bursts judged the path a black hole and fell back to
//! 1200-byte packets. Here a batch over the limit goes out as several
//! `sendmsg`s, each holding as many whole packets as fit.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The most UDP payload one `sendmsg` may carry, GSO batch or not: an IPv4
/// datagram's 65535 bytes less its 20-byte header and the 8-byte UDP
/// header (IPv6 allows 20 bytes more; the lower bound serves both).
pub const SEND_BYTES_MAX: usize = 65_507;

/// Wraps `inner` (quinn's socket for the runtime in use).
pub fn capped(inner: Arc<dyn AsyncUdpSocket>) -> Arc<dyn AsyncUdpSocket> {
    Arc::new(Capped { inner })
}

#[derive(Debug)]
struct Capped {
    inner: Arc<dyn AsyncUdpSocket>,
}

/// The pieces `transmit` goes out in: (bytes, GSO segment size), in order.
/// One piece when it fits; otherwise as many whole segments per piece as
/// fit under [`SEND_BYTES_MAX`] (one, if a segment alone is larger).
fn pieces(len: usize, segment: Option<usize>) -> impl Iterator<Item = (std::ops::Range<usize>, Option<usize>)> {
    let step = match segment {
        Some(seg) if len > SEND_BYTES_MAX && seg > 0 => (SEND_BYTES_MAX / seg).max(1) * seg,
        _ => len.max(1),
    };
    (0..len).step_by(step).map(move |start| {
        let end = (start + step).min(len);
        // A piece of one segment is a plain datagram.
        let gso = segment.filter(|&seg| end - start > seg);
        (start..end, gso)
    })
}

impl AsyncUdpSocket for Capped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    /// A batch over the limit goes out piece by piece. If the socket fills
    /// after some pieces went out, the error makes quinn send the whole
    /// batch again later: the receiver drops the repeated packets by packet
    /// number, whereas a piece left out would count as a loss.
    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if transmit.segment_size.is_none() || transmit.contents.len() <= SEND_BYTES_MAX {
            return self.inner.try_send(transmit);
        }
        for (range, segment_size) in pieces(transmit.contents.len(), transmit.segment_size) {
            self.inner.try_send(&Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: &transmit.contents[range],
                segment_size,
                src_ip: transmit.src_ip,
            })?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(len: usize, segment: Option<usize>) -> Vec<(usize, usize, Option<usize>)> {
        pieces(len, segment).map(|(r, s)| (r.start, r.end, s)).collect()
    }

    #[test]
    fn a_batch_that_fits_is_one_piece() {
        assert_eq!(all(12_000, Some(1200)), vec![(0, 12_000, Some(1200))]);
        assert_eq!(all(SEND_BYTES_MAX, Some(1200)), vec![(0, SEND_BYTES_MAX, Some(1200))]);
        assert_eq!(all(900, None), vec![(0, 900, None)]);
    }

    #[test]
    fn a_large_batch_is_cut_at_whole_segments_under_the_limit() {
        // Ten 9000-byte packets (jumbo frames), the last one short.
        let len = 9 * 9000 + 4000;
        let p = all(len, Some(9000));
        assert_eq!(p, vec![(0, 63_000, Some(9000)), (63_000, len, Some(9000))]);
        for (start, end, _) in &p {
            assert!(end - start <= SEND_BYTES_MAX);
            assert_eq!(start % 9000, 0, "a piece starts on a packet boundary");
        }
    }

    #[test]
    fn segments_over_half_the_limit_go_one_per_piece() {
        let seg = 65_495;
        let len = 2 * seg + 100;
        assert_eq!(all(len, Some(seg)), vec![(0, seg, None), (seg, 2 * seg, None), (2 * seg, len, None)]);
    }

    #[test]
    fn pieces_cover_every_byte_once() {
        for seg in [1200, 1452, 6000, 6554, 8952, 20_000, 65_527] {
            for n in 1..=10 {
                for last in [1, seg / 2, seg] {
                    let len = (n - 1) * seg + last;
                    let mut next = 0;
                    for (start, end, _) in all(len, Some(seg)) {
                        assert_eq!(start, next);
                        assert!(end > start);
                        assert!(end - start <= SEND_BYTES_MAX.max(seg));
                        next = end;
                    }
                    assert_eq!(next, len);
                }
            }
        }
    }
}
