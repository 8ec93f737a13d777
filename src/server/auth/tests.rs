//! Unit tests of request signing and verification.
use super::*;

fn creds() -> Credentials {
    Credentials::new().with("EXOkey", "s3cret")
}

/// The signature of a known message, computed independently with Python's
/// `hmac.new(b"s3cret", b"POST /v2/kms-key\n{\"name\":\"a\"}\n\n\n1700000000",
/// hashlib.sha256)`, base64-encoded.
#[test]
fn signature_matches_the_python_client() {
    let header = sign(
        "EXOkey",
        b"s3cret",
        "POST",
        "/v2/kms-key",
        br#"{"name":"a"}"#,
        1_700_000_000,
    );
    let expected = "EXO2-HMAC-SHA256 credential=EXOkey,expires=1700000000,signature=";
    assert!(header.starts_with(expected), "{header}");
    assert_eq!(
        &header[expected.len()..],
        "N/upIGjmpDhP47whCKkSK4YpOZOsJT5ihh5XA3wDLlc="
    );
}

/// Signs `GET /v2/kms-key` with `key` and `secret`, valid until `expires`, and verifies it
/// with `credentials` at `now`.
fn list_keys_signed<'c>(
    credentials: &'c Credentials,
    (key, secret): (&str, &[u8]),
    expires: i64,
    now: i64,
) -> Result<&'c str, AuthError> {
    let h = sign(key, secret, "GET", "/v2/kms-key", b"", expires);
    credentials.verify(Some(h.as_bytes()), "GET", "/v2/kms-key", None, b"", now)
}

#[test]
fn a_signed_request_verifies_and_names_its_key() {
    let c = creds();
    let signed = list_keys_signed(&c, ("EXOkey", b"s3cret"), 1000, 900);
    assert_eq!(signed, Ok("EXOkey"));
}

#[test]
fn every_part_of_the_request_is_signed() {
    let c = creds();
    let h = sign("EXOkey", b"s3cret", "POST", "/v2/kms-key", b"{}", 1000);
    let v = |m: &str, p: &str, b: &[u8]| c.verify(Some(h.as_bytes()), m, p, None, b, 900);
    assert_eq!(v("POST", "/v2/kms-key", b"{}"), Ok("EXOkey"));
    assert_eq!(v("GET", "/v2/kms-key", b"{}"), Err(AuthError::BadSignature));
    assert_eq!(
        v("POST", "/v2/kms-keys", b"{}"),
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        v("POST", "/v2/kms-key", b"{ }"),
        Err(AuthError::BadSignature)
    );
    let with = |header: &str| {
        c.verify(
            Some(header.as_bytes()),
            "POST",
            "/v2/kms-key",
            None,
            b"{}",
            900,
        )
    };
    let other = sign("EXOkey", b"wrong", "POST", "/v2/kms-key", b"{}", 1000);
    assert_eq!(with(&other), Err(AuthError::BadSignature));
    // expires is signed: changing it breaks the signature.
    let moved = h.replace("expires=1000", "expires=1001");
    assert_eq!(with(&moved), Err(AuthError::BadSignature));
}

#[test]
fn signed_query_arguments_are_checked_in_order() {
    let c = creds();
    let h = sign_with_query(
        "EXOkey",
        b"s3cret",
        "GET",
        "/v2/kms-key",
        &[("b", "2"), ("a", "1")],
        b"",
        1000,
    );
    assert!(h.contains("signed-query-args=a;b"), "{h}");
    let v = |q: &str| c.verify(Some(h.as_bytes()), "GET", "/v2/kms-key", Some(q), b"", 900);
    assert_eq!(v("b=2&a=1"), Ok("EXOkey"));
    assert_eq!(v("a=1&b=2"), Ok("EXOkey"));
    assert_eq!(v("a=1&b=3"), Err(AuthError::BadSignature));
    assert_eq!(v("a=2&b=1"), Err(AuthError::BadSignature));
}

#[test]
fn time_bounds() {
    let c = creds();
    let h = sign("EXOkey", b"s3cret", "GET", "/v2/kms-key", b"", 1000);
    let at = |now| c.verify(Some(h.as_bytes()), "GET", "/v2/kms-key", None, b"", now);
    assert_eq!(at(1000), Ok("EXOkey"));
    assert_eq!(at(1001), Err(AuthError::Expired));
    assert_eq!(at(1000 - DEFAULT_MAX_VALIDITY_SECS), Ok("EXOkey"));
    assert_eq!(at(999 - DEFAULT_MAX_VALIDITY_SECS), Err(AuthError::TooLong));
}

