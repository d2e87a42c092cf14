//! Which Redis server the store writes to, and when a write counts as done.
//!
//! `redis://` (and `rediss://`, `redis+unix://`) names the primary itself.
//! `redis+sentinel://` (`rediss+sentinel://` for TLS to the sentinels and the
//! nodes) names Sentinels and a service; the store asks them for the primary
//! at start and then every [`FOLLOW_EVERY`], and when they name another one
//! (a failover) it moves its connections there and tells the wake-up task to
//! resubscribe. Commands sent in between fail like any store error (503 at the
//! API, retried by workers).
//!
//! `ack_replicas=N` (default 1 with Sentinel, 0 otherwise) makes every write
//! that creates jobs wait (`WAIT N`) until N replicas have it, for at most
//! `ack_timeout_ms` (default 1000), before it is acknowledged: a failover then
//! cannot lose a job that got its 202. A write no replica took in time fails
//! with 503 (the job may exist; retry with the same Idempotency-Key).

use std::sync::RwLock;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use ::redis::{Client, RedisConnectionInfo, TlsMode};

use crate::{Result, StoreError, redact_url};

/// How often the sentinels are asked which server is the primary.
pub(super) const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// When a write that creates jobs counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ack {
    /// Replicas that must have the write (`WAIT`); 0: the primary alone.
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout: Duration,
}

/// A store URL, parsed.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Target {
    /// The primary itself: a URL for [`Client::open`].
    Direct(String),
    /// Sentinels (`redis://host:port` URLs) watching `service`.
    Sentinel { sentinels: Vec<String>, service: String, tls: bool, db: i64, username: String, password: String },
}

/// Parses a Redis store URL into where to connect and when writes count.
pub(super) fn parse(url: &str) -> Result<(Target, Ack)> {
    let invalid = |reason: String| StoreError::InvalidUrl { url: redact_url(url), reason };
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        params.push((name, value));
    }
    let param = |name: &str| params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let number = |name: &str| -> Result<Option<u64>> {
        param(name)
            .map(|v| v.parse::<u64>().map_err(|_| invalid(format!("{name}={v:?} is not a whole number"))))
            .transpose()
    };
    let sentinel_scheme = ["redis+sentinel://", "rediss+sentinel://"].iter().find(|s| base.starts_with(**s));
    let default_replicas = if sentinel_scheme.is_some() { 1 } else { 0 };
    let replicas = number("ack_replicas")?.unwrap_or(default_replicas);
    let ack = Ack {
        replicas: u32::try_from(replicas).map_err(|_| invalid(format!("ack_replicas={replicas} is too large")))?,
        timeout: Duration::from_millis(number("ack_timeout_ms")?.unwrap_or(1000).max(1)),
    };
    let Some(scheme) = sentinel_scheme else { return Ok((Target::Direct(url.to_owned()), ack)) };
    let tls = scheme.starts_with("rediss");
    let rest = &base[scheme.len()..];
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((user, password)) => (decode(user), decode(password)),
            None => (decode(info), String::new()),
        },
        None => (String::new(), String::new()),
    };
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let service = parts
        .next()
        .ok_or_else(|| invalid("name the service the sentinels watch: redis+sentinel://HOST:PORT,.../SERVICE".into()))?
        .to_owned();
    let db = match parts.next() {
        Some(db) => db.parse::<i64>().map_err(|_| invalid(format!("database {db:?} is not a number")))?,
        None => 0,
    };
    let sentinel_auth = match param("sentinel_password") {
        Some(password) => format!(":{password}@"),
        None => String::new(),
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|host| {
            let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                host.to_owned()
            } else {
                format!("{host}:26379")
            };
            format!("{}://{sentinel_auth}{with_port}", if tls { "rediss" } else { "redis" })
        })
        .collect();
    if sentinels.is_empty() {
        return Err(invalid("name at least one sentinel: redis+sentinel://HOST:PORT,.../SERVICE".into()));
    }
    Ok((Target::Sentinel { sentinels, service, tls, db, username, password }, ack))
}

/// A URL's user name or password, `%XX` escapes decoded.
fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// The primary now: a client for new connections (pub/sub) and the shared
/// multiplexed connection for commands.
struct Current {
    client: Client,
    conn: ConnectionManager,
    /// Where writes that wait for replicas go (`conn` when none do).
    acked: ConnectionManager,
}

/// The server the store writes to, followed across failovers with Sentinel.
pub(super) struct Primary {
    current: RwLock<Current>,
    /// Bumped when the primary moved (the wake-up task resubscribes).
    moved: tokio::sync::watch::Sender<u64>,
    sentinel: Option<tokio::sync::Mutex<SentinelLookup>>,
    /// Writes wait for replicas on a connection of their own.
    separate_acked: bool,
}

struct SentinelLookup {
    sentinel: Sentinel,
    service: String,
    node: SentinelNodeConnectionInfo,
}

impl SentinelLookup {
    async fn primary(&mut self) -> ::redis::RedisResult<Client> {
        self.sentinel.async_master_for(&self.service, Some(&self.node)).await
    }
}

fn manager_config() -> ConnectionManagerConfig {
    // Few quick retries: callers retry on `Unavailable` themselves, and a
    // wrong URL should fail at start-up within a second or so.
    ConnectionManagerConfig::new()
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(1))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        // Bulk inserts and large claims are single scripts; give them time.
        .set_response_timeout(Some(Duration::from_secs(30)))
}

