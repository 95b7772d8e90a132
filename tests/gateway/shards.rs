//! Sharding by tenant (`GATEWAY_SHARD`): two instances of two shards on one exchange; each
//! admits its own tenants and refuses the other shard's with a 421 that names their shard.

use realtime_gateway::config::shard_of;
use serde_json::{Value, json};

use super::support::*;

/// The first tenant names (`tenant-<i>`) that fall into shard 0 and shard 1 of two.
fn tenants_of_two_shards() -> [String; 2] {
    let find = |k| {
        (0..)
            .map(|i| format!("tenant-{i}"))
            .find(|t| shard_of(t, 2) == k)
            .unwrap()
    };
    [find(0), find(1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_admits_its_tenants_and_names_the_shard_of_others() {
    bounded(async {
        let tenants = tenants_of_two_shards();
        let exchange = unique("shards");
        let mut gateways = Vec::new();
        for k in 0..2 {
            let gw = GatewayBuilder::new(&format!("shard{k}"))
                .exchange(&exchange)
                .arg("shard", &format!("{k}/2"))
                .start()
                .await;
            gateways.push(gw);
        }
        for (k, gw) in gateways.iter().enumerate() {
            let (own, other) = (&tenants[k], &tenants[1 - k]);
            let _ws = Client::as_user(gw, Transport::Ws, own, "u").await;
            let _sse = Client::as_user(gw, Transport::Sse, own, "u").await;
            for transport in [Transport::Ws, Transport::Sse] {
                let refused = Client::connect(gw, transport, Auth::Bearer(token(other, "u"))).await;
                assert_eq!(refused.err(), Some(421));
            }
            let resp = gw
                .http
                .get(gw.url("/sse"))
                .bearer_auth(token(other, "u"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 421);
            let body: Value = resp.json().await.unwrap();
            assert_eq!(
                body,
                json!({"error": "wrong_shard", "reason": "shard", "shard": 1 - k, "shards": 2})
            );
            // `/auth/check`, which the browser client asks when a handshake fails, says the same.
            let check = gw
                .http
                .get(gw.url("/auth/check"))
                .bearer_auth(token(other, "u"))
                .send()
                .await
                .unwrap();
            assert_eq!(check.status(), 421);
            assert_eq!(
                gw.metric("gateway_connections_refused_total{reason=\"wrong_shard\"}")
                    .await,
                4.0
            );
        }
        for gw in gateways {
            gw.shutdown().await;
        }
    })
    .await;
}
