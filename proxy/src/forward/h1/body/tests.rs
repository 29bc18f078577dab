//! `RecvBody` over an in-memory duplex stream: the peer writes the bytes as a client would.

use bytes::BytesMut;
use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;

use super::{BodyError, RecvBody, Returned};
use crate::forward::h1::error::ChunkError;
use crate::forward::h1::BodyFraming;

fn open(
    framing: BodyFraming,
    prefix: &[u8],
) -> (RecvBody, oneshot::Receiver<Returned>, DuplexStream) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let (done, returned) = oneshot::channel();
    let body = RecvBody::new(framing, Box::pin(server), BytesMut::from(prefix), done);
    (body, returned, client)
}

#[derive(Debug, Default)]
struct Read {
    data: Vec<u8>,
    frames: Vec<usize>,
    trailers: Option<HeaderMap>,
    error: Option<BodyError>,
}

async fn read_all(body: &mut RecvBody) -> Read {
    let mut read = Read::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    read.frames.push(data.len());
                    read.data.extend_from_slice(&data);
                }
                Err(frame) => read.trailers = frame.into_trailers().ok(),
            },
            Err(error) => {
                read.error = Some(error);
                break;
            }
        }
    }
    read
}

/// What follows the body on the connection: the returned buffer, then the read side to its end.
async fn rest(returned: Returned) -> Vec<u8> {
    let mut rest = returned.buf.to_vec();
    let mut read = returned.read;
    read.read_to_end(&mut rest).await.expect("read the rest");
    rest
}

#[tokio::test]
async fn content_length_body_ends_at_its_length_and_leaves_the_next_message() {
    let (mut body, returned, mut client) = open(BodyFraming::Length(11), b"hel");
    assert_eq!(body.size_hint().exact(), Some(11));
    client
        .write_all(b"lo worldGET /next HTTP/1.1\r\n")
        .await
        .unwrap();
    drop(client);
    let read = read_all(&mut body).await;
    assert!(read.error.is_none(), "{:?}", read.error);
    assert_eq!(read.data, b"hello world");
    assert!(body.is_end_stream());
    let returned = returned.await.expect("the read side comes back");
    assert!(returned.complete);
    assert_eq!(rest(returned).await, b"GET /next HTTP/1.1\r\n");
}

#[tokio::test]
async fn a_body_already_buffered_comes_back_with_the_pipelined_bytes() {
    let prefix = b"abcGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let (mut body, mut returned, _client) = open(BodyFraming::Length(3), prefix);
    let read = read_all(&mut body).await;
    assert_eq!(read.data, b"abc");
    let returned = returned.try_recv().expect("returned with its last byte");
    assert!(returned.complete);
    assert_eq!(&returned.buf[..], &prefix[3..]);
}

