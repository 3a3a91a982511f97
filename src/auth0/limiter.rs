//! A client-side mirror of Auth0's token buckets, so that driftsync never sends into an
//! exhausted bucket and still uses the whole rate it is given.
//!
//! Every answer carries `x-ratelimit-limit` (the bucket size), `x-ratelimit-remaining` and
//! `x-ratelimit-reset`, which Auth0 documents as the UNIX second "of the expected time when
//! additional requests will be added to the bucket" ("Rate Limit Use Cases"): when the *next*
//! token comes, not when the bucket is full again, so it says nothing about the refill rate.
//! The mirror keeps a local token count.
//!
//! **Re-synchronising.** An answer says `remaining` as the server counted when it handled the
//! request; requests reach the server over several connections in any order, and their answers
//! come back in any order too. So the count is set to `remaining` minus the requests still in
//! flight (any of them may be uncounted yet) only from an answer to a request sent after the
//! last re-synchronising answer came — that request was surely counted later. Any other answer
//! may be older than what the count already knows, and may only lower it. Once every request
//! is answered, the server has counted them all, and its count is at least the lowest
//! `remaining` answered since the last re-synchronisation.
//!
//! **Refilling.** Between answers the count refills at the server's rate, which is not
//! announced. It is *measured* while the bucket is clearly below full: the server's count moves
//! by `refill × elapsed − requests answered in between`, with a 3% margin for the rounding of
//! `remaining`. Beside it stands a *lower bound* that holds whatever the order of answers and
//! even when the bucket filled up in between: from an answer S to an answer E, the server's
//! count went from S's `remaining` to E's while counting at least the requests answered after S
//! and before E was sent (less those in flight at S) and E itself, within the time from S's
//! sending to E's answer; over a second or more. The larger of the two is used: both err low
//! (the measurement when the bucket filled up between answers), and the bound grows as fast as
//! the traffic shows the bucket keeping up. Only the local monotonic clock is used (client and
//! server clock skew does not matter), and another application's use of the same bucket counts
//! as a slower refill, which errs on the safe side. With neither, an empty bucket waits for the
//! announced reset and then takes the one token it promises; with no news at all (no rate-limit
//! headers, no answer), a token is assumed after two seconds, within which every documented
//! bucket adds one. A 429 blocks the class until `Retry-After` (which Auth0 does not document
//! for the Management API, but which is honoured when present) or the reset.
//!
//! Auth0's plans lay buckets out differently: Enterprise and Free have one global Management
//! API bucket, Essentials and Professional one per endpoint group. The mirror keeps one count
//! per endpoint class and reads every answer as news for all of them: the newest answer of any
//! Management API class bounds every class's count (exact for a global bucket, only cautious
//! for separate ones), and a class that has not been answered yet starts from that count
//! instead of sending blind. driftsync never uses two Management API classes at once (a run
//! reads, then pushes), so the caution costs a few requests' time when a run moves from one
//! class to the next.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// The endpoint classes Auth0's per-endpoint layouts limit separately.
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
    /// UNIX second when the next token is added to the bucket.
    pub reset: u64,
}

impl EndpointClass {
    /// Whether the class is a Management API endpoint (they may share one bucket); the token
    /// endpoint belongs to the Authentication API, limited apart.
    fn is_management(self) -> bool {
        self != EndpointClass::Token
    }
}

