//! Client IP of the current request (host-facing; the parsing itself is in ip.zig).
//!
//! The edge Envoy runs with `use_remote_address: true`, so before any filter runs Envoy has
//! appended its immediate peer's address to X-Forwarded-For. With `trusted_hops` = N trusted
//! proxies in front of Envoy:
//!   N = 0: the connection peer (property source.address, port stripped);
//!   N >= 1: the X-Forwarded-For entry at index len-1-N (skip the N rightmost entries, which were
//!           appended by Envoy and the trusted proxies). With fewer entries, the peer.
//! An entry that is not a valid IP address (possibly with a port) is not used as an identity:
//! the peer address is used instead, so a junk entry can never mint a fresh key (requests with
//! junk share the bucket of the nearest trusted hop).
const std = @import("std");
const host = @import("host.zig");
const ip = @import("ip.zig");

pub const Source = enum { forwarded_for, peer, unknown };

pub const ClientIp = struct {
    /// Canonical binary identity (IPv4 mapped into IPv6); all zero when `source` is unknown.
    address: ip.Address,
    source: Source,
};

pub const xff_header = "x-forwarded-for";
pub const peer_address_property = "source\x00address";

pub fn clientIp(trusted_hops: u32) ClientIp {
    if (trusted_hops > 0) {
        if (host.getHeader(.request_headers, xff_header)) |xff| {
            if (ip.forwardedEntry(xff, trusted_hops)) |entry| {
                if (ip.parseHostPort(entry)) |address| {
                    return .{ .address = address, .source = .forwarded_for };
                }
            }
        }
    }
    return peerIp();
}

pub fn peerIp() ClientIp {
    if (host.getProperty(peer_address_property)) |text| {
        if (ip.parseHostPort(text)) |address| return .{ .address = address, .source = .peer };
    }
    return .{ .address = .{ .bytes = [_]u8{0} ** 16, .family = .v6 }, .source = .unknown };
}
