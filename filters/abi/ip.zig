//! Strict IP address parsing (text → 16-byte binary), formatting, and X-Forwarded-For entry
//! selection. Pure: no host calls, unit-tested on the native target.
const std = @import("std");
const assert = std.debug.assert;

pub const Family = enum(u8) { v4 = 4, v6 = 6 };

/// An IP address. IPv4 is stored IPv4-mapped (::ffff:a.b.c.d) so that the 16 bytes alone are a
/// canonical identity of the address, whatever its textual form was.
pub const Address = struct {
    bytes: [16]u8,
    family: Family,

    pub fn v4(a: u8, b: u8, c: u8, d: u8) Address {
        var bytes = [_]u8{0} ** 16;
        bytes[10] = 0xff;
        bytes[11] = 0xff;
        bytes[12] = a;
        bytes[13] = b;
        bytes[14] = c;
        bytes[15] = d;
        return .{ .bytes = bytes, .family = .v4 };
    }

    pub fn eql(self: Address, other: Address) bool {
        return self.family == other.family and std.mem.eql(u8, &self.bytes, &other.bytes);
    }

    /// The network of an IPv6 address: its first `bits` bits, the rest zero. IPv4 is unchanged
    /// (one host holds one IPv4 address, but commonly a whole /64 of IPv6).
    pub fn v6Prefix(self: Address, bits: u8) Address {
        assert(bits <= 128);
        if (self.family != .v6) return self;
        var out = self;
        for (&out.bytes, 0..) |*byte, i| {
            const start: usize = i * 8;
            if (start >= bits) {
                byte.* = 0;
            } else if (start + 8 > bits) {
                byte.* &= @as(u8, 0xff) << @intCast(8 - (bits - start));
            }
        }
        return out;
    }
};

/// Longest textual form accepted for an address with its optional port and brackets:
/// "[" 45-char IPv6 "]:" 5-digit port.
pub const text_len_max = 1 + 45 + 2 + 5;
/// Longest textual form `format` writes.
pub const format_len_max = 45;

/// Parses an IPv4 or IPv6 address, with an optional port ("1.2.3.4:80", "[::1]:80") and, for
/// IPv6, optional brackets and an ignored zone ("fe80::1%eth0"). Anything else is null.
pub fn parseHostPort(text: []const u8) ?Address {
    if (text.len == 0 or text.len > text_len_max) return null;
    if (text[0] == '[') {
        const close = std.mem.indexOfScalar(u8, text, ']') orelse return null;
        const rest = text[close + 1 ..];
        if (rest.len > 0) {
            if (rest[0] != ':' or !validPort(rest[1..])) return null;
        }
        return parseIp6(text[1..close]);
    }
    if (std.mem.indexOfScalar(u8, text, '.')) |_| {
        // IPv4, possibly with a port. (An IPv6 address with an embedded IPv4 part has ':' before
        // the first '.', handled below.)
        const colon = std.mem.indexOfScalar(u8, text, ':');
        if (colon) |c| {
            if (std.mem.indexOfScalar(u8, text[0..c], '.') != null) {
                if (!validPort(text[c + 1 ..])) return null;
                return parseIp4(text[0..c]);
            }
            return parseIp6(text);
        }
        return parseIp4(text);
    }
    return parseIp6(text);
}

fn validPort(text: []const u8) bool {
    if (text.len == 0 or text.len > 5) return false;
    var value: u32 = 0;
    for (text) |c| {
        if (c < '0' or c > '9') return false;
        value = value * 10 + (c - '0');
    }
    return value <= 65535;
}

/// Dotted quad, each part 0..255 written without leading zeros ("010" is refused: some parsers
/// read it as octal, so it has no single meaning).
pub fn parseIp4(text: []const u8) ?Address {
    var parts: [4]u8 = undefined;
    var count: usize = 0;
    var it = std.mem.splitScalar(u8, text, '.');
    while (it.next()) |part| {
        if (count == 4) return null;
        parts[count] = parseOctet(part) orelse return null;
        count += 1;
    }
    if (count != 4) return null;
    return Address.v4(parts[0], parts[1], parts[2], parts[3]);
}

