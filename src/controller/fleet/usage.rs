//! Usage and invoices: appliance-minutes per team, template, flavor and region from the
//! recorded lifecycle events, and invoices per team and calendar month made with the
//! configured price list: the current month's draft, computed on request, and the
//! months that are over, issued once and kept as issued.

use std::collections::BTreeMap;

use serde_json::json;
use time::{Date, Month, OffsetDateTime, Time};

use super::ids::TeamRef;
use super::teams::Principal;
use super::*;
use crate::controller::invoices::StoredInvoice;
use crate::controller::teams::{Team, TeamRole};
use crate::controller::usage::{self, Line, LineKind, PriceList, UsageKey};

/// Longest period one usage request covers.
pub const MAX_PERIOD_SECS: i64 = 366 * 86_400;
/// Most invoices one page lists.
pub const MAX_INVOICES_PAGE: usize = 100;

/// Appliance-minutes of one team, template, flavor and region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    pub team_id: String,
    pub team: String,
    pub template: Option<String>,
    pub flavor: Option<String>,
    pub region: Option<String>,
    pub minutes: i64,
}

/// Whether an invoice's month is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceStatus {
    /// The current month: it changes until the month is over.
    Draft,
    /// A month that is over: issued once, kept as issued.
    Issued,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Issued => "issued",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub id: String,
    pub team_id: String,
    pub team: String,
    /// `YYYY-MM`.
    pub month: String,
    pub status: InvoiceStatus,
    pub period_start: i64,
    pub period_end: i64,
    pub currency: String,
    /// Minor units.
    pub total: i64,
    pub lines: Vec<Line>,
    pub issued_at: Option<i64>,
}

/// The first second of the month of `t` (UTC).
pub fn month_start(t: i64) -> i64 {
    let date = OffsetDateTime::from_unix_timestamp(t)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .date();
    first_of(date.year(), date.month())
}

fn first_of(year: i32, month: Month) -> i64 {
    Date::from_calendar_date(year, month, 1)
        .map(|d| d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp())
        .unwrap_or_default()
}

/// The first second of the month after the one starting at `start`.
pub fn next_month(start: i64) -> i64 {
    let date = OffsetDateTime::from_unix_timestamp(start)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .date();
    match date.month() {
        Month::December => first_of(date.year() + 1, Month::January),
        m => first_of(date.year(), m.next()),
    }
}

/// `YYYY-MM` of the month starting at `start`.
fn month_name(start: i64) -> String {
    let date = OffsetDateTime::from_unix_timestamp(start)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .date();
    format!("{:04}-{:02}", date.year(), u8::from(date.month()))
}

/// The month `YYYY-MM` names, as its first second.
fn parse_month(s: &str) -> Option<i64> {
    let (y, m) = s.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let month = Month::try_from(m.parse::<u8>().ok()?).ok()?;
    let start = first_of(y.parse().ok()?, month);
    (start > 0).then_some(start)
}

/// An invoice's id: its month and its team (`inv-YYYY-MM-TEAMID`): the draft and the
/// issued invoice of a month are one.
fn invoice_id(month: &str, team_id: &str) -> String {
    format!("inv-{month}-{team_id}")
}

fn parse_invoice_id(id: &str) -> Option<(i64, &str)> {
    let rest = id.strip_prefix("inv-")?;
    let (month, team) = (rest.get(..7)?, rest.get(8..)?);
    (rest.as_bytes().get(7) == Some(&b'-')).then_some(())?;
    Some((parse_month(month)?, team))
}

fn lines_json(lines: &[Line]) -> String {
    let lines: Vec<Value> = lines
        .iter()
        .map(|l| {
            json!({"kind": l.kind.as_str(), "name": l.name, "minutes": l.minutes,
                   "unit_price": l.unit_price, "amount": l.amount})
        })
        .collect();
    Value::Array(lines).to_string()
}

fn lines_from_json(text: &str) -> Result<Vec<Line>, FleetError> {
    let bad = || FleetError::Internal("an issued invoice's lines cannot be read".into());
    let values: Vec<Value> = serde_json::from_str(text).map_err(|_| bad())?;
    values
        .iter()
        .map(|v| {
            Some(Line {
                kind: match v["kind"].as_str()? {
                    "template" => LineKind::Template,
                    "flavor" => LineKind::Flavor,
                    _ => return None,
                },
                name: v["name"].as_str()?.to_string(),
                minutes: v["minutes"].as_i64()?,
                unit_price: v["unit_price"].as_i64()?,
                amount: v["amount"].as_i64()?,
            })
        })
        .collect::<Option<Vec<Line>>>()
        .ok_or_else(bad)
}

impl Fleet {
    fn price_list(&self) -> PriceList {
        let p = &self.config.prices;
        let table =
            |t: &BTreeMap<String, u32>| t.iter().map(|(k, v)| (k.clone(), i64::from(*v))).collect();
        PriceList {
            currency: p.currency.clone(),
            per_template_minute: table(&p.templates),
            per_flavor_minute: table(&p.flavors),
        }
    }

