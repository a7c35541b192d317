//! `GET /openapi.yaml`: the OpenAPI 3.1 description of this API (`docs/openapi.yaml`),
//! embedded unchanged, so the description a backend generates its client from is the one
//! the running broker was built with. `tests/openapi.rs` keeps its paths equal to
//! [`super::ROUTES`]; `tests/openapi/run.sh` checks the broker's answers against it.

pub const SPEC: &str = include_str!("../../../docs/openapi.yaml");

/// The content type it is served with (RFC 9512).
pub const CONTENT_TYPE: &str = "application/yaml; charset=utf-8";
