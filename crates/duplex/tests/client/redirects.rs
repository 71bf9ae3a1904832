use std::sync::{Arc, Mutex};

use duplex::{Accept, ClientBuilder, CloseCode, Error, Reject, ServerConfig};

use crate::support::{echo_server, within};

type Seen = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

/// A server that redirects `/old` to `location`, loops `/loop` onto itself, and accepts
/// anything else, recording the path, `Authorization` and `Cookie` of each request.
async fn redirecting_server(status: u16, location: Option<String>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let addr = echo_server(ServerConfig::default(), move |req| {
        record.lock().unwrap().push((
            req.path().to_owned(),
            req.header("authorization").map(str::to_owned),
            req.header("cookie").map(str::to_owned),
        ));
        match req.path() {
            "/old" => Err(Reject::new(status, "moved").header(
                "Location",
                location.clone().unwrap_or_else(|| "/new".into()),
            )),
            "/loop" => Err(Reject::new(302, "again").header("Location", "/loop")),
            _ => Ok(Accept::default()),
        }
    })
    .await;
    (format!("ws://{addr}"), seen)
}

fn seen(s: &Seen) -> Vec<(String, Option<String>, Option<String>)> {
    s.lock().unwrap().clone()
}

#[tokio::test]
async fn same_origin_redirects_keep_credentials() {
    within(async {
        for status in [301, 302, 303, 307, 308] {
            let (base, log) = redirecting_server(status, None).await;
            let (mut ws, _) = ClientBuilder::new(format!("{base}/old"))
                .header("Authorization", "Bearer t")
                .header("Cookie", "c=1")
                .follow_redirects(1)
                .connect()
                .await
                .unwrap();
            ws.close(CloseCode::NORMAL, "").await.unwrap();
            let creds = (Some("Bearer t".to_owned()), Some("c=1".to_owned()));
            assert_eq!(
                seen(&log),
                [
                    ("/old".to_owned(), creds.0.clone(), creds.1.clone()),
                    ("/new".to_owned(), creds.0, creds.1),
                ],
                "status {status}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn cross_origin_redirects_drop_credentials() {
    within(async {
        let (target, target_log) = redirecting_server(301, None).await;
        let (base, log) = redirecting_server(307, Some(format!("{target}/final"))).await;
        let (mut ws, _) = ClientBuilder::new(format!("{base}/old"))
            .header("Authorization", "Bearer t")
            .header("Cookie", "c=1")
            .follow_redirects(5)
            .connect()
            .await
            .unwrap();
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        assert_eq!(seen(&log)[0].1.as_deref(), Some("Bearer t"));
        assert_eq!(seen(&target_log), [("/final".to_owned(), None, None)]);
    })
    .await;
}

#[tokio::test]
async fn redirects_are_not_followed_unless_asked() {
    within(async {
        let (base, log) = redirecting_server(301, None).await;
        let err = ClientBuilder::new(format!("{base}/old"))
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Redirected { status: 301, location } if location == "/new"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "server redirected with HTTP 301 to /new");
        assert_eq!(seen(&log).len(), 1);
    })
    .await;
}

#[tokio::test]
async fn redirect_loops_stop_at_the_limit() {
    within(async {
        let (base, log) = redirecting_server(301, None).await;
        let err = ClientBuilder::new(format!("{base}/loop"))
            .follow_redirects(3)
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::TooManyRedirects { limit: 3, location } if location == "/loop"),
            "{err:?}"
        );
        assert_eq!(seen(&log).len(), 4);
    })
    .await;
}