    /// The end of "now" in whole minutes: the minute under way counts.
    fn minute_end(&self) -> i64 {
        let now = self.clock.now();
        now - now.rem_euclid(60) + 60
    }

    /// Appliance-minutes of `[from, to)`, of one team or of all.
    async fn minutes(
        &self,
        team_id: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<BTreeMap<UsageKey, i64>, FleetError> {
        let billed = self.store.billed(team_id, from, to).await?;
        Ok(usage::usage(&billed, from, to, self.clock.now()))
    }

    /// A team's appliance-minutes this calendar month so far.
    pub(super) async fn minutes_this_month(&self, team_id: &str) -> Result<i64, FleetError> {
        let from = month_start(self.clock.now());
        let used = self.minutes(Some(team_id), from, self.minute_end()).await?;
        Ok(used.values().sum())
    }

    /// Refused when the team has used its appliance-minutes this calendar month
    /// (creating, starting, resuming or extending an appliance would use more).
    pub(super) async fn check_minutes(&self, team: &Team) -> Result<(), FleetError> {
        let Some(limit) = team.quotas.max_appliance_minutes else {
            return Ok(());
        };
        let used = self.minutes_this_month(&team.id).await?;
        if used >= limit {
            return Err(FleetError::QuotaExceeded {
                quota: "max_appliance_minutes",
                limit,
                used,
            });
        }
        Ok(())
    }

    /// Usage over `[from, to)` (whole minutes; default: this month so far) of one team
    /// the caller sees, or of every team it sees (admins: all).
    pub async fn usage(
        &self,
        caller: &Principal,
        team: Option<&str>,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<((i64, i64), Vec<UsageLine>), FleetError> {
        let from = from.unwrap_or_else(|| month_start(self.clock.now()));
        let to = to.unwrap_or_else(|| self.minute_end());
        for (name, t) in [("from", from), ("to", to)] {
            if t.rem_euclid(60) != 0 {
                return Err(FleetError::Invalid(format!(
                    "{name}: a whole minute (seconds 00)"
                )));
            }
        }
        if to <= from || to - from > MAX_PERIOD_SECS {
            return Err(FleetError::Invalid(
                "from must come before to, at most 366 days before".into(),
            ));
        }
        let team = match team {
            Some(t) => Some(
                self.visible_team(caller, &TeamRef::from(t.to_string()))
                    .await?,
            ),
            None => None,
        };
        let used = match (&team, caller.admin) {
            (Some(t), _) => self.minutes(Some(&t.id), from, to).await?,
            (None, true) => self.minutes(None, from, to).await?,
            // Only what the caller's teams used is read.
            (None, false) => {
                let mut all = BTreeMap::new();
                for m in &caller.teams {
                    all.extend(self.minutes(Some(&m.team_id), from, to).await?);
                }
                all
            }
        };
        let names: BTreeMap<String, String> = self
            .store
            .teams()
            .await?
            .into_iter()
            .map(|t| (t.id, t.name))
            .collect();
        let lines = used
            .into_iter()
            .filter(|(key, _)| caller.sees(&key.team_id))
            .map(|(key, minutes)| UsageLine {
                team: names
                    .get(&key.team_id)
                    .cloned()
                    .unwrap_or_else(|| key.team_id.clone()),
                team_id: key.team_id,
                template: key.template,
                flavor: key.flavor,
                region: key.region,
                minutes,
            })
            .collect();
        Ok(((from, to), lines))
    }

    /// The team whose invoices the caller reads: the one named, or its only team; its
    /// owners and admins read them.
    async fn invoice_team(
        &self,
        caller: &Principal,
        team: Option<&str>,
    ) -> Result<Team, FleetError> {
        let team = match team {
            Some(t) => {
                self.visible_team(caller, &TeamRef::from(t.to_string()))
                    .await?
            }
            None => self.only_team(caller).await?,
        };
        caller.needs(&team.id, TeamRole::Owner, "read invoices")?;
        Ok(team)
    }

    /// The invoice of a team for the month starting at `start`: issued (kept, or issued
    /// now) when the month is over or `final_now`, else the draft.
    async fn invoice_of(
        &self,
        team: &Team,
        start: i64,
        final_now: bool,
    ) -> Result<Invoice, FleetError> {
        let end = next_month(start);
        let month = month_name(start);
        let id = invoice_id(&month, &team.id);
        let issued = final_now || end <= self.clock.now();
        if issued && let Some(kept) = self.store.invoice(&team.id, &month).await? {
            return self.stored(team, kept, start, end);
        }
        let used = self.minutes(Some(&team.id), start, end).await?;
        let prices = self.price_list();
        let (lines, total) = usage::invoice_lines(&used, &prices)
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        if issued {
            let kept = self
                .store
                .issue_invoice(&StoredInvoice {
                    id,
                    team_id: team.id.clone(),
                    month,
                    currency: prices.currency,
                    total,
                    lines: lines_json(&lines),
                    issued_at: self.clock.now(),
                })
                .await?;
            return self.stored(team, kept, start, end);
        }
        Ok(Invoice {
            id,
            team_id: team.id.clone(),
            team: team.name.clone(),
            month,
            status: InvoiceStatus::Draft,
            period_start: start,
            period_end: end,
            currency: prices.currency,
            total,
            lines,
            issued_at: None,
        })
    }

    fn stored(
        &self,
        team: &Team,
        kept: StoredInvoice,
        start: i64,
        end: i64,
    ) -> Result<Invoice, FleetError> {
        Ok(Invoice {
            lines: lines_from_json(&kept.lines)?,
            id: kept.id,
            team_id: team.id.clone(),
            team: team.name.clone(),
            month: kept.month,
            status: InvoiceStatus::Issued,
            period_start: start,
            period_end: end,
            currency: kept.currency,
            total: kept.total,
            issued_at: Some(kept.issued_at),
        })
    }

    /// Issues every invoice of a team that has no appliance left, this month's too (its
    /// usage is final): before the team is deleted.
    pub(super) async fn issue_invoices(&self, team: &Team) -> Result<(), FleetError> {
        let current = month_start(self.clock.now());
        if let Some(first) = self.store.first_appliance_at(&team.id).await? {
            let mut m = month_start(first.min(current));
            while m <= current {
                self.invoice_of(team, m, true).await?;
                m = next_month(m);
            }
        }
        Ok(())
    }

    /// A team's invoices, newest first (this month's draft, then every month back to
    /// its first appliance's), a page of them, and how many there are.
    pub async fn invoices(
        &self,
        caller: &Principal,
        team: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Invoice>, usize), FleetError> {
        if limit == 0 || limit > MAX_INVOICES_PAGE {
            return Err(FleetError::Invalid(format!(
                "limit: 1 to {MAX_INVOICES_PAGE}"
            )));
        }
        let team = self.invoice_team(caller, team).await?;
        let now = self.clock.now();
        let current = month_start(now);
        let first = match self.store.first_appliance_at(&team.id).await? {
            Some(t) => month_start(t.min(now)),
            None => current,
        };
        let mut months = Vec::new();
        let mut m = current;
        loop {
            months.push(m);
            if m <= first {
                break;
            }
            // The month before `m`: the start of the month holding its last second.
            m = month_start(m - 1);
        }
        let total = months.len();
        let mut page = Vec::new();
        for start in months.into_iter().skip(offset).take(limit) {
            page.push(self.invoice_of(&team, start, false).await?);
        }
        Ok((page, total))
    }

    /// One invoice by id.
    pub async fn invoice(&self, caller: &Principal, id: &str) -> Result<Invoice, FleetError> {
        let (start, team_id) = parse_invoice_id(id).ok_or(FleetError::NoSuchInvoice)?;
        let team = match self
            .visible_team(caller, &TeamRef::from(team_id.to_string()))
            .await
        {
            Ok(team) => team,
            // A deleted team's invoices stay, for admins.
            Err(_) if caller.admin => {
                let kept = self
                    .store
                    .invoice(team_id, &month_name(start))
                    .await?
                    .ok_or(FleetError::NoSuchInvoice)?;
                let gone = Team {
                    id: team_id.to_string(),
                    name: format!("(deleted team {team_id})"),
                    created_at: 0,
                    quotas: Default::default(),
                };
                return self.stored(&gone, kept, start, next_month(start));
            }
            Err(_) => return Err(FleetError::NoSuchInvoice),
        };
        if team.id != team_id || start > self.clock.now() {
            return Err(FleetError::NoSuchInvoice);
        }
        caller.needs(&team.id, TeamRole::Owner, "read invoices")?;
        self.invoice_of(&team, start, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_invoice_ids() {
        let dec1 = 1_796_083_200; // 2026-12-01T00:00:00Z
        assert_eq!(month_start(dec1 + 86_400 * 20 + 5), dec1);
        assert_eq!(month_start(dec1 - 1), dec1 - 30 * 86_400);
        assert_eq!(next_month(dec1), dec1 + 31 * 86_400);
        assert_eq!(month_name(dec1), "2026-12");
        assert_eq!(parse_month("2026-12"), Some(dec1));
        for bad in ["2026-13", "2026-1", "26-12", "x"] {
            assert_eq!(parse_month(bad), None, "{bad}");
        }
        let id = invoice_id("2026-12", "t-1");
        assert_eq!(id, "inv-2026-12-t-1");
        assert_eq!(parse_invoice_id(&id), Some((dec1, "t-1")));
        assert_eq!(parse_invoice_id("inv-2026-12"), None);
        assert_eq!(parse_invoice_id("inv-2026-12_t"), None);
        let lines = vec![Line {
            kind: LineKind::Flavor,
            name: "small".into(),
            minutes: 3,
            unit_price: 2,
            amount: 6,
        }];
        assert_eq!(lines_from_json(&lines_json(&lines)).unwrap(), lines);
    }
}
