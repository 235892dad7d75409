//! The daemon's state: SQLite, one transaction per change, so a crash at any
//! moment leaves either the old or the new state, never a duplicated lease.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use ipnet::{Ipv4Net, Ipv6Net};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{
    daemon::error::{Error, Result},
    logic::endpoint::{Attachment, Endpoint, EndpointOptions, Mode, Sandbox},
    logic::ipam::Pool,
    logic::network::{LocalNetwork, LocalSpec},
    logic::overlay::OverlayNetwork,
    logic::portspec::PublishedPort,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    mode TEXT NOT NULL,
    ip TEXT UNIQUE,
    hostname TEXT,
    ports TEXT NOT NULL,
    links TEXT NOT NULL,
    aliases TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing'))
);
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY,
    subnet TEXT NOT NULL,
    vni INTEGER NOT NULL UNIQUE,
    lease TEXT
);
CREATE TABLE IF NOT EXISTS attachments (
    endpoint TEXT NOT NULL,
    network TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ip TEXT NOT NULL UNIQUE,
    aliases TEXT NOT NULL,
    PRIMARY KEY (endpoint, network)
);
CREATE TABLE IF NOT EXISTS local_networks (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    id INTEGER NOT NULL UNIQUE,
    uid TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created TEXT NOT NULL
);
";

/// The networks every host has, whose ids are kept in `meta`.
const BUILTIN_NETWORKS: [&str; 3] = ["bridge", "host", "none"];
/// Prefix of their `meta` keys.
const BUILTIN_UID: &str = "network_uid:";

/// SQL for a new endpoint id: 64 random hex digits, as Docker's.
const NEW_UID: &str = "lower(hex(randomblob(32)))";
/// SQL for now, in RFC 3339 with milliseconds, as Docker's `Created`.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Lifecycle of an endpoint record. A record that is not `Ready` after a
/// restart belonged to an operation the crash interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Recorded, kernel objects being created.
    Creating,
    /// Fully created.
    Ready,
    /// Kernel objects being removed.
    Removing,
}

impl State {
    /// How the store spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Ready => "ready",
            State::Removing => "removing",
        }
    }

    /// The state the store spells `s`, if any: an unknown word is no
    /// state, not an interrupted creation for reconcile to tear down.
    fn parse(s: &str) -> Option<Self> {
        [State::Creating, State::Ready, State::Removing]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

/// An endpoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEndpoint {
    /// The endpoint.
    pub ep: Endpoint,
    /// Its lifecycle state.
    pub state: State,
    /// Published ports.
    pub ports: Vec<PublishedPort>,
    /// `--link` specs.
    pub links: Vec<String>,
    /// `--network-alias` names.
    pub aliases: Vec<String>,
    /// The networks it was connected to after its first, in order.
    pub attachments: Vec<Attachment>,
    /// 64 hex digits that name it for good, as Docker's `Id`.
    pub uid: String,
    /// When it was created, RFC 3339.
    pub created: String,
}

/// What a new record needs; the address is leased by [`Store::insert_endpoint`].
#[derive(Debug)]
pub struct NewEndpoint<'a> {
    /// Name.
    pub name: &'a str,
    /// Mode.
    pub mode: &'a Mode,
    /// Requested address, bridge mode only.
    pub ip: Option<Ipv4Addr>,
    /// Requested IPv6 address, on dual-stack networks.
    pub ip6: Option<Ipv6Addr>,
    /// Hostname.
    pub hostname: Option<&'a str>,
    /// Resolved published ports.
    pub ports: &'a [PublishedPort],
    /// Links.
    pub links: &'a [String],
    /// Network aliases.
    pub aliases: &'a [String],
    /// MAC, resolvers and hosts entries asked for.
    pub options: &'a EndpointOptions,
    /// The runtime's namespace, for endpoints made through CNI.
    pub sandbox: Option<&'a Sandbox>,
}

