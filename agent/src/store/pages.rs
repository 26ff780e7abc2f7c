//! Lists read a page at a time: at most a page's records returned and at
//! most [`MAX_SCAN`] read per call, so a filter that matches little still
//! answers quickly, with a token to go on.

use redb::ReadableDatabase;

use super::*;
use crate::model::{ContainerRecord, Violation};

/// One page of a list, and where the next starts (`None`: nothing more).
#[derive(Debug)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    pub next: Option<K>,
}

impl Store {
    /// Container records in key order after `after`, those `keep`
    /// accepts, at most `limit`, reading at most [`MAX_SCAN`] records;
    /// only keys starting with `prefix`.
    pub fn containers_page(
        &self,
        after: Option<&str>,
        prefix: &str,
        limit: usize,
        keep: impl Fn(&ContainerRecord) -> bool,
    ) -> Result<Page<ContainerRecord, String>, StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(CONTAINERS).map_err(store_err)?;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let rows = table
            .range::<&str>((start, Bound::Unbounded))
            .map_err(store_err)?
            .map(|row| {
                let (key, value) = row.map_err(store_err)?;
                Ok((key.value().to_string(), value))
            })
            // Keys are in order: the first without the prefix ends it.
            .take_while(|row| match row {
                Ok((key, _)) => key.starts_with(prefix),
                Err(_) => true,
            })
            .map(|row| row.and_then(|(key, value)| Ok((key, decode(value.value())?))));
        page(rows, limit, keep)
    }

    /// Violations in order after sequence number `after`, those `keep`
    /// accepts, at most `limit`, reading at most [`MAX_SCAN`].
    pub fn violations_page(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&Violation) -> bool,
    ) -> Result<Page<Violation, u64>, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(VIOLATIONS).map_err(store_err)?;
        let rows = table
            .range(after.saturating_add(1)..)
            .map_err(store_err)?
            .map(|row| {
                let (seq, value) = row.map_err(store_err)?;
                Ok((seq.value(), decode(value.value())?))
            });
        page(rows, limit, keep)
    }
}

/// One page of `rows` (key and record, in key order): the records `keep`
/// accepts, at most `limit`, reading at most [`MAX_SCAN`]; when more
/// follow, the next page starts after the last key read.
pub(super) fn page<K, T>(
    rows: impl Iterator<Item = Result<(K, T), StoreError>>,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Page<T, K>, StoreError> {
    let mut items = Vec::new();
    let mut last_read = None;
    for (read, row) in rows.enumerate() {
        let (key, item) = row?;
        if items.len() >= limit.max(1) || read == MAX_SCAN {
            return Ok(Page {
                items,
                next: last_read,
            });
        }
        last_read = Some(key);
        if keep(&item) {
            items.push(item);
        }
    }
    Ok(Page { items, next: None })
}