#[test]
fn unknown_keys_and_malformed_headers() {
    let c = creds();
    let h = sign("nobody", b"s3cret", "GET", "/v2/kms-key", b"", 1000);
    let v = |h: &str| c.verify(Some(h.as_bytes()), "GET", "/v2/kms-key", None, b"", 900);
    assert_eq!(v(&h), Err(AuthError::UnknownKey));
    assert_eq!(
        c.verify(None, "GET", "/", None, b"", 0),
        Err(AuthError::Missing)
    );
    for bad in [
        "",
        "Bearer x",
        "EXO2-HMAC-SHA256",
        "EXO2-HMAC-SHA256 credential=EXOkey,expires=1000",
        "EXO2-HMAC-SHA256 credential=EXOkey,signature=abcd",
        "EXO2-HMAC-SHA256 expires=1000,signature=abcd",
        "EXO2-HMAC-SHA256 credential=,expires=1000,signature=abcd",
        "EXO2-HMAC-SHA256 credential=EXOkey,expires=soon,signature=abcd",
        "EXO2-HMAC-SHA256 credential=EXOkey,expires=1000,signature=!!!",
        "EXO2-HMAC-SHA256 credential=EXOkey,expires=1000,expires=1000,signature=abcd",
        "EXO2-HMAC-SHA256 credential=EXOkey,colour=blue,expires=1000,signature=abcd",
        "EXO2-HMAC-SHA256 credential=EXOkey;expires=1000;signature=abcd",
    ] {
        let error = v(bad).unwrap_err();
        assert_eq!(error.http_status(), 401, "{bad:?}: {error}");
    }
    assert_eq!(
        c.verify(Some(&[0xff, 0xfe]), "GET", "/", None, b"", 0)
            .unwrap_err()
            .http_status(),
        401
    );
}

#[test]
fn the_four_refusals_read_the_same() {
    let all = [
        AuthError::UnknownKey,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::TooLong,
    ];
    for error in &all {
        assert_eq!(error.to_string(), FORBIDDEN_DETAIL);
        assert_eq!(error.http_status(), 403);
        assert_eq!(error.code_and_title(), ("forbidden", "Forbidden"));
    }
    let classes: Vec<&str> = all.iter().map(AuthError::reason_class).collect();
    assert_eq!(
        classes,
        ["unknown-key", "bad-signature", "expired", "too-far-ahead"]
    );
}

#[test]
fn the_time_window_is_checked_before_the_key() {
    // An unknown key outside the window gets the window's refusal, as a known key does: what
    // is checked first does not depend on the key.
    let c = creds();
    for key in ["EXOkey", "nobody"] {
        let h = sign(key, b"s3cret", "GET", "/v2/kms-key", b"", 1000);
        let at = |now| c.verify(Some(h.as_bytes()), "GET", "/v2/kms-key", None, b"", now);
        assert_eq!(at(1001), Err(AuthError::Expired), "{key}");
        assert_eq!(at(0), Err(AuthError::TooLong), "{key}");
    }
    // The validity bound is the caller's.
    let h = sign("EXOkey", b"s3cret", "GET", "/v2/kms-key", b"", 1000);
    let pending = c.check_header(Some(h.as_bytes()), 0, 1000).unwrap();
    assert_eq!(
        pending.verify("GET", "/v2/kms-key", None, b"").unwrap().key,
        "EXOkey"
    );
    assert_eq!(
        c.check_header(Some(h.as_bytes()), 0, 999).unwrap_err(),
        AuthError::TooLong
    );
}

#[test]
fn an_unknown_key_is_hmacd_with_a_random_dummy_secret() {
    // Two credential sets have different dummies: no one can sign for an unknown key, not
    // even with the secret of another server.
    let (a, b) = (creds(), creds());
    assert_ne!(a.dummy.as_slice(), b.dummy.as_slice());
    let h = sign(
        "nobody",
        a.dummy.as_slice(),
        "GET",
        "/v2/kms-key",
        b"",
        1000,
    );
    assert_eq!(
        a.verify(Some(h.as_bytes()), "GET", "/v2/kms-key", None, b"", 900),
        Err(AuthError::UnknownKey),
        "a signature under the dummy itself is still refused"
    );
}

