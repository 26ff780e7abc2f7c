//! `imagegate.v1.ApprovalFeed` as a tower service, written by hand rather
//! than generated: the generated server takes `ApprovalBatch` values and
//! encodes and copies each on every stream, where the feed has each live
//! batch's bytes already ([`super::encoded`]). Here a stream's response
//! body is those bytes, shared: at 5,000 streams a burst held 5,000 copies
//! of each message while the agents read them (`cargo xtask bench push`).
//! tonic still decodes and bounds the request.
//!
//! The agent's client is the generated one: the bytes on the wire are
//! gRPC's length-prefixed `ApprovalBatch` messages, then the status in
//! trailers (<https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>).

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, header::CONTENT_TYPE};
use hyper::body::Frame;
use imagegate_proto::v1::{self as pb, approval_feed_server::SERVICE_NAME};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{
    Status,
    codec::{DecodeBuf, Decoder, Streaming},
    metadata::GRPC_CONTENT_TYPE,
    server::NamedService,
};

use super::{encoded::Encoded, feed::Feed};

/// The one method, as gRPC names it on the wire.
const FOLLOW_PATH: &str = "/imagegate.v1.ApprovalFeed/Follow";

/// A `FollowRequest` names a node and a few ledgers: far less than this.
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// What a stream's task hands its response body.
pub type Messages = mpsc::Receiver<Result<Encoded, Status>>;

#[derive(Clone)]
pub struct FeedService {
    feed: Arc<Feed>,
}

impl FeedService {
    pub fn new(feed: Feed) -> Self {
        FeedService {
            feed: Arc::new(feed),
        }
    }
}

impl NamedService for FeedService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> tower::Service<http::Request<B>> for FeedService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let feed = self.feed.clone();
        Box::pin(async move {
            Ok(match follow(&feed, request).await {
                Ok(messages) => {
                    let mut response =
                        http::Response::new(tonic::body::Body::new(FollowBody::new(messages)));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, GRPC_CONTENT_TYPE);
                    // This replica ends each catch-up with `caught_up`
                    // (agents of earlier releases ignore both).
                    response.headers_mut().insert(
                        imagegate_proto::MARKS_CAUGHT_UP_HEADER,
                        http::HeaderValue::from_static("1"),
                    );
                    response
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Reads the one `FollowRequest` (tonic decodes it, within
/// [`MAX_REQUEST_BYTES`]) and opens the stream.
async fn follow<B>(feed: &Feed, request: http::Request<B>) -> Result<Messages, Status>
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    if request.uri().path() != FOLLOW_PATH {
        return Err(Status::unimplemented(format!(
            "{}: the approval feed serves only {FOLLOW_PATH}",
            request.uri().path()
        )));
    }
    let (parts, body) = request.into_parts();
    // Agents do not compress: a compressed request is refused by tonic.
    let mut decoded = Streaming::new_request(RequestDecoder, body, None, Some(MAX_REQUEST_BYTES));
    let message = decoded
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the stream ended before its FollowRequest"))?;
    feed.follow(tonic::Request::from_http(http::Request::from_parts(
        parts, message,
    )))
}

struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = pb::FollowRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::FollowRequest>, Status> {
        pb::FollowRequest::decode(src).map(Some).map_err(|e| {
            Status::invalid_argument(format!("the FollowRequest does not decode: {e}"))
        })
    }
}

/// A stream's response body: each message as gRPC frames it (a flag byte,
/// no compression, and its length as four bytes, big-endian), its parts as
/// they are, then the status as trailers when the stream's task ends.
struct FollowBody {
    messages: Messages,
    /// What was taken from `messages` and not yet handed to HTTP/2.
    queued: VecDeque<Bytes>,
    ended: bool,
}

impl FollowBody {
    fn new(messages: Messages) -> Self {
        FollowBody {
            messages,
            queued: VecDeque::new(),
            ended: false,
        }
    }
}

impl hyper::body::Body for FollowBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let body = self.get_mut();
        if let Some(part) = body.queued.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(part))));
        }
        if body.ended {
            return Poll::Ready(None);
        }
        let status = match ready!(body.messages.poll_recv(cx)) {
            Some(Ok(message)) => {
                body.queued.push_back(length_prefix(message.len()));
                body.queued.extend(message.into_parts());
                let first = body.queued.pop_front().map(|part| Ok(Frame::data(part)));
                return Poll::Ready(first);
            }
            Some(Err(status)) => status,
            // The stream's task ended without an error: the webhook stops.
            None => Status::ok(""),
        };
        body.ended = true;
        Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
    }
}