#[tokio::test]
async fn chunked_body_yields_chunk_data_then_its_trailers() {
    let (mut body, returned, mut client) = open(BodyFraming::Chunked, b"5\r\nhe");
    let writer = tokio::spawn(async move {
        let parts: [&[u8]; 5] = [
            b"llo\r\n6;ext=\"a b\"\r\n wor",
            b"ld\r\n0\r\nX-Checksum: abc\r",
            b"\nx-other:  v  \r\nX-Checksum: def\r\n",
            b"\r\nPOST /next HTTP/1.1\r\n",
            b"Host: a\r\n\r\n",
        ];
        for part in parts {
            client.write_all(part).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let read = read_all(&mut body).await;
    assert!(read.error.is_none(), "{:?}", read.error);
    assert_eq!(read.data, b"hello world");
    let trailers = read.trailers.expect("a trailers frame");
    let checksums: Vec<_> = trailers.get_all("x-checksum").iter().collect();
    assert_eq!(checksums, ["abc", "def"]);
    assert_eq!(trailers.get("x-other").unwrap(), "v");
    writer.await.unwrap();
    let returned = returned.await.unwrap();
    assert!(returned.complete);
    assert_eq!(
        rest(returned).await,
        b"POST /next HTTP/1.1\r\nHost: a\r\n\r\n"
    );
}

#[tokio::test]
async fn chunked_body_without_trailers_ends_without_a_trailers_frame() {
    let (mut body, returned, _client) = open(BodyFraming::Chunked, b"3\r\nabc\r\n0\r\n\r\nNEXT");
    let read = read_all(&mut body).await;
    assert_eq!(read.data, b"abc");
    assert!(read.trailers.is_none());
    let returned = returned.await.unwrap();
    assert!(returned.complete);
    assert_eq!(&returned.buf[..], b"NEXT");
}

#[tokio::test]
async fn close_delimited_body_reads_until_the_end_of_the_stream() {
    let (mut body, returned, mut client) = open(BodyFraming::CloseDelimited, b"ab");
    client.write_all(b"cdef").await.unwrap();
    drop(client);
    let read = read_all(&mut body).await;
    assert!(read.error.is_none(), "{:?}", read.error);
    assert_eq!(read.data, b"abcdef");
    let returned = returned.await.unwrap();
    assert!(returned.complete);
    assert!(returned.buf.is_empty());
}

#[tokio::test]
async fn early_end_of_stream_is_incomplete() {
    for (framing, sent) in [
        (BodyFraming::Length(10), &b"abcd"[..]),
        (BodyFraming::Chunked, b"5\r\nab"),
        (BodyFraming::Chunked, b"5\r\nabcde\r\n"),
        (BodyFraming::Chunked, b"0\r\nX-A: b\r\n"),
    ] {
        let (mut body, returned, mut client) = open(framing, b"");
        client.write_all(sent).await.unwrap();
        drop(client);
        let read = read_all(&mut body).await;
        assert!(
            matches!(read.error, Some(BodyError::Incomplete)),
            "{framing:?} {sent:?}: {:?}",
            read.error
        );
        assert!(!returned.await.unwrap().complete);
    }
}

#[tokio::test]
async fn invalid_chunk_is_a_chunk_error() {
    for (sent, expected) in [
        (&b"zz\r\n"[..], ChunkError::Size),
        (b"3\r\nabcX", ChunkError::LineEnding),
        (b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n", ChunkError::Trailer),
    ] {
        let (mut body, returned, mut client) = open(BodyFraming::Chunked, b"");
        client.write_all(sent).await.unwrap();
        let read = read_all(&mut body).await;
        assert!(
            matches!(read.error, Some(BodyError::Chunk(error)) if error == expected),
            "{sent:?}: {:?}",
            read.error
        );
        assert!(!returned.await.unwrap().complete);
    }
}

#[tokio::test]
async fn trailers_over_the_limit_are_refused() {
    let (body, returned, mut client) = open(BodyFraming::Chunked, b"");
    let mut body = body.max_trailer_bytes(16);
    client
        .write_all(b"0\r\nX-Long: 0123456789abcdef\r\n\r\n")
        .await
        .unwrap();
    let read = read_all(&mut body).await;
    assert!(
        matches!(
            read.error,
            Some(BodyError::Chunk(ChunkError::TrailersTooLarge))
        ),
        "{:?}",
        read.error
    );
    assert!(!returned.await.unwrap().complete);
}

#[tokio::test]
async fn dropped_mid_body_returns_the_read_side_incomplete() {
    let (mut body, returned, mut client) = open(BodyFraming::Length(10), b"");
    client.write_all(b"abcd").await.unwrap();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"abcd");
    drop(body);
    assert!(!returned.await.unwrap().complete);

    let (mut body, returned, mut client) = body_chunked_started().await;
    client.write_all(b"cd").await.unwrap();
    let _ = body.frame().await;
    drop(body);
    assert!(!returned.await.unwrap().complete);
}

async fn body_chunked_started() -> (RecvBody, oneshot::Receiver<Returned>, DuplexStream) {
    open(BodyFraming::Chunked, b"5\r\nab")
}

#[tokio::test]
async fn dropped_with_its_rest_buffered_skips_it() {
    let (body, returned, _client) = open(BodyFraming::Length(3), b"abcNEXT");
    drop(body);
    let returned = returned.await.unwrap();
    assert!(returned.complete);
    assert_eq!(&returned.buf[..], b"NEXT");

    let buffered = b"2\r\nab\r\n0\r\nX: y\r\n\r\nNEXT";
    let (mut body, returned, _client) = open(BodyFraming::Chunked, buffered);
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"ab");
    drop(body);
    let returned = returned.await.unwrap();
    assert!(returned.complete);
    assert_eq!(&returned.buf[..], b"NEXT");
}

#[tokio::test]
async fn no_body_returns_the_read_side_at_once() {
    let (body, mut returned, _client) = open(BodyFraming::None, b"GET / HTTP/1.1\r\n");
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    let returned = returned.try_recv().expect("returned at once");
    assert!(returned.complete);
    assert_eq!(&returned.buf[..], b"GET / HTTP/1.1\r\n");
}

#[tokio::test]
async fn large_body_is_read_in_bounded_frames() {
    const LEN: usize = 1024 * 1024;
    let (mut body, returned, mut client) = open(BodyFraming::Length(LEN as u64), b"");
    let writer = tokio::spawn(async move {
        let payload: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        client.write_all(&payload).await.unwrap();
        client.write_all(b"NEXT").await.unwrap();
        payload
    });
    let read = read_all(&mut body).await;
    let payload = writer.await.unwrap();
    assert!(read.data == payload, "the body arrives unchanged");
    let largest = read.frames.iter().max().copied().unwrap_or(0);
    assert!(largest <= super::MAX_READ, "a frame of {largest} bytes");
    let returned = returned.await.unwrap();
    assert!(returned.complete);
    assert!(
        returned.buf.is_empty(),
        "nothing read past a Content-Length body"
    );
}
