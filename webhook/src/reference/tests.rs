use proptest::prelude::*;

use super::*;

const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn parse(input: &str) -> Reference {
    Reference::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"))
}

fn parts(r: &Reference) -> (&str, &str, Option<&str>, Option<&str>) {
    (
        &r.domain,
        &r.path,
        r.tag.as_deref(),
        r.digest.as_ref().map(|d| d.as_str()),
    )
}

#[test]
fn docker_hub_names_normalise_to_one_form() {
    // Trick 2: the same image under four spellings.
    for input in [
        "nginx",
        "library/nginx",
        "docker.io/library/nginx",
        "index.docker.io/library/nginx",
        "docker.io/nginx",
        "index.docker.io/nginx",
    ] {
        let r = parse(input);
        assert_eq!(
            parts(&r),
            ("docker.io", "library/nginx", None, None),
            "{input}"
        );
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest", "{input}");
    }
    assert_eq!(
        parse("bitnami/redis:7").to_string(),
        "docker.io/bitnami/redis:7"
    );
}

#[test]
fn a_host_is_the_whole_first_component() {
    // Trick 1: prefixes without a boundary are other hosts.
    assert_eq!(
        parse("myregistry.io.evil.com/x").domain,
        "myregistry.io.evil.com"
    );
    assert_eq!(
        parse("docker.io.evil.com/library/nginx").domain,
        "docker.io.evil.com"
    );
    let r = parse("docker.io/mycompanyevil/x");
    assert_eq!(
        (r.domain.as_str(), r.path.as_str()),
        ("docker.io", "mycompanyevil/x")
    );
    // A first component without `.` or `:` (and not localhost) is a path.
    assert_eq!(
        parts(&parse("mycompany/app:1")),
        ("docker.io", "mycompany/app", Some("1"), None)
    );
    assert_eq!(parse("localhost/app").domain, "localhost");
}

#[test]
fn hosts_are_kept_as_written_and_hub_is_only_its_exact_spellings() {
    // Trick 3, as distribution/reference (and so containerd and the
    // kubelet) parse it: the host as written, Docker Hub's normalisation
    // only for exactly `docker.io` and `index.docker.io`.
    let r = parse("Registry.Example.COM/team/app:1");
    assert_eq!(r.domain, "Registry.Example.COM");
    // Policies compare hosts case-insensitively.
    assert_eq!(r.repository(), "registry.example.com/team/app");
    // `Docker.io/nginx` is host Docker.io, path nginx: to the runtime it
    // is not docker.io/library/nginx.
    assert_eq!(
        parts(&parse("Docker.io/nginx")),
        ("Docker.io", "nginx", None, None)
    );
    assert_eq!(parse("DOCKER.IO/nginx:1").repository(), "docker.io/nginx");
    assert_eq!(
        parse("Index.Docker.IO/nginx").to_string(),
        "Index.Docker.IO/nginx:latest"
    );
    // A normalised form parses back to itself (found by the reference fuzz
    // target: `indeX.docker.io/x/y:z`).
    let odd = parse("indeX.docker.io/x/y:z");
    assert_eq!(parse(&odd.to_string()), odd);
    assert_eq!(
        parse("index.docker.io/nginx").to_string(),
        "docker.io/library/nginx:latest"
    );
    assert_eq!(
        Reference::parse("registry.example.com/Team/app:1"),
        Err(ParseError::Uppercase)
    );
    assert_eq!(Reference::parse("NGINX"), Err(ParseError::Uppercase));
    // A dotless first component is a Docker Hub path, so it must be lower
    // case too (found by the fuzz target: `docKero/lx1`).
    assert_eq!(Reference::parse("docKero/lx1"), Err(ParseError::Uppercase));
    assert_eq!(Reference::parse("Foo/bar:1"), Err(ParseError::Uppercase));
    assert_eq!(parse("localhost/foo").domain, "localhost");
    // Tags may have upper case.
    assert_eq!(parse("nginx:Stable").tag.as_deref(), Some("Stable"));
}

