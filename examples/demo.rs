//! See the gateway work: mints a development token, connects one WebSocket and one SSE
//! client, publishes a realistic render-job sequence and a notification to RabbitMQ, and
//! prints what each client receives. Also publishes one event for another tenant, which
//! neither client may see.
//!
//!   cargo run --example demo                      # watch + publish (the quick start)
//!   cargo run --example demo -- publish --user U  # only publish the sequence
//!   cargo run --example demo -- token --user U    # print a token for curl or a browser
//!   cargo run --example demo -- url               # the demo page's address, token included
//!
//! Flags: --gateway URL (http://127.0.0.1:8080), --amqp-url URL, --exchange NAME
//! (flatrender.events), --tenant ID (tenant-demo), --user ID (user-demo), --secret S
//! (GATEWAY_JWT_SECRET or the quick start's development secret).

use std::error::Error;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const DEV_SECRET: &str = "dev-secret-change-me-0123456789abcdef";

#[derive(Clone)]
struct Opts {
    command: String,
    gateway: String,
    amqp_url: String,
    exchange: String,
    tenant: String,
    user: String,
    secret: String,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        command: "watch".into(),
        gateway: "http://127.0.0.1:8080".into(),
        amqp_url: std::env::var("GATEWAY_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        exchange: std::env::var("GATEWAY_AMQP_EXCHANGE")
            .unwrap_or_else(|_| "flatrender.events".into()),
        tenant: "tenant-demo".into(),
        user: "user-demo".into(),
        secret: std::env::var("GATEWAY_JWT_SECRET").unwrap_or_else(|_| DEV_SECRET.into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "watch" | "publish" | "token" | "url" => o.command = a.clone(),
            "--gateway" => o.gateway = value()?,
            "--amqp-url" => o.amqp_url = value()?,
            "--exchange" => o.exchange = value()?,
            "--tenant" => o.tenant = value()?,
            "--user" => o.user = value()?,
            "--secret" => o.secret = value()?,
            other => return Err(format!("unknown argument {other}; see examples/demo.rs").into()),
        }
    }
    Ok(o)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn token(o: &Opts) -> Result<String> {
    let claims = json!({"sub": o.user, "tenant_id": o.tenant, "iat": now(), "exp": now() + 3600});
    Ok(jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(o.secret.as_bytes()),
    )?)
}

fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// RFC 3339 UTC timestamp without pulling in a date crate.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn envelope(event_type: &str, tenant: &str, user: Option<&str>, data: Value) -> Value {
    json!({
        "event_id": uuid(),
        "event_type": event_type,
        "event_time": rfc3339(now()),
        "tenant_id": tenant,
        "user_id": user,
        "trace_id": uuid(),
        "correlation_id": uuid(),
        "producer": "render-orchestrator",
        "data": data,
    })
}

/// The sequence a studio page sees for one render: queued, started, progress, completed,
/// then the notification that lights the bell.
fn sequence(o: &Opts) -> Vec<(String, Value)> {
    let job = uuid();
    let u = Some(o.user.as_str());
    let t = o.tenant.as_str();
    let mut out = vec![(
        "render.job.queued.v1".to_owned(),
        envelope(
            "render.job.queued.v1",
            t,
            u,
            json!({"job_id": job, "queue": "render.queue.paid", "priority": 5}),
        ),
    )];
    out.push((
        "render.job.started.v1".into(),
        envelope(
            "render.job.started.v1",
            t,
            u,
            json!({"job_id": job, "node_id": "node-7"}),
        ),
    ));
    for p in [25, 50, 75] {
        out.push((
            "render.job.progress.v1".into(),
            envelope(
                "render.job.progress.v1",
                t,
                u,
                json!({"job_id": job, "progress": p, "frame": p * 4, "total_frames": 400}),
            ),
        ));
    }
    out.push((
        "render.job.completed.v1".into(),
        envelope("render.job.completed.v1", t, u, json!({"job_id": job, "output_url": format!("https://cdn.flatrender.example/renders/{job}.mp4"), "duration_ms": 41234})),
    ));
    out.push((
        "notification.created.v1".into(),
        envelope("notification.created.v1", t, u, json!({"notification_id": uuid(), "kind": "render_completed", "title": "Your render is ready", "job_id": job})),
    ));
    out
}