fn length_prefix(len: usize) -> Bytes {
    let mut prefix = [0u8; 5];
    // Feed messages are bounded far below 4 GiB (BatchLimits::FEED).
    prefix[1..].copy_from_slice(&(len as u32).to_be_bytes());
    Bytes::copy_from_slice(&prefix)
}

fn trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // The message could not be a header value: the code alone.
        trailers.clear();
        let _ = Status::new(status.code(), "").add_header(&mut trailers);
    }
    trailers
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::push::encoded::{Batch, Merged, test_batch};

    #[test]
    fn the_path_is_the_generated_services() {
        assert_eq!(FOLLOW_PATH, format!("/{SERVICE_NAME}/Follow"));
    }

    fn batch(since: u64, upto: u64) -> Batch {
        Batch::encode(&test_batch(since, upto, None))
    }

    /// Everything the body yields: its data, whole, and its trailers.
    async fn drain(mut body: FollowBody) -> (Vec<u8>, HeaderMap) {
        let mut data = Vec::new();
        loop {
            let frame = body
                .frame()
                .await
                .expect("the body ends with trailers")
                .unwrap();
            match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap();
                    assert!(body.frame().await.is_none(), "nothing after trailers");
                    return (data, trailers);
                }
            }
        }
    }

    /// The body's data read as gRPC frames: length-prefixed messages.
    fn messages(mut data: &[u8]) -> Vec<pb::ApprovalBatch> {
        let mut out = Vec::new();
        while !data.is_empty() {
            assert_eq!(data[0], 0, "not compressed");
            let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
            out.push(pb::ApprovalBatch::decode(&data[5..5 + len]).unwrap());
            data = &data[5 + len..];
        }
        out
    }

    #[tokio::test]
    async fn messages_are_framed_and_the_end_is_a_status_in_trailers() {
        let (tx, rx) = mpsc::channel(4);
        let mut merged = Merged::new(&batch(0, 2));
        merged.add(&batch(2, 5), 1 << 20, 100).unwrap();
        tx.send(Ok(merged.into_encoded())).await.unwrap();
        tx.send(Ok(Merged::new(&batch(5, 6)).into_encoded()))
            .await
            .unwrap();
        tx.send(Err(Status::unavailable(
            "the webhook cannot read its ledger",
        )))
        .await
        .unwrap();
        let (data, trailers) = drain(FollowBody::new(rx)).await;
        let sent = messages(&data);
        assert_eq!(sent.len(), 2);
        assert_eq!((sent[0].since_generation, sent[0].generation), (0, 5));
        assert_eq!(sent[0].approvals.len(), 5);
        assert_eq!((sent[1].since_generation, sent[1].generation), (5, 6));
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(
            trailers["grpc-message"],
            "the%20webhook%20cannot%20read%20its%20ledger"
        );
    }

    #[tokio::test]
    async fn a_stream_whose_task_ended_closes_with_ok() {
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(Merged::new(&batch(0, 1)).into_encoded()))
            .await
            .unwrap();
        drop(tx);
        let (data, trailers) = drain(FollowBody::new(rx)).await;
        assert_eq!(messages(&data).len(), 1);
        assert_eq!(trailers["grpc-status"], "0");
    }
}
