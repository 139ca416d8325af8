//! `dinov2 serve` end to end on the sample checkpoint: the vectors it answers are `dinov2 embed`'s
//! for the same images, through OpenAI's `/v1/embeddings` (data URIs, base64, both encodings)
//! and `/embed` (JSON and a raw body); concurrent requests are batched and all answered; every
//! bad request gets its status and a message naming what is wrong; `/health`, `/info` and
//! `/metrics` say what they should.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_json::Value;

mod common;

use common::{file_host, model, root};

/// The server, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(["serve", "--model", &model(), "--port", "0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("dinov2 serve starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // A server that never says where it listens is killed after two minutes, which ends its
    // stderr: the test then fails instead of waiting forever.
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (pid, watched) = (child.id().to_string(), ready.clone());
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !watched.load(std::sync::atomic::Ordering::Relaxed) {
            if start.elapsed() > LIMIT * 2 {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    let addr = loop {
        let line = lines
            .next()
            .expect("the server says where it listens")
            .unwrap();
        if let Some(addr) = line.strip_prefix("listening on http://") {
            ready.store(true, std::sync::atomic::Ordering::Relaxed);
            break addr.to_string();
        }
    };
    // Keep reading stderr so that the server never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    Server { child, addr }
}

/// The longest a test waits on the server for one read or write: longer than any of the
/// server's own deadlines, so that a server that never answers fails the test instead of hanging
/// it.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A connection to the server whose reads and writes give up after [`LIMIT`].
fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.set_write_timeout(Some(LIMIT)).unwrap();
    stream
}

/// One HTTP/1.1 request: the status and the body.
fn request(
    server: &Server,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let (status, body) = exchange(
        server,
        method,
        path,
        &[("Content-Type", content_type)],
        body,
    );
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One HTTP/1.1 request with these headers: the status and the body's bytes.
fn exchange(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = connect(server);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", server.addr);
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A server refusing a large body may answer before reading it all.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, answer[split + 4..].to_vec())
}

fn post_json(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = request(
        server,
        "POST",
        path,
        "application/json",
        body.to_string().as_bytes(),
    );
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, json)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// `dinov2 embed`'s vectors for `images` (CLS pooling).
fn embedded(images: &[PathBuf]) -> Vec<Vec<f32>> {
    embedded_as(images, &[])
}

/// `dinov2 embed`'s vectors for `images` with these extra options, one flat vector each.
fn embedded_as(images: &[PathBuf], options: &[&str]) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.npy");
    let r = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(["embed", "--model", &model()])
        .args(options)
        .arg("--output")
        .arg(&out)
        .args(images)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let values: Vec<f32> = bytes[10 + header..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    values
        .chunks(values.len() / images.len())
        .map(<[f32]>::to_vec)
        .collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1.0))
}

