//! The client store's pin, trust-on-first-use and verification records (migration 0006).

// Requirement: ID-PIN-1, ID-PIN-2

use phoenix_client::store::{SEEN_CERTIFICATES_KEPT, Store};

#[tokio::test]
async fn the_first_certificate_per_fid_is_kept_and_the_rest_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let first = b"first".to_vec();
    assert_eq!(
        store
            .see_certificate("dave@a.test", &first, 1)
            .await
            .unwrap(),
        first
    );
    for n in 0..(SEEN_CERTIFICATES_KEPT + 10) {
        let other = format!("other {n}").into_bytes();
        assert_eq!(
            store
                .see_certificate("dave@a.test", &other, 2)
                .await
                .unwrap(),
            first,
            "the first certificate stays the trusted one"
        );
    }
    // Another FID has its own first certificate.
    let eve = b"eve".to_vec();
    assert_eq!(
        store.see_certificate("eve@a.test", &eve, 3).await.unwrap(),
        eve
    );
    // Bounded: reopen the file and count.
    drop(store);
    let url = format!("sqlite://{}", dir.path().join("client.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let kept: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM seen_certificates WHERE fid = 'dave@a.test'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kept, SEEN_CERTIFICATES_KEPT + 1);
}

#[tokio::test]
async fn every_certificate_ever_pinned_stays_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    store
        .pin_contact_client("bob@a.test", "c1", b"before renewal")
        .await
        .unwrap();
    store
        .pin_contact_client("bob@a.test", "c1", b"after renewal")
        .await
        .unwrap();
    for der in [b"before renewal".as_slice(), b"after renewal"] {
        assert!(store.was_pinned("bob@a.test", "c1", der).await.unwrap());
    }
    assert!(
        !store
            .was_pinned("bob@a.test", "c2", b"after renewal")
            .await
            .unwrap()
    );
    assert!(
        !store
            .was_pinned("bob@a.test", "c1", b"minted")
            .await
            .unwrap()
    );
    // The current pin is the latest.
    let current = store.contact_clients("bob@a.test").await.unwrap();
    assert_eq!(
        current.get("c1").map(Vec::as_slice),
        Some(b"after renewal".as_slice())
    );
}
