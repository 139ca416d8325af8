//! `multipart/form-data` bodies (RFC 7578), as `curl -F image=@cat.jpg` sends them: each part
//! with its name, whether it is a file, and its content.

/// One part of a form.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    /// The `name` of its `Content-Disposition`.
    pub name: Option<String>,
    /// Whether it is a file: it has a file name (`filename` or `filename*`), or a content type
    /// of an image or of plain bytes (`image/*`, `application/octet-stream`).
    pub is_file: bool,
    pub content: &'a [u8],
}

/// The parameters of a header value, `kind; a=1; b="x;y"`: `(lower-case name, value)`, quoted
/// values unquoted (a `;` inside quotes is part of the value).
fn params(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = value.split_once(';').map_or("", |(_, r)| r);
    while !rest.trim().is_empty() {
        let (name, after) = rest.split_once('=').unwrap_or((rest, ""));
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            let next = quoted[end..].trim_start_matches('"');
            (&quoted[..end], next.split_once(';').map_or("", |(_, r)| r))
        } else {
            let (v, next) = after.split_once(';').unwrap_or((after, ""));
            (v.trim(), next)
        };
        out.push((name, value.to_string()));
        rest = next;
    }
    out
}

/// The `boundary` parameter of a `multipart/form-data` content type, or `None` for another type.
/// `Err` for a multipart type without a usable boundary (1 to 70 characters, RFC 2046).
pub fn boundary(content_type: &str) -> Option<Result<String, String>> {
    let kind = content_type.split(';').next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let value = params(content_type)
        .into_iter()
        .find_map(|(name, value)| (name == "boundary").then_some(value));
    Some(match value {
        Some(b) if (1..=70).contains(&b.len()) => Ok(b),
        Some(b) => Err(format!(
            "multipart/form-data: a boundary of {} characters (1 to 70 allowed)",
            b.len()
        )),
        None => Err("multipart/form-data without a boundary parameter".into()),
    })
}

/// The parts of `body`, in order. `Err` names what is malformed.
pub fn parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The first delimiter starts the body or a line (a preamble may come before it).
    let mut at = if body.starts_with(delimiter) {
        0
    } else {
        find(body, b"\r\n", delimiter, 0)
            .map(|i| i + 2)
            .ok_or("multipart body without its boundary")?
    };
    let mut parts = Vec::new();
    loop {
        at += delimiter.len();
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then the end of the delimiter line.
        let pad = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if !rest[pad..].starts_with(b"\r\n") {
            return Err("multipart body: a boundary line does not end in CRLF".into());
        }
        let start = at + pad + 2;
        let (head, content_start) = if body[start..].starts_with(b"\r\n") {
            (&body[start..start], start + 2)
        } else {
            let end = find(body, b"\r\n\r\n", b"", start)
                .ok_or("multipart body: a part's headers do not end")?;
            (&body[start..end], end + 4)
        };
        let end = find(body, b"\r\n", delimiter, content_start)
            .ok_or("multipart body ends without its closing boundary")?;
        parts.push(part(head, &body[content_start..end]));
        at = end + 2;
    }
}

/// A part from its headers and content.
fn part<'a>(head: &[u8], content: &'a [u8]) -> Part<'a> {
    let head = String::from_utf8_lossy(head);
    let (mut name, mut is_file) = (None, false);
    for line in head.split("\r\n") {
        let Some((header, value)) = line.split_once(':') else {
            continue;
        };
        match header.trim().to_ascii_lowercase().as_str() {
            "content-disposition" => {
                for (param, v) in params(value) {
                    match param.as_str() {
                        "name" => name = Some(v),
                        "filename" | "filename*" => is_file = true,
                        _ => {}
                    }
                }
            }
            "content-type" => {
                let kind = value
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                is_file |= kind.starts_with("image/") || kind == "application/octet-stream";
            }
            _ => {}
        }
    }
    Part {
        name,
        is_file,
        content,
    }
}

/// The first position from `from` where `first` then `second` appear together.
fn find(body: &[u8], first: &[u8], second: &[u8], from: usize) -> Option<usize> {
    let n = first.len() + second.len();
    let mut i = from;
    while i + n <= body.len() {
        let j = i + body[i..].iter().position(|&b| b == first[0])?;
        if j + n > body.len() {
            return None;
        }
        if body[j..].starts_with(first) && body[j + first.len()..].starts_with(second) {
            return Some(j);
        }
        i = j + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_curl_s_form_in_order() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"pooling\"\r\n\r\n\
            mean\r\n--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\
            Content-Type: image/jpeg\r\n\r\nAAA\r\n--XyZ\r\nContent-Type: application/octet-stream\
            \r\n\r\n\r\n\r\n--XyZ  \r\nContent-Disposition: form-data; name=\"x;filename=y\"\r\n\
            Content-Type: application/json\r\n\r\n{}\r\n--XyZ\r\nContent-Disposition: form-data; \
            name=b; filename*=UTF-8''b.png\r\n\r\nB\r\nB\r\n--XyZ--\r\nepilogue";
        let parts = parts(body, "XyZ").unwrap();
        let seen: Vec<(Option<&str>, bool, &[u8])> = parts
            .iter()
            .map(|p| (p.name.as_deref(), p.is_file, p.content))
            .collect();
        assert_eq!(
            seen,
            vec![
                (Some("pooling"), false, &b"mean"[..]),
                (Some("image"), true, &b"AAA"[..]),
                (None, true, &b"\r\n"[..]),
                (Some("x;filename=y"), false, &b"{}"[..]),
                (Some("b"), true, &b"B\r\nB"[..]),
            ]
        );
    }

    #[test]
    fn finds_the_boundary_and_refuses_malformed_bodies() {
        assert_eq!(boundary("application/json"), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=\"a;b c\"; charset=x"),
            Some(Ok("a;b c".into()))
        );
        assert_eq!(
            boundary("multipart/form-data; charset=x; Boundary=abc"),
            Some(Ok("abc".into()))
        );
        assert!(boundary("Multipart/Form-Data").unwrap().is_err());
        assert!(
            boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71)))
                .unwrap()
                .is_err()
        );
        for (body, want) in [
            (&b"no boundary here"[..], "without its boundary"),
            (
                b"--B\r\nContent-Type: image/png\r\n\r\nAAA",
                "closing boundary",
            ),
            (b"--B\r\nContent-Type: image/png", "headers do not end"),
            (b"--Bxx\r\n", "does not end in CRLF"),
        ] {
            let e = parts(body, "B").unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(parts(b"--B--", "B").unwrap(), Vec::new());
    }
}
