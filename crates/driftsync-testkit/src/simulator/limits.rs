//! Rate limiting: Auth0's token buckets, laid out as the tenant's plan lays them out, and the
//! `x-ratelimit-*` numbers every Management API answer carries.
//!
//! Auth0 documents its limiter as a token bucket with a burst size and a refill rate
//! ("Rate Limit Policy", `rate-limit-policy.mdx` in auth0/docs-v2). The Enterprise plan has one
//! global bucket for most of the Management API (50 burst, 16/s in production; 10, 2/s
//! outside), the Free plan one global bucket of 2 and 2/s, and the Essentials and Professional
//! (formerly "self-service") plans one bucket per endpoint group: Read Users 40 and 500/min,
//! Write Users 20 and 200/min, Read Connections 5 and 50/min, all other endpoints combined 10
//! and 150/min (`rate-limit-configurations/enterprise-public.mdx`, `free-public.mdx`,
//! `essentials-professional-b2b.mdx`). `/oauth/token` belongs to the Authentication API and is
//! limited apart.
//!
//! The headers follow "Rate Limit Use Cases" (`rate-limit-use-cases.mdx`): `x-ratelimit-limit`
//! is the bucket size, `x-ratelimit-remaining` the requests left, and `x-ratelimit-reset` the
//! UNIX second "of the expected time when additional requests will be added to the bucket" —
//! when the next token arrives (rounded up to a whole second), *not* when the bucket is full
//! again. A client that waits until `reset` finds one more token, no more.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Size and refill rate of one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketLimit {
    /// Capacity: requests that may arrive at once after a quiet period.
    pub burst: u32,
    /// Tokens added per second, continuously.
    pub per_second: f64,
}

/// The buckets of a tenant: one global Management API bucket (`global`, the Enterprise and
/// Free layouts), or one per endpoint class (the Essentials/Professional layout).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// When set, every Management API request draws from this one bucket and the per-class
    /// limits below are not used.
    pub global: Option<BucketLimit>,
    /// `GET /api/v2/users`, `/users/{id}`, `/users-by-email`.
    pub users_read: BucketLimit,
    /// `PATCH` and `DELETE /api/v2/users/{id}`.
    pub users_write: BucketLimit,
    /// `/api/v2/jobs…`.
    pub jobs: BucketLimit,
    /// Everything else under `/api/v2` (connections, unknown paths).
    pub other: BucketLimit,
    /// `POST /oauth/token` (the Authentication API, limited separately).
    pub token: BucketLimit,
}

impl BucketLimit {
    /// The Enterprise production size: 50 burst, 16 per second.
    pub const ENTERPRISE: BucketLimit = BucketLimit {
        burst: 50,
        per_second: 16.0,
    };
}

/// The Authentication API's limit for `/oauth/token` on the Enterprise plan (100/s); generous
/// enough never to get in a test's way.
const TOKEN: BucketLimit = BucketLimit {
    burst: 100,
    per_second: 100.0,
};

impl Limits {
    /// Auth0's Enterprise production tier: one global Management API bucket of 50, refilled at
    /// 16 per second.
    pub fn enterprise() -> Limits {
        Limits {
            global: Some(BucketLimit::ENTERPRISE),
            ..Limits::per_class(BucketLimit::ENTERPRISE)
        }
    }

    /// Auth0's Essentials and Professional plans: a bucket per endpoint group. Users-export
    /// jobs have no row of their own and fall into "all other endpoints combined".
    pub fn self_service() -> Limits {
        let per_minute = |burst, per_minute: f64| BucketLimit {
            burst,
            per_second: per_minute / 60.0,
        };
        Limits {
            global: None,
            users_read: per_minute(40, 500.0),
            users_write: per_minute(20, 200.0),
            jobs: per_minute(10, 150.0),
            other: per_minute(5, 50.0),
            token: BucketLimit {
                burst: 25,
                per_second: 25.0,
            },
        }
    }

    /// A bucket per endpoint class (the self-service layout), each of this size: tests change
    /// one class from here.
    pub fn per_class(limit: BucketLimit) -> Limits {
        Limits {
            global: None,
            users_read: limit,
            users_write: limit,
            jobs: limit,
            other: limit,
            token: TOKEN,
        }
    }

