//! Rate limiting: one token bucket per endpoint class, and the `x-ratelimit-*` numbers every
//! Management API answer carries.
//!
//! Auth0 documents its limiter as a token bucket with a burst size and a refill rate, and the
//! headers as limit / remaining / reset (UNIX seconds). It does not say precisely what `reset`
//! means for a bucket that refills continuously; the simulator takes the strict reading: the
//! moment the bucket is *full* again, rounded up to a whole second. A client that waits until
//! `reset` therefore never finds the bucket empty.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Size and refill rate of one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketLimit {
    /// Capacity: requests that may arrive at once after a quiet period.
    pub burst: u32,
    /// Tokens added per second, continuously.
    pub per_second: f64,
}

/// The buckets of a tenant, one per endpoint class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
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

impl Limits {
    /// Auth0's Enterprise production tier: 50 burst, 16 per second for every Management API
    /// class; the token endpoint is generous so that it never gets in a test's way.
    pub fn enterprise() -> Limits {
        let management = BucketLimit {
            burst: 50,
            per_second: 16.0,
        };
        Limits {
            users_read: management,
            users_write: management,
            jobs: management,
            other: management,
            token: BucketLimit {
                burst: 100,
                per_second: 100.0,
            },
        }
    }

    /// Effectively no limit, for benchmarks that measure driftsync rather than its pacing.
    pub fn unlimited() -> Limits {
        let huge = BucketLimit {
            burst: 1_000_000_000,
            per_second: 1e9,
        };
        Limits {
            users_read: huge,
            users_write: huge,
            jobs: huge,
            other: huge,
            token: huge,
        }
    }

    pub(crate) fn for_class(&self, class: Class) -> BucketLimit {
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
    /// UNIX seconds at which the bucket is full again.
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
        let missing = f64::from(self.limit.burst) - self.tokens;
        // A bucket that never refills is never full again; a day stands in for "never".
        let until_full = if missing <= 0.0 {
            0.0
        } else if self.limit.per_second > 0.0 {
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
            reset: (now + until_full).ceil() as u64,
        }
    }
}

/// All buckets of the tenant.
#[derive(Debug)]
pub(crate) struct Buckets {
    buckets: [Bucket; CLASSES],
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
        }
    }

    /// Takes one token if there is a whole one.
    pub fn take(&mut self, class: Class) -> Take {
        self.take_at(class, Instant::now(), SystemTime::now())
    }

    /// The headers without consuming anything (for answers the bucket did not decide).
    pub fn peek(&mut self, class: Class) -> RateHeaders {
        let bucket = &mut self.buckets[class.index()];
        bucket.refill(Instant::now());
        bucket.headers(SystemTime::now())
    }

    fn take_at(&mut self, class: Class, now: Instant, wall: SystemTime) -> Take {
        let bucket = &mut self.buckets[class.index()];
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
            ..Limits::enterprise()
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
        // Two tokens left; one missing refills in half a second, rounded up to 1001.
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
        assert_eq!(third.reset, 1_002, "three missing tokens take 1.5 s");
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
    fn unlimited_never_empties() {
        let mut buckets = Buckets::new(&Limits::unlimited());
        for _ in 0..10_000 {
            assert!(matches!(buckets.take(Class::Jobs), Take::Granted(_)));
        }
    }
}
