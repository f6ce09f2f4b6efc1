//! `GET /.well-known/polyproto-core`: where this server's polyproto API lives.
//!
//! polyproto 0.21's `WellKnown` requires both `api` and `oidc_issuer` (snake_case) as
//! absolute URLs, and its HTTP client joins absolute route paths onto `api`, so `api` is an
//! origin. Phoenix has no OIDC provider (home-server login is the AS's CSR registration);
//! `oidc_issuer` names the same origin only because the field is mandatory.

use std::sync::Arc;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::{JcsObject, jcs_response, with_server};
use crate::server::Server;

pub fn routes(server: Arc<Server>) -> BoxedFilter<(Response,)> {
    warp::path!(".well-known" / "polyproto-core")
        .and(warp::get())
        .and(with_server(server))
        .and(crate::observe::source())
        .map(|server: Arc<Server>, source| {
            observe_detached!(server, "polyproto", "well-known", source, []);
            jcs_response(&document(&server))
        })
        .boxed()
}

/// The document: `{"api": URL, "oidc_issuer": URL}`.
pub fn document(server: &Server) -> JcsObject {
    let url = server.federation.polyproto.public_url(&server.domain);
    JcsObject::from([("api", url.clone()), ("oidc_issuer", url)])
}
