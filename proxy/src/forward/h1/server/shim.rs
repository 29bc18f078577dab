//! TEMPORARY stand-in for helper C's `h1::send::send_body`, with the signature of the shared
//! plan, until that branch lands. Deleted on merge; nothing outside `h1::server` uses it.

use std::io;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::forward::h1::exchange::BoxWrite;
use crate::forward::h1::fields::OutFraming;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("body: {0}")]
    Body(crate::forward::BoxError),
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

pub async fn send_body<B>(
    write: &mut BoxWrite,
    body: B,
    framing: OutFraming,
) -> Result<(), SendError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<crate::forward::BoxError>,
{
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SendError::Body(e.into()))?;
        if let Some(data) = frame.data_ref() {
            if framing == OutFraming::Chunked && !data.is_empty() {
                write
                    .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                    .await?;
                write.write_all(data).await?;
                write.write_all(b"\r\n").await?;
            } else if framing != OutFraming::None {
                write.write_all(data).await?;
            }
        }
    }
    if framing == OutFraming::Chunked {
        write.write_all(b"0\r\n\r\n").await?;
    }
    write.flush().await?;
    Ok(())
}
