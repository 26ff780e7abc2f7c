//! From a cgroup path to the container it belongs to.
//!
//! Runtimes name a container's cgroup after its id, in a handful of
//! layouts (cgroupfs and systemd drivers, v1 and v2 paths alike):
//!
//! | who                     | path                                                                    |
//! |-------------------------|-------------------------------------------------------------------------|
//! | kubelet, cgroupfs       | `/kubepods/besteffort/pod<uid>/<id>`                                     |
//! | kubelet, systemd        | `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | CRI-O, systemd          | `.../crio-<id>.scope` (`crio-conmon-<id>.scope` is its monitor, a host process) |
//! | Docker                  | `/docker/<id>`, `/system.slice/docker-<id>.scope`                         |
//! | Podman                  | `.../libpod-<id>.scope`                                                 |
//! | containerd (`ctr run`)  | `/<containerd namespace>/<container id>`                                 |
//!
//! Ids are 64 lower-case hex digits except for containerd's own API, where
//! a container id is any name: such a path only says "maybe", and the
//! identity module asks containerd.

use serde::Serialize;

/// What a cgroup path says about the container in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerRef {
    /// The runtime's container id.
    pub id: String,
    /// The runtime the layout points to.
    pub runtime: RuntimeHint,
    /// The Kubernetes pod's uid, when the path carries it.
    pub pod_uid: Option<String>,
    /// For `/<namespace>/<id>` paths: the containerd namespace to ask first.
    pub namespace: Option<String>,
}

/// The runtime a layout points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeHint {
    /// CRI (kubelet) with containerd or an unnamed runtime (cgroupfs driver).
    Kubernetes,
    Containerd,
    CriO,
    Docker,
    Podman,
}

/// The container a cgroup path belongs to, or `None` for a host cgroup.
///
/// The outermost part of the path that names a container decides: what is
/// below it is that container's own sub-cgroups (crun puts a CRI-O
/// container's processes in `crio-<id>.scope/container`; a container given
/// its cgroup can make any folders in it, named like anything, another
/// container's id too), so a process there is that container's.
pub fn parse(path: &str) -> Option<ContainerRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let pod_uid = parts.iter().find_map(|p| pod_uid(p));
    let under_kubepods = parts.first().is_some_and(|p| p.starts_with("kubepods"));
    for (depth, part) in parts.iter().enumerate() {
        match named(part) {
            Named::Nothing => continue,
            // A runtime's monitor (CRI-O's conmon) and what is below it
            // are host processes.
            Named::Monitor => return None,
            Named::Container(id, hint) => {
                let runtime = hint.unwrap_or(if under_kubepods {
                    RuntimeHint::Kubernetes
                } else if depth > 0 && parts[depth - 1] == "docker" {
                    RuntimeHint::Docker
                } else {
                    RuntimeHint::Containerd
                });
                return Some(ContainerRef {
                    id: id.to_string(),
                    runtime,
                    pod_uid,
                    namespace: None,
                });
            }
        }
    }
    // `ctr run` and other clients of containerd's own API: the default
    // cgroup is `/<namespace>/<id>`, and ids are free-form. Only a
    // candidate, which containerd confirms or not.
    if parts.len() >= 2 && !under_kubepods && !is_host_slice(parts[0]) && !parts[1].contains('.') {
        return Some(ContainerRef {
            id: parts[1].to_string(),
            runtime: RuntimeHint::Containerd,
            pod_uid: None,
            namespace: Some(parts[0].to_string()),
        });
    }
    None
}

/// What one part of a cgroup path names.
enum Named<'a> {
    Nothing,
    Monitor,
    Container(&'a str, Option<RuntimeHint>),
}

