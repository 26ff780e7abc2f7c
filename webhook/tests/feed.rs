//! The approval feed over real mTLS on loopback, served in process so the
//! test writes the ledger itself: what a follower receives, in what order,
//! who may follow.

use std::{collections::HashMap, sync::Arc, time::Duration};

use imagegate_proto::v1::{self as pb, approval_feed_client::ApprovalFeedClient};
use imagegate_testkit::ca::Ca;
use imagegate_webhook::{
    ledger::{Approval, Ledger, Origin},
    push::{
        PushMetrics,
        feed::{self, FeedConfig},
        followers::Followers,
    },
    review::Api,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn approval(n: u64) -> Approval {
    Approval {
        digest: imagegate_proto::digest::Digest::parse(&format!("sha256:{n:064x}")).unwrap(),
        children: Vec::new(),
        verified: true,
        break_glass: false,
        expires_at_ms: None,
        reference: format!("registry.test/app:{n}"),
        namespace: "test".into(),
        kind: Some("Pod".into()),
        name: Some(format!("pod-{n}")),
        user: None,
        rule: "test".into(),
        api: Api::AdmissionReview,
        origin: Origin::Admission,
        admitted_at_ms: imagegate_plumbing::clock::now_ms(),
        generation: 0,
        signers: Vec::new(),
    }
}

struct Served {
    ledger: Arc<Ledger>,
    ca: Ca,
    address: std::net::SocketAddr,
    metrics: PushMetrics,
    followers: Followers,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn serve(prefill: u64) -> Served {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("feed test CA");
    let (ca_path, cert, key) = ca.write(
        dir.path(),
        "imagegate-webhook",
        &ca.identity("imagegate-webhook"),
    );
    let ledger = Arc::new(
        Ledger::open(
            &dir.path().join("ledger.redb"),
            Duration::from_secs(86_400),
            1_000_000,
        )
        .unwrap(),
    );
    let all: Vec<Approval> = (1..=prefill).map(approval).collect();
    for chunk in all.chunks(1_000) {
        ledger.record(chunk).unwrap();
    }
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = PushMetrics::default();
    let followers = Followers::default();
    let address = feed::serve(
        FeedConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert,
            key,
            client_ca: ca_path,
            max_connections: 16,
            followers: followers.clone(),
        },
        ledger.clone(),
        metrics.clone(),
        stop_rx,
    )
    .await
    .unwrap();
    Served {
        ledger,
        ca,
        address,
        metrics,
        followers,
        _dir: dir,
        _stop: stop,
    }
}

impl Served {
    async fn client(&self, identity: &str) -> ApprovalFeedClient<tonic::transport::Channel> {
        self.client_with_window(identity, None).await
    }

    /// A client whose HTTP/2 receive window is `window` bytes: the server
    /// can send no more than that ahead of what the client has read.
    async fn client_with_window(
        &self,
        identity: &str,
        window: Option<u32>,
    ) -> ApprovalFeedClient<tonic::transport::Channel> {
        let leaf = self.ca.identity(identity);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.pem()))
            .identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem))
            .domain_name(imagegate_proto::WEBHOOK_IDENTITY);
        let channel = Endpoint::from_shared(format!("https://{}", self.address))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .connect()
            .await
            .unwrap();
        ApprovalFeedClient::new(channel)
            .max_decoding_message_size(imagegate_proto::MAX_MESSAGE_BYTES)
    }

    async fn follow(&self, held: HashMap<String, u64>) -> tonic::Streaming<pb::ApprovalBatch> {
        self.client("imagegate-agent")
            .await
            .follow(pb::FollowRequest {
                node: "test-node".into(),
                held,
            })
            .await
            .inspect(|response| {
                // Agents count the stream as open from the catch-up's end
                // only when the replica says it marks it.
                assert!(
                    response
                        .metadata()
                        .contains_key(imagegate_proto::MARKS_CAUGHT_UP_HEADER),
                    "{:?}",
                    response.metadata()
                );
            })
            .unwrap()
            .into_inner()
    }
}

/// What a follower holds, kept as an agent keeps it: a batch must start at
/// or before what is held.
#[derive(Default)]
struct Follower {
    held: u64,
    digests: Vec<String>,
    /// Messages received.
    messages: usize,
    /// Whether the stream said its catch-up is over.
    caught_up: bool,
}