    /// Effectively no limit, for benchmarks that measure driftsync rather than its pacing.
    pub fn unlimited() -> Limits {
        let huge = BucketLimit {
            burst: 1_000_000_000,
            per_second: 1e9,
        };
        Limits {
            global: None,
            users_read: huge,
            users_write: huge,
            jobs: huge,
            other: huge,
            token: huge,
        }
    }

    pub(crate) fn for_class(&self, class: Class) -> BucketLimit {
        if let Some(global) = self.global
            && class != Class::Token
        {
            return global;
        }
        match class {
            Class::UsersRead => self.users_read,
            Class::UsersWrite => self.users_write,
            Class::Jobs => self.jobs,
            Class::Other => self.other,
            Class::Token => self.token,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::enterprise()
    }
}

/// Which bucket a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    UsersRead,
    UsersWrite,
    Jobs,
    Other,
    Token,
}

const CLASSES: usize = 5;

impl Class {
    fn index(self) -> usize {
        self as usize
    }
}

/// The three header values of one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateHeaders {
    pub limit: u32,
    pub remaining: u32,
    /// UNIX second (rounded up) at which the next token is added.
    pub reset: u64,
}

/// Outcome of asking a bucket for one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    Granted(RateHeaders),
    /// The bucket was empty; nothing was consumed.
    Empty(RateHeaders),
}

#[derive(Debug)]
struct Bucket {
    limit: BucketLimit,
    tokens: f64,
    refilled_at: Instant,
}

impl Bucket {
    fn new(limit: BucketLimit, now: Instant) -> Bucket {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            refilled_at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        let capacity = f64::from(self.limit.burst);
        self.tokens = (self.tokens + elapsed * self.limit.per_second).min(capacity);
        self.refilled_at = now;
    }

    fn headers(&self, wall: SystemTime) -> RateHeaders {
        let full = self.tokens >= f64::from(self.limit.burst);
        // The time until the next whole token: the part of a token missing, at the refill
        // rate. A full bucket adds none (now stands for it); one that never refills, a day.
        let until_next = if full {
            0.0
        } else if self.limit.per_second > 0.0 {
            let missing = 1.0 - self.tokens.max(0.0).fract();
            (missing / self.limit.per_second).min(86_400.0)
        } else {
            86_400.0
        };
        let now = wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        RateHeaders {
            limit: self.limit.burst,
            remaining: self.tokens.max(0.0).floor() as u32,
            reset: (now + until_next).ceil() as u64,
        }
    }
}

/// All buckets of the tenant.
#[derive(Debug)]
pub(crate) struct Buckets {
    buckets: [Bucket; CLASSES],
    /// The global layout: every Management API class draws from the `Other` bucket.
    global: bool,
}

impl Buckets {
    pub fn new(limits: &Limits) -> Buckets {
        let now = Instant::now();
        let bucket = |class| Bucket::new(limits.for_class(class), now);
        Buckets {
            buckets: [
                bucket(Class::UsersRead),
                bucket(Class::UsersWrite),
                bucket(Class::Jobs),
                bucket(Class::Other),
                bucket(Class::Token),
            ],
            global: limits.global.is_some(),
        }
    }

    /// The bucket a class draws from.
    fn index(&self, class: Class) -> usize {
        if self.global && class != Class::Token {
            Class::Other.index()
        } else {
            class.index()
        }
    }

    /// Takes one token if there is a whole one.
    pub fn take(&mut self, class: Class) -> Take {
        self.take_at(class, Instant::now(), SystemTime::now())
    }

    /// The headers without consuming anything (for answers the bucket did not decide).
    pub fn peek(&mut self, class: Class) -> RateHeaders {
        let index = self.index(class);
        let bucket = &mut self.buckets[index];
        bucket.refill(Instant::now());
        bucket.headers(SystemTime::now())
    }