fn parseOctet(text: []const u8) ?u8 {
    if (text.len == 0 or text.len > 3) return null;
    if (text.len > 1 and text[0] == '0') return null;
    var value: u32 = 0;
    for (text) |c| {
        if (c < '0' or c > '9') return null;
        value = value * 10 + (c - '0');
    }
    if (value > 255) return null;
    return @intCast(value);
}

/// RFC 4291 text form: up to 8 groups of 1..4 hex digits, at most one "::", an optional trailing
/// dotted quad, an optional "%zone" (ignored).
pub fn parseIp6(text_with_zone: []const u8) ?Address {
    const text = if (std.mem.indexOfScalar(u8, text_with_zone, '%')) |p| blk: {
        if (p + 1 >= text_with_zone.len) return null;
        break :blk text_with_zone[0..p];
    } else text_with_zone;
    if (text.len < 2 or text.len > 45) return null;

    var head: [8]u16 = undefined; // groups before "::"
    var head_len: usize = 0;
    var tail: [8]u16 = undefined; // groups after "::"
    var tail_len: usize = 0;
    var compressed = false;

    var i: usize = 0;
    if (std.mem.startsWith(u8, text, "::")) {
        compressed = true;
        i = 2;
        if (i == text.len) return .{ .bytes = [_]u8{0} ** 16, .family = .v6 };
    } else if (text[0] == ':') return null;

    while (i < text.len) {
        // One group, or a trailing dotted quad.
        const group_end = std.mem.indexOfScalarPos(u8, text, i, ':') orelse text.len;
        const group = text[i..group_end];
        if (std.mem.indexOfScalar(u8, group, '.') != null) {
            if (group_end != text.len) return null; // the dotted quad must be last
            const quad = parseIp4(group) orelse return null;
            const hi = (@as(u16, quad.bytes[12]) << 8) | quad.bytes[13];
            const lo = (@as(u16, quad.bytes[14]) << 8) | quad.bytes[15];
            if (!push(&head, &head_len, &tail, &tail_len, compressed, hi)) return null;
            if (!push(&head, &head_len, &tail, &tail_len, compressed, lo)) return null;
            i = text.len;
            break;
        }
        const value = parseGroup(group) orelse return null;
        if (!push(&head, &head_len, &tail, &tail_len, compressed, value)) return null;
        if (group_end == text.len) {
            i = text.len;
            break;
        }
        // group_end points at ':'.
        if (group_end + 1 < text.len and text[group_end + 1] == ':') {
            if (compressed) return null; // a second "::"
            compressed = true;
            i = group_end + 2;
            if (i == text.len) break;
        } else {
            i = group_end + 1;
            if (i == text.len) return null; // trailing single ':'
        }
    }

    const total = head_len + tail_len;
    if (compressed) {
        if (total > 7) return null;
    } else {
        if (total != 8) return null;
    }
    var groups = [_]u16{0} ** 8;
    for (head[0..head_len], 0..) |g, k| groups[k] = g;
    for (tail[0..tail_len], 0..) |g, k| groups[8 - tail_len + k] = g;

    var result: Address = .{ .bytes = undefined, .family = .v6 };
    for (groups, 0..) |g, k| {
        result.bytes[2 * k] = @intCast(g >> 8);
        result.bytes[2 * k + 1] = @intCast(g & 0xff);
    }
    // An IPv4-mapped IPv6 address is the IPv4 client it maps: same identity.
    if (std.mem.eql(u8, result.bytes[0..12], &[_]u8{ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff })) {
        result.family = .v4;
    }
    return result;
}

