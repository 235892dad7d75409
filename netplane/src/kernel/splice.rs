//! Zero-copy relaying for the userspace forwarder: splice(2) moves a
//! connection's bytes from one socket's receive queue into a pipe and from
//! the pipe into the other socket, as page references inside the kernel,
//! never through the forwarder's own memory.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use nix::{
    fcntl::{OFlag, SpliceFFlags, splice},
    sys::socket::{Shutdown, shutdown},
    unistd::pipe2,
};

/// What one direction of one connection holds in flight: a pipe's default
/// capacity (16 pages). It bounds the forwarder's memory per connection
/// beside the two sockets' own buffers.
pub const PIPE_BYTES: usize = 64 * 1024;

/// The pipe of one direction of a connection.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Pipe { read, write })
    }

    /// Moves what socket `from` has received into the pipe, as much as
    /// fits: 0 at the end of its stream, `WouldBlock` when it has nothing.
    pub fn fill(&self, from: BorrowedFd<'_>) -> io::Result<usize> {
        Ok(splice(from, None, &self.write, None, PIPE_BYTES, flags())?)
    }

    /// Moves up to `len` bytes from the pipe into socket `to`:
    /// `WouldBlock` when its send buffer is full.
    pub fn drain(&self, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        Ok(splice(&self.read, None, to, None, len, flags())?)
    }
}

/// Ends the sending direction of socket `fd` (FIN) and leaves the other
/// open: the half-close a client's `shutdown(SHUT_WR)` asks to pass on.
pub fn shutdown_write(fd: impl AsFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    match shutdown(fd.as_fd().as_raw_fd(), Shutdown::Write) {
        // The peer may have gone already.
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read, Write},
        os::unix::net::UnixStream,
    };

    #[test]
    fn bytes_cross_the_pipe_and_the_end_of_stream_shows() {
        let (mut client, from) = UnixStream::pair().unwrap();
        let (to, mut server) = UnixStream::pair().unwrap();
        from.set_nonblocking(true).unwrap();
        to.set_nonblocking(true).unwrap();
        let pipe = Pipe::new().unwrap();
        assert_eq!(
            pipe.fill(from.as_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        client.write_all(b"hello").unwrap();
        let n = pipe.fill(from.as_fd()).unwrap();
        assert_eq!(n, 5);
        assert_eq!(pipe.drain(to.as_fd(), n).unwrap(), 5);
        let mut got = [0; 5];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        shutdown_write(&client).unwrap();
        assert_eq!(pipe.fill(from.as_fd()).unwrap(), 0);
        shutdown_write(&to).unwrap();
        assert_eq!(server.read(&mut got).unwrap(), 0);
    }
}
