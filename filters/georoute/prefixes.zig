//! The longest-prefix-match table of one address family, as disjoint ranges.
//!
//! Input: prefixes sorted by (address, length), distinct, host bits zero (config.zig checks all
//! of this before `build` runs). CIDR prefixes are either nested or disjoint, so one sweep with a
//! stack of the prefixes still open turns them into the ranges where the longest match is
//! constant: `starts[i]` is the first address of range i, which runs up to `starts[i + 1] - 1`
//! (the last one to the end of the family's address space), and `labels[i]` is the label of the
//! longest prefix holding it, or `unmatched`. Adjacent ranges never share a label (merged), so
//! n prefixes give at most 2n + 1 ranges.
//!
//! Lookup is a binary search for the last start <= address, narrowed first by an index on the top
//! 16 address bits (DIR-16 style): `index[b]` is the first range starting in block b, so the
//! search runs over the few ranges of one block (a binary search over a million ranges would be
//! 20 dependent probes, most of them cache misses: ~6 us per request in Envoy at 500,000
//! prefixes; with the index, one probe of the index and a handful within one block).
//! Memory is static: (2 * capacity + 1) * (@sizeOf(Int) + 2) bytes of ranges, of which a table
//! touches only what its ranges use, plus the 256 KiB index.
const std = @import("std");
const assert = std.debug.assert;

/// The label of addresses no prefix holds.
pub const unmatched: u16 = std.math.maxInt(u16);

