//! Every message that crosses nodes, in its wire form: the calls one node makes of
//! another ([`Call`]) and their replies, and a remote session's messages (attach, input,
//! detach, and the batched deliveries back to the holder). Their encoders and decoders
//! live here (a chat message's own wire form is [`crate::message::ChatMessage::to_wire`];
//! the short `ok`/`!code` answers of a remote session are written where they are sent),
//! and every decoder has a fuzz target: `cluster_call`, `cluster_reply`, `remote_session`
//! (and `cluster_seal` for the seal around them all).
//!
//! Invariants: the first byte of a message names its kind; every decoder takes arbitrary
//! bytes and says no (`None`, or an error reply) rather than panic; a reply is read as the
//! kind of call it answers (`!code` for the counted and raw kinds, the HTTP envelope for
//! an HTTP call); a delivery batch never exceeds the limit it was split for.

use crate::Error;

/// What one node asks of another. The first byte of a request names it.
pub enum Call {
    /// An HTTP API request about one user, served by that user's owner node as if it had
    /// arrived there.
    Http {
        method: String,
        path: String,
        query: String,
        authorization: Option<String>,
        /// What the caller's admin key grants, checked by the caller (the key itself
        /// never crosses nodes).
        scope: Option<crate::auth::AdminScope>,
        /// Likewise the `(domain, uid)` of the caller's token, where the caller looked it
        /// up (`/message-log`).
        user: Option<(String, String)>,
        idempotency_key: Option<String>,
        body: Vec<u8>,
    },
    /// The share of one `/push` whose users this node owns (JSON: `id`, `title`,
    /// `content`, `domain`, `uids`), so a push to 10k users is one request per node.
    PushPart(Vec<u8>),
    /// A `/broadcast` for this node's notify connections (JSON as a push part, no
    /// `uids`), so every node sends the same `_id`.
    BroadcastPart(Vec<u8>),
    /// A chat message to a user this node owns ([`crate::message::ChatMessage`]'s
    /// wire form), stored and delivered as a local send is.
    Chat(Vec<u8>),
    /// Whose token this is (hex), asked of the token's owner node: `domain\nuid`, or
    /// nothing when it is unknown or expired.
    TokenUser(Vec<u8>),
    /// A message of a remote session ([`crate::ws::remote`]), kind byte included.
    Raw(Vec<u8>),
}

const HTTP: u8 = 1;
const PUSH_PART: u8 = 2;
const BROADCAST_PART: u8 = 3;
const CHAT: u8 = 4;
const TOKEN_USER: u8 = 5;

