//! A pod network for tests: a Linux bridge with its own private /24, handed
//! to containerd's CRI as a CNI `bridge` + `host-local` config (Debian's
//! containernetworking-plugins). Pods get addresses on it; the host is its
//! gateway, so stand-ins for cluster services (DNS, the apiserver, a
//! registry) listen on the gateway address and pods reach them as they
//! would reach cluster services. Nothing is routed off the machine. The
//! bridge and the addresses handed out are removed on drop.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// A bridge and its subnet.
pub struct PodNetwork {
    /// The CNI network's name (also the host-local state folder's).
    pub name: String,
    pub bridge: String,
    /// `10.X.Y.1`: the host's address on the bridge.
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("ip (Debian iproute2)")
}

impl PodNetwork {
    /// Makes the bridge, up, with the gateway address, in a /24 no other
    /// test process on this machine uses at the same time.
    pub fn create() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (a, b) = (10 + (pid % 200) as u8, ((pid / 200 + n * 37) % 250) as u8);
        let bridge = format!("igbr{}x{n}", pid % 100_000);
        let network = Self {
            name: format!("imagegate-test-{pid}-{n}"),
            bridge: bridge.clone(),
            gateway: Ipv4Addr::new(10, a, b, 1),
            prefix: 24,
        };
        let _ = ip(&["link", "del", &bridge]);
        for args in [
            vec!["link", "add", &bridge, "type", "bridge"],
            vec!["link", "set", &bridge, "up"],
        ] {
            let out = ip(&args);
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        let address = format!("{}/{}", network.gateway, network.prefix);
        let out = ip(&["addr", "add", &address, "dev", &bridge]);
        assert!(out.status.success(), "ip addr add {address}: {out:?}");
        network
    }

    /// `10.X.Y.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c, _] = self.gateway.octets();
        format!("{a}.{b}.{c}.0/{}", self.prefix)
    }

    /// Writes the CNI config containerd's CRI reads from `conf_dir`.
    pub fn write_cni_config(&self, conf_dir: &Path) {
        let config = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet(), "gateway": self.gateway.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "loopback"}
            ]
        });
        std::fs::create_dir_all(conf_dir).unwrap();
        std::fs::write(
            conf_dir.join("10-imagegate-test.conflist"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&self.name));
    }
}
