//! Texts of the rate-limit response headers (draft-ietf-httpapi-ratelimit-headers-09) and of the
//! 429 body. Policy names are validated to [A-Za-z0-9_-], so they need no quoting or escaping.
const std = @import("std");
const assert = std.debug.assert;
const config = @import("config.zig");

/// Fits any value below: a 64-byte name plus numbers of at most 20 digits.
pub const value_len_max = 160;

/// `RateLimit-Policy: "per-client";q=5;w=5` (quota, window in seconds).
pub fn policyValue(buffer: *[value_len_max]u8, name: []const u8, quota: u64, window_s: u64) []const u8 {
    assert(name.len <= config.policy_name_len_max);
    return std.fmt.bufPrint(buffer, "\"{s}\";q={d};w={d}", .{ name, quota, window_s }) catch unreachable;
}

/// `RateLimit: "per-client";r=0;t=3` (remaining, seconds until reset).
pub fn limitValue(buffer: *[value_len_max]u8, name: []const u8, remaining: u64, reset_s: u64) []const u8 {
    assert(name.len <= config.policy_name_len_max);
    return std.fmt.bufPrint(buffer, "\"{s}\";r={d};t={d}", .{ name, remaining, reset_s }) catch unreachable;
}

/// `{"error":"rate limited","policy":"per-client","retry_after_s":3}`
pub fn body(buffer: *[value_len_max]u8, name: []const u8, retry_after_s: u64) []const u8 {
    assert(name.len <= config.policy_name_len_max);
    return std.fmt.bufPrint(buffer, "{{\"error\":\"rate limited\",\"policy\":\"{s}\",\"retry_after_s\":{d}}}", .{ name, retry_after_s }) catch unreachable;
}

/// grpc-message of a gRPC RESOURCE_EXHAUSTED reply.
pub fn grpcMessage(buffer: *[value_len_max]u8, name: []const u8, retry_after_s: u64) []const u8 {
    assert(name.len <= config.policy_name_len_max);
    return std.fmt.bufPrint(buffer, "rate limited by policy {s}, retry after {d}s", .{ name, retry_after_s }) catch unreachable;
}

pub fn decimal(buffer: *[20]u8, value: u64) []const u8 {
    return std.fmt.bufPrint(buffer, "{d}", .{value}) catch unreachable;
}

/// The cost carried by a cost header: a decimal integer >= 1 (surrounding spaces allowed),
/// clamped to `burst` (a request can at most drain a full bucket). Anything else is null and the
/// header is ignored.
pub fn parseCost(text: []const u8, burst: u32) ?u32 {
    assert(burst >= 1);
    const digits = std.mem.trim(u8, text, " \t");
    if (digits.len == 0 or digits.len > 10) return null;
    var value: u64 = 0;
    for (digits) |c| {
        if (c < '0' or c > '9') return null;
        value = value * 10 + (c - '0');
    }
    if (value == 0) return null;
    return @intCast(@min(value, burst));
}

pub fn isGrpc(content_type: []const u8) bool {
    return std.ascii.startsWithIgnoreCase(content_type, "application/grpc");
}

const testing = std.testing;

test "header values and body" {
    var buffer: [value_len_max]u8 = undefined;
    try testing.expectEqualStrings("\"per-client\";q=5;w=5", policyValue(&buffer, "per-client", 5, 5));
    try testing.expectEqualStrings("\"per-client\";r=0;t=3", limitValue(&buffer, "per-client", 0, 3));
    try testing.expectEqualStrings("{\"error\":\"rate limited\",\"policy\":\"per-client\",\"retry_after_s\":3}", body(&buffer, "per-client", 3));
    const long_name = "a" ** config.policy_name_len_max;
    _ = policyValue(&buffer, long_name, std.math.maxInt(u64), std.math.maxInt(u64));
    _ = limitValue(&buffer, long_name, std.math.maxInt(u64), std.math.maxInt(u64));
    _ = body(&buffer, long_name, std.math.maxInt(u64));
    _ = grpcMessage(&buffer, long_name, std.math.maxInt(u64));
}

test "cost header parsing" {
    try testing.expectEqual(@as(?u32, 3), parseCost("3", 10));
    try testing.expectEqual(@as(?u32, 3), parseCost(" 3 ", 10));
    try testing.expectEqual(@as(?u32, 10), parseCost("11", 10));
    try testing.expectEqual(@as(?u32, 10), parseCost("9999999999", 10));
    for ([_][]const u8{ "", "0", "-1", "1.5", "abc", "12345678901", "+1", "1 2" }) |bad| {
        try testing.expectEqual(@as(?u32, null), parseCost(bad, 10));
    }
}

test "grpc detection" {
    try testing.expect(isGrpc("application/grpc"));
    try testing.expect(isGrpc("application/grpc+proto"));
    try testing.expect(isGrpc("Application/GRPC-web"));
    try testing.expect(!isGrpc("application/json"));
}