/// The state database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens the database at `path`, which [`Store::open`] made, for
    /// reading only: beside the daemon's own connection, readers see the
    /// last committed state (WAL) and never wait for its writes.
    pub fn open_reader(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(Store { conn })
    }

    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        // Databases from before cluster stores, network aliases and
        // encapsulations other than VXLAN lack their columns.
        for (table, column, definition) in [
            ("networks", "lease", "TEXT"),
            ("networks", "encap", "TEXT NOT NULL DEFAULT 'vxlan'"),
            ("endpoints", "aliases", "TEXT NOT NULL DEFAULT '[]'"),
            ("endpoints", "options", "TEXT NOT NULL DEFAULT '{}'"),
            ("endpoints", "uid", "TEXT"),
            ("endpoints", "created", "TEXT"),
            ("endpoints", "seq", "INTEGER NOT NULL DEFAULT 0"),
            ("endpoints", "sandbox", "TEXT"),
            ("endpoints", "ip6", "TEXT"),
            ("attachments", "ip6", "TEXT"),
        ] {
            if conn
                .prepare(&format!("SELECT {column} FROM {table}"))
                .is_err()
            {
                conn.execute(
                    &format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"),
                    [],
                )?;
            }
        }
        for (index, table) in [
            ("endpoint_ip6", "endpoints"),
            ("attachment_ip6", "attachments"),
        ] {
            conn.execute(
                &format!("CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} (ip6)"),
                [],
            )?;
        }
        // Endpoints made before they had an id and a creation time get
        // them now: an id like Docker's, the time of this upgrade.
        conn.execute(
            &format!("UPDATE endpoints SET uid = {NEW_UID} WHERE uid IS NULL"),
            [],
        )?;
        conn.execute(
            &format!("UPDATE endpoints SET created = {NOW} WHERE created IS NULL"),
            [],
        )?;
        for builtin in BUILTIN_NETWORKS {
            conn.execute(
                &format!("INSERT OR IGNORE INTO meta (key, value) VALUES (?1, {NEW_UID})"),
                [format!("{BUILTIN_UID}{builtin}")],
            )?;
        }
        Ok(Store { conn })
    }

    /// The id of built-in network `name` (`bridge`, `host`, `none`).
    pub fn builtin_uid(&self, name: &str) -> Result<String> {
        Ok(self
            .meta(&format!("{BUILTIN_UID}{name}"))?
            .unwrap_or_default())
    }

    /// A daemon setting recorded by an earlier run.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Records a daemon setting.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Forgets a daemon setting.
    pub fn delete_meta(&self, key: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM meta WHERE key = ?1", [key])?;
        Ok(())
    }

    /// Records an overlay network; its name and VNI must be new.
    pub fn insert_network(&self, net: &OverlayNetwork) -> Result<()> {
        let taken: Option<String> = self
            .conn
            .query_row(
                "SELECT name FROM networks WHERE name = ?1 OR vni = ?2",
                params![net.name, net.vni],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = taken {
            return Err(Error::NetworkExists {
                name: net.name.clone(),
                vni: net.vni,
                other,
            });
        }
        self.conn.execute(
            "INSERT INTO networks (name, subnet, vni, encap) VALUES (?1, ?2, ?3, ?4)",
            params![net.name, net.subnet.to_string(), net.vni, net.encap.name()],
        )?;
        Ok(())
    }

    /// Every overlay network.
    pub fn networks(&self) -> Result<Vec<OverlayNetwork>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, subnet, vni, encap FROM networks ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (name, subnet, vni, encap) = row?;
            let subnet = subnet
                .parse()
                .map_err(|_| corrupt("subnet", "network", &name))?;
            let encap = encap
                .parse()
                .map_err(|_| corrupt("encap", "network", &name))?;
            Ok(OverlayNetwork {
                name,
                subnet,
                vni,
                encap,
            })
        })
        .collect()
    }

    /// Records a local network under the lowest free data path
    /// identifier from `first_id`, with a new Docker-style id.
    pub fn insert_local_network(
        &mut self,
        name: &str,
        spec: &LocalSpec,
        first_id: u32,
    ) -> Result<LocalNetwork> {
        let spec_json = serde_json::to_string(spec)
            .map_err(|e| Error::Corrupt(format!("network {name}: {e}")))?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id: u32 = tx.query_row(
            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM local_networks WHERE id = ?1) THEN ?1
             ELSE (SELECT MIN(id + 1) FROM local_networks
                   WHERE id + 1 NOT IN (SELECT id FROM local_networks)) END",
            [first_id],
            |r| r.get(0),
        )?;
        tx.execute(
            &format!(
                "INSERT INTO local_networks (name, id, uid, spec, created)
                 VALUES (?1, ?2, {NEW_UID}, ?3, {NOW})"
            ),
            params![name, id, spec_json],
        )?;
        tx.commit()?;
        self.local_network(name)?
            .ok_or_else(|| Error::NetworkNotFound(name.to_string()))
    }

    /// Every local network, in order of creation.
    pub fn local_networks(&self) -> Result<Vec<LocalNetwork>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, id, uid, spec, created FROM local_networks ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        rows.map(|row| {
            let (name, id, uid, spec, created) = row?;
            let spec =
                serde_json::from_str(&spec).map_err(|_| corrupt("spec", "network", &name))?;
            Ok(LocalNetwork {
                name,
                id,
                uid,
                created,
                spec,
            })
        })
        .collect()
    }

    /// The local network `name` (any case), if there is one.
    pub fn local_network(&self, name: &str) -> Result<Option<LocalNetwork>> {
        Ok(self
            .local_networks()?
            .into_iter()
            .find(|n| n.name.eq_ignore_ascii_case(name)))
    }

    /// Forgets local network `name`.
    pub fn delete_local_network(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM local_networks WHERE name = ?1", [name])?;
        Ok(())
    }

    /// The overlay network `name`.
    pub fn network(&self, name: &str) -> Result<OverlayNetwork> {
        self.networks()?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::NetworkNotFound(name.to_string()))
    }

    /// Records the /24 of overlay `name` this host took from a cluster
    /// store, to ask for it again when it comes back.
    pub fn set_network_lease(&self, name: &str, lease: Ipv4Net) -> Result<()> {
        self.conn.execute(
            "UPDATE networks SET lease = ?2 WHERE name = ?1",
            params![name, lease.to_string()],
        )?;
        Ok(())
    }

    /// The /24 of overlay `name` this host last took from a cluster store.
    pub fn network_lease(&self, name: &str) -> Result<Option<Ipv4Net>> {
        let lease: Option<Option<String>> = self
            .conn
            .query_row("SELECT lease FROM networks WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        lease
            .flatten()
            .map(|l| l.parse().map_err(|_| corrupt("lease", "network", name)))
            .transpose()
    }

    /// Forgets an overlay network.
    pub fn delete_network(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM networks WHERE name = ?1", [name])?;
        Ok(())
    }

    /// Records a new endpoint in state `Creating`, leasing its address from
    /// `pool` (the requested one, or the lowest free) and its IPv6 one from
    /// `pool6` in the same transaction.
    pub fn insert_endpoint(
        &mut self,
        new: NewEndpoint<'_>,
        pool: Option<&Pool>,
        pool6: Option<&Pool<Ipv6Net>>,
    ) -> Result<Endpoint> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // DNS names know no case: one endpoint per name in any case.
        let existing: Option<String> = tx
            .query_row(
                "SELECT name FROM endpoints WHERE name = ?1 COLLATE NOCASE",
                [new.name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(existing) = existing {
            return Err(Error::EndpointExists(existing));
        }
        let ip = match pool {
            Some(pool) => {
                let leased = leased(&tx)?;
                Some(match new.ip {
                    Some(ip) => pool.check(ip, &leased).map(|()| ip)?,
                    None => pool.next_free(&leased)?,
                })
            }
            None => None,
        };
        let ip6 = match pool6 {
            Some(pool) => {
                let leased = leased6(&tx)?;
                Some(match new.ip6 {
                    Some(ip) => pool.check(ip, &leased).map(|()| ip)?,
                    None => pool.next_free(&leased)?,
                })
            }
            None => None,
        };
        tx.execute(
            &format!(
                "INSERT INTO endpoints
                 (name, mode, ip, hostname, ports, links, aliases, options, sandbox, ip6, uid,
                  created, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, {NEW_UID}, {NOW}, 'creating')"
            ),
            params![
                new.name,
                new.mode.to_string(),
                ip.map(|ip| ip.to_string()),
                new.hostname,
                serde_json::to_string(new.ports).expect("ports serialize"),
                serde_json::to_string(new.links).expect("links serialize"),
                serde_json::to_string(new.aliases).expect("aliases serialize"),
                serde_json::to_string(new.options).expect("options serialize"),
                new.sandbox
                    .map(|sb| serde_json::to_string(sb).expect("sandbox serializes")),
                ip6.map(|ip| ip.to_string()),
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Endpoint {
            id,
            name: new.name.to_string(),
            mode: new.mode.clone(),
            ip,
            ip6,
            seq: 0,
            hostname: new.hostname.map(str::to_string),
            options: new.options.clone(),
            sandbox: new.sandbox.cloned(),
        })
    }

    /// Makes `att`, one of endpoint `name`'s later networks, its first:
    /// its network, address, interface and aliases become the endpoint's,
    /// and a MAC asked for at create (which was the old interface's) goes.
    pub fn promote(&mut self, name: &str, att: &Attachment) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let options: String = tx.query_row(
            "SELECT options FROM endpoints WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        let mut options: EndpointOptions =
            serde_json::from_str(&options).map_err(|_| corrupt("options", "endpoint", name))?;
        options.mac = None;
        tx.execute(
            "DELETE FROM attachments WHERE endpoint = ?1 AND network = ?2",
            [name, &att.network],
        )?;
        tx.execute(
            "UPDATE endpoints SET mode = ?2, ip = ?3, seq = ?4, aliases = ?5, options = ?6,
             ip6 = ?7 WHERE name = ?1",
            params![
                name,
                att.mode().to_string(),
                att.ip.to_string(),
                att.seq,
                serde_json::to_string(&att.aliases).expect("aliases serialize"),
                serde_json::to_string(&options).expect("options serialize"),
                att.ip6.map(|ip| ip.to_string()),
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces an endpoint's published ports.
    pub fn set_ports(&self, name: &str, ports: &[PublishedPort]) -> Result<()> {
        self.conn.execute(
            "UPDATE endpoints SET ports = ?2 WHERE name = ?1",
            params![name, serde_json::to_string(ports).expect("ports serialize")],
        )?;
        Ok(())
    }

    /// Moves an endpoint to `state`.
    pub fn set_state(&self, name: &str, state: State) -> Result<()> {
        self.conn.execute(
            "UPDATE endpoints SET state = ?2 WHERE name = ?1",
            params![name, state.as_str()],
        )?;
        Ok(())
    }

    /// Forgets an endpoint, releasing its lease and ports.
    pub fn delete_endpoint(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM attachments WHERE endpoint = ?1", [name])?;
        self.conn
            .execute("DELETE FROM endpoints WHERE name = ?1", [name])?;
        Ok(())
    }

    /// Records that `endpoint` is connected to `network` too, leasing its
    /// address there from `pool` (the one asked for, or the lowest free)
    /// and giving it the next interface number, in one transaction.
    pub fn insert_attachment(
        &mut self,
        endpoint: &str,
        network: &str,
        (ip, ip6): (Option<Ipv4Addr>, Option<Ipv6Addr>),
        aliases: &[String],
        (pool, pool6): (&Pool, Option<&Pool<Ipv6Net>>),
    ) -> Result<Attachment> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let leased = leased(&tx)?;
        let ip = match ip {
            Some(ip) => pool.check(ip, &leased).map(|()| ip)?,
            None => pool.next_free(&leased)?,
        };
        let ip6 = match pool6 {
            Some(pool) => {
                let leased = leased6(&tx)?;
                Some(match ip6 {
                    Some(ip) => pool.check(ip, &leased).map(|()| ip)?,
                    None => pool.next_free(&leased)?,
                })
            }
            None => None,
        };
        let seq: u32 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM attachments WHERE endpoint = ?1",
            [endpoint],
            |r| r.get(0),
        )?;
        let aliases_json = serde_json::to_string(aliases)
            .map_err(|e| Error::Corrupt(format!("aliases of {endpoint}: {e}")))?;
        tx.execute(
            "INSERT INTO attachments (endpoint, network, seq, ip, aliases, ip6)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                endpoint,
                network,
                seq,
                ip.to_string(),
                aliases_json,
                ip6.map(|ip| ip.to_string())
            ],
        )?;
        tx.commit()?;
        Ok(Attachment {
            network: network.to_string(),
            seq,
            ip,
            ip6,
            aliases: aliases.to_vec(),
        })
    }

    /// Forgets that `endpoint` is connected to `network`.
    pub fn delete_attachment(&self, endpoint: &str, network: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM attachments WHERE endpoint = ?1 AND network = ?2",
            [endpoint, network],
        )?;
        Ok(())
    }

    /// Every endpoint's attachments, by endpoint, in order.
    fn attachments(&self) -> Result<std::collections::HashMap<String, Vec<Attachment>>> {
        let mut stmt = self.conn.prepare(
            "SELECT endpoint, network, seq, ip, aliases, ip6 FROM attachments
             ORDER BY endpoint, seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut by_endpoint: std::collections::HashMap<String, Vec<Attachment>> =
            std::collections::HashMap::new();
        for row in rows {
            let (endpoint, network, seq, ip, aliases, ip6) = row?;
            let what = format!("{endpoint} on {network}");
            let attachment = Attachment {
                ip: ip.parse().map_err(|_| corrupt("ip", "attachment", &what))?,
                ip6: ip6
                    .map(|ip| ip.parse())
                    .transpose()
                    .map_err(|_| corrupt("ip6", "attachment", &what))?,
                aliases: serde_json::from_str(&aliases)
                    .map_err(|_| corrupt("aliases", "attachment", &what))?,
                network,
                seq,
            };
            by_endpoint.entry(endpoint).or_default().push(attachment);
        }
        Ok(by_endpoint)
    }

    /// Every endpoint, oldest first.
    pub fn endpoints(&self) -> Result<Vec<StoredEndpoint>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, mode, ip, hostname, ports, links, aliases, state, options, uid,
             created, seq, sandbox, ip6 FROM endpoints ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
                r.get::<_, String>(10)?,
                r.get::<_, String>(11)?,
                r.get::<_, u32>(12)?,
                r.get::<_, Option<String>>(13)?,
                r.get::<_, Option<String>>(14)?,
            ))
        })?;
        let mut attachments = self.attachments()?;
        rows.map(|row| {
            let (
                id,
                name,
                mode,
                ip,
                hostname,
                ports,
                links,
                aliases,
                state,
                options,
                uid,
                created,
                seq,
                sandbox,
                ip6,
            ) = row?;
            Ok(StoredEndpoint {
                attachments: attachments.remove(&name).unwrap_or_default(),
                ep: Endpoint {
                    id,
                    mode: mode
                        .parse()
                        .map_err(|_| corrupt("mode", "endpoint", &name))?,
                    ip: ip
                        .map(|ip| ip.parse())
                        .transpose()
                        .map_err(|_| corrupt("ip", "endpoint", &name))?,
                    ip6: ip6
                        .map(|ip| ip.parse())
                        .transpose()
                        .map_err(|_| corrupt("ip6", "endpoint", &name))?,
                    seq,
                    hostname,
                    options: serde_json::from_str(&options)
                        .map_err(|_| corrupt("options", "endpoint", &name))?,
                    sandbox: sandbox
                        .map(|sb| serde_json::from_str(&sb))
                        .transpose()
                        .map_err(|_| corrupt("sandbox", "endpoint", &name))?,
                    name: name.clone(),
                },
                state: State::parse(&state).ok_or_else(|| corrupt("state", "endpoint", &name))?,
                ports: serde_json::from_str(&ports)
                    .map_err(|_| corrupt("ports", "endpoint", &name))?,
                links: serde_json::from_str(&links)
                    .map_err(|_| corrupt("links", "endpoint", &name))?,
                aliases: serde_json::from_str(&aliases)
                    .map_err(|_| corrupt("aliases", "endpoint", &name))?,
                uid,
                created,
            })
        })
        .collect()
    }

    /// One endpoint.
    pub fn endpoint(&self, name: &str) -> Result<StoredEndpoint> {
        self.endpoints()?
            .into_iter()
            .find(|e| e.ep.name == name)
            .ok_or_else(|| Error::EndpointNotFound(name.to_string()))
    }
}

