//! The `host` driver: the predefined `host` network, a mode rather than a network (the container
//! shares the node's network namespace, so there is nothing to attach).
use async_trait::async_trait;

use super::{Context, NetworkDriver, Scope, create_mode};
use crate::{
    api::{ApiResult, NetworkCreate},
    model::NetworkRecord,
};

pub struct Host;

#[async_trait]
impl NetworkDriver for Host {
    fn name(&self) -> &'static str {
        "host"
    }

    fn scope(&self) -> Scope {
        Scope::Local
    }

    fn carries_containers(&self) -> bool {
        false
    }

    fn inspect_options(&self, _net: &NetworkRecord) -> serde_json::Value {
        serde_json::json!({})
    }

    async fn create(&self, cx: &Context<'_>, req: &NetworkCreate, existing: &[NetworkRecord]) -> ApiResult<NetworkRecord> {
        create_mode(cx, self.name(), req, existing)
    }

    async fn remove(&self, _cx: &Context<'_>, net: &NetworkRecord) -> ApiResult<()> {
        Err(super::predefined_error(net))
    }
}
