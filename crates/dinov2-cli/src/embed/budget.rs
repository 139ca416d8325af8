//! How many bad inputs an embed job may skip and still succeed (`--max-failures`), and the
//! verdict at its end: the exit status and the line on stderr.

use crate::error::{CliError, Result};

/// How many bad inputs a job may skip and still succeed (`--max-failures`): a count, or a
/// share of its inputs in percent. The default, a count of 0, fails a job with any bad input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureBudget {
    /// At most this many.
    Count(u64),
    /// At most this percentage of the inputs (0 to 100).
    Percent(f64),
}

impl FailureBudget {
    /// Parses `N` (a whole number) or `P%` (0 to 100, decimals allowed).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let budget = match t.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .map(FailureBudget::Percent),
            None => t.parse::<u64>().ok().map(FailureBudget::Count),
        };
        budget.ok_or_else(|| {
            format!("{s:?}: expected a whole number of inputs (100) or a percentage from 0 to 100 (0.5%)")
        })
    }

    /// Whether `failed` bad inputs of `inputs` are within the budget.
    pub fn allows(self, failed: u64, inputs: u64) -> bool {
        match self {
            FailureBudget::Count(n) => failed <= n,
            // In billionths of the inputs, whole numbers: exact for any percentage given to
            // 7 decimals (50% of 4 allows 2, 0.3% of 1000 allows 3), where a float product
            // could land an ulp below the whole number. Finer shares round down: never more
            // than asked.
            FailureBudget::Percent(p) => {
                let billionths = (p * 1e7 + 1e-3).floor() as u128;
                u128::from(failed) * 1_000_000_000 <= billionths * u128::from(inputs)
            }
        }
    }

    /// The end of a finished job that had `failed` bad inputs of `inputs`, listed in `errors`: an
    /// error (exit status 1) past the budget, or where no input was embedded at all (a job that
    /// made no vector is broken, whatever the budget); else a note on stderr (none without
    /// failures). `what` starts the message: the job's inputs, or a finished output's.
    pub(super) fn verdict(self, what: &str, failed: u64, inputs: u64, errors: &str) -> Result<()> {
        if failed == 0 {
            return Ok(());
        }
        if failed >= inputs {
            return Err(CliError(format!(
                "{what}none of the {inputs} inputs could be embedded; see {errors}"
            )));
        }
        let lost = format!("{what}{failed} of {inputs} inputs could not be embedded");
        if !self.allows(failed, inputs) {
            let over = match self {
                FailureBudget::Count(0) => String::new(),
                _ => format!(", more than --max-failures {self} allows"),
            };
            return Err(CliError(format!("{lost}{over}; see {errors}")));
        }
        eprintln!("{lost} (within --max-failures {self}); see {errors}");
        Ok(())
    }
}

impl Default for FailureBudget {
    fn default() -> Self {
        FailureBudget::Count(0)
    }
}

impl std::fmt::Display for FailureBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureBudget::Count(n) => write!(f, "{n}"),
            FailureBudget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FailureBudget::{self, Count, Percent};

    #[test]
    fn failure_budgets_read_counts_and_percentages() {
        assert_eq!(FailureBudget::parse("0"), Ok(Count(0)));
        assert_eq!(FailureBudget::parse(" 100 "), Ok(Count(100)));
        assert_eq!(FailureBudget::parse("0.5%"), Ok(Percent(0.5)));
        assert_eq!(FailureBudget::parse("100 %"), Ok(Percent(100.0)));
        for bad in [
            "", "%", "-1", "1.5", "abc", "100.1%", "-0.1%", "nan%", "inf%", "1e999%",
        ] {
            let err = FailureBudget::parse(bad).unwrap_err();
            assert!(err.contains("a percentage from 0 to 100"), "{bad:?}: {err}");
        }
        assert_eq!(FailureBudget::default(), Count(0));
        assert_eq!(Percent(0.5).to_string(), "0.5%");
        assert_eq!(Count(7).to_string(), "7");
    }

    #[test]
    fn failure_budgets_allow_up_to_their_limit() {
        assert!(Count(0).allows(0, 10));
        assert!(!Count(0).allows(1, 10));
        assert!(Count(2).allows(2, 4) && !Count(2).allows(3, 4));
        // 50% of 4 is exactly 2; a share of no inputs allows none and needs none.
        assert!(Percent(50.0).allows(2, 4) && !Percent(50.0).allows(3, 4));
        assert!(!Percent(49.9).allows(2, 4));
        assert!(Percent(0.1).allows(1, 1000) && !Percent(0.1).allows(2, 1000));
        // Shares whose float products miss the whole number they stand for.
        for tenths in 1..=1000u64 {
            let p = tenths as f64 / 10.0;
            let allowed = tenths; // p% of 1000 inputs
            assert!(Percent(p).allows(allowed, 1000), "{p}%");
            assert!(!Percent(p).allows(allowed + 1, 1000), "{p}%");
        }
        assert!(Percent(0.0).allows(0, 0) && Percent(100.0).allows(5, 5));
        // Finer than a billionth: rounded down, never up.
        assert!(!Percent(0.000_000_05).allows(1, 1_000_000_000));
        assert!(Percent(0.000_000_1).allows(1, 1_000_000_000));
    }
}
