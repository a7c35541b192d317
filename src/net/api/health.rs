//! `GET /healthz` (shard count and open WebSocket connections, in a cluster the peer nodes
//! that are gone, or which shards are unhealthy) and `GET /metrics` (Prometheus text):
//! both ask every shard once, at request time.

use std::rc::Rc;
use std::time::Duration;

use crate::shard::Shard;
use crate::Error;

/// How long `/healthz` waits for a shard before calling it unhealthy (docs/protocol.md §2 v2).
const SHARD_ANSWER: Duration = Duration::from_secs(1);

/// `(HTTP status, envelope)`: 200 with `{"shards","connections"}` (and `"cluster"` in a
/// cluster), or 503 with code 1000
/// and `{"unhealthy":[{"shard","why"}]}` while a shard's store has failed or a shard does
/// not answer within a second.
pub async fn healthz(shard: &Rc<Shard>) -> (u16, Vec<u8>) {
    let mut connections = 0;
    let mut unhealthy = Vec::new();
    for i in 0..shard.shards() {
        let answer = shard
            .call_within(i, SHARD_ANSWER, |s| async move {
                Ok((
                    s.sessions.borrow().count(),
                    crate::error::store_health::why(),
                ))
            })
            .await;
        match answer {
            Ok((n, None)) => connections += n,
            Ok((_, Some(why))) => unhealthy.push((i, format!("store failed: {why}"))),
            Err(_) => unhealthy.push((i, "no answer within 1 s".to_string())),
        }
    }
    if unhealthy.is_empty() {
        // A peer node that is gone does not make this node unhealthy: it is named.
        let cluster = crate::owner::health(shard);
        let content = format!(
            "{{\"shards\":{},\"connections\":{connections}{cluster}}}",
            shard.shards()
        );
        return (200, crate::json::ok_envelope(content.as_bytes()));
    }
    let mut content = b"{\"unhealthy\":[".to_vec();
    for (n, (i, why)) in unhealthy.iter().enumerate() {
        if n > 0 {
            content.push(b',');
        }
        content.extend_from_slice(format!("{{\"shard\":{i},\"why\":").as_bytes());
        crate::json::push_str(&mut content, why);
        content.push(b'}');
    }
    content.extend_from_slice(b"]}");
    (503, crate::json::envelope(&Error::Internal, &content))
}

pub async fn metrics(shard: &Rc<Shard>) -> Result<Vec<u8>, Error> {
    let mut snaps = Vec::with_capacity(shard.shards());
    for i in 0..shard.shards() {
        snaps.push(shard.call(i, |s| async move { Ok(s.snapshot()) }).await?);
    }
    let mut text = crate::metrics::render(&snaps);
    crate::owner::render_metrics(shard, &mut text);
    Ok(text.into_bytes())
}