/// The stream's next message, within 20 s; the stream stays open.
async fn next_batch(stream: &mut tonic::Streaming<pb::ApprovalBatch>) -> pb::ApprovalBatch {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a batch within 20 s")
        .unwrap()
        .expect("the stream stays open")
}

impl Follower {
    async fn read_until(
        &mut self,
        stream: &mut tonic::Streaming<pb::ApprovalBatch>,
        generation: u64,
    ) {
        while self.held < generation {
            self.read_one(stream).await;
        }
    }

    /// The stream's next message, checked and taken in.
    async fn read_one(&mut self, stream: &mut tonic::Streaming<pb::ApprovalBatch>) {
        let batch = next_batch(stream).await;
        assert!(
            batch.since_generation <= self.held,
            "a gap: batch from {} while {} is held",
            batch.since_generation,
            self.held
        );
        assert!(batch.approvals.len() <= 2_000, "a feed batch is bounded");
        self.messages += 1;
        self.caught_up |= batch.caught_up;
        self.digests
            .extend(batch.approvals.iter().map(|a| a.digest.clone()));
        self.held = self.held.max(batch.generation);
    }

    fn distinct(&self) -> usize {
        self.digests
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_gets_the_whole_ledger_then_each_write_in_order() {
    let served = serve(4_500).await;
    let mut stream = served.follow(HashMap::new()).await;
    let mut follower = Follower::default();
    follower.read_until(&mut stream, 4_500).await;
    assert_eq!(follower.distinct(), 4_500);
    assert!(served.metrics.followers.get() == 1);
    // The reporter finds the agent where it follows from.
    let agents = served.followers.subscribe();
    assert_eq!(
        agents.borrow().get("test-node"),
        Some(&std::net::IpAddr::from([127, 0, 0, 1]))
    );

    // Each new write arrives over the open stream.
    served.ledger.record(&[approval(10_001)]).unwrap();
    follower.read_until(&mut stream, 4_501).await;
    assert_eq!(
        follower.digests.last().unwrap(),
        &format!("sha256:{:064x}", 10_001)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_in_quick_succession_go_out_together_in_order() {
    let served = serve(1).await;
    let mut stream = served.follow(HashMap::new()).await;
    let mut follower = Follower::default();
    follower.read_until(&mut stream, 1).await;
    // The catch-up ends with a mark of its own after the records: read it
    // too, so that only live batches are counted below. Left in the
    // stream, it was counted as a batch, and the test failed whenever the
    // writes took 40 to 50 ms (5 batches and the mark against a bound of 5).
    while !follower.caught_up {
        follower.read_one(&mut stream).await;
    }
    // One write per admission, back to back, as when a Deployment is
    // scaled up.
    let writes = 150;
    let ledger = served.ledger.clone();
    let started = std::time::Instant::now();
    let writing = tokio::task::spawn_blocking(move || {
        for n in 0..writes {
            ledger.record(&[approval(30_000 + n)]).unwrap();
        }
    });
    let before = follower.messages;
    follower.read_until(&mut stream, 1 + writes).await;
    let elapsed = started.elapsed();
    writing.await.unwrap();
    let messages = follower.messages - before;
    // Everything, once, in order (`read_until` refuses a gap).
    assert_eq!(follower.distinct(), 1 + writes as usize);
    let expected: Vec<String> = (0..writes)
        .map(|n| format!("sha256:{:064x}", 30_000 + n))
        .collect();
    assert_eq!(follower.digests[1..], expected[..]);
    // At most one live batch per LIVE_EVERY, the first at once.
    let bound = (elapsed.as_secs_f64() / imagegate_webhook::push::LIVE_EVERY.as_secs_f64()).floor()
        as usize
        + 1;
    assert!(
        messages <= bound,
        "{messages} messages for {writes} writes in {elapsed:?}: more than one per {:?}",
        imagegate_webhook::push::LIVE_EVERY
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_is_sent_only_what_it_lacks_and_a_new_ledger_from_its_start() {
    let served = serve(3_000).await;
    let id = served.ledger.id().to_string();
    let mut stream = served
        .follow(HashMap::from([
            (id.clone(), 2_500),
            ("an-older-ledger".into(), 99_999),
        ]))
        .await;
    let mut follower = Follower {
        held: 2_500,
        ..Default::default()
    };
    follower.read_until(&mut stream, 3_000).await;
    assert_eq!(follower.distinct(), 500, "only the 500 after what it holds");
    // A generation of another ledger (the one lost before this one) counts
    // for nothing here: the whole of this one is sent.
    let mut stream = served
        .follow(HashMap::from([("an-older-ledger".into(), 99_999)]))
        .await;
    let mut follower = Follower::default();
    follower.read_until(&mut stream, 3_000).await;
    assert_eq!(follower.distinct(), 3_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_stops_reading_misses_nothing() {
    let served = serve(10).await;
    // A small window: what the follower does not read stays on the
    // webhook's side (the default windows hold megabytes at the client).
    let mut stream = served
        .client_with_window("imagegate-agent", Some(16 * 1024))
        .await
        .follow(pb::FollowRequest {
            node: "slow-node".into(),
            held: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut follower = Follower::default();
    follower.read_until(&mut stream, 10).await;
    // Many writes while the follower reads nothing: past what the window
    // and the live buffer hold, so the stream falls behind the live batches
    // and is caught up from the ledger.
    // Paced, so that the tail makes one live batch of each write (it reads
    // all that is new at once).
    let writes = 1_500;
    for n in 0..writes {
        served.ledger.record(&[approval(20_000 + n)]).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    follower.read_until(&mut stream, 10 + writes).await;
    assert_eq!(follower.distinct(), (10 + writes) as usize);
    let wanted: std::collections::HashSet<String> = (0..writes)
        .map(|n| format!("sha256:{:064x}", 20_000 + n))
        .collect();
    assert!(wanted.iter().all(|d| follower.digests.contains(d)));
    assert!(
        served.metrics.feed_lagged.get() >= 1,
        "the stream fell behind the live batches (the path under test)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_agent_certificate_may_follow() {
    let served = serve(1).await;
    let status = served
        .client("imagegate-webhook")
        .await
        .follow(pb::FollowRequest::default())
        .await
        .expect_err("the webhook's own identity is not an agent's");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(status.message().contains("imagegate-agent"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_the_feed_bound_is_refused_not_read() {
    let served = serve(1).await;
    // A FollowRequest names a node and a few ledgers; one of 100 KiB is
    // not an agent's.
    let status = served
        .client("imagegate-agent")
        .await
        .follow(pb::FollowRequest {
            node: "n".repeat(100 << 10),
            held: HashMap::new(),
        })
        .await
        .expect_err("100 KiB is over the request bound");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");
    assert_eq!(served.metrics.followers.get(), 0);
    // The listener still serves a well-formed request.
    let mut stream = served.follow(HashMap::new()).await;
    Follower::default().read_until(&mut stream, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_cleanly_when_the_webhook_stops() {
    let served = serve(3).await;
    let mut stream = served.follow(HashMap::new()).await;
    Follower::default().read_until(&mut stream, 3).await;
    // The catch-up ends with its mark, which carries nothing else here.
    let mark = next_batch(&mut stream).await;
    assert!(
        mark.caught_up && mark.approvals.is_empty() && mark.since_generation == 3,
        "{mark:?}"
    );
    served._stop.send(true).unwrap();
    // The stream's end is the body's trailers (grpc-status 0), as the
    // generated agent client reads them: no message and no error.
    let end = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the stream ends within 20 s of the stop");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

/// After a restart every agent is caught up from the same generation: the
/// second is sent what the first read, not read and encoded again, and
/// both receive the same records in the same order.
#[tokio::test(flavor = "multi_thread")]
async fn followers_caught_up_from_the_same_generation_share_one_read() {
    let served = serve(3_000).await;
    let held = HashMap::from([(served.ledger.id().to_string(), 1_000)]);
    // Both connections first: the second catch-up comes within the time a
    // read is kept (1 s), with no handshake between.
    let mut clients = [
        served.client("imagegate-agent").await,
        served.client("imagegate-agent").await,
    ];
    let mut followers = Vec::new();
    for (n, client) in clients.iter_mut().enumerate() {
        let mut stream = client
            .follow(pb::FollowRequest {
                node: format!("node-{n}"),
                held: held.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut follower = Follower {
            held: 1_000,
            ..Default::default()
        };
        follower.read_until(&mut stream, 3_000).await;
        let mark = next_batch(&mut stream).await;
        assert!(mark.caught_up && mark.approvals.is_empty(), "{mark:?}");
        followers.push(follower);
    }
    assert_eq!(followers[0].distinct(), 2_000);
    assert_eq!(followers[0].digests, followers[1].digests);
    assert_eq!(served.metrics.feed_catch_ups.get(), 2);
    assert_eq!(
        served.metrics.feed_shared_reads.get(),
        1,
        "the second catch-up is the first one's read"
    );
}
