//! mtnt's first PostgreSQL connections: they check the URL at once, get past PgBouncer's
//! refusal of a startup parameter, and refuse a connection pooler in transaction mode.
//!
//! mtnt needs its connections to be sessions: a tenant's lock is a session advisory lock,
//! timeouts and `search_path` are set per session, and sqlx prepares statements per
//! connection. A pooler in session mode (PgBouncer `pool_mode = session`) gives each client
//! connection one server session for its life and is fine. In transaction (or statement)
//! mode it hands a client connection whichever server session is free at each transaction:
//! locks and settings leak to other clients, and prepared statements go missing.
//!
//! PgBouncer does not say which mode it is in (pgbouncer/pgbouncer#249, #653: by design), so
//! mtnt looks at what it needs: two connections opened side by side each ask, in turn, which
//! server session answers them (`pg_backend_pid()` and that backend's start time). Directly
//! or through a session pool, each always gets its own session, and the two differ. Through a
//! transaction pool, a connection idle between statements has no session of its own: with
//! PgBouncer's default LIFO reuse the second connection is served by the session the first
//! just released, and with `server_round_robin = 1` one connection is served by another
//! session at its next statement. Either is proof; no other set-up produces it, so the check
//! cannot refuse a direct or session-pooled URL.

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

use crate::{redact_url, Error, Result};

/// Which server session answers, unique across servers and over time.
const WHO_SERVES: &str = "SELECT pg_backend_pid()::text || ' started ' || \
     coalesce((SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()), '?')";

/// Opens mtnt's first connections to `url` and closes them again: the URL is wrong, the
/// server unreachable or its TLS unusable ([`Error::Connect`], [`Error::Tls`]), or it leads
/// to a pooler in transaction mode ([`Error::BadUrl`]). Returns the options to connect with
/// (without `extra_float_digits` when the server, PgBouncer, refuses that parameter).
/// A boxed `Send` future (see `exec_postgres`): the servers of a fleet connect from inside
/// `async_trait` methods.
pub(super) fn first_connections(
    url: &str,
    options: PgConnectOptions,
) -> crate::migration::BoxFuture<'_, Result<PgConnectOptions>> {
    Box::pin(first_connections_checked(url, options))
}

async fn first_connections_checked(
    url: &str,
    options: PgConnectOptions,
) -> Result<PgConnectOptions> {
    let connect_error = |source| super::super::tls::connect_error(url, source);
    let (mut first, options) = match PgConnection::connect_with(&options).await {
        Ok(conn) => (conn, options),
        // PgBouncer refuses startup parameters it does not know unless its
        // `ignore_startup_parameters` lists them; sqlx sends `extra_float_digits = 2`, which
        // PostgreSQL 12 and later need no longer (they print floats exactly by default).
        Err(e) if refuses_extra_float_digits(&e) => {
            let options = options.extra_float_digits(None);
            let conn = PgConnection::connect_with(&options)
                .await
                .map_err(connect_error)?;
            (conn, options)
        }
        Err(e) => return Err(connect_error(e)),
    };
    let mut second = match PgConnection::connect_with(&options).await {
        Ok(conn) => conn,
        Err(e) => {
            first.close().await.ok();
            return Err(connect_error(e));
        }
    };
    let shared = shared_session(&mut first, &mut second).await;
    first.close().await.ok();
    second.close().await.ok();
    match shared? {
        None => Ok(options),
        Some(evidence) => Err(Error::TransactionPooler {
            url: redact_url(url),
            evidence,
        }),
    }
}

fn refuses_extra_float_digits(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|e| {
        e.message()
            .contains("unsupported startup parameter: extra_float_digits")
    })
}

/// The server session that answers `conn` ([`WHO_SERVES`]); boxed, so that the futures
/// around it are `Send` for any lifetime of the connection.
fn who_serves(conn: &mut PgConnection) -> crate::migration::BoxFuture<'_, Result<String>> {
    Box::pin(async move {
        Ok(sqlx::Executor::fetch_one(conn, WHO_SERVES)
            .await?
            .try_get(0)?)
    })
}

/// Whether the server sessions behind `a` and `b` are shared: `Some` with what showed it.
async fn shared_session(a: &mut PgConnection, b: &mut PgConnection) -> Result<Option<String>> {
    let (mut seen_a, mut seen_b) = (Vec::<String>::new(), Vec::<String>::new());
    // a, b, b, a twice: a connection served right after the other one (LIFO reuse), and one
    // served twice in a row (round robin) both come up within the first three.
    for turn in [0, 1, 1, 0, 0, 1, 1, 0] {
        let (conn, seen) = if turn == 0 {
            (&mut *a, &mut seen_a)
        } else {
            (&mut *b, &mut seen_b)
        };
        let session = who_serves(conn).await?;
        if let Some(earlier) = seen.first().filter(|s| **s != session) {
            return Ok(Some(format!(
                "one connection was served by server session {earlier}, then by {session}"
            )));
        }
        seen.push(session);
        if let Some(both) = seen_a.iter().find(|s| seen_b.contains(s)) {
            return Ok(Some(format!(
                "two connections open side by side were both served by server session {both}"
            )));
        }
    }
    Ok(None)
}