async fn publish(o: &Opts, events: &[(String, Value)]) -> Result<()> {
    let conn = Connection::connect(&o.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        o.exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    for (key, body) in events {
        // The catalog's headers, as FlatRender's producers set them.
        let mut headers = FieldTable::default();
        headers.insert(
            "x-event-type".into(),
            AMQPValue::LongString(key.as_str().into()),
        );
        if let Some(t) = body["tenant_id"].as_str() {
            headers.insert("x-tenant-id".into(), AMQPValue::LongString(t.into()));
        }
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(headers);
        ch.basic_publish(
            o.exchange.as_str().into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(body)?,
            props,
        )
        .await?
        .await?;
        // The browser tests read the id as the third word of these lines.
        match body["tenant_id"].as_str() {
            Some(t) if t != o.tenant => eprintln!(
                "published {key} {} for another tenant ({t}): neither client may receive it",
                body["event_id"]
            ),
            _ => eprintln!("published {key} {}", body["event_id"]),
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    conn.close(200, "done".into()).await?;
    Ok(())
}

/// A connection error that says where the demo looked and how to point it elsewhere.
fn unreachable_gateway(o: &Opts, path: &str, e: &dyn std::fmt::Display) -> Box<dyn Error> {
    format!(
        "cannot reach the gateway at {}{path}: {e}\n\
         Is it running (scripts/quickstart.sh)? If it listens elsewhere, pass \
         --gateway http://HOST:PORT (the gateway's GATEWAY_LISTEN).",
        o.gateway
    )
    .into()
}

async fn watch(o: &Opts) -> Result<()> {
    let token = token(o)?;
    let ws_url = format!(
        "{}/ws?access_token={token}",
        o.gateway.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .map_err(|e| unreachable_gateway(o, "/ws", &e))?;
    let sse = reqwest::Client::new()
        .get(format!("{}/sse", o.gateway))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| unreachable_gateway(o, "/sse", &e))?;
    if !sse.status().is_success() {
        return Err(format!("/sse answered {}", sse.status()).into());
    }
    let mut sse = sse.bytes_stream();
    eprintln!(
        "connected as user {} of tenant {} over WebSocket and SSE",
        o.user, o.tenant
    );

    let mut events = sequence(o);
    // One event for another tenant's user of the same id: neither client may see it.
    events.insert(
        3,
        (
            "render.job.progress.v1".into(),
            envelope(
                "render.job.progress.v1",
                "some-other-tenant",
                Some(&o.user),
                json!({"progress": 99}),
            ),
        ),
    );
    let expected = events.len() - 1;
    let publisher = {
        let o = o.clone();
        tokio::spawn(async move { publish(&o, &events).await.map_err(|e| e.to_string()) })
    };

    let (mut ws_seen, mut sse_seen, mut buf) = (0, 0, String::new());
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    while ws_seen < expected || sse_seen < expected {
        tokio::select! {
            _ = &mut deadline => return Err(format!("timed out: {ws_seen} WS and {sse_seen} SSE events of {expected}").into()),
            m = ws.next() => match m {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t)?;
                    ws_seen += 1;
                    println!("ws  <- {} {}", v["event_type"].as_str().unwrap_or("?"), v["data"]);
                }
                Some(Ok(_)) => {}
                other => return Err(format!("websocket ended: {other:?}").into()),
            },
            c = sse.next() => match c {
                Some(Ok(bytes)) => {
                    buf.push_str(&String::from_utf8_lossy(&bytes));
                    while let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                            let v: Value = serde_json::from_str(data)?;
                            sse_seen += 1;
                            println!("sse <- {} {}", v["event_type"].as_str().unwrap_or("?"), v["data"]);
                        }
                    }
                }
                other => return Err(format!("SSE stream ended: {other:?}").into()),
            },
        }
    }
    publisher.await??;
    eprintln!("all {expected} events arrived on both transports; the other tenant's event did not");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Errors are printed for a person (Display), not as a Debug dump of the error value.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let o = opts()?;
    match o.command.as_str() {
        "token" => println!("{}", token(&o)?),
        "url" => println!("{}/demo/#token={}", o.gateway, token(&o)?),
        "publish" => publish(&o, &sequence(&o)).await?,
        _ => watch(&o).await?,
    }
    Ok(())
}
