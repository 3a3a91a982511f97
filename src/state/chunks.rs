//! Baseline sets stored in chunks: the sets of users with neighbouring ids (in byte order, as
//! SQLite compares text) packed together into one row of `baseline_chunks`, keyed by the
//! chunk's first id.
//!
//! With a row per user, SQLite's per-row work was most of a first run's write (a million
//! rows). A chunk of a few dozen users costs one row, and a change still rewrites only its own
//! chunk: a few kilobytes, no more than the page SQLite rewrites around any changed row.
//!
//! A chunk holds the users from its first id up to (not including) the next chunk's first id.
//! Its body is, per user in id order: the id's length (LEB128), the id, the set's length
//! (LEB128), the set (see [`crate::model::baseline::PackedBaselines`]).

use rusqlite::types::Type;
use rusqlite::{OptionalExtension, Transaction, params};

/// At most this many users per chunk…
const CHUNK_USERS: usize = 64;
/// …and about this many bytes: well under the 4 KB a 16 KiB page keeps inline in a row.
const CHUNK_BYTES: usize = 3072;

/// A chunk body that does not decode: the state file was damaged.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a baseline chunk is damaged at byte {at}: {what}")]
pub struct Damaged {
    at: usize,
    what: &'static str,
}

impl From<Damaged> for rusqlite::Error {
    fn from(damaged: Damaged) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(1, Type::Blob, Box::new(damaged))
    }
}

/// The (id, set) pairs of a chunk body, in id order.
pub fn users(body: &[u8]) -> impl Iterator<Item = Result<(&str, &[u8]), Damaged>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= body.len() {
            return None;
        }
        let user = next_user(body, &mut at);
        if user.is_err() {
            at = body.len();
        }
        Some(user)
    })
}

fn next_user<'a>(body: &'a [u8], at: &mut usize) -> Result<(&'a str, &'a [u8]), Damaged> {
    let id = next_field(body, at)?;
    let id = std::str::from_utf8(id).map_err(|_| Damaged {
        at: *at,
        what: "a user id is not UTF-8",
    })?;
    let set = next_field(body, at)?;
    Ok((id, set))
}

fn next_field<'a>(body: &'a [u8], at: &mut usize) -> Result<&'a [u8], Damaged> {
    let rest = body.get(*at..).unwrap_or_default();
    let (length, after) = crate::codec::read_varint(rest).ok_or(Damaged {
        at: *at,
        what: "a length is cut short or too long",
    })?;
    *at += rest.len() - after.len();
    let field = after.get(..length).ok_or(Damaged {
        at: *at,
        what: "a value runs past the end",
    })?;
    *at += length;
    Ok(field)
}

/// The `baseline_chunks` statements of one write transaction.
pub struct ChunkTable<'t> {
    holding: rusqlite::CachedStatement<'t>,
    next: rusqlite::CachedStatement<'t>,
    delete: rusqlite::CachedStatement<'t>,
    insert: rusqlite::CachedStatement<'t>,
}

/// The chunk that holds (or would hold) an id: its first id and body, if there is one, and
/// the first id of the chunk after it.
struct Around {
    chunk: Option<(String, Vec<u8>)>,
    end: Option<String>,
}

