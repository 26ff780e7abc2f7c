//! ImageReview bodies: decoding and deciding never panic; an image that does
//! not parse is never allowed outside exemptions and break-glass.
#![no_main]

use std::sync::LazyLock;

use imagegate_webhook::{
    policy::{Policy, ImageVerdict},
    review::image_review,
};
use libfuzzer_sys::fuzz_target;

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::from_yaml(include_str!("../../../deploy/policy/example-policy.yaml")).expect("example policy")
});

fuzz_target!(|body: &[u8]| {
    if let Ok(Ok(review)) = image_review::decode(body) {
        for image in POLICY.decide(&review).images {
            if image.reference.is_err() && image.verdict == ImageVerdict::Allowed {
                panic!("unparseable image {:?} allowed", image.image);
            }
        }
    }
});