fn named(part: &str) -> Named<'_> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    if name.starts_with("crio-conmon-") || name.starts_with("docker-init") {
        return Named::Monitor;
    }
    for (prefix, runtime) in [
        ("cri-containerd-", RuntimeHint::Containerd),
        ("crio-", RuntimeHint::CriO),
        ("docker-", RuntimeHint::Docker),
        ("libpod-", RuntimeHint::Podman),
    ] {
        if let Some(id) = name.strip_prefix(prefix).filter(|id| is_hex_id(id)) {
            return Named::Container(id, Some(runtime));
        }
    }
    if is_hex_id(name) {
        return Named::Container(name, None);
    }
    Named::Nothing
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let part = part.strip_suffix(".slice").unwrap_or(part);
    let uid = part
        .rsplit_once("-pod")
        .map(|(_, u)| u)
        .or_else(|| part.strip_prefix("pod"))?;
    let uid = uid.replace('_', "-");
    (uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(uid)
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// systemd's own top-level units and the usual host groups.
fn is_host_slice(first: &str) -> bool {
    first.ends_with(".slice") || first.ends_with(".scope") || first.ends_with(".service")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c3a7e9b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e";
    const UID: &str = "0b6bd1c2-3c7a-4a4e-9b1e-2f0d3c4b5a69";

    fn parsed(path: &str) -> ContainerRef {
        parse(path).unwrap_or_else(|| panic!("{path} should name a container"))
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        let r = parsed(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!((r.id.as_str(), r.runtime), (ID, RuntimeHint::Kubernetes));
        assert_eq!(r.pod_uid.as_deref(), Some(UID));
        let r = parsed(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(r.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn kubelet_systemd_driver_with_containerd_and_crio() {
        let uid_ = UID.replace('-', "_");
        let base =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice");
        let r = parsed(&format!("{base}/cri-containerd-{ID}.scope"));
        assert_eq!((r.id.as_str(), r.runtime), (ID, RuntimeHint::Containerd));
        assert_eq!(r.pod_uid.as_deref(), Some(UID));
        let r = parsed(&format!("{base}/crio-{ID}.scope"));
        assert_eq!(r.runtime, RuntimeHint::CriO);
        assert_eq!(parse(&format!("{base}/crio-conmon-{ID}.scope")), None);
        // The pod's own slice is not a container.
        assert_eq!(parse(&base), None);
    }

    #[test]
    fn docker_and_podman() {
        assert_eq!(
            parsed(&format!("/docker/{ID}")).runtime,
            RuntimeHint::Docker
        );
        assert_eq!(
            parsed(&format!("/system.slice/docker-{ID}.scope")).runtime,
            RuntimeHint::Docker
        );
        assert_eq!(
            parsed(&format!("/user.slice/libpod-{ID}.scope")).runtime,
            RuntimeHint::Podman
        );
    }

    #[test]
    fn containerd_native_namespace_and_name() {
        let r = parsed("/default/demo-app");
        assert_eq!(r.id, "demo-app");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(parsed(&format!("/moby/{ID}")).id, ID);
    }

    #[test]
    fn host_cgroups_are_not_containers() {
        for path in [
            "/",
            "",
            "/system.slice/ssh.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/init.scope",
            "/kubepods/besteffort",
            "/process_api/5b66c60c061d0a18d4d61b86a819376e",
            &format!("/system.slice/docker-{}.scope", &ID[..12]),
        ] {
            if let Some(found) = parse(path) {
                // A two-level path is only a candidate for containerd's
                // own namespaces; identification asks containerd.
                assert!(found.namespace.is_some(), "{path}: {found:?}");
            }
        }
        assert_eq!(parse("/system.slice/ssh.service"), None);
        assert_eq!(parse("/kubepods.slice/kubepods-besteffort.slice"), None);
    }

    #[test]
    fn a_containers_own_sub_cgroups_are_that_container() {
        let uid_ = UID.replace('-', "_");
        let pod = format!("/kubepods.slice/kubepods-pod{uid_}.slice");
        // crun's systemd sub-cgroup on CRI-O (cgroup v2).
        let r = parsed(&format!("{pod}/crio-{ID}.scope/container"));
        assert_eq!((r.id.as_str(), r.runtime), (ID, RuntimeHint::CriO));
        assert_eq!(r.pod_uid.as_deref(), Some(UID));
        // Folders a container made in its own cgroup, named like another
        // container (or like a monitor), are still the outer container's.
        let other = "a".repeat(64);
        for inner in [
            format!("cri-containerd-{other}.scope"),
            other.clone(),
            format!("crio-conmon-{other}.scope"),
            "init.scope".to_string(),
        ] {
            let r = parsed(&format!("{pod}/cri-containerd-{ID}.scope/{inner}"));
            assert_eq!(r.id, ID, "{inner}");
            let r = parsed(&format!(
                "/kubepods/besteffort/pod{UID}/{ID}/{inner}/deeper"
            ));
            assert_eq!(r.id, ID, "{inner}");
        }
        // Below a `ctr run` container: still a candidate of that name.
        let r = parsed("/default/demo-app/sub");
        assert_eq!(
            (r.id.as_str(), r.namespace.as_deref()),
            ("demo-app", Some("default"))
        );
        // Below a monitor: the host's.
        assert_eq!(parse(&format!("{pod}/crio-conmon-{ID}.scope/sub")), None);
    }

    #[test]
    fn upper_case_or_short_ids_are_not_ids() {
        assert!(!is_hex_id(&ID.to_uppercase()));
        assert!(!is_hex_id(&ID[..63]));
    }
}
