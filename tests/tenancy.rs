//! Tenancy in open mode: `?tenant=` at upgrade, changes reach only their tenant,
//! tenant-scoped HTTP endpoints take `?tenant=`.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_only_their_tenant() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut d = Client::connect(port).await;
    let mut t2 = Client::connect_path(port, "/ws?tenant=t2").await;
    for c in [&mut d, &mut t2] {
        c.subscribe("/inventory", json!({})).await;
        c.subscribe("/orders", json!({})).await;
        c.subscribe("/notifications", json!({})).await;
    }

    let a = publish_one(port, with_tenant(inv("p-tn-1", "w-1", 50), "t2")).await;
    let b = publish_one(port, inv("p-tn-1", "w-1", 50)).await;
    let mut no_tenant = inv("p-tn-1", "w-1", 51);
    no_tenant.as_object_mut().unwrap().remove("tenantId");
    let c_seq = publish_one(port, no_tenant).await;
    let e = publish_one(port, with_tenant(inv("p-tn-1", "w-1", 52), "t2")).await;
    let f = publish_one(port, inv("p-tn-1", "w-1", 53)).await;

    assert_eq!(
        t2.seqs_until("/inventory", "inventory:update", e).await,
        vec![a, e],
        "t2 sees only t2 changes"
    );
    // default: b and c_seq, nothing of t2 before them, then f.
    for seq in [b, c_seq] {
        let (p, skipped) = d.recv_seq("/inventory", "inventory:update", seq).await;
        assert!(
            seqs_of(&skipped, "/inventory", "inventory:update").is_empty(),
            "t2 changes leaked to default: {skipped:?}"
        );
        assert_eq!(p["tenantId"], "default", "a missing tenantId means default");
    }
    assert_eq!(
        d.seqs_until("/inventory", "inventory:update", f).await,
        vec![f]
    );

    // Orders and notifications too.
    let o2 = publish_one(port, with_tenant(order("o-tn", "c-1", "pending"), "t2")).await;
    let od = publish_one(port, order("o-tn", "c-1", "pending")).await;
    let (p, _) = t2.recv_seq("/orders", "order:update", o2).await;
    assert_eq!(p["tenantId"], "t2");
    assert_eq!(d.seqs_until("/orders", "order:update", od).await, vec![od]);

    let n2 = publish_one(
        port,
        with_tenant(
            notification("n-tn-2", "system_alert", "high", "t2 only"),
            "t2",
        ),
    )
    .await;
    let nd = publish_one(port, notification("n-tn-d", "system_alert", "high", "d")).await;
    let (n, _) = t2.recv_seq("/notifications", "notification", n2).await;
    assert_eq!(n["tenantId"], "t2");
    assert_eq!(
        d.seqs_until("/notifications", "notification", nd).await,
        vec![nd]
    );
    let n3 = publish_one(
        port,
        with_tenant(notification("n-tn-3", "system_alert", "high", "t2"), "t2"),
    )
    .await;
    assert_eq!(
        t2.seqs_until("/notifications", "notification", n3).await,
        vec![n3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_alerts_are_tenant_scoped() {
    let server = spawn_server(&[]);
    let port = server.port;
    let s_t2 = publish_one(port, with_tenant(inv("p-tn-r", "w-1", 3), "t2")).await;
    let s_d = publish_one(port, inv("p-tn-r", "w-1", 50)).await;
    wait_delivered(port, s_d).await;

    // Each tenant's replay since before both changes holds its own change only.
    for (path, tenant, seq) in [("/ws?tenant=t2", "t2", s_t2), ("/ws", "default", s_d)] {
        let mut c = Client::connect_path(port, path).await;
        let filters = json!({"productIds": ["p-tn-r"], "sinceSeq": s_t2 - 1});
        let r = c.subscribe("/inventory", filters).await;
        assert_eq!(r["replayed"], 1, "only {tenant}'s change is replayed: {r}");
        let (p, _) = c.recv_seq("/inventory", "inventory:update", seq).await;
        assert_eq!(p["tenantId"], tenant);
    }

    // The t2 alert (quantity 3) is listed for t2 only.
    wait_alert_listed(port, "?tenant=t2", "p-tn-r").await;
    let b = get_json(port, "/alerts").await;
    assert!(
        !b["alerts"].to_string().contains("p-tn-r"),
        "t2 alert must not be listed for default: {b}"
    );

    // /changes is tenant scoped as well.
    for (tenant, seq) in [("t2", s_t2), ("default", s_d)] {
        let path = format!("/changes/inventory?tenant={tenant}&since={}", s_t2 - 1);
        let b = get_json(port, &path).await;
        let seqs: Vec<u64> = b["changes"]
            .as_array()
            .unwrap_or_else(|| panic!("{b}"))
            .iter()
            .filter_map(|c| c["seq"].as_u64())
            .collect();
        assert_eq!(seqs, vec![seq], "{tenant}: {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_notifications_and_acknowledge_are_tenant_scoped() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut d = Client::connect(port).await;
    d.subscribe("/notifications", json!({})).await;
    let mut t2 = Client::connect_path(port, "/ws?tenant=t2").await;
    t2.subscribe("/notifications", json!({})).await;
    t2.subscribe("/inventory", json!({"productIds": ["p-tn-al"]}))
        .await;

    publish_one(port, with_tenant(inv("p-tn-al", "w-1", 1), "t2")).await;
    let a = t2.recv_event("/inventory", "inventory:low-stock").await;
    let (n, _) = t2
        .recv_matching("t2 low_stock notification", |f| {
            f["event"] == "notification" && f["data"]["type"] == "low_stock"
        })
        .await;
    assert_eq!(n["data"]["tenantId"], "t2");
    let id = match &a["id"] {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };

    // Acknowledging another tenant's alert from default: not found there.
    http_request(port, "POST", &format!("/alerts/{id}/acknowledge"), None)
        .await
        .assert_error(404, "not_found");
    let r = http_request(
        port,
        "POST",
        &format!("/alerts/{id}/acknowledge?tenant=t2"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    t2.recv_matching("alert_acknowledged", |f| {
        f["event"] == "notification" && f["data"]["type"] == "alert_acknowledged"
    })
    .await;

    // default saw none of it.
    let marker = publish_one(port, notification("n-tn-m", "system_alert", "low", "m")).await;
    let (_, before) = d.recv_seq("/notifications", "notification", marker).await;
    assert!(
        seqs_of(&before, "/notifications", "notification").is_empty(),
        "t2 notifications leaked to default: {before:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_endpoint_is_tenant_scoped() {
    let server = spawn_server(&[]);
    let port = server.port;
    let d = Client::connect(port).await;
    let t2 = Client::connect_path(port, "/ws?tenant=t2").await;
    let (did, tid) = (d.connection_id(), t2.connection_id());

    let b = get_json(port, "/clients?tenant=t2").await;
    let list = b["clients"].as_array().unwrap();
    let me = list
        .iter()
        .find(|e| e["id"] == tid.as_str())
        .unwrap_or_else(|| panic!("t2 connection listed for t2: {b}"));
    assert_eq!(me["tenant"], "t2");
    assert!(
        !list.iter().any(|e| e["id"] == did.as_str()),
        "default connection listed for t2: {b}"
    );
    let b = get_json(port, "/clients").await;
    let list = b["clients"].as_array().unwrap();
    assert!(list.iter().any(|e| e["id"] == did.as_str()), "{b}");
    assert!(
        !list.iter().any(|e| e["id"] == tid.as_str()),
        "t2 connection listed for default: {b}"
    );
}