fn push(head: *[8]u16, head_len: *usize, tail: *[8]u16, tail_len: *usize, compressed: bool, value: u16) bool {
    if (head_len.* + tail_len.* >= 8) return false;
    if (compressed) {
        tail[tail_len.*] = value;
        tail_len.* += 1;
    } else {
        head[head_len.*] = value;
        head_len.* += 1;
    }
    return true;
}

fn parseGroup(text: []const u8) ?u16 {
    if (text.len == 0 or text.len > 4) return null;
    var value: u16 = 0;
    for (text) |c| {
        const digit: u16 = switch (c) {
            '0'...'9' => c - '0',
            'a'...'f' => c - 'a' + 10,
            'A'...'F' => c - 'A' + 10,
            else => return null,
        };
        value = value * 16 + digit;
    }
    return value;
}

/// Canonical text: dotted quad for IPv4, RFC 5952 for IPv6 (lowercase, longest run of two or
/// more zero groups compressed, leftmost on ties).
pub fn format(address: Address, buffer: *[format_len_max]u8) []const u8 {
    if (address.family == .v4) {
        const b = address.bytes;
        return std.fmt.bufPrint(buffer, "{d}.{d}.{d}.{d}", .{ b[12], b[13], b[14], b[15] }) catch unreachable;
    }
    var groups: [8]u16 = undefined;
    for (&groups, 0..) |*g, k| g.* = (@as(u16, address.bytes[2 * k]) << 8) | address.bytes[2 * k + 1];
    var best_start: usize = 8;
    var best_len: usize = 0;
    var k: usize = 0;
    while (k < 8) {
        if (groups[k] != 0) {
            k += 1;
            continue;
        }
        var end = k;
        while (end < 8 and groups[end] == 0) end += 1;
        if (end - k > best_len) {
            best_start = k;
            best_len = end - k;
        }
        k = end;
    }
    if (best_len < 2) best_start = 8;

    var len: usize = 0;
    k = 0;
    while (k < 8) {
        if (k == best_start) {
            buffer[len] = ':';
            buffer[len + 1] = ':';
            len += 2;
            k += best_len;
            continue;
        }
        // A separator before every group but the first and the one right after "::".
        if (k != 0 and k != best_start + best_len) {
            buffer[len] = ':';
            len += 1;
        }
        const written = std.fmt.bufPrint(buffer[len..], "{x}", .{groups[k]}) catch unreachable;
        len += written.len;
        k += 1;
    }
    assert(len <= format_len_max);
    return buffer[0..len];
}

/// Maximum number of X-Forwarded-For entries examined from the right: the trusted hop count is
/// validated against it, so scanning is bounded whatever the header length.
pub const trusted_hops_max = 16;

/// Returns the X-Forwarded-For entry appended by the outermost trusted proxy: with `trusted_hops`
/// = N the entry at index len-1-N (the N rightmost entries were appended by trusted proxies, the
/// rightmost one by Envoy itself for its immediate peer). Spaces and tabs around entries are
/// trimmed. Null when the header has fewer than N+1 entries (the caller falls back to the peer
/// address). Entries to the left of the selected one are never examined, so a client prepending
/// entries changes nothing.
pub fn forwardedEntry(xff: []const u8, trusted_hops: u32) ?[]const u8 {
    assert(trusted_hops <= trusted_hops_max);
    var end: usize = xff.len;
    var skipped: u32 = 0;
    while (true) {
        const comma = std.mem.lastIndexOfScalar(u8, xff[0..end], ',');
        const start = if (comma) |c| c + 1 else 0;
        if (skipped == trusted_hops) {
            return std.mem.trim(u8, xff[start..end], " \t");
        }
        const c = comma orelse return null;
        skipped += 1;
        end = c;
    }
}

const testing = std.testing;

fn expectFormat(expected: []const u8, text: []const u8) !void {
    var buffer: [format_len_max]u8 = undefined;
    const address = parseHostPort(text) orelse return error.TestUnexpectedNull;
    try testing.expectEqualStrings(expected, format(address, &buffer));
}