impl Call {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Call::Raw(bytes) => bytes.clone(),
            Call::Http {
                method,
                path,
                query,
                authorization,
                scope,
                user,
                idempotency_key,
                body,
            } => {
                // Head fields cannot hold a newline (httparse refuses them), nor can a
                // name (no control characters), so they separate the fields; the body
                // follows the sixth. The identity is `*` (every domain), `=<domain>` (an
                // admin key of one) or `@<domain>\t<uid>` (a token's user).
                let auth = authorization.as_deref().unwrap_or("");
                let scope = match (scope, user) {
                    (Some(crate::auth::AdminScope::All), _) => "*".to_string(),
                    (Some(crate::auth::AdminScope::Domain(d)), _) => format!("={d}"),
                    (None, Some((d, u))) => format!("@{d}\t{u}"),
                    (None, None) => String::new(),
                };
                let idem = idempotency_key.as_deref().unwrap_or("");
                let mut out = Vec::with_capacity(
                    method.len()
                        + path.len()
                        + query.len()
                        + auth.len()
                        + scope.len()
                        + idem.len()
                        + body.len()
                        + 7,
                );
                out.push(HTTP);
                for f in [method.as_str(), path, query, auth, &scope, idem] {
                    out.extend_from_slice(f.as_bytes());
                    out.push(b'\n');
                }
                out.extend_from_slice(body);
                out
            }
            Call::PushPart(bytes)
            | Call::BroadcastPart(bytes)
            | Call::Chat(bytes)
            | Call::TokenUser(bytes) => {
                let kind = match self {
                    Call::PushPart(_) => PUSH_PART,
                    Call::BroadcastPart(_) => BROADCAST_PART,
                    Call::Chat(_) => CHAT,
                    _ => TOKEN_USER,
                };
                let mut out = Vec::with_capacity(bytes.len() + 1);
                out.push(kind);
                out.extend_from_slice(bytes);
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Call> {
        let (&kind, rest) = bytes.split_first()?;
        match kind {
            HTTP => {
                let mut fields = rest.splitn(7, |&b| b == b'\n');
                let mut text = || {
                    fields
                        .next()
                        .and_then(|f| std::str::from_utf8(f).ok())
                        .map(str::to_string)
                };
                let (method, path, query, auth) = (text()?, text()?, text()?, text()?);
                let identity = text()?;
                let (scope, user) = match identity.as_str() {
                    "" => (None, None),
                    "*" => (Some(crate::auth::AdminScope::All), None),
                    id => match id.split_at_checked(1)? {
                        ("=", d) => (Some(crate::auth::AdminScope::Domain(d.to_string())), None),
                        ("@", du) => {
                            let (d, u) = du.split_once('\t')?;
                            (None, Some((d.to_string(), u.to_string())))
                        }
                        _ => return None,
                    },
                };
                let idem = text()?;
                let body = fields.next()?.to_vec();
                Some(Call::Http {
                    method,
                    path,
                    query,
                    authorization: (!auth.is_empty()).then_some(auth),
                    scope,
                    user,
                    idempotency_key: (!idem.is_empty()).then_some(idem),
                    body,
                })
            }
            PUSH_PART => Some(Call::PushPart(rest.to_vec())),
            BROADCAST_PART => Some(Call::BroadcastPart(rest.to_vec())),
            CHAT => Some(Call::Chat(rest.to_vec())),
            TOKEN_USER => Some(Call::TokenUser(rest.to_vec())),
            ATTACH..=DELIVER => Some(Call::Raw(bytes.to_vec())),
            _ => None,
        }
    }
}

/// The shard an incoming call must run on, when it matters: a remote session's message on
/// the shard its head names (the one that holds its state), and a chat message on its
/// recipient's owner shard, so that messages from one connection, which arrive in the
/// order they were sent, are stored in that order (as they are between local shards).
pub fn home_shard(request: &[u8], nodes: usize, shards: usize) -> Option<usize> {
    let (&kind, wire) = request.split_first()?;
    if (ATTACH..=DELIVER).contains(&kind) {
        // A remote session's messages name the shard that holds its state.
        return parse_head(request)
            .map(|(shard, ..)| shard)
            .filter(|s| *s < shards);
    }
    if kind != CHAT {
        return None;
    }
    let mut fields = wire.splitn(4, |&b| b == b'\n').skip(1);
    let domain = std::str::from_utf8(fields.next()?).ok()?;
    let to = std::str::from_utf8(fields.next()?).ok()?;
    Some(crate::route::place(crate::route::slot_of(domain, to), nodes, shards).shard)
}

/// An HTTP reply crossing nodes: the status, then the JSON envelope as the owner wrote it.
pub fn encode_http_reply(status: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn decode_http_reply(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let (s, body) = bytes.split_at_checked(2)?;
    Some((u16::from_be_bytes([s[0], s[1]]), body))
}

/// A call answered with a number (recipients online; 1 when a chat message was queued
/// offline), or `!code`.
pub fn count_reply(request: &[u8], outcome: Result<usize, Error>) -> Vec<u8> {
    match outcome {
        Ok(n) => n.to_string().into_bytes(),
        Err(e) => error_reply(request, &e),
    }
}

/// The reply to `request` when it could not run: in the form its caller reads.
pub fn error_reply(request: &[u8], e: &Error) -> Vec<u8> {
    if request.first().is_some_and(|k| {
        [PUSH_PART, BROADCAST_PART, CHAT, TOKEN_USER].contains(k) || (ATTACH..=DELIVER).contains(k)
    }) {
        format!("!{}", e.code()).into_bytes()
    } else {
        encode_http_reply(e.http_status(), &crate::json::error_envelope(e))
    }
}

/// Reads a [`Call::TokenUser`] reply.
pub fn decode_token_user(bytes: &[u8]) -> Result<Option<(String, String)>, Error> {
    if let Some(code) = bytes.strip_prefix(b"!") {
        return Err(if code == b"1009" {
            Error::Overloaded
        } else {
            Error::Internal
        });
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Internal)?;
    let (d, u) = text.split_once('\n').ok_or(Error::Internal)?;
    Ok(Some((d.to_string(), u.to_string())))
}

/// Reads a counted reply ([`count_reply`]): the number, or the owner's error.
pub fn decode_count_reply(bytes: &[u8]) -> Result<usize, Error> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Internal)?;
    match text.strip_prefix('!') {
        Some(code) if code == Error::Overloaded.code().to_string() => Err(Error::Overloaded),
        Some(_) => Err(Error::Internal),
        None => text.parse().map_err(|_| Error::Internal),
    }
}

