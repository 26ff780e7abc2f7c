//! AdmissionReview bodies: decoding never panics, and whatever decodes is
//! decided on by the example policy without panicking either.
#![no_main]

use std::sync::LazyLock;

use imagegate_webhook::{policy::Policy, review::admission};
use libfuzzer_sys::fuzz_target;

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::from_yaml(include_str!("../../../deploy/policy/example-policy.yaml")).expect("example policy")
});

fuzz_target!(|body: &[u8]| {
    if let Ok(admission::Decoded::Review(request)) = admission::decode(body) {
        if let Ok(review) = &request.review {
            let decision = POLICY.decide(review);
            assert_eq!(decision.images.len(), review.images.len());
        }
    }
});
