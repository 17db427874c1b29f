//! Which coordinator addresses the load generator may send load to.
//!
//! Load goes only to the loopback interface (127.0.0.0/8, `::1`, `localhost`) unless the user
//! passes `--allow-remote`: a load test aimed at the wrong address is a denial of service.

use std::net::IpAddr;

use anyhow::{bail, Context as _};
use tonic::transport::Uri;

/// Checks that every endpoint of the comma-separated list `addresses` is an
/// `http(s)://HOST:PORT` coordinator address on this machine, or anywhere when `allow_remote`
/// is set.
pub fn check(addresses: &str, allow_remote: bool) -> anyhow::Result<()> {
    let list: Vec<&str> = addresses
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if list.is_empty() {
        bail!("no coordinator address given: use http://HOST:PORT (or a comma-separated list)");
    }
    for address in list {
        check_one(address, allow_remote)?;
    }
    Ok(())
}

fn check_one(address: &str, allow_remote: bool) -> anyhow::Result<()> {
    let uri: Uri = address.parse().with_context(|| {
        format!("'{address}' is not a coordinator address: use http://HOST:PORT")
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => bail!("'{address}' is not a coordinator address: use http://HOST:PORT"),
    }
    let Some(host) = uri.host() else {
        bail!("'{address}' has no host: use http://HOST:PORT");
    };
    if allow_remote || is_loopback_host(host) {
        return Ok(());
    }
    bail!(
        "refusing to send load to {address}: only loopback addresses (127.0.0.0/8, [::1], localhost) are allowed; pass --allow-remote for a farm you are allowed to load"
    )
}

/// True for `localhost` and for IP literals of the loopback interface. Other host names are not
/// resolved: what a name resolves to can change between this check and the connection.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests;