/// The shortest window over which a refill rate is measured; answers arrive with jitter, and
/// the longer the window the less that jitter can inflate the rate.
const MIN_WINDOW: Duration = Duration::from_secs(2);
/// Older samples are dropped; the rate follows changes of plan within this time.
const MAX_WINDOW: Duration = Duration::from_secs(10);
/// The shortest window of the lower bound: long enough that the jitter of answers cannot
/// inflate it much, short enough that a run reaches the real rate within seconds.
const BOUND_WINDOW: Duration = Duration::from_secs(1);
/// The share of the measured refill rate that is used.
const RATE_MARGIN: f64 = 0.97;
/// Waiting without any information (no answer yet) re-checks this often.
const IDLE_RECHECK: Duration = Duration::from_millis(200);
/// When nothing says when the next token comes (an answer without rate-limit headers, a
/// request that got no answer), one is assumed after this long: every bucket Auth0 documents
/// refills at least one token in it (the slowest, 50 a minute, one in 1.2 s).
const NO_NEWS_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Sample {
    at: Instant,
    remaining: f64,
    /// Answers received in this class up to and including this one.
    answered: u64,
    /// Requests still in flight when it came: the server may have counted them before it.
    open: u64,
    /// When its request was sent (the server counted it after that).
    sent: Instant,
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    /// Answers received in its class before it was sent: those requests were counted by the
    /// server before it.
    answered_before: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Burst size, once an answer has said it.
    limit: Option<f64>,
    tokens: f64,
    /// Tokens per second, once measured.
    refill: Option<f64>,
    /// A lower bound of the refill rate, used until one is measured.
    provisional: Option<f64>,
    refilled_at: Option<Instant>,
    /// When the last answer said the next token comes, while that news is unused.
    next_token_at: Option<Instant>,
    blocked_until: Option<Instant>,
    /// After a 429's wait one request may probe the bucket, whatever the local count says.
    probe: bool,
    in_flight: u32,
    next_ticket: u64,
    /// The requests in flight, by sequence number.
    open_tickets: std::collections::BTreeMap<u64, Sent>,
    /// When the answer that last re-synchronised the count came. An answer to a request sent
    /// after it shows the server's count later than that one did; an answer to a request sent
    /// before may show an older count (requests reach the server in any order over several
    /// connections), so it may only lower the count.
    synced_at: Option<Instant>,
    /// The lowest `remaining` answered since that re-synchronisation. Once every request is
    /// answered, the server has counted them all, and its count is at least this (the last
    /// request it counted reported one of these values, and none came after).
    floor_since_sync: Option<f64>,
    answered: u64,
    /// Recent answers with the bucket below full, for measuring the refill rate.
    samples: VecDeque<Sample>,
    /// Every recent answer, for the lower bound.
    gains: VecDeque<Sample>,
}

impl Bucket {
    /// The refill rate to count on: the larger of the measured rate and the lower bound. Both
    /// err low (the measurement when the bucket filled up between answers), so the larger is
    /// still safe.
    fn rate(&self) -> Option<f64> {
        match (self.refill, self.provisional) {
            (Some(measured), Some(bound)) => Some(measured.max(bound)),
            (measured, bound) => measured.or(bound),
        }
    }

    fn refill(&mut self, now: Instant) {
        if let (Some(rate), Some(limit), Some(since)) = (self.rate(), self.limit, self.refilled_at)
        {
            let elapsed = now.saturating_duration_since(since).as_secs_f64();
            self.tokens = (self.tokens + rate * elapsed).min(limit);
        }
        self.refilled_at = Some(now);
    }

