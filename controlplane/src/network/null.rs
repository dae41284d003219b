//! The `null` driver: the predefined `none` network, a mode rather than a network (the container
//! has its own network namespace with only a loopback interface).
use async_trait::async_trait;

use super::{Context, NetworkDriver, Scope, create_mode};
use crate::{
    api::{ApiResult, NetworkCreate},
    model::NetworkRecord,
};

pub struct Null;

#[async_trait]
impl NetworkDriver for Null {
    fn name(&self) -> &'static str {
        "null"
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
