//! User search, `GET /api/v2/users?q=…&search_engine=v3`: the query-string validation, the
//! 1,000-result paging cap, and the small subset of the Lucene query syntax the simulator
//! understands (`field:"value"` terms joined by `AND`, on `identities.connection`, `user_id`
//! and `email`). Results are always sorted by `user_id`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::reply::ApiError;
use super::tenant::Tenant;

/// Auth0 never pages past this many results.
pub(crate) const MAX_RESULTS: u64 = 1_000;
pub(crate) const MAX_PER_PAGE: u64 = 100;
const DEFAULT_PER_PAGE: u64 = 50;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    pub connection: Option<String>,
    pub user_id: Option<String>,
    /// Compared case-insensitively.
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SearchRequest {
    pub filter: Filter,
    pub page: u64,
    pub per_page: u64,
    pub include_totals: bool,
}

/// Validates the query string as Auth0 does.
pub(crate) fn parse(params: &HashMap<String, String>) -> Result<SearchRequest, ApiError> {
    if let Some(engine) = params.get("search_engine")
        && engine != "v3"
    {
        return Err(ApiError::invalid_query(format!(
            "'search_engine' {engine:?} is not supported (the simulator implements v3 only)"
        )));
    }
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        match params.get(name) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| {
                ApiError::invalid_query(format!(
                    "'Expected type integer but found type string' on property {name}."
                ))
            }),
        }
    };
    let page = number("page", 0)?;
    let per_page = number("per_page", DEFAULT_PER_PAGE)?;
    if per_page > MAX_PER_PAGE {
        return Err(ApiError::invalid_query(format!(
            "'per_page' must be <= {MAX_PER_PAGE}"
        )));
    }
    let include_totals = match params.get("include_totals").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid_query(format!(
                "'include_totals' must be true or false, not {other:?}"
            )));
        }
    };
    if page.saturating_mul(per_page) >= MAX_RESULTS {
        return Err(ApiError::bad_request(
            "You can only page through the first 1000 records. See \
             https://auth0.com/docs/users/search/v3/view-search-results-by-page#limitation",
            "invalid_paging",
        ));
    }
    let filter = match params.get("q") {
        None => Filter::default(),
        Some(q) => parse_q(q).map_err(ApiError::invalid_query)?,
    };
    Ok(SearchRequest {
        filter,
        page,
        per_page,
        include_totals,
    })
}

fn parse_q(q: &str) -> Result<Filter, String> {
    let mut filter = Filter::default();
    for term in q.split(" AND ").map(str::trim).filter(|t| !t.is_empty()) {
        let Some((field, value)) = term.split_once(':') else {
            return Err(format!("cannot parse the search term {term:?}"));
        };
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value)
            .to_owned();
        let slot = match field {
            "identities.connection" => &mut filter.connection,
            "user_id" => &mut filter.user_id,
            "email" => &mut filter.email,
            _ => {
                return Err(format!(
                    "the simulator cannot search on {field:?} (only identities.connection, \
                     user_id and email, joined by AND)"
                ));
            }
        };
        *slot = Some(value);
    }
    Ok(filter)
}

/// Runs a validated search; the answer is the bare array or the `include_totals` object.
pub(crate) fn run(tenant: &Tenant, request: &SearchRequest) -> Value {
    let filter = &request.filter;
    let connection = match &filter.connection {
        None => None,
        Some(name) => match tenant.connections().iter().position(|c| &c.name == name) {
            Some(index) => Some(index),
            // No such connection: nothing matches.
            None => Some(usize::MAX),
        },
    };
    let start = request.page * request.per_page;
    let end = (start + request.per_page).min(MAX_RESULTS);
    let mut total = 0u64;
    let mut users = Vec::new();
    for (user_id, stored) in tenant.iter() {
        if connection.is_some_and(|index| stored.connection != index)
            || filter.user_id.as_ref().is_some_and(|id| id != user_id)
        {
            continue;
        }
        let in_page = (start..end).contains(&total);
        if filter.email.is_some() || in_page {
            let Some((profile, _)) = tenant.profile(user_id) else {
                continue;
            };
            if let Some(email) = &filter.email {
                let matches = profile
                    .get("email")
                    .and_then(Value::as_str)
                    .is_some_and(|own| own.eq_ignore_ascii_case(email));
                if !matches {
                    continue;
                }
            }
            if in_page {
                users.push(Value::Object(profile));
            }
        }
        total += 1;
    }
    if request.include_totals {
        json!({
            "start": start,
            "limit": request.per_page,
            "length": users.len(),
            "total": total,
            "users": users,
        })
    } else {
        Value::Array(users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_validation() {
        let too_big = parse(&params(&[("per_page", "101")])).unwrap_err();
        assert_eq!(
            too_big.message,
            "Query validation error: 'per_page' must be <= 100"
        );
        assert_eq!(too_big.error_code, Some("invalid_query_string"));
        let paging = parse(&params(&[("per_page", "100"), ("page", "10")])).unwrap_err();
        assert_eq!(paging.error_code, Some("invalid_paging"));
        let ok = parse(&params(&[
            ("per_page", "100"),
            ("page", "9"),
            (
                "q",
                r#"identities.connection:"legacy users" AND email:A@b.c"#,
            ),
            ("include_totals", "true"),
        ]))
        .unwrap();
        assert_eq!(ok.filter.connection.as_deref(), Some("legacy users"));
        assert_eq!(ok.filter.email.as_deref(), Some("A@b.c"));
        assert!(parse(&params(&[("q", "name:x")])).is_err());
        assert!(parse(&params(&[("search_engine", "v2")])).is_err());
        assert!(parse(&params(&[("page", "-1")])).is_err());
    }
}
