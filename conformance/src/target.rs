//! A server under test: its base URL and the domain it serves (read from its discovery
//! document), plus where other domains' servers are (`--resolve DOMAIN=URL`).

use std::time::Duration;

use serde::Deserialize;

use crate::HarnessError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub domain: String,
    /// `DOMAIN=URL` entries, passed on to the client library.
    pub resolve: Vec<String>,
    /// For the federation suite: the second homeserver, federated with this one.
    pub peer: Option<Box<Target>>,
    /// For the federation suite: the harness's malicious remote server, if the servers
    /// reach it.
    pub malicious: Option<crate::peer::PeerInfo>,
}

#[derive(Deserialize)]
struct Discovery {
    domain: String,
}

impl Target {
    /// Read the domain of the server at `url` from `GET /.well-known/phoenix`.
    pub async fn discover(url: &str, resolve: &[String]) -> Result<Self, HarnessError> {
        let url = url.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        // Requirement: AUD-ERR-1 (what failed, in words)
        let response = http
            .get(format!("{url}/.well-known/phoenix"))
            .send()
            .await
            .map_err(|e| {
                HarnessError::Setup(format!(
                    "cannot read the discovery document of {url}: {}",
                    phoenix_client::api::cause_in_words(&e, e.is_timeout())
                ))
            })?;
        if !response.status().is_success() {
            return Err(HarnessError::Setup(format!(
                "{url} answered HTTP {} for its discovery document (/.well-known/phoenix): \
                 is this a Phoenix homeserver's base URL?",
                response.status()
            )));
        }
        let discovery: Discovery = response.json().await.map_err(|e| {
            HarnessError::Setup(format!(
                "{url}/.well-known/phoenix is not a Phoenix discovery document: {e}"
            ))
        })?;
        Ok(Self {
            url,
            domain: discovery.domain,
            resolve: resolve.to_vec(),
            peer: None,
            malicious: None,
        })
    }
}
