//! The server's request and response bodies: OpenAI's `/v1/embeddings` (images as data URIs or
//! base64 strings, vectors as JSON numbers or base64 of little-endian float32) and the native
//! `/embed` (Text Embeddings Inference's shape: `{"inputs": ...}` in, a list of vectors out; or
//! one image as the raw body). Errors carry their HTTP status.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine};
use serde_json::Value;

use crate::fetch::{is_url, Fetcher};

/// An error answered with `status` and a JSON body naming it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// `{"error": {"message", "type", "code"}}`, as OpenAI's API answers errors.
    pub fn body(&self) -> String {
        let kind = match self.status {
            400 | 404 | 405 | 406 | 413 | 415 | 422 => "invalid_request_error",
            429 => "rate_limit_error",
            503 => "unavailable",
            _ => "server_error",
        };
        serde_json::json!({"error": {"message": self.message, "type": kind, "code": self.status}})
            .to_string()
    }
}

/// How vectors are written in a `/v1/embeddings` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Float,
    /// Base64 of the little-endian float32 bytes.
    Base64,
}

/// A parsed `/v1/embeddings` request: the encoded images, the answer's encoding, and the
/// pooling and `dimensions` asked, if any.
#[derive(Debug)]
pub struct EmbeddingsRequest {
    pub images: Vec<Vec<u8>>,
    pub encoding: Encoding,
    pub pooling: Option<String>,
    pub dimensions: Option<u64>,
}

/// A parsed `/embed` JSON request: the encoded images, and the pooling asked, if any.
#[derive(Debug)]
pub struct EmbedRequest {
    pub images: Vec<Vec<u8>>,
    pub pooling: Option<String>,
}

/// Standard or URL-safe alphabet, padding optional, as clients send either.
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The image bytes of `input`: a `data:image/...;base64,` URI or a bare base64 string. URLs are
/// refused here: they are fetched only by a server started with `--allow-urls` ([`images`]).
pub fn decode_image_string(input: &str, index: usize) -> Result<Vec<u8>, ApiError> {
    let bad = |why: String| ApiError::new(422, format!("input[{index}]: {why}"));
    let input = input.trim();
    if is_url(input) {
        return Err(bad(
            "URLs are not fetched by this server (start it with --allow-urls): send the image as \
             base64 or a data:image/...;base64, URI"
                .into(),
        ));
    }
    let payload = match input.strip_prefix("data:") {
        Some(uri) => {
            let (head, data) = uri
                .split_once(',')
                .ok_or_else(|| bad("a data URI without a comma".into()))?;
            if !head.ends_with(";base64") {
                return Err(bad(format!(
                    "a data URI must be base64 (data:{head};base64,...)"
                )));
            }
            data
        }
        None => input,
    };
    let payload: String = payload.split_ascii_whitespace().collect();
    STANDARD
        .decode(&payload)
        .or_else(|_| URL_SAFE.decode(&payload))
        .map_err(|e| bad(format!("not base64: {e}")))
}

/// The strings of `value`: one string or a list of them.
fn strings(value: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::new(
            422,
            format!("`{field}` must be a string or a list of strings"),
        )
    };
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        Value::Null => Err(ApiError::new(422, format!("`{field}` is missing"))),
        _ => Err(bad()),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("not valid JSON: {e}")))
}

/// Checks the number of inputs against `max_inputs`.
pub fn check_count(n: usize, max_inputs: usize) -> Result<(), ApiError> {
    match n {
        0 => Err(ApiError::new(422, "no input given")),
        n if n > max_inputs => Err(ApiError::new(
            413,
            format!("{n} inputs, more than the {max_inputs} one request may hold (--max-inputs)"),
        )),
        _ => Ok(()),
    }
}

/// Parses a `/v1/embeddings` body: `{"input": ..., "model"?, "encoding_format"?, "dimensions"?,
/// "pooling"?}`.
pub fn embeddings_request(
    body: &[u8],
    max_inputs: usize,
    fetch: Option<&Fetcher>,
) -> Result<EmbeddingsRequest, ApiError> {
    let v = parse_json(body)?;
    let encoding = match v["encoding_format"].as_str() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::new(
                422,
                format!("encoding_format {other:?}: expected float or base64"),
            ))
        }
    };
    let dimensions = match v.get("dimensions").filter(|d| !d.is_null()) {
        None => None,
        Some(d) => Some(d.as_u64().ok_or_else(|| {
            ApiError::new(422, format!("dimensions {d}: expected a number of values"))
        })?),
    };
    Ok(EmbeddingsRequest {
        images: images(&v, "input", max_inputs, fetch)?,
        encoding,
        pooling: pooling_field(&v)?,
        dimensions,
    })
}

