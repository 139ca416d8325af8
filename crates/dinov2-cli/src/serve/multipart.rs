//! `multipart/form-data` bodies (RFC 7578), as `curl -F image=@cat.jpg` sends them: the files, in
//! order. Form fields without a file name or a content type (`-F model=x`) are not images.

/// The `boundary` parameter of a `multipart/form-data` content type, or `None` for another type.
/// `Err` for a multipart type without a usable boundary (1 to 70 characters, RFC 2046).
pub fn boundary(content_type: &str) -> Option<Result<String, String>> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let value = params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
    });
    Some(match value {
        Some(b) if (1..=70).contains(&b.len()) => Ok(b),
        Some(b) => Err(format!(
            "multipart/form-data: a boundary of {} characters (1 to 70 allowed)",
            b.len()
        )),
        None => Err("multipart/form-data without a boundary parameter".into()),
    })
}

/// The file parts of `body`, in order: each part's content. `Err` names what is malformed.
pub fn files<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, String> {
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
    let mut files = Vec::new();
    loop {
        at += delimiter.len();
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(files);
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
        if is_file(head) {
            files.push(&body[content_start..end]);
        }
        at = end + 2;
    }
}

/// Whether a part with these headers is a file: it names a file, or has a content type that
/// is not text.
fn is_file(head: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    head.split("\r\n").any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        match name.trim() {
            "content-disposition" => value.split(';').any(|p| {
                p.trim()
                    .split_once('=')
                    .is_some_and(|(k, _)| k.trim() == "filename")
            }),
            "content-type" => !value.trim().starts_with("text/"),
            _ => false,
        }
    })
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
    fn reads_curl_s_form_files_in_order() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\
            dinov2\r\n--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\
            Content-Type: image/jpeg\r\n\r\nAAA\r\n--XyZ\r\nContent-Type: application/octet-stream\
            \r\n\r\n\r\n\r\n--XyZ  \r\nContent-Disposition: form-data; name=\"b\"; \
            filename=\"b.png\"\r\n\r\nB\r\nB\r\n--XyZ--\r\nepilogue";
        let files = files(body, "XyZ").unwrap();
        assert_eq!(files, vec![&b"AAA"[..], &b"\r\n"[..], &b"B\r\nB"[..]]);
    }

    #[test]
    fn finds_the_boundary_and_refuses_malformed_bodies() {
        assert_eq!(boundary("application/json"), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=\"a b\"; charset=x"),
            Some(Ok("a b".into()))
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
            let e = files(body, "B").unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(files(b"--B--", "B").unwrap(), Vec::<&[u8]>::new());
    }
}
