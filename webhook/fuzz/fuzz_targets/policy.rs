//! Policy files: loading never panics, whatever the YAML.
#![no_main]

use imagegate_webhook::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = Policy::from_yaml(text);
});
