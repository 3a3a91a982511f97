//! Deterministic test data: a legacy `users` table (as PostgreSQL COPY text) and the matching
//! Auth0 users export (NDJSON), with a known mix of statuses. Benchmarks, tests and the demo
//! use it; the same seed and size always give the same bytes.
//!
//! Two shapes of profile ([`Shape`]), with the same status mix:
//! - **lean** (the tests' default): the legacy table is `(id bigint, email text, email_verified
//!   boolean, name text, given_name text, family_name text, blocked boolean, metadata jsonb,
//!   updated_at timestamptz)`, with two metadata keys;
//! - **realistic** (the benchmark's default): what real tenants carry — every field present
//!   (also `nickname`, `picture` and `app_metadata`), UTF-8 names, a `user_metadata` of eight
//!   keys with a nested object, an array, a number and a boolean, and an `app_metadata` with
//!   roles and a plan (Auth0's copy adds the migration marker).
//!
//! [`DataSet::mapping_query`] maps the table to profile attributes, and Auth0 marks migrated
//! users with `app_metadata.migrated = true` ([`MIGRATED_RULE`]).

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
    pub shape: Shape,
}

/// What each profile carries (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    #[default]
    Lean,
    Realistic,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(text: &str) -> Result<Shape, String> {
        match text {
            "lean" => Ok(Shape::Lean),
            "realistic" => Ok(Shape::Realistic),
            other => Err(format!(
                "{other:?} is not a profile shape: lean or realistic"
            )),
        }
    }
}

const GIVEN: [&str; 8] = ["Ada", "Bo", "Cyd", "Dana", "Eli", "Fay", "Gus", "Hana"];
const FAMILY: [&str; 8] = ["Lee", "Kim", "Moss", "Ngo", "Ortiz", "Park", "Quinn", "Roy"];
/// The realistic shape's names (UTF-8), and the ASCII their email addresses use.
const GIVEN_UTF8: [(&str, &str); 8] = [
    ("José", "jose"),
    ("Zoë", "zoe"),
    ("Søren", "soren"),
    ("Łucja", "lucja"),
    ("Amélie", "amelie"),
    ("Jürgen", "juergen"),
    ("Hana", "hana"),
    ("Ngọc", "ngoc"),
];
const FAMILY_UTF8: [(&str, &str); 8] = [
    ("Müller", "mueller"),
    ("García", "garcia"),
    ("Nguyễn", "nguyen"),
    ("Ødegård", "odegard"),
    ("Dvořák", "dvorak"),
    ("Öztürk", "ozturk"),
    ("Silva", "silva"),
    ("Kowalski", "kowalski"),
];
const CITIES: [&str; 4] = ["Lyon", "São Paulo", "Kraków", "Osaka"];
const TIMEZONES: [&str; 4] = [
    "Europe/Paris",
    "America/Sao_Paulo",
    "Europe/Warsaw",
    "Asia/Tokyo",
];
const INTERESTS: [&str; 6] = ["cycling", "jazz", "chess", "hiking", "cooking", "film"];
const ROLES: [&str; 3] = ["member", "editor", "billing"];
const LANGS: [&str; 4] = ["en", "de", "fr", "ja"];
const PLANS: [&str; 3] = ["free", "pro", "team"];

/// 2024-06-01T00:00:00Z, the base migration moment.
const MIGRATED_AT: i64 = 1_717_200_000;
const DAY: i64 = 86_400;

struct User {
    id: u64,
    kind: Kind,
    random: u64,
    shape: Shape,
}