pub const ATTACH: u8 = 6;
pub const INPUT: u8 = 7;
pub const DETACH: u8 = 8;
pub const DELIVER: u8 = 9;

/// Deliveries for one holder shard, as one NATS message: runs of identical bytes with
/// the sessions they go to, so a push to many users of one holder node crosses NATS
/// once, not once per user.
#[derive(Default)]
pub struct Batch {
    pub groups: Vec<(Vec<u8>, Vec<Recipient>)>,
    pub bytes: usize,
}

/// A session a run of bytes goes to: its key, and whether they end it.
pub type Recipient = (u64, bool);

/// `[kind][target shard u16][holder node u16][key u64]`, then the message's own bytes.
pub fn head(kind: u8, target_shard: usize, holder: usize, key: u64, extra: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + extra);
    out.push(kind);
    out.extend_from_slice(&(target_shard as u16).to_be_bytes());
    out.extend_from_slice(&(holder as u16).to_be_bytes());
    out.extend_from_slice(&key.to_be_bytes());
    out
}

/// `(target shard, holder, key, rest)` of a message built by [`head`].
pub fn parse_head(bytes: &[u8]) -> Option<(usize, usize, u64, &[u8])> {
    let (h, rest) = bytes.split_at_checked(13)?;
    let shard = usize::from(u16::from_be_bytes([h[1], h[2]]));
    let holder = usize::from(u16::from_be_bytes([h[3], h[4]]));
    let mut k = [0u8; 8];
    k.copy_from_slice(&h[5..13]);
    Some((shard, holder, u64::from_be_bytes(k), rest))
}

pub fn push_field(out: &mut Vec<u8>, f: &[u8]) {
    out.extend_from_slice(&(f.len() as u32).to_be_bytes());
    out.extend_from_slice(f);
}

fn take_field<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = b.split_at_checked(4)?;
    let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let (f, rest) = rest.split_at_checked(n)?;
    *b = rest;
    Some(f)
}

/// An attach's own bytes: `(accept key, query, chat, bytes read past the head)`.
pub fn parse_attach(mut rest: &[u8]) -> Option<(&str, &str, bool, &[u8])> {
    let accept = std::str::from_utf8(take_field(&mut rest)?).ok()?;
    let query = std::str::from_utf8(take_field(&mut rest)?).ok()?;
    let (&chat, early) = rest.split_first()?;
    Some((accept, query, chat == 1, early))
}

/// A remote session's decoders (head, attach, delivery batch) on `bytes` from another
/// node — the `remote_session` fuzz target's entry: what decodes, or `None`, never a
/// panic.
pub fn decode_message(bytes: &[u8]) -> Option<usize> {
    let (_, _, _, rest) = parse_head(bytes)?;
    match bytes.first().copied()? {
        ATTACH => parse_attach(rest).map(|(a, q, _, e)| a.len() + q.len() + e.len()),
        DELIVER => decode_batch(rest).map(|runs| runs.len()),
        _ => Some(rest.len()),
    }
}

