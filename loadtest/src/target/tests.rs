//! Tests of the loopback-only rule for coordinator addresses.

use super::check;

#[test]
fn loopback_addresses_are_allowed() {
    for address in [
        "http://127.0.0.1:7878",
        "http://127.10.0.3:7878",
        "http://localhost:7878",
        "http://LOCALHOST.:7878",
        "http://[::1]:7878",
        "http://[::ffff:127.0.0.1]:7878",
        "https://127.0.0.1:7878",
    ] {
        assert!(check(address, false).is_ok(), "{address} should be allowed");
    }
}

#[test]
fn other_addresses_are_refused_without_allow_remote() {
    for address in [
        "http://10.0.0.5:7878",
        "http://192.168.1.10:7878",
        "http://8.8.8.8:7878",
        "http://[2001:db8::1]:7878",
        "http://coordinator.example:7878",
        "http://localhost.example:7878",
        "http://0.0.0.0:7878",
    ] {
        let error = check(address, false).expect_err(address).to_string();
        assert!(error.contains("--allow-remote"), "{address}: {error}");
        assert!(
            check(address, true).is_ok(),
            "{address} with --allow-remote"
        );
    }
}

#[test]
fn malformed_addresses_are_errors_even_with_allow_remote() {
    for address in [
        "",
        "127.0.0.1:7878",
        "ftp://127.0.0.1:7878",
        "http://",
        "not a uri",
    ] {
        assert!(
            check(address, true).is_err(),
            "{address:?} should be refused"
        );
    }
}

#[test]
fn every_endpoint_of_a_list_is_checked() {
    assert!(check("http://127.0.0.1:7878,http://127.0.0.1:7888", false).is_ok());
    let error = check("http://127.0.0.1:7878,http://10.0.0.5:7878", false)
        .unwrap_err()
        .to_string();
    assert!(error.contains("10.0.0.5"), "{error}");
}