impl<'t> ChunkTable<'t> {
    pub fn new(transaction: &'t Transaction<'_>) -> rusqlite::Result<ChunkTable<'t>> {
        Ok(ChunkTable {
            holding: transaction.prepare_cached(
                "SELECT first_id, body FROM baseline_chunks WHERE first_id <= ?1
                 ORDER BY first_id DESC LIMIT 1",
            )?,
            next: transaction.prepare_cached(
                "SELECT first_id FROM baseline_chunks WHERE first_id > ?1 ORDER BY first_id LIMIT 1",
            )?,
            delete: transaction.prepare_cached("DELETE FROM baseline_chunks WHERE first_id = ?1")?,
            insert: transaction.prepare_cached(
                "INSERT INTO baseline_chunks (first_id, users, body) VALUES (?1, ?2, ?3)",
            )?,
        })
    }

    fn around(&mut self, id: &str) -> rusqlite::Result<Around> {
        let chunk = self
            .holding
            .query_row(params![id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        // No chunk starts between the holding chunk's first id and `id`, so the next one
        // after `id` is the next one after the holding chunk.
        let end = self
            .next
            .query_row(params![id], |row| row.get(0))
            .optional()?;
        Ok(Around { chunk, end })
    }

    /// Replaces users' sets (an empty set forgets the user); `writes` must be in id order.
    /// Returns how many users were written or forgotten.
    pub fn write<'a>(
        &mut self,
        writes: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> rusqlite::Result<usize> {
        let mut writes = writes.into_iter().peekable();
        let mut out = ChunkWriter::default();
        let mut changed = 0;
        while let Some(&(id, _)) = writes.peek() {
            let Around { chunk, end } = self.around(id)?;
            let old_body = match chunk {
                Some((first_id, body)) => {
                    self.delete.execute(params![first_id])?;
                    body
                }
                None => Vec::new(),
            };
            let in_range = |id: &str| end.as_deref().is_none_or(|end| id < end);
            let mut old = users(&old_body).peekable();
            loop {
                let write = writes.peek().copied().filter(|&(id, _)| in_range(id));
                let kept = match old.peek() {
                    Some(Ok(user)) => Some(*user),
                    Some(Err(damaged)) => return Err((*damaged).into()),
                    None => None,
                };
                match (kept, write) {
                    (None, None) => break,
                    (Some(user), None) => {
                        old.next();
                        out.push(user, self)?;
                    }
                    (Some(user), Some((id, _))) if user.0 < id => {
                        old.next();
                        out.push(user, self)?;
                    }
                    (kept, Some((id, set))) => {
                        writes.next();
                        let replaces = kept.is_some_and(|user| user.0 == id);
                        if replaces {
                            old.next();
                        }
                        if !set.is_empty() {
                            out.push((id, set), self)?;
                            changed += 1;
                        } else if replaces {
                            changed += 1;
                        }
                    }
                }
            }
            // A chunk never reaches past the next one's first id.
            out.flush(self)?;
        }
        Ok(changed)
    }
}

/// Builds chunk bodies and inserts each when it is full.
#[derive(Default)]
struct ChunkWriter {
    body: Vec<u8>,
    first_id: String,
    users: usize,
}

impl ChunkWriter {
    fn push(
        &mut self,
        (id, set): (&str, &[u8]),
        table: &mut ChunkTable<'_>,
    ) -> rusqlite::Result<()> {
        if self.users > 0 && self.body.len() + id.len() + set.len() + 4 > CHUNK_BYTES {
            self.flush(table)?;
        }
        if self.users == 0 {
            self.first_id.clear();
            self.first_id.push_str(id);
        }
        crate::codec::write_varint(&mut self.body, id.len());
        self.body.extend_from_slice(id.as_bytes());
        crate::codec::write_varint(&mut self.body, set.len());
        self.body.extend_from_slice(set);
        self.users += 1;
        if self.users == CHUNK_USERS {
            self.flush(table)?;
        }
        Ok(())
    }

    fn flush(&mut self, table: &mut ChunkTable<'_>) -> rusqlite::Result<()> {
        if self.users > 0 {
            table
                .insert
                .execute(params![self.first_id, self.users as i64, self.body])?;
        }
        self.body.clear();
        self.users = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn table() -> Connection {
        let connection = Connection::open_in_memory().unwrap();
        connection
            .execute_batch(
                "CREATE TABLE baseline_chunks (first_id TEXT PRIMARY KEY, users INTEGER NOT NULL,
                 body BLOB NOT NULL) WITHOUT ROWID",
            )
            .unwrap();
        connection
    }

    fn write(connection: &mut Connection, writes: &[(String, Vec<u8>)]) -> usize {
        let transaction = connection.transaction().unwrap();
        let changed = ChunkTable::new(&transaction)
            .unwrap()
            .write(writes.iter().map(|(id, set)| (id.as_str(), set.as_slice())))
            .unwrap();
        transaction.commit().unwrap();
        changed
    }

    /// Every stored user, and a check that each chunk is within its limits and its range.
    fn stored(connection: &Connection) -> Vec<(String, Vec<u8>)> {
        let mut statement = connection
            .prepare("SELECT first_id, users, body FROM baseline_chunks ORDER BY first_id")
            .unwrap();
        let chunks: Vec<(String, i64, Vec<u8>)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut all = Vec::new();
        for (index, (first_id, count, body)) in chunks.iter().enumerate() {
            let chunk: Vec<_> = users(body).map(Result::unwrap).collect();
            assert_eq!(chunk.len() as i64, *count);
            assert!(!chunk.is_empty() && chunk.len() <= CHUNK_USERS);
            assert_eq!(chunk[0].0, first_id);
            if let Some((next, _, _)) = chunks.get(index + 1) {
                assert!(chunk.iter().all(|(id, _)| id < &next.as_str()));
            }
            all.extend(
                chunk
                    .into_iter()
                    .map(|(id, set)| (id.to_owned(), set.to_vec())),
            );
        }
        all
    }

    fn id(n: u32) -> String {
        format!("user-{n:06}")
    }

    #[test]
    fn users_are_chunked_merged_replaced_and_forgotten() {
        let mut connection = table();
        let mut expected = std::collections::BTreeMap::new();
        // A first write of many users: several chunks.
        let first: Vec<_> = (0..500)
            .step_by(2)
            .map(|n| (id(n), vec![n as u8; 1 + n as usize % 7]))
            .collect();
        assert_eq!(write(&mut connection, &first), 250);
        expected.extend(first.iter().cloned());
        assert_eq!(
            stored(&connection),
            expected.clone().into_iter().collect::<Vec<_>>()
        );

        // New users between, before and after the stored ones; replaced and forgotten users
        // (one forgotten user was never stored).
        let mut second: Vec<(String, Vec<u8>)> = Vec::new();
        for n in 0..520 {
            let write = match n % 10 {
                1 => Some(vec![9, 9]),
                4 => Some(Vec::new()),
                6 => Some(vec![n as u8; 300]),
                _ => None,
            };
            if let Some(set) = write {
                second.push((id(n), set));
            }
        }
        second.insert(0, ("a-first".to_owned(), vec![1]));
        let changed = write(&mut connection, &second);
        let mut expected_changed = 0;
        for (user, set) in &second {
            if set.is_empty() {
                expected_changed += usize::from(expected.remove(user).is_some());
            } else {
                expected.insert(user.clone(), set.clone());
                expected_changed += 1;
            }
        }
        assert_eq!(changed, expected_changed);
        assert_eq!(
            stored(&connection),
            expected.clone().into_iter().collect::<Vec<_>>()
        );

        // Forgetting everyone leaves no chunk.
        let all: Vec<_> = expected
            .keys()
            .map(|user| (user.clone(), Vec::new()))
            .collect();
        write(&mut connection, &all);
        let chunks: i64 = connection
            .query_row("SELECT count(*) FROM baseline_chunks", [], |row| row.get(0))
            .unwrap();
        assert_eq!(chunks, 0);
    }

    #[test]
    fn a_damaged_body_is_an_error_not_a_shorter_list() {
        let mut body = Vec::new();
        crate::codec::write_varint(&mut body, 3);
        body.extend_from_slice(b"abc");
        crate::codec::write_varint(&mut body, 300);
        body.extend_from_slice(&[0; 10]);
        let decoded: Vec<_> = users(&body).collect();
        assert_eq!(decoded.len(), 1);
        assert!(decoded[0].is_err());
        assert!(users(&[0x80]).next().unwrap().is_err());
    }
}