impl User {
    fn given(&self) -> &'static str {
        let index = (self.random % 8) as usize;
        match self.shape {
            Shape::Lean => GIVEN[index],
            Shape::Realistic => GIVEN_UTF8[index].0,
        }
    }
    fn family(&self) -> &'static str {
        let index = ((self.random >> 3) % 8) as usize;
        match self.shape {
            Shape::Lean => FAMILY[index],
            Shape::Realistic => FAMILY_UTF8[index].0,
        }
    }
    /// The name in the email address (ASCII).
    fn email_name(&self) -> String {
        match self.shape {
            Shape::Lean => format!("{}.{}", self.given(), self.family()),
            Shape::Realistic => format!(
                "{}.{}",
                GIVEN_UTF8[(self.random % 8) as usize].1,
                FAMILY_UTF8[((self.random >> 3) % 8) as usize].1
            ),
        }
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
        format!("{}{}@example.org", self.email_name(), self.id).to_lowercase()
    }
    /// The realistic shape's `user_metadata`, with `plan` as given: eight keys, one a nested
    /// object, one an array, a number and a boolean.
    fn user_metadata(&self, plan: &str) -> String {
        let city = CITIES[((self.random >> 14) % 4) as usize];
        let first = INTERESTS[((self.random >> 16) % 6) as usize];
        let second = INTERESTS[((self.random >> 19) % 6) as usize];
        format!(
            concat!(
                "{{\"lang\":\"{lang}\",\"plan\":\"{plan}\",\"theme\":\"dark\",",
                "\"timezone\":\"{timezone}\",\"newsletter\":{newsletter},\"score\":{score}.5,",
                "\"address\":{{\"street\":\"{number} Rue de la Paix\",\"city\":\"{city}\",",
                "\"zip\":\"{zip:05}\",\"country\":\"{country}\"}},",
                "\"interests\":[\"{first}\",\"{second}\"]}}"
            ),
            lang = self.lang(),
            plan = plan,
            timezone = TIMEZONES[((self.random >> 14) % 4) as usize],
            newsletter = self.random & 1 == 1,
            score = (self.random >> 22) % 100,
            number = 1 + (self.random >> 29) % 200,
            city = city,
            zip = (self.random >> 37) % 100_000,
            country = ["FR", "BR", "PL", "JP"][((self.random >> 14) % 4) as usize],
            first = first,
            second = second,
        )
    }
    /// The realistic shape's `app_metadata` as the legacy side has it: roles and a plan.
    fn app_metadata(&self) -> String {
        let role = ROLES[((self.random >> 44) % 3) as usize];
        format!(
            "{{\"roles\":[\"member\",\"{role}\"],\"plan\":\"{}\"}}",
            self.plan()
        )
    }
    fn nickname(&self) -> String {
        format!("{}{}", self.email_name().replace('.', "_"), self.id % 1000).to_lowercase()
    }
    fn picture(&self) -> String {
        format!("https://cdn.example.org/avatars/{}.png", self.id)
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
    /// The lean shape (see the module documentation).
    pub fn new(users: u64, seed: u64) -> DataSet {
        DataSet {
            users,
            seed,
            shape: Shape::Lean,
        }
    }

    pub fn with_shape(self, shape: Shape) -> DataSet {
        DataSet { shape, ..self }
    }

    /// The legacy table, named `table`.
    pub fn create_table(&self, table: &str) -> String {
        match self.shape {
            Shape::Lean => create_table(table),
            Shape::Realistic => format!(
                "CREATE TABLE {table} (
    id bigint PRIMARY KEY,
    email text NOT NULL,
    email_verified boolean,
    name text,
    nickname text,
    given_name text,
    family_name text,
    picture text,
    blocked boolean NOT NULL DEFAULT false,
    metadata jsonb,
    app_metadata jsonb,
    updated_at timestamptz
)"
            ),
        }
    }

    /// The column list for `COPY` of [`DataSet::write_legacy_copy`]'s rows.
    pub fn copy_columns(&self) -> &'static str {
        match self.shape {
            Shape::Lean => COPY_COLUMNS,
            Shape::Realistic => {
                "(id, email, email_verified, name, nickname, given_name, family_name, picture, \
                 blocked, metadata, app_metadata, updated_at)"
            }
        }
    }

    /// The mapping query for the table.
    pub fn mapping_query(&self, table: &str) -> String {
        match self.shape {
            Shape::Lean => mapping_query(table),
            Shape::Realistic => format!(
                "SELECT id::text AS user_id, email, email_verified, name, nickname, given_name, \
                 family_name, picture, blocked, metadata AS user_metadata, app_metadata, \
                 updated_at FROM {table}"
            ),
        }
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
            shape: self.shape,
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
        let verified = if user.verified() { "t" } else { "f" };
        let blocked = if blocked { "t" } else { "f" };
        let updated_at = updated_at.map_or_else(|| "\\N".to_owned(), rfc3339);
        if self.shape == Shape::Realistic {
            return writeln!(
                out,
                "{}\t{email}\t{verified}\t{name}\t{}\t{}\t{}\t{}\t{blocked}\t{}\t{}\t{updated_at}",
                user.id,
                user.nickname(),
                user.given(),
                user.family(),
                user.picture(),
                user.user_metadata(plan),
                user.app_metadata(),
            );
        }
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{{\"lang\": \"{}\", \"plan\": \"{}\"}}\t{}",
            user.id,
            email,
            verified,
            name,
            user.given(),
            user.family(),
            blocked,
            user.lang(),
            plan,
            updated_at,
        )
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
            if self.shape == Shape::Realistic {
                let app_metadata = user.app_metadata();
                writeln!(
                    out,
                    concat!(
                        "{{\"user_id\":\"auth0|{id}\",\"email\":\"{email}\",\"email_verified\":{verified},",
                        "\"name\":\"{name}\",\"nickname\":\"{nickname}\",\"given_name\":\"{given}\",",
                        "\"family_name\":\"{family}\",\"picture\":\"{picture}\",",
                        "\"created_at\":\"{created}\",\"updated_at\":\"{login}\",\"last_login\":\"{login}\",",
                        "\"last_ip\":\"203.0.113.{ip}\",\"logins_count\":{logins},",
                        "\"identities\":[{{\"connection\":\"{connection}\",\"provider\":\"auth0\",\"user_id\":\"{id}\",\"isSocial\":false}}],",
                        "\"user_metadata\":{user_metadata},",
                        "\"app_metadata\":{{{marker}{app_metadata}}}}}"
                    ),
                    id = user.auth0_id(),
                    email = user.email(),
                    verified = user.verified(),
                    name = name,
                    nickname = user.nickname(),
                    given = user.given(),
                    family = user.family(),
                    picture = user.picture(),
                    created = created,
                    login = login,
                    ip = user.random % 250,
                    logins = 1 + user.random % 40,
                    connection = CONNECTION,
                    user_metadata = user.user_metadata(user.plan()),
                    marker = marker,
                    // The legacy object without its braces, after the marker.
                    app_metadata = &app_metadata[1..app_metadata.len() - 1],
                )?;
                continue;
            }
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
    client.batch_execute(&set.create_table(table)).await?;
    let sink = client
        .copy_in(&format!("COPY {table} {} FROM STDIN", set.copy_columns()))
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

    #[test]
    fn the_realistic_shape_is_valid_json_with_every_field_and_the_same_mix() {
        let set = DataSet::new(2_000, 3).with_shape(Shape::Realistic);
        let mut export = Vec::new();
        set.write_export(&mut export).unwrap();
        let mut users = 0;
        for line in export.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let user: serde_json::Value = serde_json::from_slice(line).unwrap();
            users += 1;
            for key in [
                "email",
                "name",
                "nickname",
                "picture",
                "given_name",
                "family_name",
            ] {
                assert!(user[key].is_string(), "{key}: {user}");
            }
            let metadata = user["user_metadata"].as_object().unwrap();
            assert_eq!(metadata.len(), 8, "{user}");
            assert!(metadata["address"].is_object() && metadata["interests"].is_array());
            assert!(user["app_metadata"]["roles"].is_array(), "{user}");
        }
        assert_eq!(users, set.expected().auth0_users);
        let mut legacy = Vec::new();
        set.write_legacy_copy(&mut legacy).unwrap();
        let first = String::from_utf8(legacy).unwrap();
        let row: Vec<&str> = first.lines().next().unwrap().split('\t').collect();
        assert_eq!(row.len(), 12, "{row:?}");
        serde_json::from_str::<serde_json::Value>(row[9]).unwrap();
        serde_json::from_str::<serde_json::Value>(row[10]).unwrap();
        // The same mix of statuses as the lean shape.
        assert_eq!(set.expected(), DataSet::new(2_000, 3).expected());
    }
}
