//! `permessage-deflate` on the wire: negotiated per RFC 7692 when `GATEWAY_WS_DEFLATE` is
//! on, event frames compressed (RSV1) and inflated here to compare, plain frames for a
//! client that offers nothing or when the option is off, and a client's compression bomb
//! closed with 1009 and counted.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::*;

/// What a browser (Chrome) offers.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Opens `/ws` by hand with `extensions` offered; returns the socket and the 101's head.
async fn open(gw: &Gateway, user: &str, extensions: Option<&str>) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let offer = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n",
        gw.addr,
        token("t", user)
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(WAIT, stream.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "connection closed during the handshake");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    (stream, head)
}

/// One server frame: its first byte (FIN, RSV1, opcode) and its payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut h))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => u64::from(stream.read_u16().await.unwrap()),
        127 => stream.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await.unwrap();
    (h[0], payload)
}

/// A compressed message as RFC 7692 7.2.2 says to read it: the tail put back, inflated
/// with no context from any other message.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(64 * 1024);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(d.total_in() as usize, input.len());
    out
}

/// `text` compressed as a client would send it: raw deflate, tail removed.
fn deflate(text: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 1024);
    c.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
    assert_eq!(c.total_in() as usize, text.len());
    assert!(out.ends_with(&[0x00, 0x00, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A masked client frame.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xa1, 0xb2, 0xc3, 0xd4];
    let mut f = vec![first];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

const FIN_TEXT: u8 = 0x81;
const FIN_RSV1_TEXT: u8 = 0xc1;

/// A studio progress event, as the catalog publishes it.
fn progress(id: &str, user: &str) -> Value {
    envelope(id, "render.job.progress.v1", Some("t"), Some(user))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negotiated_connection_gets_compressed_events_and_a_plain_one_plain_frames() {
    bounded(async {
        let gw = GatewayBuilder::new("deflate")
            .arg("ws-deflate", "true")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let (mut deflated, head) = open(&gw, "u", Some(BROWSER_OFFER)).await;
        assert!(
            head.contains(
                "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover\r\n"
            ),
            "{head}"
        );
        let (mut plain, head) = open(&gw, "u", None).await;
        assert!(!head.contains("sec-websocket-extensions"), "{head}");
        for id in ["z1", "z2"] {
            publisher
                .publish("render.job.progress.v1", &progress(id, "u"))
                .await;
        }
        for id in ["z1", "z2"] {
            let (first, payload) = read_frame(&mut deflated).await;
            assert_eq!(first, FIN_RSV1_TEXT, "a final text frame with RSV1");
            let json: Value = serde_json::from_slice(&inflate(&payload)).unwrap();
            assert_eq!(json, progress(id, "u"));
            let (first, payload) = read_frame(&mut plain).await;
            assert_eq!(first, FIN_TEXT, "a plain final text frame");
            let json: Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(json, progress(id, "u"));
        }
        // The client's own compressed message is read too: a ping, answered.
        let ping = deflate(br#"{"type":"ping"}"#);
        deflated
            .write_all(&client_frame(FIN_RSV1_TEXT, &ping))
            .await
            .unwrap();
        let (first, payload) = read_frame(&mut deflated).await;
        assert_eq!(first, FIN_TEXT, "short replies go plain");
        assert_eq!(payload, br#"{"type":"pong"}"#);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_server_window_is_echoed_and_longer_events_go_plain() {
    bounded(async {
        let gw = GatewayBuilder::new("deflate-window")
            .arg("ws-deflate", "true")
            .start()
            .await;
        let publisher = Publisher::connect(&gw.exchange).await;
        // A bad first offer is declined; the second, with a 256-byte window, is taken.
        let offers = "permessage-deflate; mystery, permessage-deflate; server_max_window_bits=8";
        let (mut ws, head) = open(&gw, "u", Some(offers)).await;
        assert!(
            head.contains(
                "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover; server_max_window_bits=8\r\n"
            ),
            "{head}"
        );
        let mut event = progress("w1", "u");
        event["data"]["output_url"] = "https://cdn.flatrender.example/renders/".repeat(6).into();
        assert!(event.to_string().len() > 256);
        publisher.publish("render.job.progress.v1", &event).await;
        let (first, payload) = read_frame(&mut ws).await;
        assert_eq!(first, FIN_TEXT, "longer than the window: plain");
        assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), event);
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_option_off_an_offer_is_ignored() {
    bounded(async {
        let gw = GatewayBuilder::new("nodeflate").start().await;
        let publisher = Publisher::connect(&gw.exchange).await;
        let (mut ws, head) = open(&gw, "u", Some(BROWSER_OFFER)).await;
        assert!(!head.contains("sec-websocket-extensions"), "{head}");
        publisher
            .publish("render.job.progress.v1", &progress("o1", "u"))
            .await;
        let (first, payload) = read_frame(&mut ws).await;
        assert_eq!(first, FIN_TEXT);
        let json: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json, progress("o1", "u"));
        publisher.cleanup().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compression_bomb_is_closed_with_1009_and_counted() {
    bounded(async {
        let gw = GatewayBuilder::new("bomb")
            .arg("ws-deflate", "true")
            .start()
            .await;
        let (mut ws, _) = open(&gw, "u", Some(BROWSER_OFFER)).await;
        // 4 MiB of one letter inflates from a frame of a few KiB, far under the 16 KiB
        // limit on a frame; only its inflated size is over it.
        let bomb = deflate(&vec![b'a'; 4 << 20]);
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        ws.write_all(&client_frame(FIN_RSV1_TEXT, &bomb))
            .await
            .unwrap();
        let (first, payload) = read_frame(&mut ws).await;
        assert_eq!(first & 0x0f, 0x8, "a close frame");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009);
        gw.wait_metric("gateway_disconnects_total{reason=\"message_too_big\"}", 1.0)
            .await;
        gw.shutdown().await;
    })
    .await;
}
