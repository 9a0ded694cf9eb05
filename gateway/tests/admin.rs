//! The admin listener (`--admin-listen`): the operator's pages on their own address and
//! thread, gone from the data port, and answering while the data port is saturated.

mod support;

use support::{connect_from, handshake_from, http_get, start_gateway_with};

#[tokio::test]
async fn operator_pages_move_to_the_admin_listener_and_answer_when_the_data_port_is_full() {
    let gw = start_gateway_with(|c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.max_handshakes = 2;
    });
    let (data, admin) = (gw.local_addr(), gw.admin_addr().expect("an admin listener"));
    assert_ne!(data, admin);
    let metrics = http_get(admin, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200") && metrics.contains("tickfan_ticks_in_total"));
    let page = http_get(admin, "/dashboard").await;
    let meta = format!("<meta name=\"tickfan-ws-port\" content=\"{}\">", data.port());
    assert!(page.starts_with("HTTP/1.1 200") && page.contains(&meta), "{}", &page[..400]);
    for path in ["/metrics", "/dashboard"] {
        let moved = http_get(data, path).await;
        assert!(moved.starts_with("HTTP/1.1 404"), "{moved}");
        assert!(moved.contains(&format!("served on the admin listener ({admin})")), "{moved}");
    }
    assert!(http_get(data, "/healthz").await.starts_with("HTTP/1.1 200"));
    let index = http_get(admin, "/").await;
    assert!(index.contains("/ws, is on the data port"), "{index}");
    // Two silent sockets fill the data port's handshakes: its pages are refused, the admin
    // listener's are not.
    let _silent = [connect_from("127.0.0.2", data).await, connect_from("127.0.0.2", data).await];
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(handshake_from("127.0.0.3", data, "").await.0, 503);
    let health = http_get(admin, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"), "{health}");
    let refused = http_get(admin, "/metrics").await;
    assert!(refused.contains("tickfan_connections_refused_total{reason=\"max_handshakes\"} 1"));
}
