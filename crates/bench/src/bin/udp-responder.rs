//! `udp-responder`: the machine's ceiling for `benches/load`.
//!
//! A trivial DNS responder with no lookup at all: it reads queries in batches
//! (`recvmmsg`), answers each with the question copied, QR set and one fixed A
//! record (192.0.2.1, TTL 300), and writes the batch back (`sendmmsg`). One
//! thread, one socket: whatever a real server costs above this is its own work.

#![allow(unsafe_code)] // recvmmsg/sendmmsg through libc; every block says why it is sound.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use anyhow::Context as _;
use clap::Parser;

/// Datagrams read or written per system call.
const BATCH: usize = 64;
/// Largest datagram handled (longer ones are cut and then dropped as malformed).
const BUFFER: usize = 4096;
/// The fixed answer record after the copied question: a compression pointer to
/// the question name, type A, class IN, TTL 300, 4 bytes of data, 192.0.2.1.
const ANSWER: [u8; 16] = [
    0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2c, 0x00, 0x04, 192, 0, 2, 1,
];

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "udp-responder",
    about = "Trivial batched UDP DNS responder (the ceiling in benches/load)"
)]
struct Cli {
    /// Address to answer on (port 0: the kernel picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let socket = UdpSocket::bind(cli.listen).with_context(|| format!("binding {}", cli.listen))?;
    let local = socket.local_addr().context("reading the bound address")?;
    println!("{{\"event\":\"listening\",\"dns\":[\"{local}\"]}}");
    serve(&socket)
}

/// Builds the answer to `query` in `out`; returns its length, or None for a
/// datagram that is not a single-question query (no reply is sent).
fn respond(query: &[u8], out: &mut [u8]) -> Option<usize> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    let mut position = 12;
    loop {
        let label = usize::from(*query.get(position)?);
        if label == 0 {
            break;
        }
        if label & 0xc0 != 0 {
            return None;
        }
        position += 1 + label;
    }
    let question_end = position + 1 + 4;
    if question_end > query.len() {
        return None;
    }
    let total = question_end + ANSWER.len();
    let out = out.get_mut(..total)?;
    out[..question_end].copy_from_slice(&query[..question_end]);
    out[2] = (query[2] | 0x80) & !0x02; // QR; keep opcode and RD; clear TC
    out[3] = 0x80; // RA, NOERROR
    out[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]); // ANCOUNT 1, NSCOUNT 0, ARCOUNT 0
    out[question_end..].copy_from_slice(&ANSWER);
    Some(total)
}

/// One message slot: its data buffer and the peer address storage.
struct Slot {
    data: [u8; BUFFER],
    peer: libc::sockaddr_storage,
}

