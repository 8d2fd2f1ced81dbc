//! The network's own records: each machine's addresses and its egress IPs.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;

use hangar_agent::EgressIp;
use rusqlite::{params, Connection, OptionalExtension};

use crate::Attachment;

pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS attachments (
             machine_id TEXT PRIMARY KEY,
             org        TEXT NOT NULL,
             ip6        TEXT NOT NULL UNIQUE,
             ip4        TEXT NOT NULL UNIQUE
         );
         CREATE TABLE IF NOT EXISTS egress_ips (
             ip         TEXT PRIMARY KEY,
             machine_id TEXT NOT NULL,
             created_at TEXT NOT NULL
         );",
    )?;
    Ok(c)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Attachment> {
    let bad = |i: usize, e: std::net::AddrParseError| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(Attachment {
        machine_id: r.get(0)?,
        org: r.get(1)?,
        ip6: r.get::<_, String>(2)?.parse().map_err(|e| bad(2, e))?,
        ip4: r.get::<_, String>(3)?.parse().map_err(|e| bad(3, e))?,
    })
}

pub fn attachment(c: &Connection, id: &str) -> rusqlite::Result<Option<Attachment>> {
    c.query_row(
        "SELECT machine_id, org, ip6, ip4 FROM attachments WHERE machine_id = ?1",
        [id],
        row,
    )
    .optional()
}

pub fn attachments(c: &Connection) -> rusqlite::Result<Vec<Attachment>> {
    let mut st =
        c.prepare("SELECT machine_id, org, ip6, ip4 FROM attachments ORDER BY machine_id")?;
    let rows = st.query_map([], row)?;
    rows.collect()
}

pub fn org_of_ip6(c: &Connection, ip: std::net::Ipv6Addr) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT org FROM attachments WHERE ip6 = ?1",
        [ip.to_string()],
        |r| r.get(0),
    )
    .optional()
}

pub fn org_of_ip4(c: &Connection, ip: Ipv4Addr) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT org FROM attachments WHERE ip4 = ?1",
        [ip.to_string()],
        |r| r.get(0),
    )
    .optional()
}

pub fn used_ip4(c: &Connection) -> rusqlite::Result<HashSet<Ipv4Addr>> {
    Ok(attachments(c)?.into_iter().map(|a| a.ip4).collect())
}

/// False when one of the addresses is taken.
pub fn insert_attachment(c: &Connection, a: &Attachment) -> rusqlite::Result<bool> {
    match c.execute(
        "INSERT INTO attachments (machine_id, org, ip6, ip4) VALUES (?1, ?2, ?3, ?4)",
        params![a.machine_id, a.org, a.ip6.to_string(), a.ip4.to_string()],
    ) {
        Ok(_) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

pub fn forget(c: &Connection, id: &str) -> rusqlite::Result<()> {
    c.execute("DELETE FROM attachments WHERE machine_id = ?1", [id])?;
    c.execute("DELETE FROM egress_ips WHERE machine_id = ?1", [id])?;
    Ok(())
}

fn egress_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EgressIp> {
    Ok(EgressIp {
        ip: r.get(0)?,
        machine_id: r.get(1)?,
        created_at: r.get(2)?,
    })
}

pub fn egress_of(c: &Connection, id: &str) -> rusqlite::Result<Vec<EgressIp>> {
    let mut st = c.prepare(
        "SELECT ip, machine_id, created_at FROM egress_ips WHERE machine_id = ?1 ORDER BY rowid",
    )?;
    let rows = st.query_map([id], egress_row)?;
    rows.collect()
}

pub fn all_egress(c: &Connection) -> rusqlite::Result<Vec<EgressIp>> {
    let mut st = c.prepare("SELECT ip, machine_id, created_at FROM egress_ips ORDER BY rowid")?;
    let rows = st.query_map([], egress_row)?;
    rows.collect()
}

/// The primary key on the address is what keeps an egress IP from ever being shared.
pub fn insert_egress(c: &Connection, ip: &str, machine_id: &str) -> rusqlite::Result<EgressIp> {
    let created_at: String =
        c.query_row("SELECT strftime('%Y-%m-%dT%H:%M:%SZ','now')", [], |r| {
            r.get(0)
        })?;
    c.execute(
        "INSERT INTO egress_ips (ip, machine_id, created_at) VALUES (?1, ?2, ?3)",
        params![ip, machine_id, created_at],
    )?;
    Ok(EgressIp {
        ip: ip.to_string(),
        machine_id: machine_id.to_string(),
        created_at,
    })
}

pub fn delete_egress(c: &Connection, ip: &str, machine_id: &str) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "DELETE FROM egress_ips WHERE ip = ?1 AND machine_id = ?2",
        params![ip, machine_id],
    )? > 0)
}
