//! `/v1/usage` and `/v1/invoices`: appliance-minutes and what they cost, in JSON, or in
//! CSV for `Accept: text/csv`. Money is integer minor units with its currency.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Caller, Id, Params};
use super::views::ok;
use super::{ApiError, ApiState};
use crate::controller::fleet::ids::InvoiceId;
use crate::controller::fleet::usage::{Invoice, UsageLine};

/// The period and team of a usage report.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// A team by id or name; default: every team the caller sees.
    team: Option<String>,
    /// The start, RFC 3339 (whole minutes) or `YYYY-MM-DD`; default: this month's first
    /// day.
    #[param(format = DateTime)]
    from: Option<String>,
    /// The end (excluded), as `from`; default: the end of the minute under way.
    #[param(format = DateTime)]
    to: Option<String>,
}

/// A page of a team's invoices.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvoicesQuery {
    /// A team by id or name; default: the caller's only team.
    team: Option<String>,
    /// Invoices skipped (newest first); default 0.
    #[param(minimum = 0, maximum = 100000)]
    offset: Option<u32>,
    /// Invoices shown, 1 to 100; default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// Appliance-minutes of one team, template, flavor and region over a period.
#[derive(Serialize, ToSchema)]
pub struct UsageLineView {
    pub team_id: String,
    pub team: String,
    pub template: Option<String>,
    pub flavor: Option<String>,
    pub region: Option<String>,
    pub from: String,
    pub to: String,
    pub appliance_minutes: i64,
}

/// One line of an invoice: the minutes of a template or a flavor at its price.
#[derive(Serialize, ToSchema)]
pub struct InvoiceLineView {
    /// `template` or `flavor`.
    pub kind: String,
    pub name: String,
    pub minutes: i64,
    /// Minor units of the currency per minute.
    pub unit_price: i64,
    /// Minor units.
    pub amount: i64,
}

/// An invoice of a team for a calendar month.
#[derive(Serialize, ToSchema)]
pub struct InvoiceView {
    pub id: String,
    pub team_id: String,
    pub team: String,
    /// `YYYY-MM`.
    pub month: String,
    /// `draft` (this month, still changing) or `issued` (a month that is over, kept as
    /// issued).
    pub status: String,
    pub period_start: String,
    pub period_end: String,
    /// ISO 4217.
    pub currency: String,
    /// Minor units (cents).
    pub total: i64,
    pub lines: Vec<InvoiceLineView>,
    pub issued_at: Option<String>,
}

impl From<&Invoice> for InvoiceView {
    fn from(i: &Invoice) -> Self {
        InvoiceView {
            id: i.id.clone(),
            team_id: i.team_id.clone(),
            team: i.team.clone(),
            month: i.month.clone(),
            status: i.status.as_str().to_string(),
            period_start: crate::certs::format_unix(i.period_start),
            period_end: crate::certs::format_unix(i.period_end),
            currency: i.currency.clone(),
            total: i.total,
            lines: i
                .lines
                .iter()
                .map(|l| InvoiceLineView {
                    kind: l.kind.as_str().to_string(),
                    name: l.name.clone(),
                    minutes: l.minutes,
                    unit_price: l.unit_price,
                    amount: l.amount,
                })
                .collect(),
            issued_at: i.issued_at.map(crate::certs::format_unix),
        }
    }
}

/// A page of invoices.
#[derive(Serialize, ToSchema)]
pub struct InvoicePage {
    pub items: Vec<InvoiceView>,
    /// How many invoices the team has.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
}

/// Whether the client asked for CSV.
fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.split(';').next().unwrap_or_default().trim() == "text/csv")
}

/// Rows as CSV (the `csv` crate quotes what needs quoting).
fn csv_response(header_row: &[&str], rows: Vec<Vec<String>>) -> Result<Response, ApiError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let failed = |e: csv::Error| {
        ApiError::from(crate::controller::fleet::FleetError::Internal(
            e.to_string(),
        ))
    };
    w.write_record(header_row).map_err(failed)?;
    for row in rows {
        w.write_record(&row).map_err(failed)?;
    }
    let body = w
        .into_inner()
        .map_err(|e| crate::controller::fleet::FleetError::Internal(e.to_string()))?;
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    Ok(r)
}

/// A time of a query: RFC 3339, or a date (its midnight, UTC).
fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(value, &format)
        .map(|d| {
            d.with_time(time::Time::MIDNIGHT)
                .assume_utc()
                .unix_timestamp()
        })
        .map_err(|_| {
            ApiError::Malformed(format!(
                "{name}: an RFC 3339 time (2026-12-01T00:00:00Z) or a date (2026-12-01)"
            ))
        })
}

