//! The fraction guard: stops a push that would change so large a share of the users a push may
//! change that it looks like a mapping mistake (a wrong column, a changed query) rather than
//! real edits.

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
}
