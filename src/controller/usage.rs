//! Usage, pure: appliance-minutes from the states an appliance went through, and the
//! invoice lines a price list makes of them. A minute of the clock (`[60m, 60m + 60)`)
//! counts once for an appliance that was billed at any moment of it (see
//! [`State::is_billed`]); periods are whole minutes, so a minute is never counted in
//! two periods, and usage split at a month's end adds up to the usage of both months.

use std::collections::BTreeMap;

use super::lifecycle::State;

/// When an appliance entered each state, oldest first (its events).
pub type StateChanges = Vec<(i64, State)>;

/// The minutes of `[from, to)` in which an appliance with these state changes was
/// billed, the last state lasting until `now`. `from` and `to` are whole minutes.
pub fn billed_minutes(changes: &[(i64, State)], from: i64, to: i64, now: i64) -> i64 {
    let mut minutes = 0;
    // The last minute counted, so that intervals touching the same minute count it once.
    let mut last_counted: Option<i64> = None;
    for (i, (start, state)) in changes.iter().enumerate() {
        if !state.is_billed() {
            continue;
        }
        let end = changes.get(i + 1).map_or(now, |(at, _)| *at).min(now);
        let (start, end) = ((*start).max(from), end.min(to));
        if end <= start {
            continue;
        }
        let first = start.div_euclid(60);
        let last = (end - 1).div_euclid(60);
        let first = match last_counted {
            Some(counted) if counted >= first => counted + 1,
            _ => first,
        };
        if last >= first {
            minutes += last - first + 1;
            last_counted = Some(last);
        }
    }
    minutes
}

/// What usage is counted by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    pub team_id: String,
    pub template: Option<String>,
    pub flavor: Option<String>,
    pub region: Option<String>,
}

/// An appliance as usage sees it: what it is counted by, and its state changes.
pub struct Billed {
    pub key: UsageKey,
    pub changes: StateChanges,
}

/// The minutes of `[from, to)` per key, for keys with any (in key order).
pub fn usage(appliances: &[Billed], from: i64, to: i64, now: i64) -> BTreeMap<UsageKey, i64> {
    let mut totals = BTreeMap::new();
    for a in appliances {
        let minutes = billed_minutes(&a.changes, from, to, now);
        if minutes > 0 {
            *totals.entry(a.key.clone()).or_insert(0) += minutes;
        }
    }
    totals
}

/// Prices per minute in minor units of one currency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceList {
    pub currency: String,
    pub per_template_minute: BTreeMap<String, i64>,
    pub per_flavor_minute: BTreeMap<String, i64>,
}

/// What an invoice line charges for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LineKind {
    Template,
    Flavor,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Template => "template",
            LineKind::Flavor => "flavor",
        }
    }
}

/// One line of an invoice: minutes of a template or a flavor at its price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub kind: LineKind,
    pub name: String,
    pub minutes: i64,
    /// Minor units per minute.
    pub unit_price: i64,
    /// Minor units.
    pub amount: i64,
}

/// Why an invoice cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the amount of {what} does not fit in 64 bits")]
pub struct Overflow {
    what: String,
}