/// `batch` as batches whose encoded form fits in `limit` bytes: runs are kept whole where
/// they fit, and a run larger than that (a big greeting) is cut into pieces sent in
/// order, its `closing` mark on the last piece only.
pub fn split_batch(batch: Batch, limit: usize) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    let add = |out: &mut Vec<Batch>, bytes: Vec<u8>, keys: Vec<Recipient>| {
        let size = bytes.len() + 8 + keys.len() * 9;
        match out.last_mut() {
            Some(b) if HEAD + b.bytes + size <= limit => {
                b.bytes += size;
                b.groups.push((bytes, keys));
            }
            _ => out.push(Batch {
                bytes: size,
                groups: vec![(bytes, keys)],
            }),
        }
    };
    for (bytes, keys) in batch.groups {
        if HEAD + bytes.len() + 8 + keys.len() * 9 <= limit {
            add(&mut out, bytes, keys);
            continue;
        }
        // Too big for any one message: pieces that each fill one.
        let piece = limit.saturating_sub(HEAD + 8 + keys.len() * 9).max(1);
        let pieces = bytes.len().div_ceil(piece);
        for (i, chunk) in bytes.chunks(piece).enumerate() {
            let last = i + 1 == pieces;
            let ks = keys.iter().map(|(k, c)| (*k, *c && last)).collect();
            add(&mut out, chunk.to_vec(), ks);
        }
    }
    out
}

/// Bytes of [`head`].
const HEAD: usize = 13;

/// `head(DELIVER)`, then per run: `[len u32][bytes][count u32]` and `count` times
/// `[key u64][closing u8]`.
pub fn encode_batch(holder_shard: usize, owner: usize, batch: &Batch) -> Vec<u8> {
    let mut out = head(
        DELIVER,
        holder_shard,
        owner,
        0,
        batch.bytes + batch.groups.len() * 8,
    );
    for (bytes, keys) in &batch.groups {
        push_field(&mut out, bytes);
        out.extend_from_slice(&(keys.len() as u32).to_be_bytes());
        for (key, closing) in keys {
            out.extend_from_slice(&key.to_be_bytes());
            out.push(u8::from(*closing));
        }
    }
    out
}