/// The addresses leased to endpoints attached in `mode` (the bridge, or an
/// overlay network).
/// Every leased address, of any network: addresses are unique across
/// networks (the table says so), so a lease in one network's pool must not
/// be another network's endpoint's.
fn leased(tx: &rusqlite::Transaction<'_>) -> Result<BTreeSet<Ipv4Addr>> {
    let mut stmt = tx.prepare(
        "SELECT name, ip FROM endpoints WHERE ip IS NOT NULL
         UNION ALL SELECT endpoint, ip FROM attachments",
    )?;
    let ips = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    ips.map(|row| {
        let (name, ip) = row?;
        ip.parse().map_err(|_| corrupt("ip", "endpoint", &name))
    })
    .collect::<Result<_>>()
}

/// Every leased IPv6 address, of any network.
fn leased6(tx: &rusqlite::Transaction<'_>) -> Result<BTreeSet<Ipv6Addr>> {
    let mut stmt = tx.prepare(
        "SELECT ip6 FROM endpoints WHERE ip6 IS NOT NULL
         UNION SELECT ip6 FROM attachments WHERE ip6 IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.map(|ip| {
        let ip = ip?;
        ip.parse().map_err(|_| corrupt("ip6", "endpoint", &ip))
    })
    .collect()
}

fn corrupt(column: &str, kind: &str, name: &str) -> Error {
    Error::Corrupt(format!("unreadable {column} of {kind} {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::ipam::LeaseError;

    fn new<'a>(name: &'a str, mode: &'a Mode, ip: Option<Ipv4Addr>) -> NewEndpoint<'a> {
        NewEndpoint {
            name,
            mode,
            ip,
            ip6: None,
            hostname: None,
            ports: &[],
            links: &[],
            aliases: &[],
            options: &NO_OPTIONS,
            sandbox: None,
        }
    }

    static NO_OPTIONS: EndpointOptions = EndpointOptions {
        mac: None,
        dns: Vec::new(),
        dns_search: Vec::new(),
        extra_hosts: Vec::new(),
    };

    #[test]
    fn an_unknown_state_is_an_error_naming_the_row() {
        let dir = std::env::temp_dir().join(format!("np-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("state.db");
        let mut store = Store::open(&db).unwrap();
        store
            .insert_endpoint(new("web", &Mode::None, None), None, None)
            .unwrap();
        // The table's CHECK keeps such words out; a file written by other
        // means may still hold one.
        store
            .conn
            .execute_batch(
                "PRAGMA ignore_check_constraints = ON; UPDATE endpoints SET state = 'bogus'",
            )
            .unwrap();
        let err = store.endpoints().unwrap_err();
        assert_eq!(
            err.to_string(),
            "state store: unreadable state of endpoint web"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn leases_are_unique_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let pool = Pool::new("10.1.0.0/24".parse().unwrap()).unwrap();
        let a = store
            .insert_endpoint(new("a", &Mode::Bridge, None), Some(&pool), None)
            .unwrap();
        let b = store
            .insert_endpoint(new("b", &Mode::Bridge, None), Some(&pool), None)
            .unwrap();
        assert_eq!(a.ip.unwrap().to_string(), "10.1.0.2");
        assert_eq!(b.ip.unwrap().to_string(), "10.1.0.3");
        let err = store
            .insert_endpoint(new("c", &Mode::Bridge, a.ip), Some(&pool), None)
            .unwrap_err();
        assert_eq!(err, LeaseError::InUse(a.ip.unwrap().into()).into());
        let err = store
            .insert_endpoint(new("a", &Mode::None, None), None, None)
            .unwrap_err();
        assert_eq!(err, Error::EndpointExists("a".into()));
        let err = store
            .insert_endpoint(new("A", &Mode::None, None), None, None)
            .unwrap_err();
        assert_eq!(err, Error::EndpointExists("a".into()), "names know no case");
        store.delete_endpoint("a").unwrap();
        let c = store
            .insert_endpoint(new("c", &Mode::Bridge, None), Some(&pool), None)
            .unwrap();
        assert_eq!(c.ip, a.ip);
        assert!(
            c.id > b.id,
            "ids are never reused, so veth names are not either"
        );
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let mut store = Store::open(&path).unwrap();
            store.set_meta("subnet", "10.1.0.0/24").unwrap();
            store
                .insert_endpoint(new("x", &Mode::Container("y".into()), None), None, None)
                .unwrap();
            store.set_state("x", State::Ready).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.meta("subnet").unwrap().as_deref(),
            Some("10.1.0.0/24")
        );
        let x = store.endpoint("x").unwrap();
        assert_eq!(x.state, State::Ready);
        assert_eq!(x.ep.mode, Mode::Container("y".into()));
        assert_eq!(
            store.endpoint("nope").unwrap_err(),
            Error::EndpointNotFound("nope".into())
        );
    }

    #[test]
    fn overlay_networks_keep_their_names_and_vnis_to_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let web = OverlayNetwork {
            name: "web".into(),
            subnet: "10.200.0.0/16".parse().unwrap(),
            vni: 42,
            encap: crate::logic::overlay::Encap::Gre,
        };
        store.insert_network(&web).unwrap();
        let same_vni = OverlayNetwork {
            name: "db".into(),
            ..web.clone()
        };
        assert!(matches!(
            store.insert_network(&same_vni),
            Err(Error::NetworkExists { other, .. }) if other == "web"
        ));
        assert!(matches!(
            store.insert_network(&OverlayNetwork {
                vni: 43,
                ..web.clone()
            }),
            Err(Error::NetworkExists { .. })
        ));
        assert_eq!(store.network("web").unwrap(), web);
        assert_eq!(store.network_lease("web").unwrap(), None);
        let lease: Ipv4Net = "10.200.7.0/24".parse().unwrap();
        store.set_network_lease("web", lease).unwrap();
        assert_eq!(store.network_lease("web").unwrap(), Some(lease));
        store.delete_network("web").unwrap();
        assert!(matches!(
            store.network("web"),
            Err(Error::NetworkNotFound(_))
        ));
    }
}