#[test]
fn credential_lines_carry_grants() {
    let c = Credentials::parse(
        "EXOall s1\n\
         EXOread s2 operations=read\n\
         EXOapp s3 zones=ch-* names=app-*,pay\\ ments operations=crypto,get-kms-key\n",
    )
    .unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(c.grants("EXOall"), Some(&Grants::everything()));
    let read = c.grants("EXOread").unwrap();
    assert!(read.allows_operation(crate::Operation::ListKeys));
    assert!(!read.allows_operation(crate::Operation::Encrypt));
    let app = c.grants("EXOapp").unwrap();
    assert!(app.allows_zone("ch-gva-2") && !app.allows_zone("de-fra-1"));
    assert!(app.allows_name(Some("pay ments")) && app.allows_name(Some("app-x")));
    assert!(app.allows_operation(crate::Operation::GetKey));
    assert!(!app.allows_operation(crate::Operation::RotateKey));
    let signed = list_keys_signed(&c, ("EXOapp", b"s3"), 10, 0);
    assert_eq!(
        signed,
        Ok("EXOapp"),
        "attributes are not part of the secret"
    );
    for (text, says) in [
        ("EXOa s operations=read operations=all\n", "twice"),
        ("EXOa s colour=blue\n", "unknown attribute"),
        ("EXOa s operations=fly\n", "unknown operation"),
        ("EXOa s names=a,,b\n", "empty"),
    ] {
        let error = Credentials::parse(text).unwrap_err();
        assert!(
            error.starts_with("line 1") && error.contains(says),
            "{text:?}: {error}"
        );
    }
}

#[test]
fn signed_query_argument_lists_are_bounded_before_any_work() {
    let c = creds();
    let h = |args: &str| {
        format!(
            "EXO2-HMAC-SHA256 credential=EXOkey,signed-query-args={args},expires=1000,signature=abcd"
        )
    };
    let v = |header: String| {
        c.verify(
            Some(header.as_bytes()),
            "GET",
            "/v2/kms-key",
            Some("a=1"),
            b"",
            900,
        )
    };
    let many: Vec<String> = (0..=MAX_SIGNED_QUERY_ARGS)
        .map(|i| format!("a{i}"))
        .collect();
    for args in ["a;a", "a;;b", "", &many.join(";")] {
        let error = v(h(args)).unwrap_err();
        assert_eq!(error.http_status(), 401, "{args:?}: {error}");
    }
    // Up to the bound, distinct names are fine (the signature decides).
    let fine: Vec<String> = (0..MAX_SIGNED_QUERY_ARGS)
        .map(|i| format!("a{i}"))
        .collect();
    assert_eq!(v(h(&fine.join(";"))), Err(AuthError::BadSignature));
    // An unknown key is refused after the HMAC over a dummy secret, as a wrong signature.
    let unknown = h("a").replace("EXOkey", "nobody");
    assert_eq!(
        c.verify(Some(unknown.as_bytes()), "GET", "/", Some("a=1"), b"", 900),
        Err(AuthError::UnknownKey)
    );
}

#[test]
fn credentials_file_format() {
    /// A credentials file, the pairs in it, and a key and its secret as read.
    type File<'a> = (&'a str, usize, (&'a str, &'a [u8]));
    let files: [File<'_>; 2] = [
        (
            "# keys\nEXOa  secretA\n\n  EXOb\tsecretB # second\n",
            2,
            ("EXOb", b"secretB"),
        ),
        // A `#` inside a word is part of it: a secret may hold one.
        (
            "EXOa s3cret#more # a comment\n#EXOb x\n",
            1,
            ("EXOa", b"s3cret#more"),
        ),
    ];
    for (text, pairs, (key, secret)) in files {
        let c = Credentials::parse(text).unwrap();
        assert_eq!(c.len(), pairs, "{text:?}");
        let signed = list_keys_signed(&c, (key, secret), 10, 0);
        assert_eq!(signed, Ok(key), "{text:?}");
    }
    assert!(
        Credentials::parse("# nothing\n")
            .unwrap_err()
            .contains("no `KEY SECRET`")
    );
    let error = Credentials::parse("EXOa secretA\nEXOc\n").unwrap_err();
    assert!(error.starts_with("line 2"), "{error}");
    let error = Credentials::parse("EXOa alpha beta\n").unwrap_err();
    assert!(
        !error.contains("alpha") && !error.contains("beta"),
        "{error}"
    );
    assert!(
        Credentials::parse("EXOa x\nEXOa y\n")
            .unwrap_err()
            .contains("twice")
    );
    let c = Credentials::parse(files[0].0).unwrap();
    let debug = format!("{c:?}");
    assert!(
        debug.contains("EXOa") && !debug.contains("secretA"),
        "{debug}"
    );
}
