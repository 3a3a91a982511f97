//! The connection's Get User script, as Auth0 runs it when the Update-a-user endpoint changes
//! the email or username of a user of an import-mode connection: to check that the new value is
//! not taken in the legacy store ("Configure Automatic Migration", legacy docs: "The Management
//! API receives a call to the update a user's email or username endpoint"; the Get User template
//! page of auth0/docs-v2 names the email change). When the script returns a user, Auth0 refuses
//! the change with "The specified new email already exists" (Auth0 support, "Email Conflict
//! During Automatic Migration with Auth0 Custom Database Connections").
//!
//! The simulator's script is a query against a PostgreSQL database, as a real script runs one
//! against the legacy store: any row means "found".

use axum::http::StatusCode;

use super::GetUserScript;
use super::reply::ApiError;

/// Whether the script finds `value` (an email or username, lower-cased).
pub(crate) async fn finds(script: &GetUserScript, value: &str) -> Result<bool, ApiError> {
    let failed = |error: tokio_postgres::Error| {
        ApiError::bad_request(
            format!("the Get User script failed: {error}"),
            "auth0_idp_error",
        )
    };
    let (client, connection) = tokio_postgres::connect(&script.database_url, tokio_postgres::NoTls)
        .await
        .map_err(failed)?;
    let connection = tokio::spawn(connection);
    let rows = client.query(script.query.as_str(), &[&value]).await;
    drop(client);
    let _ = connection.await;
    Ok(!rows.map_err(failed)?.is_empty())
}

/// Auth0's answer when the script found the new value. The status and message follow the
/// support article and what client libraries match on; the `errorCode` is the one Auth0 uses
/// for custom-database script outcomes (`auth0_idp_error`), not documented for this case.
pub(crate) fn refusal(attribute: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("The specified new {attribute} already exists"),
        "auth0_idp_error",
    )
}
