use super::*;

fn sample() -> Request {
    Request {
        program: b"git".to_vec(),
        args: vec![
            b"--shallow-file".to_vec(),
            Vec::new(),
            b"pack-objects".to_vec(),
            b"--stdout".to_vec(),
        ],
        cwd: b"/srv/repo.git".to_vec(),
        env: vec![(b"GIT_PROTOCOL".to_vec(), b"version=2".to_vec())],
        key_material: b"tenant".to_vec(),
        stdin_len: 42,
    }
}

#[test]
fn a_request_round_trips() {
    let r = sample();
    assert_eq!(Request::decode(&r.encode(), &Limits::default()).unwrap(), r);
}

#[test]
fn every_truncation_of_a_request_is_an_error() {
    let bytes = sample().encode();
    for cut in 0..bytes.len() {
        let err = Request::decode(&bytes[..cut], &Limits::default()).unwrap_err();
        assert!(
            matches!(err, WireError::Truncated { .. }),
            "cut {cut}: {err}"
        );
    }
}

#[test]
fn trailing_bytes_after_a_request_are_an_error() {
    let mut bytes = sample().encode();
    bytes.push(0);
    assert!(matches!(
        Request::decode(&bytes, &Limits::default()),
        Err(WireError::Trailing(1))
    ));
}

#[test]
fn oversized_fields_are_refused_before_allocation() {
    let limits = Limits {
        max_args: 2,
        ..Limits::default()
    };
    let err = Request::decode(&sample().encode(), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TooMany {
                what: "arguments",
                count: 4,
                max: 2
            }
        ),
        "{err}"
    );

    // A length prefix claiming 4 GiB with nothing behind it.
    let mut bytes = vec![PROTOCOL_VERSION];
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let err = Request::decode(&bytes, &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TooLong {
                what: "program",
                ..
            }
        ),
        "{err}"
    );

    let mut r = sample();
    r.stdin_len = Limits::default().max_stdin + 1;
    let err = Request::decode(&r.encode(), &Limits::default()).unwrap_err();
    assert!(
        matches!(err, WireError::TooLong { what: "stdin", .. }),
        "{err}"
    );
}

#[test]
fn invalid_fields_are_refused_with_their_name() {
    type Mutation = Box<dyn Fn(&mut Request)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|r| r.program.clear()), "program"),
        (
            Box::new(|r| r.cwd = b"relative".to_vec()),
            "working directory",
        ),
        (Box::new(|r| r.args[0] = b"a\0b".to_vec()), "argument"),
        (
            Box::new(|r| r.env[0].0 = b"A=B".to_vec()),
            "environment variable name",
        ),
        (
            Box::new(|r| r.env[0].1 = b"x\0".to_vec()),
            "environment variable value",
        ),
    ];
    for (mutate, what) in cases {
        let mut r = sample();
        mutate(&mut r);
        let err = Request::decode(&r.encode(), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
}

#[test]
fn an_unknown_version_is_refused() {
    let mut bytes = sample().encode();
    bytes[0] = 9;
    assert!(matches!(
        Request::decode(&bytes, &Limits::default()),
        Err(WireError::Version(9))
    ));
}
