//! A stand-in for cluster DNS: answers `A` queries over UDP for the names
//! it is told (a headless Service's name -> its pods' addresses), NXDOMAIN
//! for any other name, and an empty answer for other types of a known name,
//! as CoreDNS does. Pods use it through the `nameserver` the CRI sandbox's
//! DNS config writes into their resolv.conf, with the kubelet's search
//! list, so the resolver in the pod walks the search domains as it would in
//! a cluster.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

type Records = Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>;

/// The running server; stops with the test's runtime.
pub struct Dns {
    pub address: SocketAddr,
    records: Records,
}

impl Dns {
    /// Serves on `address` (port 53 of the pod network's gateway).
    pub async fn start(address: SocketAddr) -> Self {
        let socket = tokio::net::UdpSocket::bind(address)
            .await
            .unwrap_or_else(|e| panic!("DNS stand-in on {address}: {e}"));
        let records: Records = Arc::default();
        let known = records.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let reply = answer(&buf[..len], &known.lock().unwrap());
                if let Some(answer) = reply {
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
        });
        Self { address, records }
    }

    /// `name` (fully qualified, no trailing dot) now resolves to `addresses`.
    pub fn set(&self, name: &str, addresses: Vec<Ipv4Addr>) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), addresses);
    }
}

/// The answer to one query, or `None` for what is not a query.
fn answer(query: &[u8], records: &HashMap<String, Vec<Ipv4Addr>>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let name = labels.join(".");
    let found = records.get(&name);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]);
    // QR, opcode 0, AA, RD copied; RA; RCODE 0 or 3 (NXDOMAIN).
    let rd = query[2] & 0x01;
    out.push(0x84 | rd);
    out.push(if found.is_some() { 0x80 } else { 0x83 });
    let answers: &[Ipv4Addr] = match (found, qtype) {
        (Some(addresses), 1) => addresses,
        _ => &[],
    };
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..question_end)?);
    for address in answers {
        // A pointer to the question's name, type A, class IN, TTL 5 s.
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
        out.extend_from_slice(&address.octets());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn answers_known_names_and_refuses_others() {
        let records = HashMap::from([(
            "agent.imagegate.svc.cluster.local".to_string(),
            vec![Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 1, 2, 4)],
        )]);
        let a = answer(&query("Agent.imagegate.svc.cluster.local", 1), &records).unwrap();
        assert_eq!(&a[0..2], &[0x12, 0x34], "same id");
        assert_eq!(a[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 2, "two answers");
        assert_eq!(&a[a.len() - 4..], &[10, 1, 2, 4]);
        let aaaa = answer(&query("agent.imagegate.svc.cluster.local", 28), &records).unwrap();
        assert_eq!((aaaa[3] & 0x0f, aaaa[7]), (0, 0), "known name, no AAAA");
        let none = answer(
            &query("agent.imagegate.svc.imagegate.svc.cluster.local", 1),
            &records,
        )
        .unwrap();
        assert_eq!(none[3] & 0x0f, 3, "NXDOMAIN");
    }
}