/// Checks the `dimensions` asked against the values per image the pooling gives (`None` when
/// that varies): vectors are not shortened.
pub fn check_dimensions(asked: Option<u64>, dims: Option<usize>) -> Result<(), ApiError> {
    match asked {
        Some(a) if dims != Some(a as usize) => Err(ApiError::new(
            422,
            format!(
                "dimensions {a}: this model gives {} values per image",
                dims.map_or("a varying number of".into(), |d| d.to_string())
            ),
        )),
        _ => Ok(()),
    }
}

/// The images of field `field` (one string or a list), counted against `max_inputs`; URLs
/// fetched by `fetch` when the server allows them.
fn images(
    v: &Value,
    field: &str,
    max_inputs: usize,
    fetch: Option<&Fetcher>,
) -> Result<Vec<Vec<u8>>, ApiError> {
    let inputs = strings(&v[field], field)?;
    check_count(inputs.len(), max_inputs)?;
    let Some(fetch) = fetch else {
        return inputs
            .iter()
            .enumerate()
            .map(|(i, s)| decode_image_string(s, i))
            .collect();
    };
    let urls: Vec<&str> = inputs
        .iter()
        .map(|s| s.trim())
        .filter(|s| is_url(s))
        .collect();
    let mut fetched = fetch.get_all(&urls).into_iter();
    inputs
        .iter()
        .enumerate()
        .map(|(i, s)| match is_url(s) {
            true => fetched
                .next()
                .unwrap_or_else(|| Err("not fetched".into()))
                .map_err(|e| ApiError::new(422, format!("input[{i}]: fetching {}: {e}", s.trim()))),
            false => decode_image_string(s, i),
        })
        .collect()
}

/// The optional `"pooling"` field: a string.
fn pooling_field(v: &Value) -> Result<Option<String>, ApiError> {
    match v.get("pooling").filter(|p| !p.is_null()) {
        None => Ok(None),
        Some(Value::String(p)) => Ok(Some(p.clone())),
        Some(other) => Err(ApiError::new(
            422,
            format!("pooling {other}: expected a name such as \"mean\""),
        )),
    }
}

/// Parses an `/embed` JSON body: `{"inputs": ..., "pooling"?}`.
pub fn embed_request(
    body: &[u8],
    max_inputs: usize,
    fetch: Option<&Fetcher>,
) -> Result<EmbedRequest, ApiError> {
    let v = parse_json(body)?;
    Ok(EmbedRequest {
        images: images(&v, "inputs", max_inputs, fetch)?,
        pooling: pooling_field(&v)?,
    })
}

/// Appends `values` as a JSON list of numbers: each float32 in its shortest form that reads back
/// as the same float32, with an exponent when very small or large (`null` for a value that is
/// not finite).
pub fn push_floats(out: &mut String, values: &[f32]) {
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if v.is_finite() {
            out.push_str(&format!("{v:?}"));
        } else {
            out.push_str("null");
        }
    }
    out.push(']');
}

/// The `/v1/embeddings` answer for `vectors`, in input order.
pub fn embeddings_response(vectors: &[Vec<f32>], encoding: Encoding, model: &str) -> String {
    let mut out = String::from(r#"{"object":"list","data":["#);
    for (i, v) in vectors.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"object":"embedding","index":{i},"embedding":"#
        ));
        match encoding {
            Encoding::Float => push_floats(&mut out, v),
            Encoding::Base64 => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                out.push('"');
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
                out.push('"');
            }
        }
        out.push('}');
    }
    out.push_str(&format!(
        r#"],"model":{},"usage":{{"prompt_tokens":0,"total_tokens":0}}}}"#,
        Value::String(model.to_string())
    ));
    out
}