pub fn Table(comptime Int: type, comptime capacity: usize) type {
    comptime assert(Int == u32 or Int == u128);
    comptime assert(capacity > 0);
    return struct {
        const Self = @This();

        pub const bits = @bitSizeOf(Int);
        pub const prefixes_max = capacity;
        pub const ranges_max = 2 * capacity + 1;
        pub const index_bits = 16;
        const blocks = 1 << index_bits;
        const block_shift = bits - index_bits;
        pub const bytes = ranges_max * (@sizeOf(Int) + @sizeOf(u16)) + (blocks + 1) * @sizeOf(u32);

        starts: [ranges_max]Int = undefined,
        labels: [ranges_max]u16 = undefined,
        len: u32 = 0,
        /// index[b]: the first range whose start lies in block b (or later); index[blocks] = len.
        index: [blocks + 1]u32 = undefined,

        /// The first and last address of a prefix.
        pub fn first(address: Int, length: u8) Int {
            assert(length <= bits);
            return address & mask(length);
        }

        pub fn last(address: Int, length: u8) Int {
            assert(length <= bits);
            return address | ~mask(length);
        }

        /// The network mask of a prefix length: `length` leading ones.
        pub fn mask(length: u8) Int {
            assert(length <= bits);
            if (length == 0) return 0;
            const shift: std.math.Log2Int(Int) = @intCast(bits - @as(u32, length));
            return @as(Int, std.math.maxInt(Int)) << shift;
        }

        /// Replaces the table with the ranges of `addresses`/`lengths`/`labels` (same length,
        /// validated: sorted, distinct, host bits zero). Cannot fail.
        pub fn build(self: *Self, addresses: []const Int, lengths: []const u8, labels: []const u16) void {
            assert(addresses.len == lengths.len and lengths.len == labels.len);
            assert(addresses.len <= capacity);
            const Open = struct { last: Int, label: u16 };
            // Nested prefixes have strictly increasing lengths 0..bits: at most bits + 1 open.
            var stack: [bits + 1]Open = undefined;
            var depth: usize = 0;

            self.len = 0;
            self.emit(0, unmatched);
            for (addresses, lengths, labels) |start, length, label| {
                assert(label != unmatched);
                assert(first(start, length) == start);
                const end = last(start, length);
                while (depth > 0 and stack[depth - 1].last < start) {
                    depth -= 1;
                    // stack[depth].last < start <= maxInt: the successor exists.
                    self.emit(stack[depth].last + 1, if (depth > 0) stack[depth - 1].label else unmatched);
                }
                // Sorted CIDR prefixes: whatever is still open holds this one.
                assert(depth == 0 or stack[depth - 1].last >= end);
                assert(depth <= bits);
                stack[depth] = .{ .last = end, .label = label };
                depth += 1;
                self.emit(start, label);
            }
            while (depth > 0) {
                depth -= 1;
                // A prefix ending at the top of the address space closes no range.
                if (stack[depth].last == std.math.maxInt(Int)) continue;
                self.emit(stack[depth].last + 1, if (depth > 0) stack[depth - 1].label else unmatched);
            }
            assert(self.len >= 1 and self.len <= 2 * addresses.len + 1);
            assert(self.starts[0] == 0);
            self.buildIndex();
        }

        fn buildIndex(self: *Self) void {
            var i: u32 = 0;
            for (&self.index, 0..) |*entry, block| {
                while (i < self.len and self.starts[i] >> block_shift < block) i += 1;
                entry.* = i;
            }
            assert(self.index[0] == 0 and self.index[blocks] == self.len);
        }

        /// Appends a boundary: from `start` on, `label`. Boundaries arrive in non-decreasing order;
        /// one at the same address as the previous replaces it (the longer match decides).
        fn emit(self: *Self, start: Int, label: u16) void {
            if (self.len > 0) {
                const i = self.len - 1;
                if (self.starts[i] == start) {
                    self.labels[i] = label;
                    // The replaced boundary may now repeat the label before it: drop it.
                    if (i > 0 and self.labels[i - 1] == label) self.len -= 1;
                    return;
                }
                assert(self.starts[i] < start);
                if (self.labels[i] == label) return;
            }
            assert(self.len < ranges_max);
            self.starts[self.len] = start;
            self.labels[self.len] = label;
            self.len += 1;
        }

        /// The label of the longest prefix holding `address`, or `unmatched`.
        pub fn lookup(self: *const Self, address: Int) u16 {
            assert(self.len >= 1);
            const block: u32 = @intCast(address >> block_shift);
            // The range holding the block's first address starts in the block or before it.
            var low: u32 = self.index[block] -| 1;
            var high: u32 = self.index[block + 1];
            // Invariant: starts[low] <= address < starts[high] (high == len: the end of space).
            assert(low < high and self.starts[low] <= address);
            while (high - low > 1) {
                const middle = low + (high - low) / 2;
                if (self.starts[middle] <= address) low = middle else high = middle;
            }
            return self.labels[low];
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Tests: prefixes written as text, looked up by text, so each case reads as the LPM it checks.

const testing = std.testing;

pub fn testV4(text: []const u8) u32 {
    const address = std.net.Address.parseIp4(text, 0) catch unreachable;
    return std.mem.bigToNative(u32, address.in.sa.addr);
}

pub fn testV6(text: []const u8) u128 {
    const address = std.net.Address.parseIp6(text, 0) catch unreachable;
    return std.mem.readInt(u128, &address.in6.sa.addr, .big);
}

const v4 = testV4;
const v6 = testV6;

const Prefix = struct { text: []const u8, length: u8, label: u16 };

fn TestTable(comptime Int: type) type {
    return Table(Int, 16);
}

fn buildTest(comptime Int: type, table: *TestTable(Int), prefixes: []const Prefix) void {
    var addresses: [16]Int = undefined;
    var lengths: [16]u8 = undefined;
    var labels: [16]u16 = undefined;
    for (prefixes, 0..) |p, i| {
        addresses[i] = if (Int == u32) v4(p.text) else v6(p.text);
        lengths[i] = p.length;
        labels[i] = p.label;
    }
    table.build(addresses[0..prefixes.len], lengths[0..prefixes.len], labels[0..prefixes.len]);
}

test "v4: exact boundaries of a prefix" {
    var table: TestTable(u32) = .{};
    buildTest(u32, &table, &.{.{ .text = "198.51.100.0", .length = 24, .label = 1 }});
    try testing.expectEqual(@as(u32, 3), table.len);
    try testing.expectEqual(unmatched, table.lookup(v4("198.51.99.255")));
    try testing.expectEqual(@as(u16, 1), table.lookup(v4("198.51.100.0")));
    try testing.expectEqual(@as(u16, 1), table.lookup(v4("198.51.100.255")));
    try testing.expectEqual(unmatched, table.lookup(v4("198.51.101.0")));
    try testing.expectEqual(unmatched, table.lookup(v4("0.0.0.0")));
    try testing.expectEqual(unmatched, table.lookup(v4("255.255.255.255")));
}

test "v4: overlapping prefixes, the longest wins, the outer resumes after the inner" {
    var table: TestTable(u32) = .{};
    buildTest(u32, &table, &.{
        .{ .text = "10.0.0.0", .length = 8, .label = 1 },
        .{ .text = "10.1.0.0", .length = 16, .label = 2 },
        .{ .text = "10.1.2.0", .length = 24, .label = 3 },
        .{ .text = "10.1.2.3", .length = 32, .label = 4 },
        .{ .text = "10.255.0.0", .length = 16, .label = 5 }, // ends where 10/8 ends
    });
    try testing.expectEqual(@as(u16, 1), table.lookup(v4("10.0.0.1")));
    try testing.expectEqual(@as(u16, 2), table.lookup(v4("10.1.0.0")));
    try testing.expectEqual(@as(u16, 3), table.lookup(v4("10.1.2.2")));
    try testing.expectEqual(@as(u16, 4), table.lookup(v4("10.1.2.3"))); // a /32 is one address
    try testing.expectEqual(@as(u16, 3), table.lookup(v4("10.1.2.4")));
    try testing.expectEqual(@as(u16, 2), table.lookup(v4("10.1.3.0")));
    try testing.expectEqual(@as(u16, 1), table.lookup(v4("10.2.0.0")));
    try testing.expectEqual(@as(u16, 5), table.lookup(v4("10.255.255.255")));
    try testing.expectEqual(unmatched, table.lookup(v4("11.0.0.0")));
    try testing.expectEqual(unmatched, table.lookup(v4("9.255.255.255")));
}

test "v4: /0 matches everything, longer prefixes still win, /32 at the top of the space" {
    var table: TestTable(u32) = .{};
    buildTest(u32, &table, &.{
        .{ .text = "0.0.0.0", .length = 0, .label = 7 },
        .{ .text = "0.0.0.0", .length = 32, .label = 8 },
        .{ .text = "203.0.113.0", .length = 24, .label = 9 },
        .{ .text = "255.255.255.255", .length = 32, .label = 10 },
    });
    try testing.expectEqual(@as(u16, 8), table.lookup(v4("0.0.0.0")));
    try testing.expectEqual(@as(u16, 7), table.lookup(v4("0.0.0.1")));
    try testing.expectEqual(@as(u16, 9), table.lookup(v4("203.0.113.77")));
    try testing.expectEqual(@as(u16, 7), table.lookup(v4("203.0.114.0")));
    try testing.expectEqual(@as(u16, 7), table.lookup(v4("255.255.255.254")));
    try testing.expectEqual(@as(u16, 10), table.lookup(v4("255.255.255.255")));
}

test "index: blocks without a range start belong to the range started in an earlier block" {
    var table: TestTable(u32) = .{};
    buildTest(u32, &table, &.{
        .{ .text = "10.0.0.0", .length = 8, .label = 1 },
        .{ .text = "10.200.0.128", .length = 25, .label = 2 },
        .{ .text = "11.0.0.0", .length = 16, .label = 3 },
    });
    try testing.expectEqual(@as(u16, 1), table.lookup(v4("10.199.255.255"))); // block 10.199: no start
    try testing.expectEqual(@as(u16, 1), table.lookup(v4("10.200.0.0"))); // block 10.200, before its start
    try testing.expectEqual(@as(u16, 2), table.lookup(v4("10.200.0.255")));
    try testing.expectEqual(@as(u16, 1), table.lookup(v4("10.200.1.0")));
    try testing.expectEqual(@as(u16, 3), table.lookup(v4("11.0.255.255")));
    try testing.expectEqual(unmatched, table.lookup(v4("11.1.0.0")));
    try testing.expectEqual(unmatched, table.lookup(v4("255.255.255.255")));
    try testing.expectEqual(@as(u32, 0), table.index[0]);
    try testing.expectEqual(table.len, table.index[1 << 16]);
}

test "v4: adjacent prefixes with one label merge into one range" {
    var table: TestTable(u32) = .{};
    buildTest(u32, &table, &.{
        .{ .text = "192.0.2.0", .length = 25, .label = 1 },
        .{ .text = "192.0.2.128", .length = 25, .label = 1 },
        .{ .text = "192.0.3.0", .length = 24, .label = 2 },
    });
    try testing.expectEqual(@as(u32, 4), table.len); // unmatched, 1, 2, unmatched
    try testing.expectEqual(@as(u16, 1), table.lookup(v4("192.0.2.200")));
    try testing.expectEqual(@as(u16, 2), table.lookup(v4("192.0.3.0")));
}

test "v4: an inner prefix with its outer's label adds no range" {
    var table: TestTable(u32) = .{};
    buildTest(u32, &table, &.{
        .{ .text = "10.0.0.0", .length = 8, .label = 1 },
        .{ .text = "10.0.0.0", .length = 16, .label = 1 },
        .{ .text = "10.9.0.0", .length = 16, .label = 1 },
    });
    try testing.expectEqual(@as(u32, 3), table.len);
}

test "empty table: one range, everything unmatched" {
    var table: TestTable(u128) = .{};
    buildTest(u128, &table, &.{});
    try testing.expectEqual(@as(u32, 1), table.len);
    try testing.expectEqual(unmatched, table.lookup(0));
    try testing.expectEqual(unmatched, table.lookup(std.math.maxInt(u128)));
}

test "v6: nested prefixes, /128, /0 and the top of the space" {
    var table: TestTable(u128) = .{};
    buildTest(u128, &table, &.{
        .{ .text = "::", .length = 0, .label = 1 },
        .{ .text = "2001:db8::", .length = 32, .label = 2 },
        .{ .text = "2001:db8:1::", .length = 48, .label = 3 },
        .{ .text = "2001:db8:1::1", .length = 128, .label = 4 },
        .{ .text = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", .length = 128, .label = 5 },
    });
    try testing.expectEqual(@as(u16, 1), table.lookup(v6("::1")));
    try testing.expectEqual(@as(u16, 2), table.lookup(v6("2001:db8::")));
    try testing.expectEqual(@as(u16, 3), table.lookup(v6("2001:db8:1::")));
    try testing.expectEqual(@as(u16, 4), table.lookup(v6("2001:db8:1::1")));
    try testing.expectEqual(@as(u16, 3), table.lookup(v6("2001:db8:1::2")));
    try testing.expectEqual(@as(u16, 3), table.lookup(v6("2001:db8:1:ffff:ffff:ffff:ffff:ffff")));
    try testing.expectEqual(@as(u16, 2), table.lookup(v6("2001:db8:2::")));
    try testing.expectEqual(@as(u16, 1), table.lookup(v6("2001:db9::")));
    try testing.expectEqual(@as(u16, 1), table.lookup(v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")));
    try testing.expectEqual(@as(u16, 5), table.lookup(v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
}

test "v6: a prefix reaching the end of the space closes nothing" {
    var table: TestTable(u128) = .{};
    buildTest(u128, &table, &.{
        .{ .text = "8000::", .length = 1, .label = 1 },
        .{ .text = "ff00::", .length = 8, .label = 2 },
    });
    try testing.expectEqual(@as(u32, 3), table.len);
    try testing.expectEqual(unmatched, table.lookup(v6("7fff::")));
    try testing.expectEqual(@as(u16, 1), table.lookup(v6("8000::")));
    try testing.expectEqual(@as(u16, 2), table.lookup(v6("ffff::1")));
}

test "masks" {
    const T4 = TestTable(u32);
    try testing.expectEqual(@as(u32, 0), T4.mask(0));
    try testing.expectEqual(@as(u32, 0xffffff00), T4.mask(24));
    try testing.expectEqual(@as(u32, 0xffffffff), T4.mask(32));
    try testing.expectEqual(@as(u32, 0xffffffff), T4.last(0, 0));
    const T6 = TestTable(u128);
    try testing.expectEqual(@as(u128, std.math.maxInt(u128)), T6.mask(128));
    try testing.expectEqual(@as(u128, 1), T6.last(0, 127));
}
