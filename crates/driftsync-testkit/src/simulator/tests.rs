//! The simulator over real HTTP: every test starts one on 127.0.0.1 and talks to it with
//! reqwest, as driftsync does.

use std::io::Read;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use super::*;

const CONNECTION: &str = "legacy-users";

fn quick() -> SimulatorConfig {
    SimulatorConfig {
        export_pending: Duration::from_millis(60),
        export_processing: Duration::from_millis(60),
        ..SimulatorConfig::default()
    }
}

struct Harness {
    sim: Simulator,
    http: Client,
    token: String,
}

impl Harness {
    async fn start(config: SimulatorConfig) -> Harness {
        let sim = Simulator::start(config).await.unwrap();
        let http = Client::new();
        let token = token(&sim, &http).await;
        Harness { sim, http, token }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let response = self.send(method, path, body).await;
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.json(Method::GET, path, None).await
    }

    async fn patch(&self, user: &str, body: Value) -> (StatusCode, Value) {
        let path = format!("/api/v2/users/{}", user.replace('|', "%7C"));
        self.json(Method::PATCH, &path, Some(body)).await
    }
}

async fn token(sim: &Simulator, http: &Client) -> String {
    let config = sim.config();
    let response = http
        .post(format!("{}/oauth/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", config.client_id.as_str()),
            ("client_secret", config.client_secret.as_str()),
            ("audience", &format!("https://{}/api/v2/", config.domain)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn token_endpoint_accepts_form_and_json_and_refuses_bad_requests() {
    let sim = Simulator::start(SimulatorConfig::default()).await.unwrap();
    let http = Client::new();
    let url = format!("{}/oauth/token", sim.base_url());
    let audience = "https://tenant.simulator.local/api/v2/";
    let ask = |body: Value| http.post(&url).json(&body).send();

    let ok = ask(
        json!({"grant_type": "client_credentials", "client_id": "driftsync-test",
                        "client_secret": "test-secret", "audience": audience}),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 86_400);
    assert!(body["scope"].as_str().unwrap().contains("update:users"));

    let cases = [
        (
            json!({"grant_type": "client_credentials", "client_id": "driftsync-test",
                   "client_secret": "wrong", "audience": audience}),
            401,
            json!({"error": "access_denied", "error_description": "Unauthorized"}),
        ),
        (
            json!({"grant_type": "client_credentials", "client_id": "driftsync-test",
                   "client_secret": "test-secret", "audience": "https://other/api/v2/"}),
            403,
            json!({"error": "access_denied",
                   "error_description": "Service not found: https://other/api/v2/"}),
        ),
        (
            json!({"grant_type": "password", "client_id": "driftsync-test",
                   "client_secret": "test-secret", "audience": audience}),
            400,
            json!({"error": "unsupported_grant_type",
                   "error_description": "Unsupported grant type: password"}),
        ),
    ];
    for (request, status, expected) in cases {
        let response = ask(request).await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(response.json::<Value>().await.unwrap(), expected);
    }
    assert_eq!(sim.stats().token_requests, 4);
    assert_eq!(sim.stats().requests, 0);
}

#[tokio::test]
async fn tokens_are_required_expire_and_can_be_revoked() {
    let config = SimulatorConfig {
        token_lifetime: Duration::from_millis(300),
        ..SimulatorConfig::default()
    };
    let h = Harness::start(config).await;
    let (status, _) = h.get("/api/v2/connections").await;
    assert_eq!(status, StatusCode::OK);

    let missing = h
        .http
        .get(h.url("/api/v2/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&missing, "x-ratelimit-remaining").is_some());
    let invalid = h
        .http
        .get(h.url("/api/v2/connections"))
        .bearer_auth("made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(
        invalid.json::<Value>().await.unwrap(),
        json!({"statusCode": 401, "error": "Unauthorized", "message": "Invalid token",
               "attributes": {"error": "Invalid token"}})
    );

    let malformed = h
        .http
        .get(h.url("/api/v2/connections"))
        .header("authorization", "Token abc")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);

    tokio::time::sleep(Duration::from_millis(350)).await;
    let (status, body) = h.get("/api/v2/connections").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "Expired token");

    let fresh = token(&h.sim, &h.http).await;
    h.sim.revoke_tokens();
    let revoked = h
        .http
        .get(h.url("/api/v2/connections"))
        .bearer_auth(fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
}

fn seed_export_users(sim: &Simulator) -> String {
    let id = sim.add_connection(CONNECTION, true);
    sim.add_connection("other", true);
    sim.insert_user(
        CONNECTION,
        json!({"user_id": "auth0|2", "email": "b@x.io", "name": "B", "blocked": true,
               "created_at": "2024-01-02T00:00:00.000Z"}),
    );
    sim.insert_user(
        CONNECTION,
        json!({"user_id": "auth0|1", "email": "a@x.io", "created_at": "2024-01-01T00:00:00.000Z"}),
    );
    sim.insert_user("other", json!({"user_id": "auth0|3", "email": "c@x.io"}));
    id
}

async fn download(h: &Harness, location: &str) -> reqwest::Response {
    // No bearer token: the link is signed.
    h.http.get(location).send().await.unwrap()
}

fn gunzip_lines(bytes: &[u8]) -> Vec<Value> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn wait_completed(h: &Harness, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = h.get(&format!("/api/v2/jobs/{job}")).await;
        assert_eq!(status, StatusCode::OK);
        if body["status"] == "completed" {
            return body;
        }
        assert!(Instant::now() < deadline, "job never completed: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn export_job_lifecycle_and_signed_downloads() {
    let h = Harness::start(SimulatorConfig {
        download_link_ttl: Duration::from_millis(300),
        export_processing: Duration::from_millis(250),
        ..quick()
    })
    .await;
    let connection_id = seed_export_users(&h.sim);
    let fields = json!([
        {"name": "user_id"},
        {"name": "email"},
        {"name": "blocked"},
        {"name": "identities[0].connection", "export_as": "connection"},
    ]);
    let (status, created) = h
        .json(
            Method::POST,
            "/api/v2/jobs/users-exports",
            Some(json!({"connection_id": connection_id, "format": "json", "fields": fields})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["status"], "pending");
    assert_eq!(created["type"], "users_export");
    assert_eq!(created["connection"], CONNECTION);
    assert_eq!(created["fields"], fields);
    let job = created["id"].as_str().unwrap().to_owned();
    assert!(job.starts_with("job_"));

    let (_, pending) = h.get(&format!("/api/v2/jobs/{job}")).await;
    assert_eq!(pending["status"], "pending");
    tokio::time::sleep(Duration::from_millis(80)).await;
    let (_, processing) = h.get(&format!("/api/v2/jobs/{job}")).await;
    assert_eq!(processing["status"], "processing");
    assert!(processing["time_left_seconds"].is_u64());
    // A user added now is in the export: the snapshot is taken at completion.
    h.sim
        .insert_user(CONNECTION, json!({"user_id": "auth0|0", "email": "z@x.io"}));

    let completed = wait_completed(&h, &job).await;
    let location = completed["location"].as_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("{}/download/{job}?expires=", h.sim.base_url())));
    let response = download(&h, &location).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), Some("application/gzip"));
    let lines = gunzip_lines(&response.bytes().await.unwrap());
    assert_eq!(
        lines,
        [
            json!({"user_id": "auth0|0", "email": "z@x.io", "connection": CONNECTION}),
            json!({"user_id": "auth0|1", "email": "a@x.io", "connection": CONNECTION}),
            json!({"user_id": "auth0|2", "email": "b@x.io", "blocked": true,
                   "connection": CONNECTION}),
        ]
    );

    let tampered = location.replace("sig=", "sig=0");
    let forbidden = download(&h, &tampered).await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

    tokio::time::sleep(Duration::from_millis(350)).await;
    let expired = download(&h, &location).await;
    assert_eq!(expired.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&expired, "content-type"), Some("application/xml"));
    assert_eq!(
        expired.text().await.unwrap(),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    );
    let again = wait_completed(&h, &job).await;
    let fresh = again["location"].as_str().unwrap();
    assert_ne!(fresh, location, "every GET signs a new link");
    assert_eq!(download(&h, fresh).await.status(), StatusCode::OK);

    let stats = h.sim.stats();
    assert_eq!(stats.downloads, 4);
    assert!(stats.by_endpoint["GET /api/v2/jobs/{id}"] >= 4);
}

#[tokio::test]
async fn export_errors_and_range_downloads() {
    let h = Harness::start(quick()).await;
    let connection_id = seed_export_users(&h.sim);
    let post = |body: Value| h.json(Method::POST, "/api/v2/jobs/users-exports", Some(body));
    let (status, body) = post(json!({"connection_id": "con_nope", "format": "json"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errorCode"], "inexistent_connection");
    let (status, body) = post(json!({"connection_id": connection_id, "format": "csv"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("csv"));
    let (status, body) = h.get("/api/v2/jobs/job_0000000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errorCode"], "inexistent_job");

    // No fields: whole profiles.
    let (_, created) = post(json!({"connection_id": connection_id, "format": "json"})).await;
    let completed = wait_completed(&h, created["id"].as_str().unwrap()).await;
    let location = completed["location"].as_str().unwrap();
    let full = download(&h, location).await.bytes().await.unwrap();
    let lines = gunzip_lines(&full);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["identities"][0]["connection"], CONNECTION);

    let partial = h
        .http
        .get(location)
        .header("range", "bytes=10-")
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    let expected_range = format!("bytes 10-{}/{}", full.len() - 1, full.len());
    assert_eq!(
        header(&partial, "content-range"),
        Some(expected_range.as_str())
    );
    let rest = partial.bytes().await.unwrap();
    assert_eq!(&full[10..], &rest[..]);
    let beyond = h
        .http
        .get(location)
        .header("range", format!("bytes={}-", full.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn search_validates_paging_and_filters_by_connection() {
    let h = Harness::start(SimulatorConfig {
        limits: Limits::unlimited(),
        ..SimulatorConfig::default()
    })
    .await;
    h.sim.add_connection(CONNECTION, true);
    for id in 0..30 {
        h.sim
            .insert_user(CONNECTION, json!({"user_id": format!("auth0|{id:03}")}));
    }
    h.sim
        .insert_user("other", json!({"user_id": "auth0|other"}));
    let q = "q=identities.connection%3A%22legacy-users%22&search_engine=v3";

    let (status, body) = h.get(&format!("/api/v2/users?{q}&per_page=101")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"statusCode": 400, "error": "Bad Request",
               "message": "Query validation error: 'per_page' must be <= 100",
               "errorCode": "invalid_query_string"})
    );
    let (status, body) = h
        .get(&format!("/api/v2/users?{q}&per_page=100&page=10"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errorCode"], "invalid_paging");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("You can only page through the first 1000 records.")
    );

    let (status, page) = h
        .get(&format!(
            "/api/v2/users?{q}&per_page=20&page=1&include_totals=true"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            &page["start"],
            &page["limit"],
            &page["length"],
            &page["total"]
        ),
        (&json!(20), &json!(20), &json!(10), &json!(30))
    );
    assert_eq!(page["users"][0]["user_id"], "auth0|020");
    let (_, bare) = h.get(&format!("/api/v2/users?{q}&per_page=5")).await;
    let ids: Vec<&str> = bare
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "auth0|000",
            "auth0|001",
            "auth0|002",
            "auth0|003",
            "auth0|004"
        ]
    );

    let (status, user) = h.get("/api/v2/users/auth0%7C007").await;
    assert_eq!(
        (status, &user["user_id"]),
        (StatusCode::OK, &json!("auth0|007"))
    );
    let (status, body) = h.get("/api/v2/users/auth0%7Cnope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"statusCode": 404, "error": "Not Found", "message": "The user does not exist.",
               "errorCode": "inexistent_user"})
    );
}

#[tokio::test]
async fn patch_follows_auth0_rules() {
    let h = Harness::start(SimulatorConfig::default()).await;
    h.sim.add_connection(CONNECTION, true);
    h.sim.add_connection("cached", false);
    h.sim.insert_user(
        CONNECTION,
        json!({"user_id": "auth0|1", "email": "a@x.io", "email_verified": true, "name": "A",
               "user_metadata": {"lang": "en", "plan": "free"},
               "updated_at": "2024-01-01T00:00:00.000Z"}),
    );
    h.sim.insert_user(
        "cached",
        json!({"user_id": "auth0|2", "email": "b@x.io", "name": "B"}),
    );

    let (status, body) = h.patch("auth0|2", json!({"name": "Changed"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errorCode"], "operation_not_supported");
    assert_eq!(
        body["message"],
        "The following user attributes cannot be updated: name."
    );
    // Once the connection stops refreshing root attributes at login, the API may change them,
    // and the connection object says so (it leaves the option out while it is the default).
    let (_, connections) = h.get("/api/v2/connections?name=cached").await;
    assert!(
        connections[0]["options"]
            .get("set_user_root_attributes")
            .is_none(),
        "{connections}"
    );
    h.sim.configure_connection(
        "cached",
        ConnectionSettings {
            set_user_root_attributes: Some("on_first_login".into()),
            ..ConnectionSettings::default()
        },
    );
    let (_, connections) = h.get("/api/v2/connections?name=cached").await;
    assert_eq!(
        connections[0]["options"]["set_user_root_attributes"],
        "on_first_login"
    );
    let (status, body) = h.patch("auth0|2", json!({"name": "Changed"})).await;
    assert_eq!((status, &body["name"]), (StatusCode::OK, &json!("Changed")));
    let (status, _) = h.patch("auth0|2", json!({"email": "c@x.io"})).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an email still needs import mode"
    );
    let (status, body) = h
        .patch(
            "auth0|2",
            json!({"blocked": true, "app_metadata": {"flag": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["blocked"], true);

    let (status, body) = h
        .patch(
            "auth0|1",
            json!({"user_metadata": {"plan": "pro", "lang": null}, "app_metadata": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_metadata"], json!({"plan": "pro"}));
    assert_eq!(body["app_metadata"], json!({}));
    assert_ne!(body["updated_at"], "2024-01-01T00:00:00.000Z");
    let (_, body) = h.patch("auth0|1", json!({"user_metadata": {}})).await;
    assert_eq!(body["user_metadata"], json!({"plan": "pro"}));

    let (status, body) = h.patch("auth0|1", json!({"email": "new@x.io"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&body["email"], &body["email_verified"]),
        (&json!("new@x.io"), &json!(false))
    );
    let (_, body) = h.patch("auth0|1", json!({"name": null})).await;
    assert!(body.get("name").is_none());
    assert_eq!(h.sim.user("auth0|1").unwrap()["email"], "new@x.io");

    for (pair, first, second) in [
        (
            json!({"username": "u", "password": "p"}),
            "username",
            "password",
        ),
        (
            json!({"username": "u", "email_verified": true}),
            "username",
            "email_verified",
        ),
        (
            json!({"password": "p", "email_verified": true}),
            "password",
            "email_verified",
        ),
    ] {
        let (status, body) = h.patch("auth0|1", pair).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errorCode"], "invalid_body");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(first) && message.contains(second),
            "{message}"
        );
    }
    let (status, body) = h.patch("auth0|1", json!({"favourite": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["message"],
        "Payload validation error: 'Additional properties not allowed: favourite'."
    );
    let (status, _) = h.patch("auth0|9", json!({"blocked": true})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let stats = h.sim.stats();
    assert_eq!((stats.patches, stats.patches_applied), (13, 6));
}

#[tokio::test]
async fn buckets_throttle_with_headers_and_count_over_limit_attempts() {
    let read = BucketLimit {
        burst: 3,
        per_second: 1.0,
    };
    let h = Harness::start(SimulatorConfig {
        limits: Limits {
            users_read: read,
            ..Limits::per_class(BucketLimit::ENTERPRISE)
        },
        ..SimulatorConfig::default()
    })
    .await;
    for expected in [2, 1, 0] {
        let response = h.send(Method::GET, "/api/v2/users", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ratelimit-limit"), Some("3"));
        let remaining = expected.to_string();
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            Some(remaining.as_str())
        );
    }
    let throttled = h.send(Method::GET, "/api/v2/users", None).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&throttled, "x-ratelimit-remaining"), Some("0"));
    assert!(header(&throttled, "retry-after").is_none());
    let reset: u64 = header(&throttled, "x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    assert!((now_secs()..=now_secs() + 4).contains(&reset), "{reset}");
    assert_eq!(
        throttled.json::<Value>().await.unwrap(),
        json!({"statusCode": 429, "error": "Too Many Requests",
               "message": "Global limit has been reached", "errorCode": "too_many_requests"})
    );
    // Other classes have their own buckets.
    let (status, _) = h.get("/api/v2/connections").await;
    assert_eq!(status, StatusCode::OK);
    let stats = h.sim.stats();
    assert_eq!((stats.throttled, stats.over_limit_attempts), (1, 1));
    assert_eq!(stats.requests, 5);
}

#[tokio::test]
async fn forced_429_server_errors_drops_and_latency() {
    let h = Harness::start(SimulatorConfig::default()).await;
    h.sim.add_connection(CONNECTION, true);
    h.sim
        .insert_user(CONNECTION, json!({"user_id": "auth0|1", "name": "A"}));

    h.sim.set_faults(Faults {
        forced_429: 2,
        ..Faults::default()
    });
    for _ in 0..2 {
        let response = h.send(Method::GET, "/api/v2/connections", None).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&response, "retry-after"), Some("1"));
        assert!(header(&response, "x-ratelimit-reset").is_some());
    }
    assert_eq!(h.get("/api/v2/connections").await.0, StatusCode::OK);
    let stats = h.sim.stats();
    assert_eq!((stats.throttled, stats.over_limit_attempts), (2, 0));

    h.sim.set_faults(Faults {
        server_error_rate: 1.0,
        ..Faults::default()
    });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let response = h.send(Method::GET, "/api/v2/users/auth0%7C1", None).await;
        let status = response.status().as_u16();
        if status == 500 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["statusCode"], 500);
        }
        seen.insert(status);
    }
    assert!(seen.iter().all(|s| [500, 502, 503].contains(s)), "{seen:?}");
    assert!(seen.len() >= 2, "{seen:?}");

    h.sim.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    for _ in 0..4 {
        let outcome = async {
            let response = h
                .http
                .patch(h.url("/api/v2/users/auth0%7C1"))
                .bearer_auth(&h.token)
                .json(&json!({"name": "Dropped"}))
                .send()
                .await?;
            response.bytes().await
        }
        .await;
        assert!(outcome.is_err(), "the connection should break: {outcome:?}");
    }
    // Dropped after the handler ran: the change was applied.
    assert_eq!(h.sim.user("auth0|1").unwrap()["name"], "Dropped");

    h.sim.set_faults(Faults {
        latency: Duration::from_millis(100),
        ..Faults::default()
    });
    let started = Instant::now();
    assert_eq!(h.get("/api/v2/connections").await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn connections_deletes_and_unknown_routes() {
    let h = Harness::start(SimulatorConfig::default()).await;
    let id = h.sim.add_connection(CONNECTION, true);
    h.sim.add_connection("other", false);
    let (status, list) = h
        .get("/api/v2/connections?name=legacy-users&strategy=auth0")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["options"]["import_mode"], true);
    let (status, one) = h.get(&format!("/api/v2/connections/{id}")).await;
    assert_eq!((status, &one["name"]), (StatusCode::OK, &json!(CONNECTION)));
    let (status, body) = h.get("/api/v2/connections/con_nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errorCode"], "inexistent_connection");

    let response = h
        .send(Method::DELETE, "/api/v2/users/auth0%7C1", None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(h.sim.stats().deletes, 1);

    let unknown = h.send(Method::GET, "/api/v2/roles", None).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(header(&unknown, "x-ratelimit-limit").is_some());
    assert_eq!(unknown.json::<Value>().await.unwrap()["statusCode"], 404);
    let (status, _) = h.json(Method::PUT, "/api/v2/users/auth0%7C1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let stats = h.sim.stats();
    assert_eq!(stats.by_endpoint["GET /api/v2/(unknown)"], 1);
    assert_eq!(stats.by_endpoint["DELETE /api/v2/users/{id}"], 1);
}

#[tokio::test]
async fn loads_datagen_exports_and_searches_them() {
    let h = Harness::start(quick()).await;
    let connection_id = h.sim.add_connection(crate::datagen::CONNECTION, true);
    let mut export = Vec::new();
    crate::datagen::DataSet::new(2_000, 3)
        .write_export(&mut export)
        .unwrap();
    let lines = export.iter().filter(|&&b| b == b'\n').count();
    let loaded = h
        .sim
        .load_ndjson(crate::datagen::CONNECTION, export.as_slice())
        .unwrap();
    assert_eq!(loaded as usize, lines);
    assert_eq!(h.sim.user_count(), lines);
    let (_, page) = h
        .get("/api/v2/users?q=identities.connection%3A%22legacy-users%22&include_totals=true&per_page=1")
        .await;
    assert_eq!(page["total"], lines);
    let first: Value = serde_json::Deserializer::from_slice(&export)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let stored = h.sim.user(first["user_id"].as_str().unwrap()).unwrap();
    assert_eq!(stored, first, "complete lines are stored as they are");

    let (_, created) = h
        .json(
            Method::POST,
            "/api/v2/jobs/users-exports",
            Some(json!({"connection_id": connection_id, "format": "json",
                        "fields": [{"name": "user_id"}], "limit": 10})),
        )
        .await;
    let completed = wait_completed(&h, created["id"].as_str().unwrap()).await;
    let file = download(&h, completed["location"].as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(gunzip_lines(&file).len(), 10);
    h.sim.shutdown().await;
}

/// Loads and exports a million generated users and prints the timings; run it in release:
/// `cargo test --release --lib simulator::tests::million_users -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "slow in debug builds; a timing check, not a correctness test"]
async fn million_users_load_search_and_export() {
    let h = Harness::start(SimulatorConfig {
        limits: Limits::unlimited(),
        ..quick()
    })
    .await;
    let id = h.sim.add_connection(crate::datagen::CONNECTION, true);
    let mut export = Vec::new();
    crate::datagen::DataSet::new(1_000_000, 3)
        .write_export(&mut export)
        .unwrap();
    let started = Instant::now();
    let loaded = h
        .sim
        .load_ndjson(crate::datagen::CONNECTION, export.as_slice())
        .unwrap();
    eprintln!(
        "loaded {loaded} users ({} MB) in {:?}",
        export.len() >> 20,
        started.elapsed()
    );
    drop(export);
    let started = Instant::now();
    let (_, page) = h
        .get("/api/v2/users?q=identities.connection%3A%22legacy-users%22&include_totals=true&per_page=100&page=5")
        .await;
    eprintln!(
        "search (total {}) in {:?}",
        page["total"],
        started.elapsed()
    );
    let started = Instant::now();
    let fields = json!([{"name": "user_id"}, {"name": "email"}, {"name": "name"},
        {"name": "created_at"}, {"name": "app_metadata"}, {"name": "user_metadata"},
        {"name": "identities[0].connection", "export_as": "connection"}]);
    let (_, created) = h
        .json(
            Method::POST,
            "/api/v2/jobs/users-exports",
            Some(json!({"connection_id": id, "format": "json", "fields": fields})),
        )
        .await;
    let completed = wait_completed(&h, created["id"].as_str().unwrap()).await;
    eprintln!("export job completed in {:?}", started.elapsed());
    let started = Instant::now();
    let file = download(&h, completed["location"].as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    eprintln!(
        "downloaded {} MB in {:?}",
        file.len() >> 20,
        started.elapsed()
    );
    assert_eq!(gunzip_lines(&file).len() as u64, loaded);
}

#[tokio::test(flavor = "current_thread")]
async fn answers_while_the_callers_runtime_is_blocked() {
    use std::io::Write;
    let sim = Simulator::start(SimulatorConfig::default()).await.unwrap();
    let address = sim.base_url().trim_start_matches("http://").to_owned();
    // A blocking client on the only thread of this runtime, like a test that runs the
    // driftsync binary with std::process::Command.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "GET /api/v2/connections HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    sim.shutdown().await;
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "stopped listening"
    );
}

#[tokio::test]
async fn stalls_hold_the_next_requests_only() {
    let h = Harness::start(SimulatorConfig::default()).await;
    h.sim.add_connection(CONNECTION, true);
    h.sim.set_faults(Faults {
        stall: Duration::from_millis(400),
        stall_count: Some(1),
        ..Faults::default()
    });
    let started = Instant::now();
    assert_eq!(h.get("/api/v2/connections").await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(400));
    let started = Instant::now();
    assert_eq!(h.get("/api/v2/connections").await.0, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "only one request stalls: {:?}",
        started.elapsed()
    );
    // A client with a shorter timeout gives up on a stalled request.
    h.sim.set_faults(Faults {
        stall: Duration::from_secs(5),
        ..Faults::default()
    });
    let outcome = h
        .http
        .get(h.url("/api/v2/connections"))
        .bearer_auth(&h.token)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(outcome.unwrap_err().is_timeout());
}

#[tokio::test]
async fn tokens_and_credentials_are_revoked_after_n_requests() {
    let h = Harness::start(SimulatorConfig::default()).await;
    h.sim.add_connection(CONNECTION, true);
    h.sim.set_faults(Faults {
        revoke_tokens_after: Some(2),
        ..Faults::default()
    });
    assert_eq!(h.get("/api/v2/connections").await.0, StatusCode::OK);
    let (status, body) = h.get("/api/v2/connections").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["message"], "Invalid token");
    // A new token works: only the issued ones were revoked, and only once.
    let fresh = token(&h.sim, &h.http).await;
    for _ in 0..3 {
        let response = h
            .http
            .get(h.url("/api/v2/connections"))
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    h.sim.set_faults(Faults {
        revoke_tokens_after: Some(1),
        revoke_credentials: true,
        ..Faults::default()
    });
    // Credentials still work until the revocation is due.
    let before = token(&h.sim, &h.http).await;
    let response = h
        .http
        .get(h.url("/api/v2/connections"))
        .bearer_auth(&before)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let config = h.sim.config();
    let refused = h
        .http
        .post(h.url("/oauth/token"))
        .json(
            &json!({"grant_type": "client_credentials", "client_id": config.client_id,
                      "client_secret": config.client_secret,
                      "audience": format!("https://{}/api/v2/", config.domain)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "access_denied");
    // New faults give the credentials back.
    h.sim.set_faults(Faults::default());
    token(&h.sim, &h.http).await;
}

#[tokio::test]
async fn export_jobs_can_fail_or_never_complete() {
    let h = Harness::start(quick()).await;
    let connection_id = seed_export_users(&h.sim);
    let create = || {
        h.json(
            Method::POST,
            "/api/v2/jobs/users-exports",
            Some(json!({"connection_id": connection_id, "format": "json"})),
        )
    };
    h.sim.set_faults(Faults {
        export_jobs: JobFault::Fail,
        ..Faults::default()
    });
    let (status, job) = create().await;
    assert_eq!(status, StatusCode::CREATED);
    let failed_id = job["id"].as_str().unwrap().to_owned();
    h.sim.set_faults(Faults {
        export_jobs: JobFault::NeverComplete,
        ..Faults::default()
    });
    let (_, job) = create().await;
    let stuck_id = job["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, failed) = h.get(&format!("/api/v2/jobs/{failed_id}")).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["summary"]["reason"].is_string(), "{failed}");
    assert!(failed.get("location").is_none(), "{failed}");
    let (_, stuck) = h.get(&format!("/api/v2/jobs/{stuck_id}")).await;
    assert_eq!(stuck["status"], "processing", "{stuck}");
    assert!(stuck.get("location").is_none(), "{stuck}");
    // Faults apply to jobs created later; a normal job still completes.
    h.sim.set_faults(Faults::default());
    let (_, job) = create().await;
    wait_completed(&h, job["id"].as_str().unwrap()).await;
}

#[tokio::test]
async fn bad_answers_damage_one_endpoint() {
    let h = Harness::start(SimulatorConfig::default()).await;
    h.sim.add_connection(CONNECTION, true);
    h.sim
        .insert_user(CONNECTION, json!({"user_id": "auth0|1", "name": "A"}));
    let fault = |endpoint: &str, kind: BadAnswerKind| Faults {
        bad_answer: Some(BadAnswer::new(endpoint, kind)),
        ..Faults::default()
    };

    h.sim
        .set_faults(fault("GET /api/v2/connections", BadAnswerKind::Html(200)));
    let response = h.send(Method::GET, "/api/v2/connections", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        header(&response, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(header(&response, "x-ratelimit-limit").is_none());
    assert!(response.text().await.unwrap().contains("<html>"));
    // Other endpoints are not affected.
    assert_eq!(h.get("/api/v2/users/auth0%7C1").await.0, StatusCode::OK);

    h.sim.set_faults(fault(
        "GET /api/v2/users/{id}",
        BadAnswerKind::Json(json!({"unexpected": true})),
    ));
    let response = h.send(Method::GET, "/api/v2/users/auth0%7C1", None).await;
    assert!(header(&response, "x-ratelimit-remaining").is_some());
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"unexpected": true})
    );

    h.sim.set_faults(fault(
        "GET /api/v2/users/{id}",
        BadAnswerKind::NoRateLimitHeaders,
    ));
    let response = h.send(Method::GET, "/api/v2/users/auth0%7C1", None).await;
    assert!(header(&response, "x-ratelimit-limit").is_none());
    assert!(header(&response, "content-type").is_some());
    assert_eq!(response.json::<Value>().await.unwrap()["name"], "A");

    h.sim.set_faults(fault(
        "GET /api/v2/users/{id}",
        BadAnswerKind::NoContentType,
    ));
    let response = h.send(Method::GET, "/api/v2/users/auth0%7C1", None).await;
    assert!(header(&response, "content-type").is_none());
    assert!(header(&response, "x-ratelimit-limit").is_some());

    h.sim
        .set_faults(fault("POST /oauth/token", BadAnswerKind::Html(403)));
    let response = h
        .http
        .post(h.url("/oauth/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_patch_log_records_every_patch_and_its_outcome() {
    let h = Harness::start(SimulatorConfig::default()).await;
    h.sim.add_connection(CONNECTION, true);
    h.sim
        .insert_user(CONNECTION, json!({"user_id": "auth0|1", "name": "A"}));
    assert_eq!(
        h.patch("auth0|1", json!({"name": "B"})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        h.patch("auth0|1", json!({"name": ""})).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.sim.patch_log(),
        vec![
            PatchRecord {
                user_id: "auth0|1".into(),
                body: json!({"name": "B"}),
                applied: true
            },
            PatchRecord {
                user_id: "auth0|1".into(),
                body: json!({"name": ""}),
                applied: false
            },
        ]
    );
}
