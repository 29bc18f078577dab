use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::SinkExt;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::{Empty, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWrite};

use super::*;

type FrameResult = Result<Frame<Bytes>, BoxError>;

fn frames(
    items: Vec<FrameResult>,
) -> StreamBody<futures::stream::Iter<std::vec::IntoIter<FrameResult>>> {
    StreamBody::new(futures::stream::iter(items))
}

fn data(bytes: &'static [u8]) -> FrameResult {
    Ok(Frame::data(Bytes::from_static(bytes)))
}

fn trailers(pairs: &[(&'static str, &'static str)]) -> FrameResult {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    Ok(Frame::trailers(map))
}

/// Records each write call separately, so tests can see what left together.
#[derive(Default)]
struct Recorder {
    writes: Vec<Vec<u8>>,
    flushes: usize,
    /// Accepts at most this many bytes per write (a full socket buffer), if set.
    max: Option<usize>,
}

impl Recorder {
    fn bytes(&self) -> Vec<u8> {
        self.writes.concat()
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes.push(buf.to_vec());
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        joined.truncate(self.max.unwrap_or(usize::MAX));
        let len = joined.len();
        self.writes.push(joined);
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flushes += 1;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn sent<B>(body: B, framing: OutFraming) -> (Result<(), SendError>, Vec<u8>)
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut out = Recorder::default();
    let result = send_body(&mut out, body, framing).await;
    (result, out.bytes())
}

#[test]
fn chunk_size_lines_are_lowercase_hex_without_leading_zeros() {
    let line = |len| String::from_utf8(ChunkLine::size(len).rest().to_vec()).unwrap();
    assert_eq!(line(0), "0\r\n");
    assert_eq!(line(1), "1\r\n");
    assert_eq!(line(15), "f\r\n");
    assert_eq!(line(16), "10\r\n");
    assert_eq!(line(0xabcdef), "abcdef\r\n");
    assert_eq!(line(usize::MAX), format!("{:x}\r\n", usize::MAX));
}

#[tokio::test]
async fn length_sends_exactly_the_bytes() {
    let body = frames(vec![data(b"hel"), data(b""), data(b"lo")]);
    let (result, bytes) = sent(body, OutFraming::Length(5)).await;
    result.unwrap();
    assert_eq!(bytes, b"hello");
}

#[tokio::test]
async fn length_refuses_a_longer_body_without_sending_past_it() {
    let body = frames(vec![data(b"hel"), data(b"lo!")]);
    let (result, bytes) = sent(body, OutFraming::Length(5)).await;
    assert!(matches!(result, Err(SendError::TooLong(5))), "{result:?}");
    assert_eq!(bytes, b"hel");
}

#[tokio::test]
async fn length_refuses_a_shorter_body() {
    let (result, _) = sent(
        Full::new(Bytes::from_static(b"hell")),
        OutFraming::Length(5),
    )
    .await;
    assert!(
        matches!(
            result,
            Err(SendError::TooShort {
                sent: 4,
                expected: 5
            })
        ),
        "{result:?}"
    );
    let (result, _) = sent(frames(vec![data(b"hell")]), OutFraming::Length(5)).await;
    assert!(
        matches!(result, Err(SendError::TooShort { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn chunked_writes_one_chunk_per_frame_then_trailers() {
    let body = frames(vec![
        data(b"abc"),
        data(b""),
        data(b"0123456789abcdefg"),
        trailers(&[("x-checksum", "1"), ("x-multi", "a"), ("x-multi", "b")]),
    ]);
    let (result, bytes) = sent(body, OutFraming::Chunked).await;
    result.unwrap();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        "3\r\nabc\r\n11\r\n0123456789abcdefg\r\n0\r\nx-checksum: 1\r\nx-multi: a\r\nx-multi: b\r\n\r\n"
    );
}

#[tokio::test]
async fn short_writes_resume_where_they_stopped() {
    let mut out = Recorder {
        max: Some(3),
        ..Recorder::default()
    };
    let body = frames(vec![
        data(b"abcdefghijklmnopq"),
        data(b"r"),
        trailers(&[("x-t", "1")]),
    ]);
    send_message(
        &mut out,
        Bytes::from_static(b"HEAD\r\n\r\n"),
        body,
        OutFraming::Chunked,
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(out.bytes()).unwrap(),
        "HEAD\r\n\r\n11\r\nabcdefghijklmnopq\r\n1\r\nr\r\n0\r\nx-t: 1\r\n\r\n"
    );
    assert!(out.writes.iter().all(|write| write.len() <= 3));
}

#[tokio::test]
async fn chunked_output_passes_the_codec_chunk_check() {
    let body = frames(vec![
        data(b"abc"),
        data(&[b'x'; 300]),
        trailers(&[("t", "v")]),
    ]);
    let (result, bytes) = sent(body, OutFraming::Chunked).await;
    result.unwrap();
    let mut decoder = crate::forward::h1::ChunkedDecoder::new(1024);
    assert_eq!(decoder.feed(&bytes), Ok((bytes.len(), true)));
}

#[tokio::test]
async fn chunked_empty_and_single_frame_bodies() {
    let (result, bytes) = sent(Empty::<Bytes>::new(), OutFraming::Chunked).await;
    result.unwrap();
    assert_eq!(bytes, b"0\r\n\r\n");
    let (result, bytes) = sent(frames(vec![]), OutFraming::Chunked).await;
    result.unwrap();
    assert_eq!(bytes, b"0\r\n\r\n");
    let mut out = Recorder::default();
    send_body(
        &mut out,
        Full::new(Bytes::from_static(b"hello")),
        OutFraming::Chunked,
    )
    .await
    .unwrap();
    assert_eq!(out.bytes(), b"5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(
        out.writes.len(),
        1,
        "the last chunk leaves with its terminator"
    );
}

#[tokio::test]
async fn head_leaves_with_the_first_frame() {
    let mut out = Recorder::default();
    let head = Bytes::from_static(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\n");
    send_message(
        &mut out,
        head.clone(),
        Full::new(Bytes::from_static(b"hello")),
        OutFraming::Length(5),
    )
    .await
    .unwrap();
    assert_eq!(out.writes, vec![[&head[..], b"hello"].concat()]);
    assert_eq!(out.flushes, 1);

    let mut out = Recorder::default();
    send_message(
        &mut out,
        head.clone(),
        Empty::<Bytes>::new(),
        OutFraming::None,
    )
    .await
    .unwrap();
    assert_eq!(out.writes, vec![head.to_vec()]);
}

#[tokio::test]
async fn close_delimited_is_raw_and_drops_trailers() {
    let body = frames(vec![data(b"abc"), data(b"def"), trailers(&[("t", "v")])]);
    let (result, bytes) = sent(body, OutFraming::Close).await;
    result.unwrap();
    assert_eq!(bytes, b"abcdef");
}

/// A body that must not be read.
struct Untouchable;

impl Body for Untouchable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        panic!("a body framed as None was polled")
    }
}

#[tokio::test]
async fn none_sends_nothing_and_leaves_the_body_alone() {
    let (result, bytes) = sent(Untouchable, OutFraming::None).await;
    result.unwrap();
    assert!(bytes.is_empty());
}

#[tokio::test]
async fn a_body_error_is_reported() {
    let body = frames(vec![data(b"abc"), Err("client went away".into())]);
    let (result, bytes) = sent(body, OutFraming::Chunked).await;
    assert!(matches!(result, Err(SendError::Body(_))), "{result:?}");
    assert_eq!(bytes, b"3\r\nabc\r\n", "no last chunk after a failure");
}

/// Over a buffering writer, what was written reaches the peer while the body waits for more:
/// the peer reads the first chunk before the second exists.
#[tokio::test]
async fn flushes_while_the_body_is_pending() {
    let (near, mut far) = tokio::io::duplex(1 << 16);
    let mut write = tokio::io::BufWriter::new(near);
    let (mut tx, rx) = mpsc::channel::<FrameResult>(1);
    let sender = tokio::spawn(async move {
        send_body(&mut write, StreamBody::new(rx), OutFraming::Chunked).await
    });
    tx.send(data(b"first")).await.unwrap();
    let mut got = [0u8; 10];
    // A guard against a hang, not a speed check: unflushed bytes would never arrive.
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), far.read_exact(&mut got));
    read.await
        .expect("the first chunk was not flushed")
        .unwrap();
    assert_eq!(&got, b"5\r\nfirst\r\n");
    tx.send(data(b"second")).await.unwrap();
    drop(tx);
    sender.await.unwrap().unwrap();
    let mut rest = Vec::new();
    far.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"6\r\nsecond\r\n0\r\n\r\n");
}

/// Over a real socket, a peer that parses HTTP/1 (hyper's server) reads the chunked body and
/// its trailers as sent.
#[tokio::test]
async fn hyper_reads_the_chunked_body_and_trailers() {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let collected = request.into_body().collect().await?;
                    let trailers = collected.trailers().cloned();
                    let _ = tx.send((collected.to_bytes(), trailers));
                    Ok::<_, hyper::Error>(http::Response::new(Empty::<Bytes>::new()))
                }
            });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await
            .unwrap();
        rx.recv().await.unwrap()
    });
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = Bytes::from_static(
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n",
    );
    let body = frames(vec![
        data(b"hello "),
        data(b"world"),
        trailers(&[("x-sum", "42")]),
    ]);
    send_message(&mut stream, head, body, OutFraming::Chunked)
        .await
        .unwrap();
    let mut response = [0u8; 12];
    stream.read_exact(&mut response).await.unwrap();
    assert_eq!(&response, b"HTTP/1.1 200");
    stream.shutdown().await.unwrap();
    drop(stream);
    let (content, trailers) = server.await.unwrap();
    assert_eq!(content, "hello world");
    assert_eq!(trailers.unwrap()["x-sum"], "42");
}
