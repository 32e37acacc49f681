//! Decoding of chunked upstream response bodies (RFC 9112 section 7.1).
//!
//! The decoder works on the connection's read buffer. It takes what it can from the
//! buffer and returns `NeedMore` when a size line, a chunk's end or a trailer line is
//! incomplete. Chunk extensions are ignored and trailer fields are dropped.

use std::io;

use bytes::{Buf, Bytes, BytesMut};

/// Maximum length of a size line or a trailer line.
const MAX_LINE: usize = 4096;

/// Maximum trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

/// The result of one decoding step.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes, taken from the buffer.
    Data(Bytes),
    /// The buffer ends inside framing, so the caller reads more and calls again.
    NeedMore,
    /// The last chunk and the trailer section were read.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, with this many data bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, with this many trailer bytes read so far.
    Trailers(usize),
    End,
}

/// Incremental decoder state for one chunked body.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: State::Size }
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Takes one CRLF-terminated line from the front of `buf`, without its CRLF.
fn take_line(buf: &mut BytesMut) -> io::Result<Option<BytesMut>> {
    let Some(end) = buf.iter().position(|&byte| byte == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(invalid("chunked body has a line that is too long"));
        }
        return Ok(None);
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(invalid("chunked body has a line without CRLF"));
    }
    let mut line = buf.split_to(end + 1);
    line.truncate(end - 1);
    Ok(Some(line))
}

/// Reads the hexadecimal size at the start of a chunk-size line.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.iter().take_while(|byte| byte.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(invalid("chunked body has an invalid chunk size"));
    }
    let rest = &line[digits..];
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(invalid("chunked body has an invalid chunk size"));
    }

    let text = std::str::from_utf8(&line[..digits]).map_err(|_| invalid("chunked body has an invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| invalid("chunked body has an invalid chunk size"))
}

impl Decoder {
    /// Decodes from the front of `buf`, returning at most `max` data bytes at once.
    pub fn decode(&mut self, buf: &mut BytesMut, max: usize) -> io::Result<Decoded> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.state = match chunk_size(&line)? {
                        0 => State::Trailers(0),
                        size => State::Data(size),
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = (left.min(max as u64) as usize).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 { State::DataEnd } else { State::Data(left) };
                    return Ok(Decoded::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(invalid("chunk data is not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers(read) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::End;
                        return Ok(Decoded::End);
                    }
                    let read = read + line.len() + 2;
                    if read > MAX_TRAILERS {
                        return Err(invalid("chunked body has too many trailer bytes"));
                    }
                    self.state = State::Trailers(read);
                }
                State::End => return Ok(Decoded::End),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and collects the body.
    fn decode_in_steps(input: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = input.chunks(step);
        loop {
            match decoder.decode(&mut buf, 5)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok(body),
                Decoded::NeedMore => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Err(invalid("input ended early")),
                },
            }
        }
    }

    #[test]
    fn decodes_whole_and_split_input() {
        let input = b"4\r\nWiki\r\n7;name=value\r\npedia i\r\nB\r\nn \r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";
        for step in [1, 2, 3, 7, input.len()] {
            assert_eq!(
                decode_in_steps(input, step).unwrap(),
                b"Wikipedia in \r\nchunks.",
                "step {step}"
            );
        }
    }

    #[test]
    fn leaves_bytes_after_the_body() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nNEXT"[..]);
        assert_eq!(
            decoder.decode(&mut buf, 64).unwrap(),
            Decoded::Data(Bytes::from_static(b"a"))
        );
        assert_eq!(decoder.decode(&mut buf, 64).unwrap(), Decoded::End);
        assert_eq!(decoder.decode(&mut buf, 64).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn rejects_malformed_framing() {
        for input in [
            &b"x\r\n"[..],
            b"\r\n",
            b"11111111111111111\r\n",
            b"4 junk\r\n",
            b"4\nWiki\r\n",
            b"4\r\nWikiXX",
        ] {
            assert!(
                decode_in_steps(input, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits_line_and_trailer_length() {
        let long_line = vec![b'1'; MAX_LINE + 1];
        assert!(decode_in_steps(&long_line, 64).is_err());

        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..1000 {
            trailers.extend_from_slice(b"X-Trailer: some value\r\n");
        }
        trailers.extend_from_slice(b"\r\n");
        assert!(decode_in_steps(&trailers, 512).is_err());
    }
}
