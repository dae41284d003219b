//! The node's embedded store (redb under the state directory): one table per kind of object,
//! values as JSON. Every write is its own durable transaction, so whatever the CLI was told
//! succeeded survives a crash of the daemon at any later point.
use std::path::Path;

use anyhow::{Context as _, Result};
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

pub const NETWORKS: Table = Table(TableDefinition::new("networks"));
pub const CONTAINERS: Table = Table(TableDefinition::new("containers"));
pub const META: Table = Table(TableDefinition::new("meta"));
/// The overlay networks of the cluster as last seen in etcd, so a daemon that starts while etcd
/// is unreachable still recognises (and keeps) their kernel objects.
/// Services and tasks of a node running alone (in a swarm they live in etcd).
pub const SERVICES: Table = Table(TableDefinition::new("services"));
pub const TASKS: Table = Table(TableDefinition::new("tasks"));
pub const OVERLAYS: Table = Table(TableDefinition::new("overlays"));

#[derive(Clone, Copy)]
pub struct Table(TableDefinition<'static, &'static str, &'static [u8]>);

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path)
            .with_context(|| format!("opening the state database {}", path.display()))?;
        let tx = db.begin_write()?;
        for t in [NETWORKS, CONTAINERS, META, OVERLAYS, SERVICES, TASKS] {
            tx.open_table(t.0)?;
        }
        tx.commit()?;
        Ok(Store { db })
    }

    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table.0)?;
        match t.get(key)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<T>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table.0)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(table.0)?;
            t.insert(key, bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn delete(&self, table: Table, key: &str) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(table.0)?;
            t.remove(key)?;
        }
        tx.commit()?;
        Ok(())
    }
}