#[test]
fn serves_the_embed_verbs_vectors_and_refuses_bad_requests() {
    let server = serve(&[
        "--max-inputs",
        "4",
        "--max-request-bytes",
        "2000000",
        "--max-batch-size",
        "4",
        "--http-threads",
        "8",
    ]);
    let (status, body) = request(&server, "GET", "/health", "text/plain", b"");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, info) = request(&server, "GET", "/info", "text/plain", b"");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["dimensions"], 48);
    assert_eq!(info["max_inputs"], 4);

    let images: Vec<PathBuf> = ["chelsea.jpg", "camera.png", "coffee.jpg"]
        .iter()
        .map(|n| root().join("assets/images").join(n))
        .collect();
    let want = embedded(&images);
    let b64: Vec<String> = images
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap()))
        .collect();

    // OpenAI's shape: a data URI and bare base64, as float and as base64 vectors.
    let input = serde_json::json!([format!("data:image/jpeg;base64,{}", b64[0]), b64[1], b64[2]]);
    let (status, v) = post_json(
        &server,
        "/v1/embeddings",
        &serde_json::json!({"input": input, "model": "x"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    for (i, want) in want.iter().enumerate() {
        assert_eq!(v["data"][i]["index"], i);
        let got = floats(&v["data"][i]["embedding"]);
        assert!(close(&got, want), "image {i}");
    }
    let (status, v) = post_json(
        &server,
        "/v1/embeddings",
        &serde_json::json!({"input": b64[0], "encoding_format": "base64"}),
    );
    assert_eq!(status, 200, "{v}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let got: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert!(close(&got, &want[0]));

    // The native endpoint: JSON, and one image as the body.
    let (status, v) = post_json(&server, "/embed", &serde_json::json!({"inputs": b64}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert!(close(&floats(&v[2]), &want[2]));
    let raw = std::fs::read(&images[1]).unwrap();
    let (status, text) = request(&server, "POST", "/embed", "image/png", &raw);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(close(&floats(&v[0]), &want[1]));

    // Concurrent requests: all answered, with their own vectors.
    std::thread::scope(|s| {
        for t in 0..8 {
            let (server, b64, want) = (&server, &b64, &want);
            s.spawn(move || {
                for r in 0..3 {
                    let i = (t + r) % 3;
                    let (status, v) = post_json(
                        server,
                        "/v1/embeddings",
                        &serde_json::json!({"input": b64[i]}),
                    );
                    assert_eq!(status, 200, "{v}");
                    assert!(close(&floats(&v["data"][0]["embedding"]), &want[i]));
                }
            });
        }
    });

    // Bad requests: each its status, with a message naming the problem.
    let garbage = base64::engine::general_purpose::STANDARD.encode(b"not an image at all");
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/embeddings",
            serde_json::json!({"input": [b64[0], garbage]}),
            422,
            "input[1]",
        ),
        (
            "/v1/embeddings",
            serde_json::json!({"input": "https://x/y.jpg"}),
            422,
            "not fetched",
        ),
        (
            "/v1/embeddings",
            serde_json::json!({"input": vec![b64[0].clone(); 5]}),
            413,
            "--max-inputs",
        ),
        (
            "/v1/embeddings",
            serde_json::json!({"input": []}),
            422,
            "no input",
        ),
        (
            "/v1/embeddings",
            serde_json::json!({"input": b64[0], "dimensions": 8}),
            422,
            "48",
        ),
        (
            "/embed",
            serde_json::json!({"input": b64[0]}),
            422,
            "inputs",
        ),
    ];
    for (path, body, status, says) in cases {
        let (got, v) = post_json(&server, path, &body);
        assert_eq!(got, status, "{path} {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{path}: {message}");
        assert_eq!(v["error"]["code"], status);
    }
    let big = vec![b'a'; 2_000_001];
    let (status, text) = request(&server, "POST", "/v1/embeddings", "application/json", &big);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("--max-request-bytes"), "{text}");
    let (status, _) = request(&server, "POST", "/v1/embeddings", "application/json", b"{");
    assert_eq!(status, 400);
    let (status, _) = request(&server, "GET", "/v1/embeddings", "text/plain", b"");
    assert_eq!(status, 405);
    let (status, _) = request(&server, "GET", "/nowhere", "text/plain", b"");
    assert_eq!(status, 404);
    let (status, text) = request(&server, "POST", "/embed", "image/png", b"");
    assert_eq!(status, 422, "{text}");

    // Still healthy, and the counters add up.
    let (status, _) = request(&server, "GET", "/health", "text/plain", b"");
    assert_eq!(status, 200);
    let (status, metrics) = request(&server, "GET", "/metrics", "text/plain", b"");
    assert_eq!(status, 200);
    let count = |line: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
    };
    assert_eq!(
        count("dinov2_requests_total{endpoint=\"/v1/embeddings\",status=\"200\"}"),
        26.0
    );
    // Too many inputs (read, then refused), and a body refused from its length.
    assert_eq!(
        count("dinov2_requests_total{endpoint=\"/v1/embeddings\",status=\"413\"}"),
        1.0
    );
    assert_eq!(
        count("dinov2_requests_total{endpoint=\"refused\",status=\"413\"}"),
        1.0
    );
    // 3 + 1 + 3 + 1 + 24 images embedded, in passes of at most 4.
    assert_eq!(count("dinov2_pass_images_total"), 32.0);
    assert!(count("dinov2_passes_total") >= 8.0);
    assert_eq!(count("dinov2_images_in_flight"), 0.0);
}

/// `/embed` takes files as `curl -F` sends them, and answers `.npy` to a client that asks.
#[test]
fn embed_takes_form_files_and_answers_npy() {
    let server = serve(&["--max-inputs", "3"]);
    let images: Vec<PathBuf> = ["chelsea.jpg", "camera.png"]
        .iter()
        .map(|n| root().join("assets/images").join(n))
        .collect();
    let want = embedded(&images);
    let boundary = "------------------------d74496d66958873e";
    let mut form = Vec::new();
    form.extend(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nx\r\n")
            .bytes(),
    );
    for (i, path) in images.iter().enumerate() {
        form.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
                 filename=\"{i}.img\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .bytes(),
        );
        form.extend(std::fs::read(path).unwrap());
        form.extend(b"\r\n");
    }
    form.extend(format!("--{boundary}--\r\n").bytes());
    let multipart = format!("multipart/form-data; boundary={boundary}");

    let (status, body) = exchange(
        &server,
        "POST",
        "/embed",
        &[("Content-Type", &multipart)],
        &form,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    for (i, want) in want.iter().enumerate() {
        assert!(close(&floats(&v[i]), want), "file {i}");
    }

    // The same as one .npy array [2, 48].
    let headers = [
        ("Content-Type", multipart.as_str()),
        ("Accept", "application/x-npy"),
    ];
    let (status, npy) = exchange(&server, "POST", "/embed", &headers, &form);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&npy));
    assert!(npy.starts_with(b"\x93NUMPY\x01\x00"));
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = String::from_utf8_lossy(&npy[10..10 + header_len]);
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'shape': (2, 48)"),
        "{header}"
    );
    let values: Vec<f32> = npy[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(values.len(), 2 * 48);
    assert!(close(&values[..48], &want[0]) && close(&values[48..], &want[1]));

    // Answer types not offered, malformed forms, forms without files, too many files.
    let refused = |headers: &[(&str, &str)], body: &[u8], want_status: u16, want: &str| {
        let (status, body) = exchange(&server, "POST", "/embed", headers, body);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, want_status, "{headers:?}: {text}");
        assert!(text.contains(want), "{headers:?}: {text}");
    };
    let html = [
        ("Content-Type", multipart.as_str()),
        ("Accept", "text/html"),
    ];
    refused(&html, &form, 406, "application/json or application/x-npy");
    let cut = &form[..form.len() - 40];
    refused(
        &[("Content-Type", &multipart)],
        cut,
        400,
        "closing boundary",
    );
    refused(
        &[("Content-Type", "multipart/form-data")],
        &form,
        400,
        "without a boundary",
    );
    let fields = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--{boundary}--"
    );
    refused(
        &[("Content-Type", &multipart)],
        fields.as_bytes(),
        422,
        "no files",
    );
    let mut four = Vec::new();
    for _ in 0..4 {
        four.extend(format!("--{boundary}\r\nContent-Type: image/png\r\n\r\nx\r\n").bytes());
    }
    four.extend(format!("--{boundary}--").bytes());
    refused(&[("Content-Type", &multipart)], &four, 413, "4 inputs");
}

