//! Deterministic test data: a legacy `users` table (as PostgreSQL COPY text) and the matching
//! Auth0 users export (NDJSON), with a known mix of statuses. Benchmarks, tests and the demo
//! use it; the same seed and size always give the same bytes.
//!
//! The legacy table is `(id bigint, email text, email_verified boolean, name text, given_name
//! text, family_name text, blocked boolean, metadata jsonb, updated_at timestamptz)`;
//! [`mapping_query`] maps it to profile attributes, and Auth0 marks migrated users with
//! `app_metadata.migrated = true` ([`MIGRATED_RULE`]).

use std::io::{self, Write};

/// The report summary a run over a generated data set must produce: the same keys as
/// driftsync's JSON report `summary` (compare them as JSON), without depending on driftsync.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub legacy_users: u64,
    pub auth0_users: u64,
    pub in_sync: u64,
    pub stranded: u64,
    pub auth0_ahead: u64,
    pub conflict: u64,
    pub stale_cache: u64,
    pub not_migrated: u64,
    pub orphaned: u64,
    pub deleted_in_auth0: u64,
    pub auth0_only: u64,
    pub pushed: u64,
    pub push_failed: u64,
}

/// The legacy table, named `table`.
pub fn create_table(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (
    id bigint PRIMARY KEY,
    email text NOT NULL,
    email_verified boolean,
    name text,
    given_name text,
    family_name text,
    blocked boolean NOT NULL DEFAULT false,
    metadata jsonb,
    updated_at timestamptz
)"
    )
}

/// The column list for `COPY` of [`DataSet::write_legacy_copy`]'s rows.
pub const COPY_COLUMNS: &str =
    "(id, email, email_verified, name, given_name, family_name, blocked, metadata, updated_at)";

/// The mapping query (what the Login script would map) for the table.
pub fn mapping_query(table: &str) -> String {
    format!(
        "SELECT id::text AS user_id, email, email_verified, name, given_name, family_name, \
         blocked, metadata AS user_metadata, updated_at FROM {table}"
    )
}

pub const CONNECTION: &str = "legacy-users";
pub const MIGRATED_RULE: &str = "app_metadata.migrated";

/// What each generated user is meant to be, with its share of users in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InSync,
    /// Email changed in legacy after migration.
    StrandedEmail,
    /// Banned in legacy after migration.
    StrandedBlocked,
    /// Metadata changed in legacy after migration, no `updated_at`: the `assumed` rule.
    StrandedMetadata,
    /// Name changed in Auth0 after migration.
    Auth0Ahead,
    /// Never logged in since the import was switched on.
    NotMigrated,
    /// Cached (not migrated) profile that differs.
    StaleCache,
    /// Deleted from legacy after migration.
    Orphaned,
    /// Signed up in Auth0 (import mode creates new users there only): an id Auth0 generated,
    /// no legacy row, no migration marker.
    Signup,
}

const MIX: [(Kind, u64); 9] = [
    (Kind::InSync, 79),
    (Kind::StrandedEmail, 2),
    (Kind::StrandedBlocked, 1),
    (Kind::StrandedMetadata, 1),
    (Kind::Auth0Ahead, 2),
    (Kind::NotMigrated, 8),
    (Kind::StaleCache, 4),
    (Kind::Orphaned, 2),
    (Kind::Signup, 1),
];

/// A deterministic data set of `users` user ids.
#[derive(Debug, Clone, Copy)]
pub struct DataSet {
    pub users: u64,
    pub seed: u64,
}

const GIVEN: [&str; 8] = ["Ada", "Bo", "Cyd", "Dana", "Eli", "Fay", "Gus", "Hana"];
const FAMILY: [&str; 8] = ["Lee", "Kim", "Moss", "Ngo", "Ortiz", "Park", "Quinn", "Roy"];
const LANGS: [&str; 4] = ["en", "de", "fr", "ja"];
const PLANS: [&str; 3] = ["free", "pro", "team"];

/// 2024-06-01T00:00:00Z, the base migration moment.
const MIGRATED_AT: i64 = 1_717_200_000;
const DAY: i64 = 86_400;

struct User {
    id: u64,
    kind: Kind,
    random: u64,
}

