//! Self-test of the PostgreSQL test harness in `tests/common/pg.rs`.

mod common;

use common::pg::{fresh_database, with_database};

#[tokio::test]
async fn fresh_databases_are_separate_and_usable() {
    let first = fresh_database().await;
    let second = fresh_database().await;
    assert_ne!(first.name, second.name);
    assert_ne!(first.url, second.url);

    let a = first.client().await;
    let b = second.client().await;
    for (db, client) in [(&first, &a), (&second, &b)] {
        let current: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(current, db.name);
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }

    a.batch_execute("CREATE TABLE only_in_first (id int)")
        .await
        .unwrap();
    a.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    b.batch_execute("CREATE TABLE t (id int)").await.unwrap();

    assert!(b.query("SELECT * FROM only_in_first", &[]).await.is_err());
    let count: i64 = b
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

#[test]
fn with_database_replaces_the_database() {
    let cases = [
        ("postgres://u@h:5/admin", "postgres://u@h:5/db"),
        (
            "postgres://u:p@h:5/admin?sslmode=disable",
            "postgres://u:p@h:5/db?sslmode=disable",
        ),
        ("postgresql://u@h:5", "postgresql://u@h:5/db"),
        (
            "postgres://u@h?connect_timeout=3",
            "postgres://u@h/db?connect_timeout=3",
        ),
        (
            "postgres:///admin?host=/run/postgresql",
            "postgres:///db?host=/run/postgresql",
        ),
        (
            "host=h user=u dbname=admin",
            "host=h user=u dbname=admin dbname=db",
        ),
    ];
    for (admin, expected) in cases {
        assert_eq!(with_database(admin, "db"), expected, "for {admin}");
    }
    let config: tokio_postgres::Config =
        with_database("host=h dbname=admin", "db").parse().unwrap();
    assert_eq!(config.get_dbname(), Some("db"));
}