/// A server offering several poolings: each request gets the one it asks for (the first by
/// default), equal to `dinov2 embed`'s with that pooling.
#[test]
fn a_request_picks_one_of_the_server_s_poolings() {
    let server = serve(&["--pooling", "cls,mean,cls+mean,patch", "--normalize"]);
    let images: Vec<PathBuf> = ["chelsea.jpg", "camera.png"]
        .iter()
        .map(|n| root().join("assets/images").join(n))
        .collect();
    let b64: Vec<String> = images
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap()))
        .collect();
    let (status, info) = request(&server, "GET", "/info", "text/plain", b"");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["pooling"], "cls");
    assert_eq!(info["dimensions_by_pooling"]["cls+mean"], 96);
    assert_eq!(info["dimensions_by_pooling"]["patch"], 16 * 16 * 48);

    for pooling in [None, Some("mean"), Some("cls+mean"), Some("patch")] {
        let name = pooling.unwrap_or("cls");
        let want = embedded_as(&images, &["--pooling", name, "--normalize"]);
        let mut body = serde_json::json!({"input": b64});
        let mut native = serde_json::json!({"inputs": b64});
        if let Some(p) = pooling {
            body["pooling"] = p.into();
            native["pooling"] = p.into();
        }
        let (status, v) = post_json(&server, "/v1/embeddings", &body);
        assert_eq!(status, 200, "{name}: {v}");
        let (status, n) = post_json(&server, "/embed", &native);
        assert_eq!(status, 200, "{name}: {n}");
        for (i, want) in want.iter().enumerate() {
            assert!(
                close(&floats(&v["data"][i]["embedding"]), want),
                "{name}, image {i}"
            );
            assert!(close(&floats(&n[i]), want), "{name}, image {i} (/embed)");
        }
    }
    // A raw body picks with the query (`+` or its escape).
    let raw = std::fs::read(&images[1]).unwrap();
    let want = embedded_as(&images[1..], &["--pooling", "cls+mean", "--normalize"]);
    for query in ["?pooling=cls+mean", "?x=1&pooling=cls%2Bmean"] {
        let (status, text) = request(
            &server,
            "POST",
            &format!("/embed{query}"),
            "image/png",
            &raw,
        );
        assert_eq!(status, 200, "{query}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(close(&floats(&v[0]), &want[0]), "{query}");
    }
    // Poolings the server does not offer, or that do not exist; dimensions of another pooling.
    for (body, want) in [
        (
            serde_json::json!({"input": b64[0], "pooling": "tokens"}),
            "this server gives cls, mean, cls+mean, patch",
        ),
        (
            serde_json::json!({"input": b64[0], "pooling": "max"}),
            "unknown pooling",
        ),
        (
            serde_json::json!({"input": b64[0], "pooling": "mean", "dimensions": 96}),
            "dimensions 96",
        ),
    ] {
        let (status, v) = post_json(&server, "/v1/embeddings", &body);
        assert_eq!(status, 422, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{v}"
        );
    }
}