impl User {
    fn given(&self) -> &'static str {
        GIVEN[(self.random % 8) as usize]
    }
    fn family(&self) -> &'static str {
        FAMILY[((self.random >> 3) % 8) as usize]
    }
    fn lang(&self) -> &'static str {
        LANGS[((self.random >> 6) % 4) as usize]
    }
    fn plan(&self) -> &'static str {
        PLANS[((self.random >> 8) % 3) as usize]
    }
    fn verified(&self) -> bool {
        !(self.random >> 10).is_multiple_of(4)
    }
    fn email(&self) -> String {
        format!("{}.{}{}@example.org", self.given(), self.family(), self.id).to_lowercase()
    }
    /// Seconds since the epoch; migrated users between 0 and 99 days after the base.
    fn created_at(&self) -> i64 {
        MIGRATED_AT + ((self.random >> 12) % 100) as i64 * DAY
    }
    /// The Auth0 user id: `auth0|` and the legacy id, or for a signup the 24 hex digits of an
    /// id Auth0 generated.
    fn auth0_id(&self) -> String {
        match self.kind {
            Kind::Signup => format!("{:08x}{:016x}", self.id, self.random),
            _ => self.id.to_string(),
        }
    }
}

impl DataSet {
    pub fn new(users: u64, seed: u64) -> DataSet {
        DataSet { users, seed }
    }

    fn user(&self, id: u64) -> User {
        let random = splitmix(self.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut slot = random % 100;
        let mut kind = Kind::InSync;
        for (candidate, share) in MIX {
            if slot < share {
                kind = candidate;
                break;
            }
            slot -= share;
        }
        User {
            id,
            kind,
            random: random >> 7,
        }
    }

    fn each(&self) -> impl Iterator<Item = User> + '_ {
        (1..=self.users).map(|id| self.user(id))
    }

    /// The statuses a correct reconcile reports for this data set.
    pub fn expected(&self) -> Summary {
        let mut summary = Summary::default();
        for user in self.each() {
            match user.kind {
                Kind::InSync => summary.in_sync += 1,
                Kind::StrandedEmail | Kind::StrandedBlocked | Kind::StrandedMetadata => {
                    summary.stranded += 1
                }
                Kind::Auth0Ahead => summary.auth0_ahead += 1,
                Kind::NotMigrated => summary.not_migrated += 1,
                Kind::StaleCache => summary.stale_cache += 1,
                Kind::Orphaned => summary.orphaned += 1,
                Kind::Signup => summary.auth0_only += 1,
            }
            if !matches!(user.kind, Kind::Orphaned | Kind::Signup) {
                summary.legacy_users += 1;
            }
            if user.kind != Kind::NotMigrated {
                summary.auth0_users += 1;
            }
        }
        summary
    }

    /// How many of the stranded users changed their email (the pushes that meet a Get User
    /// script).
    pub fn stranded_emails(&self) -> u64 {
        self.each()
            .filter(|user| user.kind == Kind::StrandedEmail)
            .count() as u64
    }

    /// Writes the legacy rows in PostgreSQL's COPY text format (for `COPY t` [`COPY_COLUMNS`]).
    pub fn write_legacy_copy(&self, out: &mut dyn Write) -> io::Result<()> {
        for id in 1..=self.users {
            self.write_legacy_row(id, out)?;
        }
        Ok(())
    }