    fn take_at(&mut self, class: Class, now: Instant, wall: SystemTime) -> Take {
        let index = self.index(class);
        let bucket = &mut self.buckets[index];
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Take::Granted(bucket.headers(wall))
        } else {
            Take::Empty(bucket.headers(wall))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Limits {
        let limit = BucketLimit {
            burst: 3,
            per_second: 2.0,
        };
        Limits {
            users_read: limit,
            ..Limits::per_class(BucketLimit::ENTERPRISE)
        }
    }

    #[test]
    fn burst_then_empty_then_refill() {
        let mut buckets = Buckets::new(&small());
        let start = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_000);
        let take = |buckets: &mut Buckets, after_ms| {
            buckets.take_at(
                Class::UsersRead,
                start + Duration::from_millis(after_ms),
                wall + Duration::from_millis(after_ms),
            )
        };
        let Take::Granted(first) = take(&mut buckets, 0) else {
            panic!("a full bucket grants")
        };
        // Two tokens left; the next one comes in half a second, rounded up to 1001.
        assert_eq!(
            first,
            RateHeaders {
                limit: 3,
                remaining: 2,
                reset: 1_001
            }
        );
        assert!(matches!(take(&mut buckets, 0), Take::Granted(_)));
        let Take::Granted(third) = take(&mut buckets, 0) else {
            panic!("the burst is three")
        };
        assert_eq!(third.remaining, 0);
        assert_eq!(
            third.reset, 1_001,
            "the reset is when the next token comes, not when the bucket is full (1.5 s)"
        );
        let Take::Empty(empty) = take(&mut buckets, 100) else {
            panic!("the fourth request in 100 ms is over the limit")
        };
        assert_eq!(empty.remaining, 0);
        // 500 ms later one token has come back.
        assert!(matches!(take(&mut buckets, 600), Take::Granted(_)));
        assert!(matches!(take(&mut buckets, 600), Take::Empty(_)));
    }

    #[test]
    fn classes_have_separate_buckets() {
        let mut buckets = Buckets::new(&small());
        for _ in 0..3 {
            assert!(matches!(buckets.take(Class::UsersRead), Take::Granted(_)));
        }
        assert!(matches!(buckets.take(Class::UsersRead), Take::Empty(_)));
        let Take::Granted(write) = buckets.take(Class::UsersWrite) else {
            panic!("the write bucket is untouched")
        };
        assert_eq!((write.limit, write.remaining), (50, 49));
    }

    #[test]
    fn the_reset_is_the_next_token_and_a_full_bucket_resets_now() {
        let mut buckets = Buckets::new(&small());
        let start = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_000);
        for _ in 0..3 {
            buckets.take_at(Class::UsersRead, start, wall);
        }
        // 0.1 s later 0.2 tokens are back: the next whole one comes at 1000.5 (second 1001),
        // though the bucket is full again only at 1001.5 (second 1002).
        let Take::Empty(after) = buckets.take_at(
            Class::UsersRead,
            start + Duration::from_millis(100),
            wall + Duration::from_millis(100),
        ) else {
            panic!("no whole token yet")
        };
        assert_eq!((after.remaining, after.reset), (0, 1_001));
        let full = buckets.peek(Class::UsersWrite);
        assert_eq!(full.remaining, 50);
        assert!(full.reset <= wall_now() + 1, "{full:?}");
    }

    fn wall_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn the_enterprise_layout_has_one_bucket_for_every_management_class() {
        let mut buckets = Buckets::new(&Limits {
            global: Some(BucketLimit {
                burst: 4,
                per_second: 0.001,
            }),
            ..small()
        });
        for class in [
            Class::UsersRead,
            Class::UsersWrite,
            Class::Jobs,
            Class::Other,
        ] {
            let Take::Granted(rate) = buckets.take(class) else {
                panic!("{class:?}: four requests fit the global bucket")
            };
            assert_eq!(rate.limit, 4);
        }
        for class in [
            Class::UsersRead,
            Class::UsersWrite,
            Class::Jobs,
            Class::Other,
        ] {
            assert!(matches!(buckets.take(class), Take::Empty(_)), "{class:?}");
        }
        assert!(
            matches!(buckets.take(Class::Token), Take::Granted(_)),
            "the token endpoint is limited apart"
        );
    }

    #[test]
    fn unlimited_never_empties() {
        let mut buckets = Buckets::new(&Limits::unlimited());
        for _ in 0..10_000 {
            assert!(matches!(buckets.take(Class::Jobs), Take::Granted(_)));
        }
    }
}
