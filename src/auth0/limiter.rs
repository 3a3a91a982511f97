//! A client-side mirror of Auth0's per-endpoint-class token buckets, so that driftsync never
//! sends into an exhausted bucket and still uses the whole rate it is given.
//!
//! Every answer carries `x-ratelimit-limit` (the burst), `x-ratelimit-remaining` and
//! `x-ratelimit-reset` (UNIX seconds when the bucket is full again). The mirror keeps a local
//! token count. Each request gets a sequence number; the newest answer so far re-synchronises
//! the count to `remaining` minus the requests still in flight (answers overtake each other
//! across connections, so any of those may be uncounted by the server yet). Between answers the count refills at the server's
//! refill rate, which is not announced and so is *measured*: while the bucket is clearly below
//! full, the server's count moves by `refill × elapsed − requests answered in between`, and over
//! a second or more the rounding of `remaining` is small. The measurement uses only the local
//! monotonic clock (client/server clock skew does not matter) and counts another application's
//! use of the same bucket as a slower refill, which errs on the safe side; a 3% margin absorbs
//! the rounding. Until a rate is measured, a lower bound from single answers is used (the
//! reset is rounded up, so one token less over the time to the reset cannot exceed the true
//! rate); with no bound either, an empty bucket waits for the announced reset. A 429 blocks the
//! class until `Retry-After` or the reset.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Auth0 rate-limits endpoint classes separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointClass {
    Token,
    UsersRead,
    UsersWrite,
    Jobs,
    Other,
}

/// What one answer said about its bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// UNIX seconds.
    pub reset: u64,
}

/// The shortest window over which a refill rate is measured; answers arrive with jitter, and
/// the longer the window the less that jitter can inflate the rate.
const MIN_WINDOW: Duration = Duration::from_secs(2);
/// Older samples are dropped; the rate follows changes of plan within this time.
const MAX_WINDOW: Duration = Duration::from_secs(10);
/// The share of the measured refill rate that is used.
const RATE_MARGIN: f64 = 0.97;
/// Waiting without any information (no answer yet) re-checks this often.
const IDLE_RECHECK: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct Sample {
    at: Instant,
    remaining: f64,
    /// Answers received in this class up to and including this one.
    answered: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Burst size, once an answer has said it.
    limit: Option<f64>,
    tokens: f64,
    /// Tokens per second, once measured.
    refill: Option<f64>,
    /// A lower bound of the refill rate from single answers, used until one is measured.
    provisional: Option<f64>,
    refilled_at: Option<Instant>,
    full_at: Option<Instant>,
    blocked_until: Option<Instant>,
    /// After a 429's wait one request may probe the bucket, whatever the local count says.
    probe: bool,
    in_flight: u32,
    next_ticket: u64,
    /// The requests in flight: sequence number → when it was sent (UNIX time).
    open_tickets: std::collections::BTreeMap<u64, Duration>,
    /// The newest request whose answer re-synchronised the count.
    synced_ticket: u64,
    answered: u64,
    /// Recent answers with the bucket below full, for measuring the refill rate.
    samples: VecDeque<Sample>,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let rate = self.refill.or(self.provisional);
        if let (Some(rate), Some(limit), Some(since)) = (rate, self.limit, self.refilled_at) {
            let elapsed = now.saturating_duration_since(since).as_secs_f64();
            self.tokens = (self.tokens + rate * elapsed).min(limit);
        }
        self.refilled_at = Some(now);
    }

    fn issue(&mut self) -> u64 {
        self.in_flight += 1;
        self.next_ticket += 1;
        self.open_tickets.insert(self.next_ticket, unix_now());
        self.next_ticket
    }

    /// Takes a token (returning the request's ticket), or says how long to wait.
    fn try_take(&mut self, now: Instant) -> Result<u64, Duration> {
        if let Some(until) = self.blocked_until {
            if until > now {
                return Err(until - now);
            }
            self.blocked_until = None;
            self.probe = true;
        }
        if self.limit.is_none() {
            // Nothing known yet: one request at a time until an answer tells the limit.
            return if self.in_flight == 0 {
                Ok(self.issue())
            } else {
                Err(IDLE_RECHECK)
            };
        }
        self.refill(now);
        if self.refill.or(self.provisional).is_none()
            && let (Some(full), Some(limit)) = (self.full_at, self.limit)
            && full <= now
        {
            // The server said the bucket would be full by now; that news is used once, until
            // an answer brings the next.
            self.tokens = self.tokens.max(limit);
            self.full_at = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(self.issue());
        }
        if self.probe && self.in_flight == 0 {
            self.probe = false;
            return Ok(self.issue());
        }
        let missing = 1.0 - self.tokens;
        let wait = match (self.refill.or(self.provisional), self.full_at) {
            (Some(rate), _) if rate > 0.0 => Duration::from_secs_f64(missing / rate),
            (_, Some(full)) if full > now => full - now,
            // Neither known: an answer still in flight will say more.
            _ => IDLE_RECHECK,
        };
        Err(wait.max(Duration::from_millis(1)))
    }

    /// Forgets a request; returns when it was sent.
    fn close(&mut self, ticket: u64) -> Option<Duration> {
        let sent = self.open_tickets.remove(&ticket);
        if sent.is_some() {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        sent
    }

    fn observe(
        &mut self,
        ticket: u64,
        info: Option<RateInfo>,
        throttled: Option<Duration>,
        now: Instant,
    ) {
        self.close(ticket);
        // A 429 takes no token: counting it as consumption would inflate the measured rate,
        // and a too-high rate causes more 429s.
        if throttled.is_none() {
            self.answered += 1;
        }
        if let Some(info) = info {
            let limit = f64::from(info.limit);
            let remaining = f64::from(info.remaining);
            self.refill(now);
            // An older answer (overtaken by a newer one) knows less than the count already does.
            // Answers come back out of order across connections, so any request still in flight
            // may be uncounted by the server: all of them are subtracted.
            if ticket > self.synced_ticket {
                self.synced_ticket = ticket;
                self.tokens = remaining - self.open_tickets.len() as f64;
            }
            self.limit = Some(limit);
            self.probe = false;
            let until_full = until_unix(info.reset);
            self.full_at = Some(now + until_full);
            if throttled.is_none() {
                self.measure(remaining, limit, now);
                // The reset is rounded up to a whole second and `remaining` down, so one token
                // less over the time to the reset is a lower bound of the refill rate.
                let missing = limit - remaining - 1.0;
                if missing >= 1.0 && !until_full.is_zero() {
                    let bound = missing / until_full.as_secs_f64();
                    self.provisional =
                        Some(self.provisional.map_or(bound, |known| known.max(bound)));
                }
            }
        }
        if let Some(wait) = throttled {
            self.tokens = self.tokens.min(0.0);
            let until = now + wait;
            self.blocked_until = Some(self.blocked_until.map_or(until, |old| old.max(until)));
        }
    }

    fn measure(&mut self, remaining: f64, limit: f64, now: Instant) {
        if remaining >= limit - 1.0 {
            // A full bucket stops refilling: samples across it would understate the rate.
            self.samples.clear();
            return;
        }
        self.samples.push_back(Sample {
            at: now,
            remaining,
            answered: self.answered,
        });
        while self
            .samples
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.at) > MAX_WINDOW)
        {
            self.samples.pop_front();
        }
        let Some(oldest) = self.samples.front() else {
            return;
        };
        let window = now.duration_since(oldest.at);
        if window < MIN_WINDOW {
            return;
        }
        let consumed = (self.answered - oldest.answered) as f64;
        let rate = (remaining - oldest.remaining + consumed) / window.as_secs_f64();
        if rate > 0.0 {
            // `remaining` is rounded down on each answer; a small margin keeps that error from
            // ever adding up to a request the bucket cannot take.
            self.refill = Some(rate * RATE_MARGIN);
        }
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn until_unix(reset: u64) -> Duration {
    Duration::from_secs(reset).saturating_sub(unix_now())
}

