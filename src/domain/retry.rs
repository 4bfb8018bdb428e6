//! The retry policy of SPEC §4 as pure functions of configuration: the schedule of delays
//! after each failed attempt, ±20 % jitter, and `Retry-After` (seconds or an HTTP date)
//! honoured up to one hour.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// The default schedule: delays after the 1st, 2nd, … failed attempt.
pub const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";
const JITTER: f64 = 0.2;
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    steps: Vec<Duration>,
}

impl RetrySchedule {
    pub fn new(steps: Vec<Duration>) -> Self {
        Self { steps }
    }

    /// Parses `5s,5m,30m` (an empty string means no retries at all).
    pub fn parse(s: &str) -> Result<Self, String> {
        let steps = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| humantime::parse_duration(p).map_err(|e| format!("`{p}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { steps })
    }

    /// At most `steps + 1` attempts.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.steps.len()).unwrap_or(u32::MAX).saturating_add(1)
    }

    /// The delay before the next attempt after `attempts_made` failed ones, or `None` when
    /// the schedule is exhausted. `retry_after` (from a 429 or 503) wins when it is longer.
    pub fn next_delay(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        let index = usize::try_from(attempts_made.checked_sub(1)?).ok()?;
        let step = *self.steps.get(index)?;
        let jittered = step.mul_f64(rng.gen_range(1.0 - JITTER..=1.0 + JITTER));
        Some(match retry_after {
            Some(ra) => jittered.max(ra.min(RETRY_AFTER_CAP)),
            None => jittered,
        })
    }
}

/// Parses a `Retry-After` value: delay seconds or an HTTP date (a past date means 0).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn the_default_schedule_allows_eight_attempts_with_twenty_percent_jitter() {
        let s = RetrySchedule::parse(DEFAULT_SCHEDULE).unwrap();
        assert_eq!(s.max_attempts(), 8);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let d = s.next_delay(1, None, &mut rng).unwrap();
            assert!(d >= Duration::from_secs(4) && d <= Duration::from_secs(6), "{d:?}");
        }
        assert!(s.next_delay(7, None, &mut rng).is_some());
        assert!(s.next_delay(8, None, &mut rng).is_none());
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_capped_at_an_hour() {
        let s = RetrySchedule::parse("1s").unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(s.next_delay(1, Some(Duration::from_secs(30)), &mut rng), Some(Duration::from_secs(30)));
        assert_eq!(s.next_delay(1, Some(Duration::from_secs(86_400)), &mut rng), Some(Duration::from_secs(3600)));
        let short = s.next_delay(1, Some(Duration::ZERO), &mut rng).unwrap();
        assert!(short >= Duration::from_millis(800));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn schedules_parse_human_durations() {
        assert_eq!(
            RetrySchedule::parse("1s, 2m").unwrap(),
            RetrySchedule::new(vec![Duration::from_secs(1), Duration::from_secs(120)])
        );
        assert!(RetrySchedule::parse("1x").is_err());
        assert_eq!(RetrySchedule::parse("").unwrap().max_attempts(), 1);
    }
}
