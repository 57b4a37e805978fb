//! The Redis global tier.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisError, Script, Value};

use crate::{
    GlobalTier, Key, LockToken, MAX_VALUE_LEN, StateError, StateFuture, check_len, lease_millis,
    write_end,
};

/// How long one attempt to connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may wait for its reply: a 512 MiB value crosses a slow link.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts to reconnect after the connection is lost, with exponential backoff.
const RECONNECT_RETRIES: usize = 3;
/// Longest pause between two attempts to take a held lock.
const LOCK_POLL_MAX: Duration = Duration::from_millis(50);

/// Prefix of the Redis keys holding values: `nimbus:v:APP:NAME`.
const VALUE_PREFIX: &[u8] = b"nimbus:v:";
/// Prefix of the Redis keys holding locks: `nimbus:l:APP:NAME`, never a value's key.
const LOCK_PREFIX: &[u8] = b"nimbus:l:";

/// Deletes the lock only if it still holds the caller's token, atomically.
const UNLOCK: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
else
  return 0
end";

/// The global tier in a Redis server, shared by every host that names the same URL.
///
/// A value is a Redis string at `nimbus:v:APP:NAME` (`GET`, `SET`, `GETRANGE`,
/// `SETRANGE`, `APPEND`, `DEL`, `STRLEN`: one command per operation, binary-safe). A
/// lock is a string at `nimbus:l:APP:NAME` holding the holder's token, taken with
/// `SET … NX PX lease` (retried with backoff until the timeout) and released by a
/// compare-and-delete script, so an expired holder can never release its successor's
/// lock. One multiplexed connection is shared by all callers and re-established after
/// it breaks.
#[derive(Clone)]
pub struct Redis {
    url: String,
    connection: ConnectionManager,
    unlock: Script,
}

impl Redis {
    /// Connects to `url`, `redis://[user:password@]host[:port][/db]`.
    pub async fn connect(url: &str) -> Result<Redis, StateError> {
        let shown = redact(url);
        let unsupported = |reason: String| StateError::UnsupportedUrl {
            url: shown.clone(),
            reason,
        };
        if url.starts_with("rediss://") {
            return Err(unsupported("TLS (rediss://) is not supported".into()));
        }
        if !url.starts_with("redis://") {
            return Err(unsupported("not a redis:// URL".into()));
        }
        let client = redis::Client::open(url).map_err(|e| unsupported(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|source| StateError::Connect {
                url: shown.clone(),
                source,
            })?;
        Ok(Redis {
            url: shown,
            connection,
            unlock: Script::new(UNLOCK),
        })
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StateError> {
        cmd.query_async(&mut self.connection.clone())
            .await
            .map_err(|e| self.error(e))
    }

    fn error(&self, source: RedisError) -> StateError {
        // APPEND and SETRANGE past proto-max-bulk-len (512 MiB unless reconfigured).
        if source.to_string().contains("maximum allowed size") {
            return StateError::ValueTooLarge { len: None };
        }
        StateError::Redis {
            url: self.url.clone(),
            source,
        }
    }
}

fn prefixed(prefix: &[u8], key: &Key) -> Vec<u8> {
    [prefix, key.as_bytes()].concat()
}

fn value_key(key: &Key) -> Vec<u8> {
    prefixed(VALUE_PREFIX, key)
}

fn lock_key(key: &Key) -> Vec<u8> {
    prefixed(LOCK_PREFIX, key)
}

/// `url` with the password, if any, replaced by `***` (all of the user information when
/// it has no `:`, as some write a bare password there).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => format!("{scheme}://***{}", &rest[at..]),
    }
}