#[test]
fn what_the_runtime_reads_as_an_image_id_is_refused() {
    // `ParseAnyReference` takes these as a digest, and CRI finds a local
    // image by that id whatever its name.
    for id in [
        HEX64.to_string(),
        format!("sha256:{HEX64}"),
        format!("sha512:{HEX64}{HEX64}"),
    ] {
        assert_eq!(Reference::parse(&id), Err(ParseError::ImageId(id.clone())));
    }
    // Named, it is a repository: sha256 on Docker Hub with a tag.
    assert_eq!(
        parts(&parse(&format!("library/sha256:{HEX64}"))),
        ("docker.io", "library/sha256", Some(HEX64), None)
    );
}

#[test]
fn a_port_is_not_a_tag() {
    // Trick 4.
    let r = parse("registry:5000/x");
    assert_eq!(parts(&r), ("registry:5000", "x", None, None));
    assert!(r.is_untagged() && r.is_latest());
    assert_eq!(r.to_string(), "registry:5000/x:latest");
    let r = parse("registry:5000/x:5000");
    assert_eq!(parts(&r), ("registry:5000", "x", Some("5000"), None));
    // Without a slash, `name:5000` is a tag on a Docker Hub image.
    assert_eq!(
        parts(&parse("localhost:5000")),
        ("docker.io", "library/localhost", Some("5000"), None)
    );
}

#[test]
fn a_digest_decides_over_a_tag() {
    // Trick 5.
    let r = parse(&format!("nginx:latest@sha256:{HEX64}"));
    assert_eq!(r.tag.as_deref(), Some("latest"));
    assert_eq!(
        r.digest.clone().map(String::from),
        Some(format!("sha256:{HEX64}"))
    );
    assert!(!r.is_latest() && !r.is_untagged());
    let r = parse(&format!("registry.local:5000/team/app@sha256:{HEX64}"));
    assert_eq!(r.tag, None);
    assert!(!r.is_latest(), "a digest-only reference is not latest");
    assert_eq!(r.effective_tag(), None);
    assert_eq!(
        r.to_string(),
        format!("registry.local:5000/team/app@sha256:{HEX64}")
    );
}

#[test]
fn unparseable_and_non_ascii_references_are_refused_with_a_reason() {
    // Trick 6.
    assert_eq!(Reference::parse(""), Err(ParseError::Empty));
    assert_eq!(Reference::parse("nginx:1.25é"), Err(ParseError::NonAscii));
    assert_eq!(Reference::parse("ngïnx"), Err(ParseError::NonAscii));
    assert_eq!(Reference::parse("nginx:١٢"), Err(ParseError::NonAscii));
    for bad in [
        " nginx",
        "nginx ",
        "nginx\n",
        "a//b",
        "-a",
        "a-",
        "a:",
        ":tag",
        "a@",
        "/a",
        "a/",
        "a:b:c",
        "a b",
        "a..b",
        "a@sha256",
        "http://docker.io/nginx",
        "nginx:.bad",
        "nginx:-bad",
    ] {
        let err = Reference::parse(bad).expect_err(bad);
        assert!(
            err.to_string().starts_with("invalid reference format"),
            "{bad:?}: {err}"
        );
    }
    let too_long_tag = format!("nginx:{}", "t".repeat(129));
    assert!(Reference::parse(&too_long_tag).is_err());
    assert!(Reference::parse(&format!("nginx:{}", "t".repeat(128))).is_ok());
}

#[test]
fn digests_are_anchored_and_sized_per_algorithm() {
    // Trick 7.
    assert!(Reference::parse(&format!("x@sha256:{}", &HEX64[..63])).is_err());
    assert!(Reference::parse(&format!("x@sha256:{HEX64}0")).is_err());
    assert!(Reference::parse(&format!("x@sha512:{HEX64}{HEX64}")).is_ok());
    assert!(Reference::parse(&format!("x@sha512:{HEX64}")).is_err());
    assert!(Reference::parse(&format!("x@md5:{HEX64}")).is_err());
    assert_eq!(
        Reference::parse(&format!("x@sha256:{}", HEX64.to_uppercase())),
        Err(ParseError::UppercaseDigest)
    );
    assert!(Reference::parse(&format!("x@sha256:{}g", &HEX64[..63])).is_err());
}

