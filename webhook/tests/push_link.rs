//! The dial path (`--agent`): a webhook's link to one agent, over real mTLS
//! on loopback, served in process so the test writes the ledger itself and
//! sees each push arrive. The agent here is a small `AgentService` that
//! keeps what it is sent: this is a test of the link, not of the agent.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use imagegate_proto::v1::{
    self as pb,
    agent_service_server::{AgentService, AgentServiceServer},
};
use imagegate_testkit::ca::Ca;
use imagegate_webhook::{
    ledger::{Approval, Ledger, Origin},
    push::{self, PushConfig, PushMetrics, Pusher},
    review::Api,
};
use tokio::sync::Notify;
use tonic::{
    Request, Response, Status,
    transport::{Identity, Server, ServerTlsConfig},
};

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

/// What the agent was sent: the generation it holds per ledger.
#[derive(Default)]
struct Held {
    generations: Mutex<HashMap<String, u64>>,
    changed: Notify,
}

impl Held {
    fn take(&self, ledger: &str, generation: u64) -> u64 {
        let mut generations = self.generations.lock().unwrap();
        let held = generations.entry(ledger.to_string()).or_insert(0);
        *held = (*held).max(generation);
        self.changed.notify_waiters();
        *held
    }

    fn of(&self, ledger: &str) -> u64 {
        self.generations
            .lock()
            .unwrap()
            .get(ledger)
            .copied()
            .unwrap_or(0)
    }
}

struct Agent(Arc<Held>);

#[tonic::async_trait]
impl AgentService for Agent {
    async fn push_approvals(
        &self,
        request: Request<pb::PushApprovalsRequest>,
    ) -> Result<Response<pb::PushApprovalsResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(pb::PushApprovalsResponse {
            added: r.approvals.len() as u32,
            generation: self.0.take(&r.ledger, r.generation),
            rejected: Vec::new(),
        }))
    }

    async fn sync_approvals(
        &self,
        request: Request<pb::SyncApprovalsRequest>,
    ) -> Result<Response<pb::SyncApprovalsResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(pb::SyncApprovalsResponse {
            added: r.approvals.len() as u32,
            generation: self.0.take(&r.ledger, r.generation),
            rejected: Vec::new(),
        }))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        let sources = self
            .0
            .generations
            .lock()
            .unwrap()
            .iter()
            .map(|(ledger, generation)| pb::Source {
                source: format!("{}/{ledger}", imagegate_proto::WEBHOOK_IDENTITY),
                generation: *generation,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::Status {
            sources,
            ..Default::default()
        }))
    }

    async fn list_approvals(
        &self,
        _: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        Err(Status::unimplemented("not used by the link"))
    }

    async fn list_containers(
        &self,
        _: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        Err(Status::unimplemented("not used by the link"))
    }

    async fn list_violations(
        &self,
        _: Request<pb::ListViolationsRequest>,
    ) -> Result<Response<pb::ListViolationsResponse>, Status> {
        Err(Status::unimplemented("not used by the link"))
    }

    type WatchEventsStream = tokio_stream::Empty<Result<pb::Event, Status>>;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(Status::unimplemented("not used by the link"))
    }
}

/// Found as a CI failure: the link read the ledger, found nothing new,
/// and only then marked the ledger's change signal seen, so a write that
/// landed in between waited for the link's idle check, 30 s later. Here
/// writes land at every moment of the link's cycle (right after the
/// previous push arrived, then a little later each time, past the read):
/// every one must reach the agent at once.
#[tokio::test(flavor = "multi_thread")]
async fn every_write_reaches_the_agent_whenever_it_lands() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("push link test CA");
    let (ca_path, cert, key) = ca.write(
        dir.path(),
        "imagegate-webhook",
        &ca.identity("imagegate-webhook"),
    );
    let agent_identity = ca.identity("imagegate-agent");
    let held = Arc::new(Held::default());
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
        .expect("a loopback port");
    let address = incoming.local_addr().unwrap();
    let server = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(
            &agent_identity.cert_pem,
            &agent_identity.key_pem,
        )))
        .unwrap()
        .add_service(AgentServiceServer::new(Agent(held.clone())));
    tokio::spawn(server.serve_with_incoming(incoming));

    let ledger = Arc::new(
        Ledger::open(
            &dir.path().join("ledger.redb"),
            Duration::from_secs(86_400),
            1_000_000,
        )
        .unwrap(),
    );
    let ledger_id = ledger.id().to_string();
    let pusher = Arc::new(Pusher {
        config: PushConfig {
            agents: vec![address.to_string()],
            service: None,
            resolve_every: Duration::from_secs(60),
            ca: ca_path,
            cert,
            key,
            server_name: "imagegate-agent".into(),
        },
        ledger: ledger.clone(),
        metrics: PushMetrics::default(),
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(push::discover(pusher, stop_rx));

    // Well under the link's 30 s idle check: a lost wake-up shows.
    const AT_ONCE: Duration = Duration::from_secs(5);
    const WRITES: u64 = 300;
    for n in 1..=WRITES {
        // 0 to 1.5 ms after the previous arrival, in 5 us steps (a
        // thread's sleep: the runtime's timer counts whole milliseconds).
        let offset = Duration::from_micros((n * 5) % 1_500);
        let ledger_for_write = ledger.clone();
        let generation = tokio::task::spawn_blocking(move || {
            std::thread::sleep(offset);
            ledger_for_write.record(&[approval(n)])
        })
        .await
        .unwrap()
        .unwrap();
        let written = Instant::now();
        loop {
            let changed = held.changed.notified();
            if held.of(&ledger_id) >= generation {
                break;
            }
            let left = AT_ONCE.saturating_sub(written.elapsed());
            assert!(
                !left.is_zero(),
                "write {n} of {WRITES} (generation {generation}, {offset:?} after the previous \
                 arrival) did not reach the agent within {AT_ONCE:?}; it holds {}",
                held.of(&ledger_id)
            );
            let _ = tokio::time::timeout(left, changed).await;
        }
    }
    let _ = stop.send(true);
}
