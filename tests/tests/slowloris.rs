//! Slow clients: a trickled head is cut off at `client_header_timeout`, and many slow
//! clients do not starve a normal one.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use switchyard_tests::{route, upstream, Backend, Client, Gateway};

async fn setup(server: &str) -> (Backend, Gateway) {
    let b = Backend::start("slow").await;
    let text = upstream("u", &[&b], "") + &route("all", "u", "path_prefix = \"/\"");
    let gw = Gateway::start_simple(server, &text).await;
    (b, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_head_is_closed_after_header_timeout() {
    let (b, gw) = setup("client_header_timeout = \"1s\"").await;
    let stream = TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        if wr
            .write_all(b"GET / HTTP/1.1\r\nHost: slow.test\r\nX-Slow: ")
            .await
            .is_err()
        {
            return;
        }
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    // Read (and discard, e.g. a 408) until the gateway closes.
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    writer.abort();
    let took = start.elapsed();
    assert!(
        closed.is_ok(),
        "a trickling client was still connected after 6 s"
    );
    assert!(
        took < Duration::from_secs(4),
        "closed only after {took:?} with a 1 s header timeout"
    );
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before the 1 s header timeout"
    );
    assert_eq!(b.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_clients_do_not_starve_a_normal_one() {
    let (b, gw) = setup("client_header_timeout = \"10s\"\nthreads = 2").await;
    let port = gw.port();
    let mut slow = Vec::new();
    for i in 0..500 {
        let s = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .unwrap_or_else(|_| panic!("slow client {i}: connect timed out"))
        .unwrap_or_else(|e| panic!("slow client {i}: connect failed: {e}"));
        slow.push(s);
    }
    for s in slow.iter_mut() {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: slow.test\r\n").await;
    }
    let trickler = tokio::spawn(async move {
        loop {
            for s in slow.iter_mut() {
                let _ = s.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let start = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), async {
            let mut c = Client::connect(port).await;
            c.send("GET /normal HTTP/1.1\r\nHost: fast.test\r\nConnection: close\r\n\r\n")
                .await;
            c.read_response().await
        })
        .await
        .unwrap_or_else(|_| panic!("normal request {i} took more than 2 s with 500 slow clients"));
        assert_eq!(r.status, 200);
        assert!(start.elapsed() < Duration::from_secs(2));
    }
    trickler.abort();
    assert_eq!(
        b.request_count(),
        3,
        "only the normal requests reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let (b, gw) = setup("client_idle_timeout = \"1s\"").await;
    let mut c = Client::connect(gw.port()).await;
    c.send("GET /first HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        .await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200);
    let took = c
        .wait_closed(Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection was still open after 5 s with a 1 s idle timeout");
    assert!(took < Duration::from_secs(4), "closed only after {took:?}");
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before the idle timeout"
    );
    assert_eq!(b.request_count(), 1);
}
