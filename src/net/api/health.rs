//! `GET /healthz` (shard count and open WebSocket connections) and `GET /metrics`
//! (Prometheus text): both ask every shard once, at request time.

use std::rc::Rc;

use crate::shard::Shard;
use crate::Error;

pub async fn healthz(shard: &Rc<Shard>) -> Result<Vec<u8>, Error> {
    let mut connections = 0;
    for i in 0..shard.shards() {
        connections += shard
            .call(i, |s| async move { Ok(s.sessions.borrow().count()) })
            .await?;
    }
    Ok(format!(
        "{{\"shards\":{},\"connections\":{connections}}}",
        shard.shards()
    )
    .into_bytes())
}

pub async fn metrics(shard: &Rc<Shard>) -> Result<Vec<u8>, Error> {
    let mut snaps = Vec::with_capacity(shard.shards());
    for i in 0..shard.shards() {
        snaps.push(shard.call(i, |s| async move { Ok(s.snapshot()) }).await?);
    }
    Ok(crate::metrics::render(&snaps).into_bytes())
}
