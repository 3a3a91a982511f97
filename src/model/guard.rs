//! The guards against a mapping mistake (a wrong column, a changed query, a truncated export)
//! taken for real data: the fraction guard stops a push that would change so large a share of
//! the users a push may change that it looks like one; the shrink guard stops a full run whose
//! legacy rows or Auth0 users fell too far since the last successful full run (every Auth0
//! user would look orphaned, every legacy row not migrated).

/// Why a whole push was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub planned: u64,
    /// The users a push may change (migrated ones, and cached ones whose root attributes the
    /// API may change).
    pub pushable: u64,
    pub limit: f64,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fraction = self.planned as f64 / self.pushable.max(1) as f64;
        // The smallest hundredth that lets exactly this push through.
        let suggestion = ((fraction * 100.0).ceil() / 100.0).max(0.01);
        write!(
            f,
            "refusing to push: {} of {} users a push may change ({:.1}%) would change, more than \
             reconcile.max_push_fraction = {}. So many changes at once usually mean a mapping \
             mistake (a wrong column, a changed query). If they are real, push this once with \
             --max-push-fraction {:.2}",
            self.planned,
            self.pushable,
            fraction * 100.0,
            self.limit,
            suggestion
        )
    }
}

/// Allows a push of `planned` users out of `pushable` when it stays within `limit`.
pub fn check_fraction(planned: u64, pushable: u64, limit: f64) -> Result<(), Refusal> {
    if planned == 0 || (planned as f64) <= limit * pushable as f64 {
        Ok(())
    } else {
        Err(Refusal {
            planned,
            pushable,
            limit,
        })
    }
}

/// One side's size at the last successful full run and now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub before: u64,
    pub now: u64,
}

impl Sizes {
    /// The fall since the last run, as a fraction of its size (0 when it did not fall).
    fn fall(self) -> f64 {
        if self.before == 0 || self.now >= self.before {
            return 0.0;
        }
        (self.before - self.now) as f64 / self.before as f64
    }
}

/// Why a full run was refused before anything was pushed, written or reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Shrink {
    pub legacy: Sizes,
    pub auth0: Sizes,
    pub limit: f64,
}

impl std::fmt::Display for Shrink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |sizes: Sizes, what: &str| {
            format!(
                "{} {what} (the last successful full run: {}, {:+.1}%)",
                sizes.now,
                sizes.before,
                if sizes.before == 0 {
                    0.0
                } else {
                    (sizes.now as f64 / sizes.before as f64 - 1.0) * 100.0
                }
            )
        };
        write!(
            f,
            "refusing the run: the legacy query returned {} and Auth0 has {}; a fall \
             of more than reconcile.max_shrink_fraction = {} usually means a broken mapping \
             query or a truncated export, which would make users look orphaned or not \
             migrated. Nothing was pushed, no baseline was written and no report was made. If \
             the fall is real, run once with `driftsync reconcile --allow-shrink`",
            side(self.legacy, "rows"),
            side(self.auth0, "users"),
            self.limit
        )
    }
}

impl std::error::Error for Shrink {}

/// Allows a full run whose sides fell by at most `limit` each since the last successful full
/// run (none before: nothing to compare with).
pub fn check_shrink(legacy: Sizes, auth0: Sizes, limit: f64) -> Result<(), Shrink> {
    if legacy.fall() > limit || auth0.fall() > limit {
        return Err(Shrink {
            legacy,
            auth0,
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_names_the_figures_and_the_override() {
        assert!(check_fraction(5, 100, 0.05).is_ok());
        assert!(check_fraction(0, 0, 0.0).is_ok());
        let refusal = check_fraction(6, 100, 0.05).unwrap_err();
        let message = refusal.to_string();
        assert!(
            message.contains("6 of 100 users a push may change (6.0%)"),
            "{message}"
        );
        assert!(message.contains("--max-push-fraction 0.06"), "{message}");
        assert!(
            check_fraction(1, 0, 1.0).is_err(),
            "no users a push may change: nothing to push into"
        );
    }

    #[test]
    fn a_side_that_fell_too_far_refuses_the_run_and_names_both() {
        let sizes = |before, now| Sizes { before, now };
        assert!(check_shrink(sizes(1000, 900), sizes(1000, 1000), 0.10).is_ok());
        assert!(
            check_shrink(sizes(0, 0), sizes(0, 5), 0.10).is_ok(),
            "a first run"
        );
        assert!(check_shrink(sizes(1000, 1200), sizes(1000, 950), 0.10).is_ok());
        let refusal = check_shrink(sizes(1000, 700), sizes(1000, 1000), 0.10).unwrap_err();
        let text = refusal.to_string();
        for needle in [
            "returned 700 rows (the last successful full run: 1000, -30.0%)",
            "Auth0 has 1000 users (the last successful full run: 1000, +0.0%)",
            "--allow-shrink",
            "max_shrink_fraction = 0.1",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
        assert!(check_shrink(sizes(1000, 1000), sizes(1000, 899), 0.10).is_err());
    }
}