/// The lines of one team's usage under a price list: one per template and one per
/// flavor used (unpriced ones at 0), in that order, by name; and their total.
pub fn invoice_lines(
    usage: &BTreeMap<UsageKey, i64>,
    prices: &PriceList,
) -> Result<(Vec<Line>, i64), Overflow> {
    let mut minutes: BTreeMap<(LineKind, String), i64> = BTreeMap::new();
    for (key, m) in usage {
        for (kind, name) in [
            (LineKind::Template, &key.template),
            (LineKind::Flavor, &key.flavor),
        ] {
            if let Some(name) = name {
                *minutes.entry((kind, name.clone())).or_insert(0) += m;
            }
        }
    }
    let mut lines = Vec::new();
    let mut total: i64 = 0;
    for ((kind, name), minutes) in minutes {
        let table = match kind {
            LineKind::Template => &prices.per_template_minute,
            LineKind::Flavor => &prices.per_flavor_minute,
        };
        let unit_price = table.get(&name).copied().unwrap_or(0);
        let overflow = || Overflow {
            what: format!("{} {name}", kind.as_str()),
        };
        let amount = minutes.checked_mul(unit_price).ok_or_else(overflow)?;
        total = total.checked_add(amount).ok_or_else(overflow)?;
        lines.push(Line {
            kind,
            name,
            minutes,
            unit_price,
            amount,
        });
    }
    Ok((lines, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    const T0: i64 = 1_800_000_000; // a whole hour

    #[test]
    fn minutes_count_once_and_only_while_billed() {
        // Provisioned for 30 s (not billed), booting at 0:00:30, active, stopped at
        // 0:10:10, started again at 0:10:50, deleted at 0:20:00.
        let changes = vec![
            (T0, Requested),
            (T0 + 10, Provisioning),
            (T0 + 30, Booting),
            (T0 + 31, Active),
            (T0 + 610, Stopping),
            (T0 + 612, Stopped),
            (T0 + 650, Booting),
            (T0 + 651, Active),
            (T0 + 1200, Stopping),
            (T0 + 1202, Deleted),
        ];
        let day = (T0, T0 + 86_400);
        // Minutes 0..=10 (11: minute 10 is billed from both sides, once) and 10..=20:
        // minute 10 once, minutes 11..=19, and minute 20 (stopping until 0:20:02).
        assert_eq!(billed_minutes(&changes, day.0, day.1, T0 + 99_999), 21);
        // Split at 0:10:00: 10 minutes before, 11 from then; together the whole.
        assert_eq!(billed_minutes(&changes, T0, T0 + 600, T0 + 99_999), 10);
        assert_eq!(billed_minutes(&changes, T0 + 600, day.1, T0 + 99_999), 11);
        // Still running: counted until now.
        let running = vec![(T0, Booting), (T0 + 5, Active)];
        assert_eq!(billed_minutes(&running, day.0, day.1, T0 + 120), 2);
        assert_eq!(billed_minutes(&running, day.0, day.1, T0 + 121), 3);
        // Never billed: never launched.
        let failed = vec![(T0, Requested), (T0 + 1, Provisioning), (T0 + 2, Failed)];
        assert_eq!(billed_minutes(&failed, day.0, day.1, T0 + 999), 0);
        // A period before it existed.
        assert_eq!(billed_minutes(&running, T0 - 600, T0, T0 + 999), 0);
    }

    #[test]
    fn usage_across_a_month_boundary_adds_up() {
        // 2026-11-30 23:50 to 2026-12-01 00:20.
        let dec1 = 1_796_083_200; // 2026-12-01T00:00:00Z
        let changes = vec![(dec1 - 600, Booting), (dec1 + 1200, Stopped)];
        assert_eq!(
            billed_minutes(&changes, dec1 - 30 * 86_400, dec1, dec1 + 9_999),
            10
        );
        assert_eq!(
            billed_minutes(&changes, dec1, dec1 + 31 * 86_400, dec1 + 9_999),
            20
        );
    }

    #[test]
    fn invoices_price_templates_and_flavors_in_minor_units() {
        let key = |template: &str, flavor: &str| UsageKey {
            team_id: "t".into(),
            template: Some(template.into()),
            flavor: Some(flavor.into()),
            region: Some("r".into()),
        };
        let usage = BTreeMap::from([(key("edge", "small"), 100), (key("edge", "large"), 30)]);
        let prices = PriceList {
            currency: "EUR".into(),
            per_template_minute: BTreeMap::from([("edge".into(), 2)]),
            per_flavor_minute: BTreeMap::from([("large".into(), 5)]),
        };
        let (lines, total) = invoice_lines(&usage, &prices).unwrap();
        let summary: Vec<(&str, &str, i64, i64, i64)> = lines
            .iter()
            .map(|l| {
                (
                    l.kind.as_str(),
                    l.name.as_str(),
                    l.minutes,
                    l.unit_price,
                    l.amount,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("template", "edge", 130, 2, 260),
                ("flavor", "large", 30, 5, 150),
                ("flavor", "small", 100, 0, 0),
            ]
        );
        assert_eq!(total, 410);
        let huge = PriceList {
            per_template_minute: BTreeMap::from([("edge".into(), i64::MAX)]),
            ..prices
        };
        assert!(invoice_lines(&usage, &huge).is_err());
    }
}
