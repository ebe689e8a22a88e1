//! The bucket table in proxy-wasm shared data: a fixed number of keys whatever the number of
//! distinct clients (shared data has no delete).
//!
//! `set_count` keys "rl/<set>" (set = bits of the 64-bit descriptor hash). Each key's value is
//! one set of `ways` entries {descriptor hash u64 LE, tat u64 LE} (16 bytes each, hash 0 = empty),
//! so one read and one compare-and-swap write per policy and request. A descriptor lives in the
//! way whose stored hash equals its full 64-bit hash. A new descriptor takes, in this order:
//! an empty way; a way whose bucket is full again (idle long enough: forgetting it loses nothing);
//! otherwise the way whose bucket is closest to full (smallest tat). Only that last case loses
//! state: the evicted client later starts from a full bucket (the limiter fails open for it, by
//! at most the tokens it had spent), and it is counted (slot_evictions). It happens only when more
//! than `ways` descriptors of one set are active within one refill window.
const std = @import("std");
const assert = std.debug.assert;
const gcra = @import("gcra.zig");

pub const ways = 4;
pub const set_count = 4096;
pub const slot_count = set_count * ways;
pub const way_bytes = 16;
pub const encoded_len = ways * way_bytes;
pub const key_prefix = "rl/";
pub const key_len_max = key_prefix.len + 4;
/// Shared-data keys: the sets plus the "rl/ready" marker (limiter.createSets).
pub const key_count = set_count + 1;
/// Shared-data payload bound: values plus key strings ("rl/4095" = 7 bytes), plus the marker.
pub const payload_bytes_max = set_count * (encoded_len + key_len_max) + "rl/ready".len + 1;

comptime {
    assert(std.math.isPowerOfTwo(set_count));
    assert(set_count - 1 <= 9999); // key_len_max digits
    assert(payload_bytes_max == 290_825);
}

pub const Way = struct {
    hash: u64 = 0,
    tat: u64 = 0,
};

pub const Set = struct {
    ways: [ways]Way = [_]Way{.{}} ** ways,

    pub const empty: Set = .{};

    /// Null when `bytes` is not a set (wrong length).
    pub fn decode(bytes: []const u8) ?Set {
        if (bytes.len != encoded_len) return null;
        var set: Set = .{};
        for (&set.ways, 0..) |*way, i| {
            const offset = i * way_bytes;
            way.hash = std.mem.readInt(u64, bytes[offset..][0..8], .little);
            way.tat = std.mem.readInt(u64, bytes[offset + 8 ..][0..8], .little);
        }
        return set;
    }

    pub fn encode(self: *const Set, out: *[encoded_len]u8) void {
        for (self.ways, 0..) |way, i| {
            const offset = i * way_bytes;
            std.mem.writeInt(u64, out[offset..][0..8], way.hash, .little);
            std.mem.writeInt(u64, out[offset + 8 ..][0..8], way.tat, .little);
        }
    }

    pub const Placement = struct {
        index: u32,
        /// The descriptor already has this way (its tat is its state).
        found: bool,
        /// Taking this way forgets a bucket that is not full (state lost).
        evicts_live: bool,
    };

    pub fn place(self: *const Set, hash: u64, now: u64) Placement {
        assert(hash != 0);
        for (self.ways, 0..) |way, i| {
            if (way.hash == hash) return .{ .index = @intCast(i), .found = true, .evicts_live = false };
        }
        var victim: u32 = 0;
        for (self.ways, 0..) |way, i| {
            if (way.hash == 0 or gcra.isFull(way.tat, now)) {
                return .{ .index = @intCast(i), .found = false, .evicts_live = false };
            }
            if (way.tat < self.ways[victim].tat) victim = @intCast(i);
        }
        return .{ .index = victim, .found = false, .evicts_live = true };
    }
};

pub fn encodedEmpty() [encoded_len]u8 {
    return [_]u8{0} ** encoded_len;
}

/// Never 0 (0 marks an empty way).
pub fn normalizeHash(hash: u64) u64 {
    return if (hash == 0) 1 else hash;
}

/// The set of a descriptor hash: its top bits (the low bits stay distinct within a set).
pub fn setIndex(hash: u64) u32 {
    const set_bits: u32 = comptime std.math.log2_int(u64, set_count);
    const shift: u6 = comptime 64 - set_bits;
    return @intCast(hash >> shift);
}

pub fn keyName(set: u32, buffer: *[key_len_max]u8) []const u8 {
    assert(set < set_count);
    return std.fmt.bufPrint(buffer, key_prefix ++ "{d}", .{set}) catch unreachable;
}

const testing = std.testing;

test "encode/decode round trip and length check" {
    var set: Set = .{};
    set.ways[1] = .{ .hash = 0x0102030405060708, .tat = 42 };
    var bytes: [encoded_len]u8 = undefined;
    set.encode(&bytes);
    const back = Set.decode(&bytes).?;
    try testing.expectEqual(set.ways[1], back.ways[1]);
    try testing.expectEqual(Way{}, back.ways[0]);
    try testing.expect(Set.decode(bytes[0 .. encoded_len - 1]) == null);
    try testing.expectEqualSlices(u8, &encodedEmpty(), blk: {
        var e: [encoded_len]u8 = undefined;
        Set.empty.encode(&e);
        break :blk &e;
    });
}

test "placement: same hash, then empty, then full bucket, then closest to full" {
    const now: u64 = 1000;
    var set: Set = .{};
    var p = set.place(7, now);
    try testing.expectEqual(Set.Placement{ .index = 0, .found = false, .evicts_live = false }, p);
    set.ways[0] = .{ .hash = 7, .tat = 2000 };
    p = set.place(7, now);
    try testing.expect(p.found and p.index == 0);
    set.ways[1] = .{ .hash = 8, .tat = 1500 };
    set.ways[2] = .{ .hash = 9, .tat = 900 }; // full again at now
    set.ways[3] = .{ .hash = 10, .tat = 3000 };
    p = set.place(11, now);
    try testing.expectEqual(Set.Placement{ .index = 2, .found = false, .evicts_live = false }, p);
    set.ways[2] = .{ .hash = 9, .tat = 1200 };
    p = set.place(11, now);
    try testing.expectEqual(Set.Placement{ .index = 2, .found = false, .evicts_live = true }, p);
}

test "set index and key names are bounded" {
    try testing.expectEqual(@as(u32, set_count - 1), setIndex(std.math.maxInt(u64)));
    try testing.expectEqual(@as(u32, 0), setIndex(1));
    var buffer: [key_len_max]u8 = undefined;
    try testing.expectEqualStrings("rl/4095", keyName(set_count - 1, &buffer));
    try testing.expectEqualStrings("rl/0", keyName(0, &buffer));
    try testing.expectEqual(@as(u64, 1), normalizeHash(0));
}