    fn issue(&mut self, now: Instant) -> u64 {
        self.in_flight += 1;
        self.next_ticket += 1;
        let sent = Sent {
            at: now,
            answered_before: self.answered,
        };
        self.open_tickets.insert(self.next_ticket, sent);
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
                Ok(self.issue(now))
            } else {
                Err(IDLE_RECHECK)
            };
        }
        self.refill(now);
        if self.rate().is_none()
            && let (Some(next), Some(limit)) = (self.next_token_at, self.limit)
            && next <= now
        {
            // The server said one more token would be there by now; that news is used once,
            // until an answer brings the next.
            self.tokens = (self.tokens + 1.0).min(limit);
            self.next_token_at = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(self.issue(now));
        }
        if self.probe && self.in_flight == 0 {
            self.probe = false;
            return Ok(self.issue(now));
        }
        let missing = 1.0 - self.tokens;
        let wait = match (self.rate(), self.next_token_at) {
            (Some(rate), _) if rate > 0.0 => Duration::from_secs_f64(missing / rate),
            (_, Some(next)) if next > now => next - now,
            // Neither known: an answer still in flight will say more…
            _ if self.in_flight > 0 => IDLE_RECHECK,
            // …and with none (the last answer had no rate-limit headers, or no answer came),
            // a token is assumed after a wait every documented bucket refills one in.
            _ => {
                self.next_token_at = Some(now + NO_NEWS_WAIT);
                NO_NEWS_WAIT
            }
        };
        Err(wait.max(Duration::from_millis(1)))
    }

    /// Forgets a request; returns when it was sent.
    fn close(&mut self, ticket: u64) -> Option<Sent> {
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
        let sent = self.close(ticket);
        // A 429 takes no token: counting it as consumption would inflate the measured rate,
        // and a too-high rate causes more 429s.
        if throttled.is_none() {
            self.answered += 1;
        }
        if let Some(info) = info {
            let limit = f64::from(info.limit);
            let remaining = f64::from(info.remaining);
            self.refill(now);
            // Any request still in flight may be uncounted by the server: all of them are
            // subtracted. Only an answer to a request sent after the last re-synchronisation
            // surely shows a newer count; an older one may only lower the count.
            let counted = remaining - self.open_tickets.len() as f64;
            let newer = match (sent, self.synced_at) {
                (Some(sent), Some(synced)) => sent.at > synced,
                (_, None) => true,
                (None, Some(_)) => false,
            };
            if newer {
                self.synced_at = Some(now);
                self.tokens = counted;
                self.floor_since_sync = Some(remaining);
            } else {
                self.tokens = self.tokens.min(counted);
                self.floor_since_sync = Some(
                    self.floor_since_sync
                        .map_or(remaining, |floor| floor.min(remaining)),
                );
            }
            if self.open_tickets.is_empty()
                && let Some(floor) = self.floor_since_sync
            {
                self.tokens = self.tokens.max(floor);
            }
            self.limit = Some(limit);
            self.probe = false;
            self.next_token_at = Some(now + until_unix(info.reset));
            if throttled.is_none() {
                self.measure(remaining, limit, sent, now);
                if let Some(sent) = sent {
                    self.bound(remaining, sent, now);
                }
            }
        }
        if let Some(wait) = throttled {
            self.tokens = self.tokens.min(0.0);
            let until = now + wait;
            self.blocked_until = Some(self.blocked_until.map_or(until, |old| old.max(until)));
        }
    }

    /// The lower bound: the most any window of a second or more shows the bucket gained.
    /// Between an earlier answer S and this one E, the server's count went from S's `remaining`
    /// to E's while it counted at least the requests answered after S and before E was sent
    /// (less those in flight at S, which it may have counted before S), and E itself; its
    /// `remaining` values are rounded down, which takes one token back. That took at most from
    /// S's sending to now. Answers overtake each other, so nothing tighter is certain.
    fn bound(&mut self, remaining: f64, sent: Sent, now: Instant) {
        while self
            .gains
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.at) > MAX_WINDOW)
        {
            self.gains.pop_front();
        }
        let bound = self
            .gains
            .iter()
            .filter(|sample| now.duration_since(sample.sent) >= BOUND_WINDOW)
            .map(|sample| {
                let counted = sent
                    .answered_before
                    .saturating_sub(sample.answered)
                    .saturating_sub(sample.open);
                // One for E itself, one less for the rounding.
                let gained = remaining - sample.remaining + counted as f64;
                gained / now.duration_since(sample.sent).as_secs_f64()
            })
            .fold(None, |best: Option<f64>, rate| {
                Some(best.map_or(rate, |best| best.max(rate)))
            });
        if let Some(bound) = bound.filter(|bound| *bound > 0.0) {
            self.provisional = Some(bound);
        }
        self.gains.push_back(Sample {
            at: now,
            remaining,
            answered: self.answered,
            open: self.open_tickets.len() as u64,
            sent: sent.at,
        });
    }

    /// The measured rate: from the oldest answer of the window to this one. The server read
    /// the oldest count at some moment after its request was sent, and this one before now, so
    /// the window starts at that sending: an answer the client took late (a busy machine) must
    /// not shorten the window and inflate the rate. Requests in flight at the oldest answer may
    /// have been counted before it and are not counted as consumed in between.
    fn measure(&mut self, remaining: f64, limit: f64, sent: Option<Sent>, now: Instant) {
        if remaining >= limit - 1.0 {
            // A full bucket stops refilling: samples across it would understate the rate.
            self.samples.clear();
            return;
        }
        self.samples.push_back(Sample {
            at: now,
            remaining,
            answered: self.answered,
            open: self.open_tickets.len() as u64,
            sent: sent.map_or(now, |sent| sent.at),
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
        if now.duration_since(oldest.at) < MIN_WINDOW {
            return;
        }
        let window = now.duration_since(oldest.sent);
        let consumed = (self.answered - oldest.answered).saturating_sub(oldest.open) as f64;
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
    buckets: Mutex<Buckets>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Buckets {
    by_class: HashMap<EndpointClass, Bucket>,
    /// The Management API class answered last: its count is the newest news of a bucket that
    /// may be shared by every class.
    newest: Option<EndpointClass>,
}

impl Buckets {
    /// The bucket of `class`; one never answered starts from the newest Management API count.
    fn get(&mut self, class: EndpointClass, now: Instant) -> &mut Bucket {
        let seed = match (self.by_class.get(&class), self.newest) {
            (Some(bucket), _) if bucket.limit.is_some() => None,
            (_, Some(newest)) if newest != class && class.is_management() => {
                self.by_class.get_mut(&newest).map(|known| {
                    known.refill(now);
                    // A class with a rate has refilled its count up to now, the token its last
                    // answer announced included: that news must not add it a second time.
                    let news = if known.rate().is_some() {
                        None
                    } else {
                        known.next_token_at
                    };
                    (known.limit, known.tokens, news)
                })
            }
            _ => None,
        };
        let bucket = self.by_class.entry(class).or_default();
        if let Some((limit, tokens, next_token_at)) = seed {
            bucket.limit = limit;
            bucket.tokens = tokens;
            bucket.next_token_at = next_token_at;
            bucket.refilled_at = Some(now);
        }
        bucket
    }

    /// After an answer of `class`: its count bounds every other Management API class's.
    fn bound_others(&mut self, class: EndpointClass, now: Instant) {
        if !class.is_management() {
            return;
        }
        let Some(tokens) = self.by_class.get(&class).map(|bucket| bucket.tokens) else {
            return;
        };
        self.newest = Some(class);
        for (other, bucket) in &mut self.by_class {
            if *other != class && other.is_management() && bucket.limit.is_some() {
                bucket.refill(now);
                bucket.tokens = bucket.tokens.min(tokens);
            }
        }
    }
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
                let now = Instant::now();
                let mut buckets = self.lock();
                match buckets.get(class, now).try_take(now) {
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
            let now = Instant::now();
            let mut buckets = self.lock();
            buckets.by_class.entry(permit.class).or_default().observe(
                permit.ticket,
                info,
                throttled,
                now,
            );
            if info.is_some() {
                buckets.bound_others(permit.class, now);
            }
        }
        self.changed.notify_waiters();
    }

    /// A request that got no answer (transport error) gives its slot back without news; its
    /// token stays spent, since the server may have counted it.
    pub fn abandon(&self, permit: &Permit) {
        {
            let mut buckets = self.lock();
            buckets
                .by_class
                .entry(permit.class)
                .or_default()
                .close(permit.ticket);
        }
        self.changed.notify_waiters();
    }

    pub fn snapshot(&self, class: EndpointClass) -> LimiterSnapshot {
        let buckets = self.lock();
        buckets
            .by_class
            .get(&class)
            .map(|bucket| LimiterSnapshot {
                remaining: bucket.limit.map(|_| bucket.tokens.max(0.0)),
                refill_per_second: bucket.rate(),
            })
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
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
            ticket = bucket.issue(at + Duration::from_millis(1));
        }
        let rate = bucket.refill.expect("measured");
        assert!((8.7..=10.3).contains(&rate), "{rate}");
    }

    #[test]
    fn an_answer_taken_late_does_not_inflate_the_measured_rate() {
        // The server refills 10 tokens/s and a request goes out every 100 ms, so its count
        // stays at 20. The client is busy at first: the answers to the first four requests are
        // taken only at 401-404 ms, the others 1 ms after sending. Timing the window from the
        // first answer's arrival would find 39 requests in 3.5 s, more than the server gives.
        let mut bucket = Bucket::default();
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let mut events: Vec<(Instant, bool, u64)> = Vec::new();
        for k in 0..40u64 {
            events.push((ms(100 * k), true, k));
            let answered = if k < 4 { 401 + k } else { 100 * k + 1 };
            events.push((ms(answered), false, k));
        }
        events.sort_by_key(|(at, is_send, _)| (*at, !*is_send));
        let mut tickets = HashMap::new();
        for (at, is_send, k) in events {
            if is_send {
                tickets.insert(k, bucket.issue(at));
            } else {
                let info = Some(RateInfo {
                    limit: 50,
                    remaining: 20,
                    reset: unix_now() + 1,
                });
                bucket.observe(tickets[&k], info, None, at);
            }
        }
        let rate = bucket.refill.expect("measured");
        assert!(
            rate <= 10.0,
            "measured {rate}/s where the server gives 10/s"
        );
        assert!(
            rate >= 8.0,
            "measured {rate}/s: far below the server's 10/s"
        );
    }

    #[test]
    fn an_announced_reset_brings_one_token_not_a_full_bucket() {
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
        assert_eq!(
            taken, 1,
            "the reset promises one more token (Auth0's reading), not a full bucket"
        );
    }

    /// An answer whose next token is seconds away: nothing refills during a test.
    fn info(limit: u32, remaining: u32) -> Option<RateInfo> {
        Some(RateInfo {
            limit,
            remaining,
            reset: unix_now() + 5,
        })
    }

    #[tokio::test]
    async fn a_class_never_answered_starts_from_the_newest_count_of_another() {
        let limiter = RateLimiter::new();
        let read = limiter.acquire(EndpointClass::UsersRead).await;
        // The (possibly global) bucket is empty after the reads.
        limiter.observe(&read, info(50, 0), None);
        let started = Instant::now();
        let write = tokio::time::timeout(
            Duration::from_millis(300),
            limiter.acquire(EndpointClass::UsersWrite),
        )
        .await;
        assert!(
            write.is_err(),
            "the first write waited for the reset instead of sending blind: {:?}",
            started.elapsed()
        );
        // The token endpoint is another API: it is not held back.
        let token = tokio::time::timeout(
            Duration::from_millis(300),
            limiter.acquire(EndpointClass::Token),
        )
        .await;
        assert!(token.is_ok());
    }

    #[test]
    fn a_seeded_class_does_not_count_the_announced_token_twice() {
        // Reads have drained a global bucket refilling at 12/s; their count, refilled at that
        // rate, already holds the token the last answer announced for 50 ms later.
        let start = Instant::now();
        let mut buckets = Buckets::default();
        let read = buckets
            .by_class
            .entry(EndpointClass::UsersRead)
            .or_default();
        read.limit = Some(8.0);
        read.tokens = 0.2;
        read.refill = Some(12.0);
        read.refilled_at = Some(start);
        read.next_token_at = Some(start + Duration::from_millis(50));
        buckets.newest = Some(EndpointClass::UsersRead);
        // 60 ms later the server holds 0.92 tokens: the first write must wait.
        let now = start + Duration::from_millis(60);
        let write = buckets.get(EndpointClass::UsersWrite, now);
        assert!(write.tokens < 1.0, "{}", write.tokens);
        assert!(
            write.try_take(now).is_err(),
            "the first write was sent into an empty bucket"
        );
    }

    #[tokio::test]
    async fn every_answer_bounds_the_other_management_classes() {
        let limiter = RateLimiter::new();
        let write = limiter.acquire(EndpointClass::UsersWrite).await;
        limiter.observe(&write, info(50, 40), None);
        let read = limiter.acquire(EndpointClass::UsersRead).await;
        limiter.observe(&read, info(50, 2), None);
        // Two writes fit what the newest answer (of another class) left, not forty.
        let mut sent = 0;
        while tokio::time::timeout(
            Duration::from_millis(50),
            limiter.acquire(EndpointClass::UsersWrite),
        )
        .await
        .is_ok()
        {
            sent += 1;
            assert!(sent <= 2, "sent beyond the newest count");
        }
        assert_eq!(sent, 2);
    }

    #[test]
    fn an_answer_counts_every_request_still_in_flight_and_an_older_one_cannot_raise_the_count() {
        let mut bucket = Bucket::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let first = bucket.try_take(t0).unwrap();
        let info = |remaining| {
            Some(RateInfo {
                limit: 10,
                remaining,
                reset: unix_now() + 5,
            })
        };
        bucket.observe(first, info(9), None, at(1));
        let tickets: Vec<u64> = (0..4).map(|_| bucket.try_take(at(2)).unwrap()).collect();
        // The first answer of the four: the server counted it, maybe not the three in flight.
        bucket.observe(tickets[0], info(8), None, at(3));
        assert_eq!(bucket.tokens, 5.0);
        // The others were sent before that answer came, so the server may have counted them
        // in any order: each may lower the count, none may raise it.
        bucket.observe(tickets[3], info(5), None, at(4));
        assert_eq!(bucket.tokens, 3.0);
        bucket.observe(tickets[1], info(7), None, at(5));
        assert_eq!(
            bucket.tokens, 3.0,
            "counted early, answered late: it knows less than the count does"
        );
        // A request sent after the last re-synchronisation shows a newer count.
        let later = bucket.try_take(at(6)).unwrap();
        bucket.observe(later, info(4), None, at(8));
        assert_eq!(bucket.tokens, 3.0, "four left, one still in flight");
    }

    #[test]
    fn without_news_an_empty_bucket_still_sends_after_a_safe_wait() {
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
        // The reset's token is taken; its answer never comes (a dropped connection).
        let later = now + Duration::from_secs(2);
        let lost = bucket.try_take(later).unwrap();
        bucket.close(lost);
        let wait = bucket.try_take(later).unwrap_err();
        assert_eq!(wait, NO_NEWS_WAIT);
        assert!(bucket.try_take(later + wait).is_ok(), "not stuck for ever");
    }

    #[test]
    fn the_lower_bound_grows_with_what_the_bucket_shows_it_refilled() {
        let mut bucket = Bucket::default();
        let start = Instant::now();
        // A bucket of 5 refilled at 40/s, asked one request at a time: every answer finds it
        // full again, so no accurate rate can be measured, but what it gave is a lower bound.
        let mut at = start;
        for _ in 0..12 {
            let ticket = bucket.issue(at);
            bucket.observe(
                ticket,
                Some(RateInfo {
                    limit: 5,
                    remaining: 4,
                    reset: unix_now() + 1,
                }),
                None,
                at,
            );
            // Then four more at once, answered at once: the bucket drained.
            for remaining in (0..4).rev() {
                let ticket = bucket.issue(at);
                bucket.observe(
                    ticket,
                    Some(RateInfo {
                        limit: 5,
                        remaining,
                        reset: unix_now() + 1,
                    }),
                    None,
                    at,
                );
            }
            at += Duration::from_millis(250);
        }
        assert!(bucket.refill.is_none());
        let bound = bucket.provisional.expect("a bound");
        // Five tokens every 250 ms were taken: 20/s at least, less what the window's edges
        // cannot prove.
        assert!((14.0..=20.0).contains(&bound), "{bound}");
    }

    #[test]
    fn answers_that_overtook_others_cannot_inflate_the_lower_bound() {
        // The server refills 12/s into a bucket of 8. Each second: one request alone, then a
        // burst of seven; the server counts the burst's last request first, and its answer
        // comes last (seen on real sockets).
        let mut bucket = Bucket::default();
        let start = Instant::now();
        let info = |remaining| {
            Some(RateInfo {
                limit: 8,
                remaining,
                reset: unix_now() + 5,
            })
        };
        for second in 0..5u64 {
            let at = |ms: u64| start + Duration::from_millis(1000 * second + ms);
            let alone = bucket.issue(at(0));
            bucket.observe(alone, info(7), None, at(1));
            let burst: Vec<u64> = (0..7).map(|_| bucket.issue(at(2))).collect();
            for (ticket, remaining) in burst.iter().zip([5, 4, 3, 2, 1, 0]) {
                bucket.observe(*ticket, info(remaining), None, at(3));
            }
            bucket.observe(burst[6], info(6), None, at(4));
            let bound = bucket.provisional.unwrap_or(0.0);
            assert!(
                bound <= 12.0,
                "second {second}: {bound}/s is more than the bucket gives"
            );
        }
        assert!(bucket.provisional.is_some_and(|bound| bound >= 6.0));
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