test "v6Prefix keeps the network, and IPv4 whole" {
    const a = parseIp6("2001:db8:1:2:aaaa:bbbb:cccc:dddd").?;
    const b = parseIp6("2001:db8:1:2::1").?;
    try std.testing.expect(a.v6Prefix(64).eql(b.v6Prefix(64)));
    try std.testing.expect(!a.v6Prefix(80).eql(b.v6Prefix(80)));
    try std.testing.expect(a.v6Prefix(128).eql(a));
    try std.testing.expect(parseIp6("2001:db8:1:3::1").?.v6Prefix(63).eql(b.v6Prefix(63)));
    try std.testing.expect(!parseIp6("2001:db8:1:3::1").?.v6Prefix(64).eql(b.v6Prefix(64)));
    const v4 = Address.v4(192, 0, 2, 1);
    try std.testing.expect(v4.v6Prefix(8).eql(v4));
}

test "ipv4 parse strict" {
    try expectFormat("192.0.2.10", "192.0.2.10");
    try expectFormat("192.0.2.10", "192.0.2.10:8080");
    try expectFormat("0.0.0.0", "0.0.0.0");
    try expectFormat("255.255.255.255", "255.255.255.255");
    for ([_][]const u8{ "", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.4:", "1.2.3.4:99999", "1..3.4", "a.b.c.d", "1.2.3.4 ", " 1.2.3.4", "unknown", "1.2.3.4:80:80" }) |bad| {
        try testing.expect(parseHostPort(bad) == null);
    }
}

test "ipv6 parse and RFC 5952 format" {
    try expectFormat("::1", "::1");
    try expectFormat("::1", "[::1]:443");
    try expectFormat("::", "::");
    try expectFormat("2001:db8::1", "2001:DB8:0:0:0:0:0:1");
    try expectFormat("2001:db8::1:0:0:1", "2001:db8:0:0:1:0:0:1");
    try expectFormat("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1");
    try expectFormat("fe80::1", "fe80::1%eth0");
    try expectFormat("1::", "1::");
    try expectFormat("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8");
    // IPv4-mapped is the IPv4 client.
    try expectFormat("192.0.2.1", "::ffff:192.0.2.1");
    try testing.expect(parseHostPort("::ffff:192.0.2.1").?.eql(parseHostPort("192.0.2.1").?));
    for ([_][]const u8{ ":", ":::", "1:::2", "1::2::3", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "12345::", "g::", "1:", ":1", "[::1", "[::1]x", "::1%", "1.2.3.4::" }) |bad| {
        try testing.expect(parseHostPort(bad) == null);
    }
}

test "forwardedEntry picks index len-1-N and ignores what clients prepend" {
    try testing.expectEqualStrings("127.0.0.1", forwardedEntry("192.0.2.10, 127.0.0.1", 0).?);
    try testing.expectEqualStrings("192.0.2.10", forwardedEntry("192.0.2.10, 127.0.0.1", 1).?);
    try testing.expectEqualStrings("192.0.2.10", forwardedEntry("6.6.6.6, 192.0.2.10, 127.0.0.1", 1).?);
    try testing.expectEqualStrings("192.0.2.10", forwardedEntry("6.6.6.6,192.0.2.10,\t127.0.0.1", 1).?);
    try testing.expectEqualStrings("6.6.6.6", forwardedEntry("6.6.6.6, 192.0.2.10, 127.0.0.1", 2).?);
    try testing.expect(forwardedEntry("192.0.2.10, 127.0.0.1", 2) == null);
    try testing.expect(forwardedEntry("127.0.0.1", 1) == null);
    try testing.expect(forwardedEntry("", 1) == null);
    try testing.expectEqualStrings("", forwardedEntry("a,, b", 1).?);
    try testing.expectEqualStrings("", forwardedEntry("", 0).?);
}
