use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{service_fn, ServiceExt};
use tower_ratelimit::{key::Header, Limit, Policy, Quota, RateLimitLayer, RefusalFormat, Window};
use tower::Layer;

#[tokio::test(start_paused = true)]
async fn smoke() {
    let policy = Policy::builder()
        .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap()).quota(Quota::new(Window::per_minute(2))))
        .refusal(RefusalFormat::Nixflex)
        .build()
        .unwrap();
    let svc = RateLimitLayer::new(policy).layer(service_fn(|_r: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    }));
    for i in 0..3 {
        let r = svc.clone().oneshot(Request::get("/x").header("x-api-key", "a").body(String::new()).unwrap()).await.unwrap();
        println!("{i} {:?} {:?}", r.status(), r.headers());
        if i == 2 {
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            let b = http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes();
            println!("{}", String::from_utf8_lossy(&b));
        }
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    let r = svc.clone().oneshot(Request::get("/x").header("x-api-key", "a").body(String::new()).unwrap()).await.unwrap();
    println!("after 30s {:?} {:?}", r.status(), r.headers());
}