fn cell(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

/// Appliance-minutes per team, template, flavor and region over a period.
#[utoipa::path(operation_id = "get_usage", get, path = "/v1/usage", tag = "usage", params(UsageQuery),
    responses(
        (status = 200, description = "The usage; CSV for `Accept: text/csv`", content(
            (Vec<UsageLineView> = "application/json"), (String = "text/csv"))),
        (status = 404, description = "No such team (or not one of the caller's)"),
        (status = 422, description = "A period that is not whole minutes, is reversed or longer than 366 days"),
    ))]
pub async fn usage(
    State(s): State<ApiState>,
    Caller(me): Caller,
    headers: HeaderMap,
    Params(q): Params<UsageQuery>,
) -> Result<Response, ApiError> {
    let from = q
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?;
    let to = q.to.as_deref().map(|v| parse_time("to", v)).transpose()?;
    let ((from, to), lines) = s.fleet.usage(&me, q.team.as_deref(), from, to).await?;
    let (from, to) = (
        crate::certs::format_unix(from),
        crate::certs::format_unix(to),
    );
    let view = |l: UsageLine| UsageLineView {
        team_id: l.team_id,
        team: l.team,
        template: l.template,
        flavor: l.flavor,
        region: l.region,
        from: from.clone(),
        to: to.clone(),
        appliance_minutes: l.minutes,
    };
    let lines: Vec<UsageLineView> = lines.into_iter().map(view).collect();
    if wants_csv(&headers) {
        let rows = lines
            .iter()
            .map(|l| {
                vec![
                    l.team_id.clone(),
                    l.team.clone(),
                    cell(&l.template),
                    cell(&l.flavor),
                    cell(&l.region),
                    l.from.clone(),
                    l.to.clone(),
                    l.appliance_minutes.to_string(),
                ]
            })
            .collect();
        let header_row = [
            "team_id",
            "team",
            "template",
            "flavor",
            "region",
            "from",
            "to",
            "appliance_minutes",
        ];
        return csv_response(&header_row, rows);
    }
    Ok(ok(lines))
}

/// A team's invoices, newest first: this month's draft, then one per month back to the
/// team's first appliance (its owners and admins).
#[utoipa::path(operation_id = "list_invoices", get, path = "/v1/invoices", tag = "usage", params(InvoicesQuery),
    responses(
        (status = 200, description = "A page of invoices; CSV (one row each) for `Accept: text/csv`", content(
            (InvoicePage = "application/json"), (String = "text/csv"))),
        (status = 403, description = "Not an owner of the team"),
        (status = 404, description = "No such team"),
        (status = 422, description = "No team named (the caller has several), or a limit out of range"),
    ))]
pub async fn list_invoices(
    State(s): State<ApiState>,
    Caller(me): Caller,
    headers: HeaderMap,
    Params(q): Params<InvoicesQuery>,
) -> Result<Response, ApiError> {
    let (offset, limit) = (
        q.offset.unwrap_or(0) as usize,
        q.limit.unwrap_or(20) as usize,
    );
    let (invoices, total) = s
        .fleet
        .invoices(&me, q.team.as_deref(), offset, limit)
        .await?;
    let items: Vec<InvoiceView> = invoices.iter().map(InvoiceView::from).collect();
    if wants_csv(&headers) {
        let rows = items
            .iter()
            .map(|i| {
                vec![
                    i.id.clone(),
                    i.team.clone(),
                    i.month.clone(),
                    i.status.clone(),
                    i.currency.clone(),
                    i.total.to_string(),
                ]
            })
            .collect();
        return csv_response(
            &["id", "team", "month", "status", "currency", "total"],
            rows,
        );
    }
    Ok(ok(InvoicePage {
        items,
        total,
        offset,
        limit,
    }))
}

/// One invoice with its lines (the team's owners and admins).
#[utoipa::path(operation_id = "get_invoice", get, path = "/v1/invoices/{id}", tag = "usage", params(("id" = String, Path)),
    responses(
        (status = 200, description = "The invoice; its lines as CSV for `Accept: text/csv`", content(
            (InvoiceView = "application/json"), (String = "text/csv"))),
        (status = 403, description = "Not an owner of the team"),
        (status = 404, description = "No such invoice"),
    ))]
pub async fn get_invoice(
    State(s): State<ApiState>,
    Caller(me): Caller,
    headers: HeaderMap,
    Id(id): Id<InvoiceId>,
) -> Result<Response, ApiError> {
    let invoice = InvoiceView::from(&s.fleet.invoice(&me, id.as_str()).await?);
    if wants_csv(&headers) {
        let rows = invoice
            .lines
            .iter()
            .map(|l| {
                vec![
                    invoice.id.clone(),
                    invoice.month.clone(),
                    l.kind.clone(),
                    l.name.clone(),
                    l.minutes.to_string(),
                    l.unit_price.to_string(),
                    l.amount.to_string(),
                    invoice.currency.clone(),
                ]
            })
            .collect();
        let header_row = [
            "invoice",
            "month",
            "kind",
            "name",
            "minutes",
            "unit_price",
            "amount",
            "currency",
        ];
        return csv_response(&header_row, rows);
    }
    Ok(ok(invoice))
}