impl Current {
    async fn connect(client: Client, separate_acked: bool) -> ::redis::RedisResult<Current> {
        let conn = client.get_connection_manager_with_config(manager_config()).await?;
        let acked = if separate_acked {
            client.get_connection_manager_with_config(manager_config()).await?
        } else {
            conn.clone()
        };
        Ok(Current { client, conn, acked })
    }
}

impl Primary {
    /// Connects to the primary `target` names; with a second connection for
    /// the writes that wait for replicas when `ack` asks for any.
    pub(super) async fn connect(target: &Target, ack: Ack) -> ::redis::RedisResult<Primary> {
        let (client, sentinel) = match target {
            Target::Direct(url) => (Client::open(url.as_str())?, None),
            Target::Sentinel { sentinels, service, tls, db, username, password } => {
                let mut redis = RedisConnectionInfo::default().set_db(*db);
                if !username.is_empty() {
                    redis = redis.set_username(username);
                }
                if !password.is_empty() {
                    redis = redis.set_password(password);
                }
                let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
                if *tls {
                    node = node.set_tls_mode(TlsMode::Secure);
                }
                let mut lookup =
                    SentinelLookup { sentinel: Sentinel::build(sentinels.clone())?, service: service.clone(), node };
                (lookup.primary().await?, Some(tokio::sync::Mutex::new(lookup)))
            }
        };
        let separate_acked = ack.replicas > 0;
        let current = Current::connect(client, separate_acked).await?;
        Ok(Primary { current: RwLock::new(current), moved: tokio::sync::watch::channel(0).0, sentinel, separate_acked })
    }

    /// The shared connection to the primary (cheap to clone).
    pub(super) fn conn(&self) -> ConnectionManager {
        self.current.read().expect("primary lock").conn.clone()
    }

    /// The connection of writes that wait for replicas (`WAIT` covers the
    /// writes of its own connection, and blocks it meanwhile).
    pub(super) fn acked(&self) -> ConnectionManager {
        self.current.read().expect("primary lock").acked.clone()
    }

    /// A client of the primary, for connections of their own.
    pub(super) fn client(&self) -> Client {
        self.current.read().expect("primary lock").client.clone()
    }

    /// Changes when the primary moved.
    pub(super) fn moved(&self) -> tokio::sync::watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// Whether the sentinels are followed.
    pub(super) fn follows_sentinels(&self) -> bool {
        self.sentinel.is_some()
    }

    /// Asks the sentinels which server is the primary and moves there when it
    /// changed; true when it moved.
    pub(super) async fn follow(&self) -> bool {
        let Some(lookup) = &self.sentinel else { return false };
        let client = match tokio::time::timeout(Duration::from_secs(5), lookup.lock().await.primary()).await {
            Ok(Ok(client)) => client,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "asking the sentinels for the primary failed");
                return false;
            }
            Err(_) => return false,
        };
        let now = client.get_connection_info().addr().to_string();
        if self.current.read().expect("primary lock").client.get_connection_info().addr().to_string() == now {
            return false;
        }
        let current = match Current::connect(client, self.separate_acked).await {
            Ok(current) => current,
            Err(err) => {
                tracing::warn!(primary = %now, error = %err, "cannot connect to the new Redis primary yet");
                return false;
            }
        };
        tracing::warn!(primary = %now, "the sentinels name a new Redis primary; moving there");
        *self.current.write().expect("primary lock") = current;
        self.moved.send_modify(|generation| *generation += 1);
        true
    }
}

/// Follows the sentinels' primary until dropped.
pub(super) struct FollowTask(Option<tokio::task::JoinHandle<()>>);

impl Drop for FollowTask {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

pub(super) fn follow(primary: std::sync::Arc<Primary>) -> FollowTask {
    if !primary.follows_sentinels() {
        return FollowTask(None);
    }
    FollowTask(Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            primary.follow().await;
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let (target, ack) = parse("redis+sentinel://:pw@127.0.0.1:26379,10.0.0.2/orch/2?ack_timeout_ms=250").unwrap();
        assert_eq!(
            target,
            Target::Sentinel {
                sentinels: vec!["redis://127.0.0.1:26379".into(), "redis://10.0.0.2:26379".into()],
                service: "orch".into(),
                tls: false,
                db: 2,
                username: String::new(),
                password: "pw".into(),
            }
        );
        assert_eq!(ack, Ack { replicas: 1, timeout: Duration::from_millis(250) });
        let (target, _) = parse("rediss+sentinel://u:p%40ss@s1:1,s2:2/main?sentinel_password=spw").unwrap();
        let Target::Sentinel { sentinels, tls, username, password, .. } = target else { panic!() };
        assert_eq!(sentinels, ["rediss://:spw@s1:1", "rediss://:spw@s2:2"]);
        assert!(tls);
        assert_eq!((username.as_str(), password.as_str()), ("u", "p@ss"));
        let (target, ack) = parse("redis://h:6379/0?ack_replicas=2").unwrap();
        assert_eq!(target, Target::Direct("redis://h:6379/0?ack_replicas=2".into()));
        assert_eq!(ack, Ack { replicas: 2, timeout: Duration::from_secs(1) });
        assert_eq!(parse("redis://h").unwrap().1.replicas, 0);
        for bad in ["redis+sentinel://h:1", "redis+sentinel:///orch", "redis://h?ack_replicas=x"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(!err.is_empty(), "{bad}");
        }
        let err = parse("redis+sentinel://:secret@h:1").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