/// The runs of a delivery batch: `(bytes, [(key, closing)])`; `None` when cut short.
pub fn decode_batch(mut rest: &[u8]) -> Option<Vec<(&[u8], Vec<Recipient>)>> {
    let mut runs = Vec::new();
    while !rest.is_empty() {
        let bytes = take_field(&mut rest)?;
        let (n, tail) = rest.split_at_checked(4)?;
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
        let (entries, tail) = tail.split_at_checked(n.checked_mul(9)?)?;
        rest = tail;
        let keys = entries
            .chunks_exact(9)
            .map(|e| {
                let mut k = [0u8; 8];
                k.copy_from_slice(&e[..8]);
                (u64::from_be_bytes(k), e[8] == 1)
            })
            .collect();
        runs.push((bytes, keys));
    }
    Some(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_fields_read_back() {
        let mut m = head(INPUT, 3, 2, u64::MAX - 5, 0);
        push_field(&mut m, b"abc");
        push_field(&mut m, b"");
        let (shard, holder, key, mut rest) = parse_head(&m).expect("a head");
        assert_eq!((shard, holder, key), (3, 2, u64::MAX - 5));
        assert_eq!(take_field(&mut rest), Some(&b"abc"[..]));
        assert_eq!(take_field(&mut rest), Some(&b""[..]));
        assert_eq!(take_field(&mut rest), None);
        assert!(parse_head(&m[..12]).is_none());
        let mut cut: &[u8] = &[0, 0, 0, 9, 1];
        assert_eq!(take_field(&mut cut), None);
    }

    #[test]
    fn a_batch_is_cut_to_fit_and_a_big_run_goes_in_pieces_in_order() {
        let mut batch = Batch::default();
        for (bytes, key) in [
            (vec![1u8; 100], 1),
            (vec![2u8; 5000], 2),
            (vec![3u8; 100], 3),
        ] {
            batch.bytes += bytes.len() + 8 + 9;
            batch.groups.push((bytes, vec![(key, true)]));
        }
        let parts = split_batch(batch, 1024);
        assert!(parts.len() >= 6, "{}", parts.len());
        let mut two = Vec::new();
        for p in &parts {
            let encoded = encode_batch(0, 1, p);
            assert!(encoded.len() <= 1024, "{}", encoded.len());
            let (_, _, _, rest) = parse_head(&encoded).expect("head");
            for (bytes, keys) in decode_batch(rest).expect("decodes") {
                if keys[0].0 == 2 {
                    two.extend_from_slice(bytes);
                    // Only the last piece carries the close.
                    assert_eq!(keys[0].1, two.len() == 5000);
                }
            }
        }
        assert_eq!(two, vec![2u8; 5000]);
    }

    #[test]
    fn a_batch_sends_shared_bytes_once() {
        let batch = Batch {
            groups: vec![
                (b"frame".to_vec(), vec![(1, false), (2, false), (3, true)]),
                (b"other".to_vec(), vec![(4, false)]),
            ],
            bytes: 0,
        };
        let msg = encode_batch(1, 0, &batch);
        assert_eq!(msg.windows(5).filter(|w| w == b"frame").count(), 1);
        let (shard, _, _, rest) = parse_head(&msg).expect("head");
        assert_eq!(shard, 1);
        let runs = decode_batch(rest).expect("runs");
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].0, b"frame");
        assert_eq!(runs[0].1, vec![(1, false), (2, false), (3, true)]);
        assert_eq!(runs[1], (&b"other"[..], vec![(4, false)]));
        assert!(decode_batch(&rest[..rest.len() - 3]).is_none(), "cut short");
    }

    #[test]
    fn calls_cross_the_wire_unchanged() {
        let call = Call::Http {
            method: "GET".into(),
            path: "/presence".into(),
            query: "domain=d&uid=u".into(),
            authorization: Some("Bearer k".into()),
            scope: Some(crate::auth::AdminScope::Domain("shop".into())),
            user: None,
            idempotency_key: Some("retry-7".into()),
            body: b"{\"a\":\n1}".to_vec(),
        };
        match Call::decode(&call.encode()) {
            Some(Call::Http {
                method,
                path,
                query,
                authorization,
                scope,
                idempotency_key,
                body,
                ..
            }) => {
                assert_eq!((method.as_str(), path.as_str()), ("GET", "/presence"));
                assert_eq!(scope, Some(crate::auth::AdminScope::Domain("shop".into())));
                assert_eq!(idempotency_key.as_deref(), Some("retry-7"));
                assert_eq!(query, "domain=d&uid=u");
                assert_eq!(authorization.as_deref(), Some("Bearer k"));
                assert_eq!(body, b"{\"a\":\n1}");
            }
            _ => panic!("an HTTP call"),
        }
        let none = Call::Http {
            method: "GET".into(),
            path: "/x".into(),
            query: String::new(),
            authorization: None,
            scope: None,
            user: Some(("d".into(), "u 1".into())),
            idempotency_key: None,
            body: Vec::new(),
        };
        assert!(matches!(
            Call::decode(&none.encode()),
            Some(Call::Http { authorization: None, ref user, ref body, .. })
                if body.is_empty() && user.as_ref().is_some_and(|(d, u)| d == "d" && u == "u 1")
        ));
        assert!(matches!(
            Call::decode(&Call::PushPart(b"{}".to_vec()).encode()),
            Some(Call::PushPart(j)) if j == b"{}"
        ));
        assert!(matches!(
            Call::decode(&Call::BroadcastPart(b"{}".to_vec()).encode()),
            Some(Call::BroadcastPart(j)) if j == b"{}"
        ));
        assert!(matches!(
            Call::decode(&Call::Chat(b"x".to_vec()).encode()),
            Some(Call::Chat(j)) if j == b"x"
        ));
        assert_eq!(
            error_reply(&Call::Chat(Vec::new()).encode(), &Error::Overloaded),
            b"!1009"
        );
        assert!(Call::decode(&[]).is_none());
        assert!(Call::decode(&[99, 1]).is_none());
        assert!(Call::decode(&[HTTP, b'G', b'\n']).is_none(), "cut short");
        assert_eq!(
            decode_http_reply(&encode_http_reply(503, b"{}")),
            Some((503, &b"{}"[..]))
        );
        assert_eq!(decode_http_reply(&[1]), None);
        assert_eq!(decode_count_reply(b"7"), Ok(7));
        assert_eq!(decode_count_reply(b"!1009"), Err(Error::Overloaded));
        assert_eq!(decode_count_reply(b"!2000"), Err(Error::Internal));
    }
}
