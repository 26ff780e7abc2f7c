//! One gRPC channel over a runtime's Unix socket: connected on first use
//! and again after a transport failure, so the agent can start before the
//! runtime does; every call bounded by [`RPC_TIMEOUT`].

use std::{path::PathBuf, time::Duration};

use tokio::sync::Mutex;
use tonic::{Code, transport::Channel};

use imagegate_plumbing::errors::error_chain;

use super::RuntimeError;

/// Every call gets this long; runtimes answer in milliseconds.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Socket {
    pub path: PathBuf,
    channel: Mutex<Option<Channel>>,
}

impl Socket {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            channel: Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Channel, RuntimeError> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref() {
            return Ok(channel.clone());
        }
        // containerd-client's connector is a plain gRPC-over-UDS one: it
        // serves CRI-O's socket as well as containerd's.
        let connect = containerd_client::connect(&self.path);
        let channel = tokio::time::timeout(RPC_TIMEOUT, connect)
            .await
            .map_err(|_| RuntimeError::Connect {
                socket: self.path.clone(),
                reason: format!("no answer within {RPC_TIMEOUT:?}"),
            })?
            .map_err(|e| RuntimeError::Connect {
                socket: self.path.clone(),
                reason: error_chain(&e),
            })?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Runs `f` on the channel within [`RPC_TIMEOUT`]; a transport failure
    /// drops the channel so that the next call reconnects.
    pub async fn call<T, F>(&self, call: &'static str, f: F) -> Result<T, RuntimeError>
    where
        F: AsyncFnOnce(Channel) -> Result<T, tonic::Status>,
    {
        let channel = self.channel().await?;
        match tokio::time::timeout(RPC_TIMEOUT, f(channel)).await {
            Err(_) => Err(RuntimeError::Timeout { call }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(status)) => {
                if status.code() == Code::Unavailable || status.code() == Code::Unknown {
                    *self.channel.lock().await = None;
                }
                Err(RuntimeError::Rpc {
                    call,
                    status: Box::new(status),
                })
            }
        }
    }
}