/// The `/embed` answer: a list of vectors.
pub fn embed_response(vectors: &[Vec<f32>]) -> String {
    let mut out = String::from("[");
    for (i, v) in vectors.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_floats(&mut out, v);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_data_uris_and_base64() {
        let png = b"\x89PNG\r\n\x1a\nrest";
        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
        assert_eq!(decode_image_string(&b64, 0).unwrap(), png);
        let uri = format!("data:image/png;base64,{b64}");
        assert_eq!(decode_image_string(&uri, 0).unwrap(), png);
        let unpadded = b64.trim_end_matches('=');
        assert_eq!(decode_image_string(unpadded, 0).unwrap(), png);
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfbu8, 0xff, 0xbf]);
        assert_eq!(
            decode_image_string(&url_safe, 0).unwrap(),
            [0xfb, 0xff, 0xbf]
        );
        for (bad, says) in [
            ("https://example.com/cat.jpg", "URLs are not fetched"),
            ("data:image/png,raw", "must be base64"),
            ("data:image/png;base64", "without a comma"),
            ("not base64!", "not base64"),
        ] {
            let e = decode_image_string(bad, 3).unwrap_err();
            assert_eq!(e.status, 422);
            assert!(e.message.starts_with("input[3]: "), "{e:?}");
            assert!(e.message.contains(says), "{bad}: {e:?}");
        }
    }

    #[test]
    fn parses_requests_and_writes_answers() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"img");
        let body = format!(r#"{{"input": ["{b64}", "{b64}"], "model": "m"}}"#);
        let r = embeddings_request(body.as_bytes(), 8, None).unwrap();
        assert_eq!((r.images.len(), r.encoding), (2, Encoding::Float));
        assert_eq!((r.pooling, r.dimensions), (None, None));
        let body = format!(
            r#"{{"input": "{b64}", "encoding_format": "base64", "dimensions": 4, "pooling": "mean"}}"#
        );
        let r = embeddings_request(body.as_bytes(), 8, None).unwrap();
        assert_eq!((r.images.len(), r.encoding), (1, Encoding::Base64));
        assert_eq!(
            (r.pooling.as_deref(), r.dimensions),
            (Some("mean"), Some(4))
        );
        assert!(check_dimensions(Some(4), Some(4)).is_ok());
        assert!(check_dimensions(None, None).is_ok());
        assert_eq!(check_dimensions(Some(2), Some(4)).unwrap_err().status, 422);
        assert_eq!(check_dimensions(Some(4), None).unwrap_err().status, 422);
        for (body, status) in [
            ("{", 400),
            (r#"{"input": []}"#, 422),
            (r#"{"input": 3}"#, 422),
            (r#"{"model": "m"}"#, 422),
            (r#"{"input": "aW1n", "encoding_format": "int8"}"#, 422),
            (r#"{"input": "aW1n", "dimensions": -2}"#, 422),
            (r#"{"input": "aW1n", "pooling": 3}"#, 422),
            (r#"{"input": ["aW1n", "aW1n", "aW1n"]}"#, 413),
        ] {
            let e = embeddings_request(body.as_bytes(), 2, None).unwrap_err();
            assert_eq!(e.status, status, "{body}: {e:?}");
        }
        let r = embed_request(br#"{"inputs": "aW1n", "pooling": "patch"}"#, 2, None).unwrap();
        assert_eq!(
            (r.images, r.pooling.as_deref()),
            (vec![b"img".to_vec()], Some("patch"))
        );

        let v = vec![vec![0.1f32, -2.0, 1e-8], vec![3.5, 0.0, f32::NAN]];
        let json: Value =
            serde_json::from_str(&embeddings_response(&v, Encoding::Float, "m")).unwrap();
        assert_eq!(json["data"][1]["index"], 1);
        assert_eq!(json["model"], "m");
        let first: Vec<f32> = json["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(first, v[0], "float32 values read back exactly");
        assert!(json["data"][1]["embedding"][2].is_null());
        let json: Value =
            serde_json::from_str(&embeddings_response(&v, Encoding::Base64, "m")).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(json["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            bytes,
            v[0].iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>()
        );
        let json: Value = serde_json::from_str(&embed_response(&v[..1])).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 1);
        let e = ApiError::new(429, "busy");
        let body: Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(body["error"]["type"], "rate_limit_error");
    }
}