fn serve(socket: &UdpSocket) -> anyhow::Result<()> {
    let fd = socket.as_raw_fd();
    // Boxed slices: the iovecs and headers below point into them, so they must not move.
    let mut input: Box<[Slot]> = (0..BATCH).map(|_| empty_slot()).collect();
    let mut output: Box<[[u8; BUFFER]]> = vec![[0u8; BUFFER]; BATCH].into_boxed_slice();
    let mut in_iov: Box<[libc::iovec]> = input
        .iter_mut()
        .map(|slot| libc::iovec {
            iov_base: slot.data.as_mut_ptr().cast(),
            iov_len: BUFFER,
        })
        .collect();
    let mut out_iov: Box<[libc::iovec]> = output
        .iter_mut()
        .map(|buffer| libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: 0,
        })
        .collect();
    let mut in_msgs: Box<[libc::mmsghdr]> = (0..BATCH).map(|_| empty_mmsghdr()).collect();
    let mut out_msgs: Box<[libc::mmsghdr]> = (0..BATCH).map(|_| empty_mmsghdr()).collect();
    for (index, message) in in_msgs.iter_mut().enumerate() {
        message.msg_hdr.msg_name = (&raw mut input[index].peer).cast();
        message.msg_hdr.msg_iov = &raw mut in_iov[index];
        message.msg_hdr.msg_iovlen = 1;
    }
    for (index, message) in out_msgs.iter_mut().enumerate() {
        message.msg_hdr.msg_iov = &raw mut out_iov[index];
        message.msg_hdr.msg_iovlen = 1;
    }
    let storage_len = socklen_of::<libc::sockaddr_storage>();

    loop {
        for message in in_msgs.iter_mut() {
            message.msg_hdr.msg_namelen = storage_len;
            message.msg_len = 0;
        }
        // SAFETY: `in_msgs` holds BATCH valid headers whose name and iovec pointers
        // point into `input` and `in_iov`, boxed slices that live across the loop
        // and are not touched while the kernel writes into them during the call.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                in_msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error).context("recvmmsg");
        }
        let received = usize::try_from(received).unwrap_or(0);
        let mut ready = 0;
        for index in 0..received {
            let length = (in_msgs[index].msg_len as usize).min(BUFFER);
            let Some(answer_len) = respond(&input[index].data[..length], &mut output[ready]) else {
                continue;
            };
            out_iov[ready].iov_len = answer_len;
            out_msgs[ready].msg_hdr.msg_name = (&raw mut input[index].peer).cast();
            out_msgs[ready].msg_hdr.msg_namelen = in_msgs[index].msg_hdr.msg_namelen;
            ready += 1;
        }
        let mut sent = 0;
        while sent < ready {
            // SAFETY: the first `ready` headers of `out_msgs` point at filled
            // buffers in `output` (via `out_iov`) and at peer addresses in `input`,
            // all alive and unchanged for the duration of the call.
            let result = unsafe {
                libc::sendmmsg(
                    fd,
                    out_msgs[sent..].as_mut_ptr(),
                    (ready - sent) as libc::c_uint,
                    0,
                )
            };
            if result < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // A peer that went away (ICMP error surfaced here): drop that answer.
                sent += 1;
                continue;
            }
            sent += usize::try_from(result).unwrap_or(0).max(1);
        }
    }
}

fn empty_slot() -> Slot {
    Slot {
        data: [0; BUFFER],
        // SAFETY: sockaddr_storage is plain old data; all-zero bytes are a valid value.
        peer: unsafe { std::mem::zeroed() },
    }
}

fn empty_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain old data (null pointers and zero lengths are valid);
    // the caller fills in the pointers before any system call sees it.
    unsafe { std::mem::zeroed() }
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("address storage size fits socklen_t")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], id: [u8; 2]) -> Vec<u8> {
        let mut packet = vec![id[0], id[1], 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name {
            packet.push(u8::try_from(label.len()).expect("short label"));
            packet.extend_from_slice(label.as_bytes());
        }
        packet.extend_from_slice(&[0, 0, 1, 0, 1]);
        packet
    }

    #[test]
    fn answers_with_the_question_and_one_a_record() {
        let q = query(&["web", "service", "consul"], [0x12, 0x34]);
        let mut out = [0u8; BUFFER];
        let length = respond(&q, &mut out).expect("answered");
        let answer = &out[..length];
        assert_eq!(&answer[..2], &[0x12, 0x34]);
        assert_eq!(answer[2], 0x81, "QR and RD");
        assert_eq!(answer[3], 0x80, "RA, NOERROR");
        assert_eq!(&answer[4..12], &[0, 1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(&answer[12..q.len()], &q[12..]);
        assert_eq!(&answer[q.len()..], &ANSWER);
    }

    #[test]
    fn ignores_responses_truncated_and_compressed_questions() {
        let mut out = [0u8; BUFFER];
        let mut response = query(&["a"], [0, 1]);
        response[2] |= 0x80;
        assert_eq!(respond(&response, &mut out), None);
        let q = query(&["example", "com"], [0, 1]);
        assert_eq!(respond(&q[..q.len() - 2], &mut out), None);
        let mut compressed = q[..12].to_vec();
        compressed.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(respond(&compressed, &mut out), None);
        assert_eq!(respond(&q[..8], &mut out), None);
    }
}
