//! Image references: parsing never panics; what parses is ASCII, and its
//! normalised form parses back to the same repository, tag and digest.
#![no_main]

use imagegate_webhook::reference::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(reference) = Reference::parse(input) {
        assert!(input.is_ascii());
        let again = Reference::parse(&reference.to_string()).expect("the normalised form parses");
        assert_eq!(again.repository(), reference.repository());
        assert_eq!(again.digest, reference.digest);
        assert_eq!(again.effective_tag(), reference.effective_tag());
    }
});