/// `Accept` is read with its weights, across headers; a pooling may come in the query (either
/// endpoint) or a form field, and a body and query that disagree are refused.
#[test]
fn accept_and_pooling_are_read_as_clients_mean_them() {
    let server = serve(&["--pooling", "cls,mean"]);
    let image = root().join("assets/images/coffee.jpg");
    let raw = std::fs::read(&image).unwrap();
    let want_cls = embedded_as(std::slice::from_ref(&image), &["--pooling", "cls"]);
    let want_mean = embedded_as(std::slice::from_ref(&image), &["--pooling", "mean"]);
    let post = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
        exchange(&server, "POST", path, headers, body)
    };
    let jpeg = ("Content-Type", "image/jpeg");
    for (accept, npy) in [
        (vec!["application/x-npy;q=0, application/json"], false),
        (vec!["application/json;q=1, application/x-npy;q=0.5"], false),
        (vec!["application/json;q=0.5, application/x-npy"], true),
        (vec!["application/*"], false),
        (vec![""], false),
        (vec!["text/html", "application/x-npy"], true),
    ] {
        let mut headers = vec![jpeg];
        headers.extend(accept.iter().map(|a| ("Accept", *a)));
        let (status, body) = post("/embed", &headers, &raw);
        assert_eq!(
            status,
            200,
            "{accept:?}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(body.starts_with(b"\x93NUMPY"), npy, "{accept:?}");
    }
    let answer = raw_exchange(
        &server,
        format!(
            "POST /embed HTTP/1.1\r\nContent-Type: image/jpeg\r\nAccept: */*;q=0\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            raw.len()
        )
        .as_bytes()
        .iter()
        .chain(&raw)
        .copied()
        .collect::<Vec<u8>>()
        .as_slice(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 406 Not Acceptable"),
        "{answer}"
    );
    assert!(answer.contains("invalid_request_error"), "{answer}");

    // The query picks on /v1/embeddings too; a body and a query that disagree are refused.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    let body = serde_json::json!({"input": b64}).to_string();
    let json = ("Content-Type", "application/json");
    let (status, v) = post("/v1/embeddings?pooling=mean", &[json], body.as_bytes());
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&v).unwrap();
    assert!(close(&floats(&v["data"][0]["embedding"]), &want_mean[0]));
    let body = serde_json::json!({"inputs": b64, "pooling": "mean"}).to_string();
    let (status, v) = post("/embed?pooling=cls", &[json], body.as_bytes());
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&v));
    assert!(String::from_utf8_lossy(&v).contains("name one"));

    // A form's `pooling` field picks; a typed field that is no file is not an image.
    let boundary = "b0undary";
    let mut form = Vec::new();
    form.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"pooling\"\r\n\r\nmean\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"meta\"\r\n\
             Content-Type: application/json\r\n\r\n{{\"a\": 1}}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.jpg\"\
             \r\n\r\n"
        )
        .bytes(),
    );
    form.extend(&raw);
    form.extend(format!("\r\n--{boundary}--\r\n").bytes());
    let multipart = format!("multipart/form-data; boundary={boundary}");
    let (status, v) = post("/embed", &[("Content-Type", &multipart)], &form);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&v));
    let v: Value = serde_json::from_slice(&v).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert!(close(&floats(&v[0]), &want_mean[0]));
    let (_, v) = post("/embed", &[jpeg], &raw);
    let v: Value = serde_json::from_slice(&v).unwrap();
    assert!(close(&floats(&v[0]), &want_cls[0]), "the default stays cls");
}

