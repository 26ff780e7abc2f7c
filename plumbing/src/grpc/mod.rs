//! What gRPC listeners share: bounds on their connections ([`bounded`])
//! and mTLS that reloads its files and hands each connection's peer
//! certificate to the service ([`mtls`]).

pub mod bounded;
pub mod mtls;
