//! Routing through the real gateway to real backends: host, path, methods, headers,
//! cookies, query, file order, prefix stripping, listeners, no route.

use switchyard_tests::{
    free_port, request, request_head, route, send_raw, upstream, Backend, Gateway, Response,
};

/// Backends named `a`, `b`, ... each behind its own upstream `u_<name>`.
async fn backends(names: &[&str]) -> (Vec<Backend>, String) {
    let mut list = Vec::new();
    let mut text = String::new();
    for n in names {
        let b = Backend::start(n).await;
        text.push_str(&upstream(&format!("u_{n}"), &[&b], ""));
        list.push(b);
    }
    (list, text)
}

fn who(r: &Response) -> String {
    if r.status == 200 {
        r.text()
    } else {
        format!("status {}", r.status)
    }
}

async fn via(gw: &Gateway, host: &str, target: &str) -> String {
    who(&gw.get(host, target).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_exact_and_wildcard() {
    let (_b, ups) = backends(&["a", "b"]).await;
    let routes = route(
        "exact",
        "u_a",
        "host = \"api.example.com\"\npath_prefix = \"/\"",
    ) + &route(
        "wild",
        "u_b",
        "host = \"*.example.com\"\npath_prefix = \"/\"",
    );
    let gw = Gateway::start_simple("", &(routes + &ups)).await;

    assert_eq!(via(&gw, "api.example.com", "/").await, "a");
    assert_eq!(
        via(&gw, "API.Example.COM", "/").await,
        "a",
        "host is case-insensitive"
    );
    assert_eq!(
        via(&gw, "api.example.com:8080", "/").await,
        "a",
        "a port in Host is ignored"
    );
    assert_eq!(via(&gw, "foo.example.com", "/").await, "b");
    assert_eq!(
        via(&gw, "x.y.example.com", "/").await,
        "b",
        "wildcard matches several labels"
    );
    assert_eq!(via(&gw, "FOO.EXAMPLE.COM:1234", "/").await, "b");
    assert_eq!(
        via(&gw, "example.com", "/").await,
        "status 404",
        "the wildcard needs a label"
    );
    assert_eq!(via(&gw, "badexample.com", "/").await, "status 404");
    assert_eq!(
        via(&gw, "api.example.com.evil.net", "/").await,
        "status 404"
    );
    assert_eq!(via(&gw, "xapi.example.org", "/").await, "status 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_exact_prefix_and_regex() {
    let (_b, ups) = backends(&["a", "b", "c"]).await;
    let routes = route("exact", "u_a", "path = \"/exact\"")
        + &route("prefix", "u_b", "path_prefix = \"/api\"")
        + &route("regex", "u_c", "path_regex = \"^/v[0-9]+/items\"");
    let gw = Gateway::start_simple("", &(routes + &ups)).await;
    let h = "paths.test";

    assert_eq!(via(&gw, h, "/exact").await, "a");
    assert_eq!(
        via(&gw, h, "/exact?q=1").await,
        "a",
        "the query is not part of the path"
    );
    assert_eq!(via(&gw, h, "/exact/").await, "status 404");
    assert_eq!(via(&gw, h, "/exactly").await, "status 404");

    assert_eq!(via(&gw, h, "/api").await, "b");
    assert_eq!(via(&gw, h, "/api/").await, "b");
    assert_eq!(via(&gw, h, "/api/x/y").await, "b");
    assert_eq!(via(&gw, h, "/api?x=1").await, "b");
    assert_eq!(
        via(&gw, h, "/apix").await,
        "status 404",
        "prefix only on segment boundaries"
    );
    assert_eq!(via(&gw, h, "/ap").await, "status 404");

    assert_eq!(via(&gw, h, "/v2/items").await, "c");
    assert_eq!(via(&gw, h, "/v10/items/7").await, "c");
    assert_eq!(via(&gw, h, "/vx/items").await, "status 404");
    assert_eq!(
        via(&gw, h, "/x/v2/items").await,
        "status 404",
        "the regex is anchored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_headers_cookies_query() {
    let (_b, ups) = backends(&["a", "b", "c", "d", "e"]).await;
    let routes = route(
        "methods",
        "u_a",
        "path_prefix = \"/m\"\nmethods = [\"POST\", \"PUT\"]",
    ) + &route(
        "headers",
        "u_b",
        "path_prefix = \"/h\"\nheaders = { \"x-canary\" = \"1\" }",
    ) + &route(
        "cookies",
        "u_c",
        "path_prefix = \"/c\"\ncookies = { \"beta\" = \"yes\" }",
    ) + &route(
        "query",
        "u_d",
        "path_prefix = \"/q\"\nquery = { \"v\" = \"2\" }",
    ) + &route("fallback", "u_e", "path_prefix = \"/\"");
    let gw = Gateway::start_simple("", &(routes + &ups)).await;
    let p = gw.port();
    let h = "match.test";

    let r = |m: &'static str, t: &'static str, hs: &'static [(&'static str, &'static str)]| async move {
        who(&request(p, m, h, t, hs, b"").await)
    };
    assert_eq!(r("POST", "/m", &[]).await, "a");
    assert_eq!(r("PUT", "/m/1", &[]).await, "a");
    assert_eq!(r("GET", "/m", &[]).await, "e", "GET is not in methods");

    assert_eq!(r("GET", "/h", &[("X-Canary", "1")]).await, "b");
    assert_eq!(r("GET", "/h", &[("x-canary", "2")]).await, "e");
    assert_eq!(r("GET", "/h", &[]).await, "e");

    assert_eq!(r("GET", "/c", &[("Cookie", "a=1; beta=yes")]).await, "c");
    assert_eq!(r("GET", "/c", &[("Cookie", "beta=yes")]).await, "c");
    assert_eq!(r("GET", "/c", &[("Cookie", "beta=no")]).await, "e");
    assert_eq!(r("GET", "/c", &[("Cookie", "xbeta=yes")]).await, "e");
    assert_eq!(r("GET", "/c", &[]).await, "e");

    assert_eq!(r("GET", "/q?v=2", &[]).await, "d");
    assert_eq!(r("GET", "/q?x=1&v=2", &[]).await, "d");
    assert_eq!(r("GET", "/q?v=3", &[]).await, "e");
    assert_eq!(r("GET", "/q?vv=2", &[]).await, "e");
    assert_eq!(r("GET", "/q", &[]).await, "e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_match_in_file_order_wins() {
    let (_b, ups) = backends(&["a", "b", "c", "d"]).await;
    let routes = route("first", "u_a", "path_prefix = \"/api\"")
        + &route(
            "more-specific-but-later",
            "u_b",
            "path_prefix = \"/api/special\"",
        )
        + &route("other", "u_c", "path = \"/other\"")
        + &route("catch-all", "u_d", "path_prefix = \"/\"")
        + &route("never", "u_b", "path = \"/never\"");
    let gw = Gateway::start_simple("", &(routes + &ups)).await;
    let h = "order.test";
    assert_eq!(via(&gw, h, "/api/special").await, "a");
    assert_eq!(via(&gw, h, "/api/special/x").await, "a");
    assert_eq!(via(&gw, h, "/other").await, "c");
    assert_eq!(via(&gw, h, "/zzz").await, "d");
    assert_eq!(
        via(&gw, h, "/never").await,
        "d",
        "an earlier catch-all wins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_rewrites_the_path_the_backend_sees() {
    let (b, ups) = backends(&["a", "b"]).await;
    let routes = route(
        "strip",
        "u_a",
        "path_prefix = \"/svc\"\nstrip_prefix = true",
    ) + &route(
        "keep",
        "u_b",
        "path_prefix = \"/keep\"\nstrip_prefix = false",
    );
    let gw = Gateway::start_simple("", &(routes + &ups)).await;
    let h = "strip.test";

    assert_eq!(via(&gw, h, "/svc/7?x=1").await, "a");
    assert_eq!(b[0].last_request().unwrap().target, "/7?x=1");
    assert_eq!(via(&gw, h, "/svc/a/b").await, "a");
    assert_eq!(b[0].last_request().unwrap().target, "/a/b");
    assert_eq!(via(&gw, h, "/svc").await, "a");
    assert_eq!(
        b[0].last_request().unwrap().target,
        "/",
        "the bare prefix becomes /"
    );
    assert_eq!(via(&gw, h, "/svc/").await, "a");
    assert_eq!(b[0].last_request().unwrap().target, "/");

    assert_eq!(via(&gw, h, "/keep/7?x=1").await, "b");
    assert_eq!(b[1].last_request().unwrap().target, "/keep/7?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_limit_a_route() {
    let (_b, ups) = backends(&["a", "b"]).await;
    let (one, two, admin) = (free_port(), free_port(), free_port());
    let text = format!(
        "[server]\ngrace_period = \"1s\"\n\n[admin]\naddr = \"127.0.0.1:{admin}\"\n\n\
         [[listener]]\nname = \"one\"\naddr = \"127.0.0.1:{one}\"\n\n\
         [[listener]]\nname = \"two\"\naddr = \"127.0.0.1:{two}\"\n\n{}{}{}",
        route(
            "only-two",
            "u_a",
            "listeners = [\"two\"]\npath_prefix = \"/only-two\""
        ),
        route("all", "u_b", "path_prefix = \"/all\""),
        ups
    );
    let gw = Gateway::start(&text).await;
    let on = |port: u16, t: &'static str| async move {
        who(&switchyard_tests::get(port, "listeners.test", t).await)
    };
    assert_eq!(on(gw.listener_port("one"), "/only-two").await, "status 404");
    assert_eq!(on(gw.listener_port("two"), "/only-two").await, "a");
    assert_eq!(on(gw.listener_port("one"), "/all").await, "b");
    assert_eq!(on(gw.listener_port("two"), "/all").await, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_with_a_short_plain_body() {
    let (b, ups) = backends(&["a"]).await;
    let routes = route("only", "u_a", "path = \"/only\"");
    let gw = Gateway::start_simple("", &(routes + &ups)).await;

    let r = gw.get("none.test", "/x").await;
    assert_eq!(r.status, 404);
    let body = r.text();
    assert!(body.contains("no route"), "body: {body:?}");
    assert!(body.contains("/x"), "the body names the path: {body:?}");
    assert!(body.len() < 256, "short body: {body:?}");
    assert!(!body.contains("127.0.0.1"), "no addresses: {body:?}");
    if let Some(ct) = r.header("content-type") {
        assert!(ct.starts_with("text/plain"), "plain text: {ct}");
    }
    // A POST with a body gets the same answer, naming its method.
    let raw = format!(
        "{}hello",
        request_head("POST", "/y", "none.test", &[("Content-Length", "5")])
    );
    let r = send_raw(gw.port(), raw).await;
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("POST"),
        "the body names the method: {:?}",
        r.text()
    );
    assert_eq!(b[0].request_count(), 0, "nothing reached the backend");
}