#[test]
fn the_whole_name_is_limited_to_255_bytes() {
    let host = format!("{}.example.com", "h".repeat(200));
    let ok = format!("{host}/{}", "p".repeat(255 - host.len() - 1));
    assert!(Reference::parse(&ok).is_ok());
    let long = format!("{ok}p");
    assert_eq!(Reference::parse(&long), Err(ParseError::NameTooLong));
    assert_eq!(
        Reference::parse(&format!("{long}:tag")),
        Err(ParseError::NameTooLong)
    );
}

fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}"
}

fn host() -> impl Strategy<Value = String> {
    (
        "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){1,3}",
        proptest::option::of(1u16..=65535),
    )
        .prop_map(|(h, port)| match port {
            Some(p) => format!("{h}:{p}"),
            None => h,
        })
}

prop_compose! {
    fn reference_parts()(
        domain in proptest::option::of(host()),
        path in proptest::collection::vec(component(), 1..4),
        tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        digest in proptest::option::of("[0-9a-f]{64}"),
    ) -> (Option<String>, Vec<String>, Option<String>, Option<String>) {
        (domain, path, tag, digest)
    }
}

proptest! {
    /// Any reference built from the grammar parses into its parts, and its
    /// normalised form parses back to the same reference.
    #[test]
    fn grammar_references_parse_and_round_trip((domain, path, tag, digest) in reference_parts()) {
        // Without a domain, a first component with a dot would be read as a
        // host: that case is covered by the tests above.
        prop_assume!(domain.is_some() || !(path[0].contains('.') || path[0] == "localhost"));
        let mut input = String::new();
        if let Some(d) = &domain {
            input.push_str(d);
            input.push('/');
        }
        input.push_str(&path.join("/"));
        if let Some(t) = &tag {
            input.push(':');
            input.push_str(t);
        }
        if let Some(d) = &digest {
            input.push_str("@sha256:");
            input.push_str(d);
        }
        let r = Reference::parse(&input).map_err(|e| TestCaseError::fail(format!("{input}: {e}")))?;
        let expected_domain = domain.clone().unwrap_or_else(|| "docker.io".into());
        prop_assert_eq!(&r.domain, &expected_domain);
        let mut expected_path = path.join("/");
        if domain.is_none() && path.len() == 1 {
            expected_path = format!("library/{expected_path}");
        }
        prop_assert_eq!(&r.path, &expected_path);
        prop_assert_eq!(&r.tag, &tag);
        prop_assert_eq!(
            r.digest.clone().map(String::from),
            digest.map(|d| format!("sha256:{d}"))
        );
        let again = Reference::parse(&r.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again.repository(), r.repository());
        prop_assert_eq!(&again.digest, &r.digest);
        prop_assert_eq!(again.effective_tag(), r.effective_tag());
    }

    /// Arbitrary input never panics; whatever parses is ASCII and normalises
    /// to a form that parses to the same repository.
    #[test]
    fn arbitrary_input_is_parsed_or_refused(input in "\\PC{0,80}") {
        if let Ok(r) = Reference::parse(&input) {
            prop_assert!(input.is_ascii());
            let again = Reference::parse(&r.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.repository(), r.repository());
        }
    }

    /// Reference-shaped noise: mostly valid characters, so the parser's
    /// deeper paths are reached.
    #[test]
    fn reference_shaped_noise_never_panics(input in "[a-zA-Z0-9:/@._-]{0,70}") {
        let _ = Reference::parse(&input);
    }

    /// Trick 1 as a property: a host with anything appended to it is
    /// another host.
    #[test]
    fn an_extended_host_is_another_host(h in host(), suffix in "[a-z0-9.-]{1,10}[a-z0-9]") {
        let r = Reference::parse(&format!("{h}{suffix}/app:1"));
        if let Ok(r) = r {
            prop_assert_ne!(r.domain, h);
        }
    }
}
