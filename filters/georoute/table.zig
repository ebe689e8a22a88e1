//! Both families' prefix tables, and the lookup of a client address in the right one.
//!
//! Addresses come from abi/ip.zig as 16 bytes with IPv4 stored IPv4-mapped (::ffff:a.b.c.d), so
//! an IPv4 client and the same client written as a mapped IPv6 address are one client, looked
//! up among the IPv4 prefixes.
const std = @import("std");
const assert = std.debug.assert;
const config = @import("config.zig");
const prefixes = @import("prefixes.zig");

pub const unmatched = prefixes.unmatched;

const mapped_prefix = [_]u8{ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

pub fn Tables(comptime v4_capacity: usize, comptime v6_capacity: usize) type {
    return struct {
        const Self = @This();
        pub const V4 = prefixes.Table(u32, v4_capacity);
        pub const V6 = prefixes.Table(u128, v6_capacity);
        pub const bytes = V4.bytes + V6.bytes;

        v4: V4 = .{},
        v6: V6 = .{},

        /// Rebuilds both tables from a validated configuration's prefixes. Cannot fail.
        pub fn install(self: *Self, from: config.Tables) void {
            assert(from.v4.addresses.len <= v4_capacity and from.v6.addresses.len <= v6_capacity);
            self.v4.build(from.v4.addresses, from.v4.lengths, from.v4.labels);
            self.v6.build(from.v6.addresses, from.v6.lengths, from.v6.labels);
        }

        pub fn ranges(self: *const Self) u32 {
            return self.v4.len + self.v6.len;
        }

        /// The label of the longest prefix holding `address`, or `unmatched`.
        pub fn lookup(self: *const Self, address: *const [16]u8) u16 {
            if (std.mem.eql(u8, address[0..12], &mapped_prefix)) {
                return self.v4.lookup(std.mem.readInt(u32, address[12..16], .big));
            }
            return self.v6.lookup(std.mem.readInt(u128, address, .big));
        }
    };
}

/// The tables a VM holds: every bound of config.zig.
pub const Full = Tables(config.v4_prefixes_max, config.v6_prefixes_max);

const testing = std.testing;
const testV4 = prefixes.testV4;
const testV6 = prefixes.testV6;

fn bytesOf(text: []const u8) [16]u8 {
    const address = std.net.Address.parseIp(text, 0) catch unreachable;
    var out = mapped_prefix ++ [_]u8{ 0, 0, 0, 0 };
    switch (address.any.family) {
        std.posix.AF.INET => std.mem.writeInt(u32, out[12..16], testV4(text), .big),
        else => out = address.in6.sa.addr,
    }
    return out;
}

test "mapped addresses are IPv4 clients; IPv6 prefixes never see them" {
    const T = Tables(4, 4);
    var tables: T = .{};
    const v4_addresses = [_]u32{testV4("198.51.100.0")};
    const v4_lengths = [_]u8{24};
    const v4_labels = [_]u16{0};
    // ::/0 holds ::ffff:0:0/96 as bits, but mapped clients are IPv4: it must not match them.
    const v6_addresses = [_]u128{ 0, testV6("2001:db8::") };
    const v6_lengths = [_]u8{ 0, 32 };
    const v6_labels = [_]u16{ 1, 2 };
    tables.install(.{
        .v4 = .{ .addresses = &v4_addresses, .lengths = &v4_lengths, .labels = &v4_labels },
        .v6 = .{ .addresses = &v6_addresses, .lengths = &v6_lengths, .labels = &v6_labels },
    });
    try testing.expectEqual(@as(u16, 0), tables.lookup(&bytesOf("198.51.100.7")));
    try testing.expectEqual(@as(u16, 0), tables.lookup(&bytesOf("::ffff:198.51.100.7")));
    try testing.expectEqual(unmatched, tables.lookup(&bytesOf("::ffff:203.0.113.1")));
    try testing.expectEqual(unmatched, tables.lookup(&bytesOf("203.0.113.1")));
    try testing.expectEqual(@as(u16, 2), tables.lookup(&bytesOf("2001:db8::5")));
    try testing.expectEqual(@as(u16, 1), tables.lookup(&bytesOf("::1")));
    // ::c633:6407 (::198.51.100.7) is IPv4-compatible, not mapped: an IPv6 address like any other.
    try testing.expectEqual(@as(u16, 1), tables.lookup(&bytesOf("::c633:6407")));
    try testing.expectEqual(@as(u32, 3 + 3), tables.ranges());
}
