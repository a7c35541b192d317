//! `GET /healthz`: shard count and open WebSocket connections, summed over shards.

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