impl GlobalTier for Redis {
    fn get<'a>(&'a self, key: &'a Key) -> StateFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { self.query(redis::cmd("GET").arg(value_key(key))).await })
    }

    fn set<'a>(&'a self, key: &'a Key, value: Vec<u8>) -> StateFuture<'a, ()> {
        Box::pin(async move {
            check_len(value.len() as u64)?;
            let _: Value = self
                .query(redis::cmd("SET").arg(value_key(key)).arg(value))
                .await?;
            Ok(())
        })
    }

    fn get_range<'a>(&'a self, key: &'a Key, offset: u64, len: u64) -> StateFuture<'a, Vec<u8>> {
        Box::pin(async move {
            // GETRANGE's end is inclusive and a negative one counts from the end, so an
            // empty range is answered here; no value reaches past MAX_VALUE_LEN.
            if len == 0 || offset >= MAX_VALUE_LEN {
                return Ok(Vec::new());
            }
            let last = offset.saturating_add(len).min(MAX_VALUE_LEN) - 1;
            self.query(
                redis::cmd("GETRANGE")
                    .arg(value_key(key))
                    .arg(offset)
                    .arg(last),
            )
            .await
        })
    }

    fn set_range<'a>(&'a self, key: &'a Key, offset: u64, bytes: &'a [u8]) -> StateFuture<'a, u64> {
        Box::pin(async move {
            write_end(offset, bytes.len())?;
            self.query(
                redis::cmd("SETRANGE")
                    .arg(value_key(key))
                    .arg(offset)
                    .arg(bytes),
            )
            .await
        })
    }

    fn append<'a>(&'a self, key: &'a Key, bytes: &'a [u8]) -> StateFuture<'a, u64> {
        Box::pin(async move {
            // Only the server knows the current length; it refuses growth past 512 MiB.
            check_len(bytes.len() as u64)?;
            self.query(redis::cmd("APPEND").arg(value_key(key)).arg(bytes))
                .await
        })
    }

    fn delete<'a>(&'a self, key: &'a Key) -> StateFuture<'a, bool> {
        Box::pin(async move {
            let deleted: u64 = self.query(redis::cmd("DEL").arg(value_key(key))).await?;
            Ok(deleted > 0)
        })
    }

    fn len<'a>(&'a self, key: &'a Key) -> StateFuture<'a, u64> {
        Box::pin(async move { self.query(redis::cmd("STRLEN").arg(value_key(key))).await })
    }

    fn lock<'a>(
        &'a self,
        key: &'a Key,
        lease: Duration,
        timeout: Duration,
    ) -> StateFuture<'a, LockToken> {
        Box::pin(async move {
            let millis = lease_millis(lease)?;
            let token = LockToken::new();
            let mut cmd = redis::cmd("SET");
            cmd.arg(lock_key(key))
                .arg(token.to_hex())
                .arg("NX")
                .arg("PX")
                .arg(millis);
            let start = tokio::time::Instant::now();
            let mut pause = Duration::from_millis(1);
            loop {
                let reply: Value = self.query(&cmd).await?;
                if reply != Value::Nil {
                    return Ok(token);
                }
                let waited = start.elapsed();
                if waited >= timeout {
                    return Err(StateError::LockTimeout {
                        key: key.to_string(),
                        timeout,
                    });
                }
                tokio::time::sleep(pause.min(timeout - waited)).await;
                pause = (pause * 2).min(LOCK_POLL_MAX);
            }
        })
    }

    fn unlock<'a>(&'a self, key: &'a Key, token: LockToken) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let deleted: u64 = self
                .unlock
                .key(lock_key(key))
                .arg(token.to_hex())
                .invoke_async(&mut self.connection.clone())
                .await
                .map_err(|e| self.error(e))?;
            if deleted == 0 {
                return Err(StateError::NotHolder {
                    key: key.to_string(),
                });
            }
            Ok(())
        })
    }

    fn location(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact("redis://u:p@ss@h/1"), "redis://u:***@h/1");
        assert_eq!(redact("redis://secret@h"), "redis://***@h");
        assert_eq!(redact("nonsense"), "nonsense");
    }
}