/// The value of a `/metrics` line starting with `name`.
fn metric(server: &Server, name: &str) -> f64 {
    let (_, text) = request(server, "GET", "/metrics", "text/plain", b"");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn a_full_queue_is_refused_at_once() {
    // One image may be in flight at most, and a pass waits a long window for company: a second
    // request arriving meanwhile is refused with 429, not queued.
    let server = serve(&[
        "--max-queue",
        "1",
        "--max-batch-size",
        "2",
        "--batch-wait-ms",
        "3000",
    ]);
    let image = root().join("assets/images/coffee.jpg");
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(image).unwrap());
    let body = serde_json::json!({"input": b64});
    std::thread::scope(|s| {
        let first = s.spawn(|| post_json(&server, "/v1/embeddings", &body).0);
        let start = std::time::Instant::now();
        while metric(&server, "dinov2_images_in_flight") < 1.0 {
            assert!(
                start.elapsed().as_secs() < 20,
                "the first request never arrived"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (status, v) = post_json(
            &server,
            "/v1/embeddings",
            &serde_json::json!({"input": [b64, b64]}),
        );
        assert_eq!(status, 429, "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(first.join().unwrap(), 200);
    });
    assert_eq!(metric(&server, "dinov2_images_in_flight"), 0.0);
}

/// Sends `raw` bytes on one connection and reads until the server closes it.
fn raw_exchange(server: &Server, raw: &[u8]) -> String {
    let mut stream = connect(server);
    let _ = stream.write_all(raw);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn the_http_layer_holds_up_against_odd_clients() {
    let server = serve(&["--http-threads", "2", "--max-request-bytes", "1000"]);
    // A body claiming an absurd length is refused from its header, and the server goes on.
    let huge = format!(
        "POST /v1/embeddings HTTP/1.1\r\nContent-Length: {}\r\n\r\n{{",
        u64::MAX
    );
    let answer = raw_exchange(&server, huge.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("--max-request-bytes"), "{answer}");
    let not_a_number = "POST /embed HTTP/1.1\r\nContent-Length: lots\r\n\r\n";
    assert!(raw_exchange(&server, not_a_number.as_bytes()).starts_with("HTTP/1.1 400"));
    // Chunked uploads are refused; a garbled request line too.
    let chunked =
        "POST /embed HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert!(raw_exchange(&server, chunked.as_bytes()).starts_with("HTTP/1.1 411"));
    assert!(raw_exchange(&server, b"garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    let long_head = format!("GET /health HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw_exchange(&server, long_head.as_bytes()).starts_with("HTTP/1.1 431"));
    // Keep-alive: two requests on one connection, the second closing it; HTTP/1.0 closes.
    let two = "GET /health HTTP/1.1\r\n\r\nGET /info HTTP/1.1\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(&server, two.as_bytes());
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert!(answer.contains("\"dimensions\":48"), "{answer}");
    let answer = raw_exchange(&server, b"GET /health HTTP/1.0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("Connection: close"));
    let two = "GET /health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET /health HTTP/1.1\r\nConnection: TE, close\r\n\r\n";
    assert_eq!(
        raw_exchange(&server, two.as_bytes())
            .matches("200 OK")
            .count(),
        2
    );
    // HEAD: the head alone, then the connection closes.
    let answer = raw_exchange(
        &server,
        b"HEAD /health HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n") && answer.matches("HTTP/1.1").count() == 1,
        "{answer}"
    );
    // Framing a proxy could read otherwise is refused.
    for (raw, status) in [
        ("GET /health HTTP/1.9\r\n\r\n", "505"),
        ("GET /health HTTP/1.1 extra\r\n\r\n", "400"),
        (
            "POST /embed HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
            "400",
        ),
        (
            "POST /embed HTTP/1.1\r\nContent-Length: +2\r\n\r\nab",
            "400",
        ),
        (
            "POST /embed HTTP/1.1\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nab",
            "411",
        ),
        ("GET /health HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", "400"),
        ("GET /health HTTP/1.1\r\nBad Name: 1\r\n\r\n", "400"),
    ] {
        let answer = raw_exchange(&server, raw.as_bytes());
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{raw:?}: {answer}"
        );
    }
    // Expect: 100-continue gets its interim answer before the body is sent.
    let mut stream = connect(&server);
    stream
        .write_all(b"POST /embed HTTP/1.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 13\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(br#"{"inputs":[]}"#).unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 422"), "{rest}");
    // Clients that connect and stay silent hold a connection thread each only until the idle
    // timeout: with both threads held, new connections wait, then are served.
    let idle: Vec<TcpStream> = (0..2).map(|_| connect(&server)).collect();
    let (status, _) = request(&server, "GET", "/health", "text/plain", b"");
    assert_eq!(status, 200);
    drop(idle);
}

#[test]
fn a_request_the_model_does_not_answer_in_time_is_answered_504() {
    // A pass waits 3 s for company; the request gives up after 1 s.
    let server = serve(&["--request-timeout", "1", "--batch-wait-ms", "3000"]);
    let image = root().join("assets/images/coffee.jpg");
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(image).unwrap());
    let (status, v) = post_json(
        &server,
        "/v1/embeddings",
        &serde_json::json!({"input": b64}),
    );
    assert_eq!(status, 504, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--request-timeout"));
    // Its room in flight is given back once the model thread is done with it.
    let start = std::time::Instant::now();
    while metric(&server, "dinov2_images_in_flight") != 0.0 {
        assert!(
            start.elapsed().as_secs() < 20,
            "the room was never given back"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Thread and copy counts past any machine's are refused by the argument parser, before a
/// thread is started or a model loaded (a million HTTP threads aborted the process).
#[test]
fn absurd_counts_are_refused_up_front() {
    let model = model();
    for args in [
        vec!["serve", "--model", &model, "--http-threads", "1000000"],
        vec!["serve", "--model", &model, "--streams", "1000"],
        vec![
            "embed",
            "--model",
            &model,
            "--workers",
            "100000",
            "--output",
            "x.npy",
            "y.jpg",
        ],
        vec!["bench", "--arch", "vits14", "--repeats", "0"],
        vec!["bench", "--arch", "vits14", "--image-size", "100000"],
        vec!["bench", "--arch", "vits14", "--streams", "0"],
        vec!["bench", "--arch", "vits14", "--streams", "17"],
    ] {
        let r = Command::new(env!("CARGO_BIN_EXE_dinov2"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("expected a whole number from"),
            "{args:?}: {stderr}"
        );
    }
}

/// SIGTERM (as an orchestrator stops a container): the request under way is answered, then the
/// server exits 0, and no new connection is taken.
#[test]
fn a_stop_signal_drains_the_requests_under_way() {
    let mut server = serve(&["--batch-wait-ms", "1500"]);
    let image = root().join("assets/images/coffee.jpg");
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(image).unwrap());
    let body = serde_json::json!({"input": b64});
    std::thread::scope(|s| {
        let pending = s.spawn(|| post_json(&server, "/v1/embeddings", &body));
        let start = std::time::Instant::now();
        while metric(&server, "dinov2_images_in_flight") < 1.0 {
            assert!(start.elapsed().as_secs() < 20, "the request never arrived");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let killed = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let (status, v) = pending.join().unwrap();
        assert_eq!(status, 200, "{v}");
    });
    let start = std::time::Instant::now();
    let code = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(start.elapsed().as_secs() < 30, "the server did not stop");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    assert!(
        TcpStream::connect(&server.addr).is_err(),
        "nothing listens any more"
    );
}

#[test]
fn urls_are_fetched_only_when_allowed() {
    let host = file_host(root().join("assets/images"));
    let coffee = format!("{host}/coffee.jpg");
    let want = embedded(&[root().join("assets/images/coffee.jpg")]);
    // Not allowed: a 422 that says how to allow it.
    let server = serve(&[]);
    let (status, v) = post_json(
        &server,
        "/embed",
        &serde_json::json!({ "inputs": [coffee] }),
    );
    assert_eq!(status, 422, "{v}");
    assert!(v.to_string().contains("--allow-urls"), "{v}");
    drop(server);
    // Allowed: fetched, the same vector as the file's, beside a base64 input.
    let server = serve(&["--allow-urls", "--max-request-bytes", "100000"]);
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(root().join("assets/images/coffee.jpg")).unwrap());
    let (status, v) = post_json(
        &server,
        "/v1/embeddings",
        &serde_json::json!({ "input": [coffee, b64] }),
    );
    assert_eq!(status, 200, "{v}");
    for i in 0..2 {
        assert!(close(&floats(&v["data"][i]["embedding"]), &want[0]), "{i}");
    }
    let (_, info) = request(&server, "GET", "/info", "", b"");
    assert!(info.contains("\"allow_urls\":true"), "{info}");
    // A URL that fails is a 422 naming it and why: missing, too large, nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/x.jpg", l.local_addr().unwrap())
    };
    for (url, says) in [
        (format!("{host}/missing.jpg"), "answered 404"),
        (
            format!("{host}/astronaut.png"),
            "larger than the limit of 100000 bytes",
        ),
        (closed, "Connection Failed"),
    ] {
        let (status, v) = post_json(&server, "/embed", &serde_json::json!({ "inputs": [url] }));
        assert_eq!(status, 422, "{v}");
        let text = v.to_string();
        assert!(
            text.contains("input[0]") && text.contains(&url) && text.contains(says),
            "{text}"
        );
    }
    // Two images of 72 and 35 kB, each within the limit, together past it: whichever arrives
    // second is refused.
    let chelsea = format!("{host}/chelsea.jpg");
    let (status, v) = post_json(
        &server,
        "/embed",
        &serde_json::json!({ "inputs": [coffee, chelsea] }),
    );
    assert_eq!(status, 422, "{v}");
    assert!(
        v.to_string()
            .contains("the request's images pass its limit of 100000 bytes"),
        "{v}"
    );
}
