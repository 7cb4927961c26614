//! One HTTP/1.1 request head, read from the wire with a bound on its size.
//!
//! The relay answers one request per connection, so it reads exactly one head and
//! keeps whatever came after it (the first WebSocket frames of an eager client).
//! The caller puts the deadline around [`read_head`]: a head that trickles in is
//! cut there, one that grows past [`MAX_HEAD`] here, before it is buffered.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest request head the relay reads. A browser's request for a page, with
/// its cookies-free headers, is well under 2 KiB.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// Header lines a head may have; more is treated as an oversize head.
const MAX_HEADERS: usize = 48;

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    /// The head did not end within [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines.
    #[error("request head larger than {MAX_HEAD} bytes or {MAX_HEADERS} header lines")]
    TooLarge,
    /// The bytes are not an HTTP/1.x request head.
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    /// The client closed the connection before the head was complete.
    #[error("connection closed before the request head was complete")]
    Closed,
    /// Reading from the connection failed.
    #[error("cannot read the request head: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestHead {
    /// The method, as sent (methods are case-sensitive).
    pub method: String,
    /// The request target's path, without its query.
    pub path: String,
    /// Header names (lower-cased) and values, in order.
    headers: Vec<(String, Vec<u8>)>,
    /// Bytes that came after the head.
    pub rest: Vec<u8>,
}

impl RequestHead {
    /// Parses a complete head at the start of `bytes`; `Ok(None)` while more is
    /// needed.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Option<Self>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let len = match request.parse(bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(err) => return Err(HeadError::Malformed(err)),
        };
        // A complete parse always has a method and a target.
        let method = request.method.unwrap_or_default().to_owned();
        let target = request.path.unwrap_or_default();
        let path = target
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let headers = request
            .headers
            .iter()
            .map(|header| (header.name.to_ascii_lowercase(), header.value.to_vec()))
            .collect();
        Ok(Some(Self {
            method,
            path,
            headers,
            rest: bytes[len..].to_vec(),
        }))
    }

    /// The value of the header `name` (lower-case) when it appears exactly once:
    /// `Err(DuplicateHeader)` when it appears more than once, which no honest client does with
    /// the headers the relay reads.
    pub(crate) fn unique(&self, name: &str) -> Result<Option<&[u8]>, DuplicateHeader> {
        let mut found = self
            .headers
            .iter()
            .filter(|(header, _)| header == name)
            .map(|(_, value)| value.as_slice());
        let first = found.next();
        if found.next().is_some() {
            return Err(DuplicateHeader);
        }
        Ok(first)
    }

    /// Whether the comma-separated header `name` lists `token` (case-insensitive),
    /// on any of its lines.
    pub(crate) fn lists(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(header, _)| header == name)
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    }
}

/// A header the relay reads appeared more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DuplicateHeader;

/// Reads one request head from `stream`, at most [`MAX_HEAD`] bytes of it.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<RequestHead, HeadError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let room = MAX_HEAD - buffer.len();
        let want = room.min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(head) = RequestHead::parse(&buffer)? {
            return Ok(head);
        }
        if buffer.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_with_what_follows_it() {
        let head = RequestHead::parse(b"GET /a/b?x=1 HTTP/1.1\r\nHost: H\r\nX: 1\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/a/b");
        assert_eq!(head.unique("host"), Ok(Some(&b"H"[..])));
        assert_eq!(head.rest, b"rest");
    }

    #[test]
    fn a_partial_head_asks_for_more() {
        assert_eq!(
            RequestHead::parse(b"GET / HTTP/1.1\r\nHost:").unwrap(),
            None
        );
    }

    #[test]
    fn a_repeated_header_is_told_apart() {
        let head = RequestHead::parse(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.unique("host"), Err(DuplicateHeader));
    }

    #[test]
    fn tokens_are_found_in_lists_on_several_lines() {
        let head = RequestHead::parse(
            b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: x, Upgrade\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(head.lists("connection", "upgrade"));
        assert!(!head.lists("connection", "close"));
    }

    #[tokio::test]
    async fn an_endless_head_is_refused_at_the_bound() {
        let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
        while endless.len() < 2 * MAX_HEAD {
            endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let mut reader = endless.as_slice();
        assert!(matches!(
            read_head(&mut reader).await,
            Err(HeadError::TooLarge)
        ));
        // Nothing was read past the bound.
        assert!(reader.len() >= endless.len() - MAX_HEAD);
    }

    #[tokio::test]
    async fn a_head_cut_short_is_closed() {
        let mut reader = &b"GET / HTTP/1.1\r\nHost: a\r\n"[..];
        assert!(matches!(
            read_head(&mut reader).await,
            Err(HeadError::Closed)
        ));
    }
}