    /// Writes user `id`'s legacy row, if it has one.
    fn write_legacy_row(&self, id: u64, out: &mut dyn Write) -> io::Result<()> {
        let user = self.user(id);
        if matches!(user.kind, Kind::Orphaned | Kind::Signup) {
            return Ok(());
        }
        let email = match user.kind {
            Kind::StrandedEmail => format!("new.{}", user.email()),
            _ => user.email(),
        };
        let blocked = user.kind == Kind::StrandedBlocked;
        let plan = match user.kind {
            Kind::StrandedMetadata => "enterprise",
            _ => user.plan(),
        };
        let name = match user.kind {
            Kind::StaleCache => format!("{} {}-Renamed", user.given(), user.family()),
            _ => format!("{} {}", user.given(), user.family()),
        };
        // Changes after migration carry a later updated_at; the metadata change has none,
        // so the `assumed` rule decides it.
        let updated_at = match user.kind {
            Kind::StrandedMetadata => None,
            Kind::StrandedEmail | Kind::StrandedBlocked | Kind::StaleCache => {
                Some(user.created_at() + 30 * DAY)
            }
            _ => Some(user.created_at() - 10 * DAY),
        };
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{{\"lang\": \"{}\", \"plan\": \"{}\"}}\t{}",
            user.id,
            email,
            if user.verified() { "t" } else { "f" },
            name,
            user.given(),
            user.family(),
            if blocked { "t" } else { "f" },
            user.lang(),
            plan,
            updated_at.map_or_else(|| "\\N".to_owned(), rfc3339),
        )?;
        Ok(())
    }

    /// Writes the Auth0 export as NDJSON, one line per Auth0 user, shaped like a real export.
    pub fn write_export(&self, out: &mut dyn Write) -> io::Result<()> {
        for user in self.each() {
            if user.kind == Kind::NotMigrated {
                continue;
            }
            let migrated = user.kind != Kind::StaleCache;
            // A signup carries no migration marker: its Login script never ran.
            let marker = if user.kind == Kind::Signup {
                String::new()
            } else {
                format!("\"migrated\":{migrated},")
            };
            let name = match user.kind {
                Kind::Auth0Ahead => format!("{} {}-Changed", user.given(), user.family()),
                _ => format!("{} {}", user.given(), user.family()),
            };
            let created = rfc3339(user.created_at());
            let login = rfc3339(user.created_at() + 5 * DAY);
            writeln!(
                out,
                concat!(
                    "{{\"user_id\":\"auth0|{id}\",\"email\":\"{email}\",\"email_verified\":{verified},",
                    "\"name\":\"{name}\",\"nickname\":\"{nickname}\",\"given_name\":\"{given}\",",
                    "\"family_name\":\"{family}\",\"picture\":\"https://s.gravatar.com/avatar/{hash:032x}?s=480&r=pg&d=https%3A%2F%2Fcdn.auth0.com%2Favatars%2F{initial}.png\",",
                    "\"created_at\":\"{created}\",\"updated_at\":\"{login}\",\"last_login\":\"{login}\",\"logins_count\":{logins},",
                    "\"identities\":[{{\"connection\":\"{connection}\",\"provider\":\"auth0\",\"user_id\":\"{id}\",\"isSocial\":false}}],",
                    "\"user_metadata\":{{\"lang\":\"{lang}\",\"plan\":\"{plan}\",\"theme\":\"dark\"}},",
                    "\"app_metadata\":{{{marker}\"roles\":[\"member\"]}}}}"
                ),
                id = user.auth0_id(),
                email = user.email(),
                verified = user.verified(),
                name = name,
                nickname = user.email().split('@').next().unwrap_or_default(),
                given = user.given(),
                family = user.family(),
                hash = u128::from(user.random) * 0x1_0000_0001,
                initial = user.given()[..1].to_lowercase(),
                created = created,
                login = login,
                logins = 1 + user.random % 40,
                connection = CONNECTION,
                lang = user.lang(),
                plan = user.plan(),
                marker = marker,
            )?;
        }
        Ok(())
    }
}

/// Creates `table` in the database `client` is connected to and loads the legacy rows with
/// `COPY`, in chunks so that memory stays flat for any size.
pub async fn load_legacy(
    client: &tokio_postgres::Client,
    set: &DataSet,
    table: &str,
) -> Result<u64, tokio_postgres::Error> {
    use futures_util::SinkExt;
    client.batch_execute(&create_table(table)).await?;
    let sink = client
        .copy_in(&format!("COPY {table} {COPY_COLUMNS} FROM STDIN"))
        .await?;
    futures_util::pin_mut!(sink);
    let mut chunk = Vec::with_capacity(1 << 20);
    let mut rows = ChunkWriter {
        set,
        next_id: 1,
        chunk: &mut chunk,
    };
    while rows.fill() {
        sink.send(bytes::Bytes::from(std::mem::take(rows.chunk)))
            .await?;
    }
    sink.as_mut().finish().await
}

/// Writes the COPY text of consecutive ids into a chunk of about 1 MiB.
struct ChunkWriter<'a> {
    set: &'a DataSet,
    next_id: u64,
    chunk: &'a mut Vec<u8>,
}

impl ChunkWriter<'_> {
    fn fill(&mut self) -> bool {
        self.chunk.clear();
        while self.next_id <= self.set.users && self.chunk.len() < 1 << 20 {
            // Writing into a Vec cannot fail.
            let _ = self.set.write_legacy_row(self.next_id, self.chunk);
            self.next_id += 1;
        }
        !self.chunk.is_empty()
    }
}

fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// SplitMix64: a tiny, well-distributed deterministic generator.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_the_mix_is_close_to_the_shares() {
        let set = DataSet::new(20_000, 7);
        let mut first = Vec::new();
        set.write_export(&mut first).unwrap();
        let mut second = Vec::new();
        set.write_export(&mut second).unwrap();
        assert_eq!(first, second);
        let expected = set.expected();
        assert_eq!(
            expected.auth0_users,
            first.iter().filter(|&&b| b == b'\n').count() as u64
        );
        let stranded_share = expected.stranded as f64 / 20_000.0;
        assert!((0.03..0.05).contains(&stranded_share), "{stranded_share}");
        let other = DataSet::new(20_000, 8).expected();
        assert_ne!(expected, other, "the seed changes the data");
    }
}