/// The buckets of one tenant, shared by every request of a client.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<EndpointClass, Bucket>>,
    changed: Notify,
}

/// The right to send one request, and what it cost to get it.
#[derive(Debug)]
pub struct Permit {
    class: EndpointClass,
    ticket: u64,
    pub waited: Duration,
}

/// Counters the metrics layer reads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimiterSnapshot {
    pub remaining: Option<f64>,
    pub refill_per_second: Option<f64>,
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter::default()
    }

    /// Waits until a request of this class may be sent.
    pub async fn acquire(&self, class: EndpointClass) -> Permit {
        let started = Instant::now();
        loop {
            let notified = self.changed.notified();
            let wait = {
                let mut buckets = self.lock();
                let bucket = buckets.entry(class).or_default();
                match bucket.try_take(Instant::now()) {
                    Ok(ticket) => {
                        return Permit {
                            class,
                            ticket,
                            waited: started.elapsed(),
                        };
                    }
                    Err(wait) => wait,
                }
            };
            // An answer may free the bucket sooner than the computed wait.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = notified => {}
            }
        }
    }

    /// Records an answer: its rate headers, and for a 429 how long to hold the class back.
    pub fn observe(&self, permit: &Permit, info: Option<RateInfo>, throttled: Option<Duration>) {
        {
            let mut buckets = self.lock();
            buckets.entry(permit.class).or_default().observe(
                permit.ticket,
                info,
                throttled,
                Instant::now(),
            );
        }
        self.changed.notify_waiters();
    }

    /// A request that got no answer (transport error) gives its slot back without news; its
    /// token stays spent, since the server may have counted it.
    pub fn abandon(&self, permit: &Permit) {
        {
            let mut buckets = self.lock();
            buckets
                .entry(permit.class)
                .or_default()
                .close(permit.ticket);
        }
        self.changed.notify_waiters();
    }

    pub fn snapshot(&self, class: EndpointClass) -> LimiterSnapshot {
        let buckets = self.lock();
        buckets
            .get(&class)
            .map(|bucket| LimiterSnapshot {
                remaining: bucket.limit.map(|_| bucket.tokens.max(0.0)),
                refill_per_second: bucket.refill.or(bucket.provisional),
            })
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointClass, Bucket>> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way
        // that matters more than stopping would, so a poisoned lock is simply reused.
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads the `x-ratelimit-*` headers of an answer.
pub fn rate_info(headers: &reqwest::header::HeaderMap) -> Option<RateInfo> {
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    Some(RateInfo {
        limit: u32::try_from(number("x-ratelimit-limit")?).ok()?,
        remaining: u32::try_from(number("x-ratelimit-remaining")?).ok()?,
        reset: number("x-ratelimit-reset")?,
    })
}

/// How long a 429 asks to wait: `Retry-After` (seconds) first, else until the reset.
pub fn throttle_wait(headers: &reqwest::header::HeaderMap, info: Option<RateInfo>) -> Duration {
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    retry_after
        .or_else(|| info.map(|info| until_unix(info.reset)))
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn first_request_goes_alone_until_an_answer_tells_the_limit() {
        let mut bucket = Bucket::default();
        let now = Instant::now();
        let first = bucket.try_take(now).unwrap();
        assert!(bucket.try_take(now).is_err());
        bucket.observe(
            first,
            Some(RateInfo {
                limit: 10,
                remaining: 9,
                reset: unix_now() + 1,
            }),
            None,
            now,
        );
        for _ in 0..9 {
            assert!(bucket.try_take(now).is_ok());
        }
        assert!(
            bucket.try_take(now).is_err(),
            "the tenth would exceed the bucket"
        );
    }

    #[test]
    fn refill_rate_is_measured_from_answers() {
        let mut bucket = Bucket::default();
        let start = Instant::now();
        let mut ticket = bucket.try_take(start).unwrap();
        // The server refills 10 tokens/s; we use 20 requests/s for 4 s: remaining falls by 10/s.
        let mut remaining = 45.0f64;
        for step in 0..80u32 {
            let at = start + Duration::from_millis(50 * u64::from(step));
            remaining = (remaining - 1.0 + 0.5).max(0.0);
            bucket.observe(
                ticket,
                Some(RateInfo {
                    limit: 50,
                    remaining: remaining.floor() as u32,
                    reset: unix_now() + 5,
                }),
                None,
                at,
            );
            ticket = bucket.issue();
        }
        let rate = bucket.refill.expect("measured");
        assert!((8.7..=10.3).contains(&rate), "{rate}");
    }

    #[test]
    fn an_announced_reset_refills_the_bucket_once() {
        let mut bucket = Bucket::default();
        let now = Instant::now();
        let ticket = bucket.try_take(now).unwrap();
        bucket.observe(
            ticket,
            Some(RateInfo {
                limit: 3,
                remaining: 0,
                reset: unix_now() + 1,
            }),
            None,
            now,
        );
        assert!(bucket.try_take(now).is_err());
        let later = now + Duration::from_secs(3);
        let taken = (0..10).filter(|_| bucket.try_take(later).is_ok()).count();
        assert_eq!(taken, 3, "one refill to the limit, not one per waiter");
    }

    #[test]
    fn an_answer_counts_every_request_still_in_flight() {
        let mut bucket = Bucket::default();
        let now = Instant::now();
        let first = bucket.try_take(now).unwrap();
        let info = |remaining| {
            Some(RateInfo {
                limit: 10,
                remaining,
                reset: unix_now() + 1,
            })
        };
        bucket.observe(first, info(9), None, now);
        let tickets: Vec<u64> = (0..4).map(|_| bucket.try_take(now).unwrap()).collect();
        // The second answer: the server counted it, maybe not the three still in flight.
        bucket.observe(tickets[0], info(8), None, now);
        assert_eq!(bucket.tokens, 5.0);
        // Answers overtake each other: the newest counts, minus everything still in flight.
        bucket.observe(tickets[3], info(6), None, now);
        assert_eq!(bucket.tokens, 4.0);
        bucket.observe(tickets[1], info(7), None, now);
        assert_eq!(bucket.tokens, 4.0, "an older answer changes nothing");
    }

    #[test]
    fn a_429_blocks_the_class_until_the_wait_is_over() {
        let mut bucket = Bucket::default();
        let now = Instant::now();
        let ticket = bucket.try_take(now).unwrap();
        bucket.observe(
            ticket,
            Some(RateInfo {
                limit: 10,
                remaining: 5,
                reset: unix_now() + 1,
            }),
            Some(Duration::from_millis(300)),
            now,
        );
        let wait = bucket.try_take(now).unwrap_err();
        assert!(wait > Duration::from_millis(250), "{wait:?}");
        assert!(bucket.try_take(now + Duration::from_millis(301)).is_ok());
    }
}
