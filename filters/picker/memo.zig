//! Where this worker sent each prompt prefix lately: the picker's model of the replicas' prefix
//! caches; and how many of its last picks went to each replica (`Recent`), the load that prefix
//! affinity's bound holds. Each replica is taken to keep the last `window` distinct prefixes sent to it (an LRU of
//! whole prompts, `window` being its KV cache over a prompt's size): a prefix counts as warm on a
//! replica until `window` other prefixes have been newly sent there since it last was. Prefixes
//! sent again to where they are warm count as hits, which move no other prefix out (an LRU hit
//! does push the prefixes below it down one, so the model errs towards warm: the load bound still
//! applies to warm replicas). Unit-tested natively.
//!
//! One direct-mapped table for every route: a slot holds a tag of (route, endpoint, key) and the
//! count of that endpoint's insertions when the prefix was last sent there. A collision forgets the
//! older prefix, which then counts as cold: at worst a miss the cache did not need.
const std = @import("std");
const assert = std.debug.assert;
const config = @import("config.zig");

pub const slots = 4096;

const Slot = struct { tag: u64 = 0, stamp: u32 = 0 };

pub const Memo = struct {
    table: [slots]Slot = [_]Slot{.{}} ** slots,
    /// Per [route][endpoint]: prefixes newly sent there (wraps; only differences are read).
    inserted: [config.routes_max][config.endpoints_max]u32 = std.mem.zeroes([config.routes_max][config.endpoints_max]u32),

    pub fn warm(self: *const Memo, route: usize, endpoint: usize, key: u64, window: u32) bool {
        assert(window > 0);
        const t = tag(route, endpoint, key);
        const slot = self.table[@intCast(t % slots)];
        return slot.tag == t and self.inserted[route][endpoint] -% slot.stamp < window;
    }

    /// Bit i: the prefix is warm on endpoint i of the route.
    pub fn warmSet(self: *const Memo, route: usize, endpoints: usize, key: u64, window: u32) u64 {
        assert(endpoints <= 64);
        var set: u64 = 0;
        for (0..endpoints) |i| {
            if (self.warm(route, i, key, window)) set |= @as(u64, 1) << @intCast(i);
        }
        return set;
    }

    pub fn record(self: *Memo, route: usize, endpoint: usize, key: u64, window: u32) void {
        const t = tag(route, endpoint, key);
        const count = &self.inserted[route][endpoint];
        if (!self.warm(route, endpoint, key, window)) count.* +%= 1;
        self.table[@intCast(t % slots)] = .{ .tag = t, .stamp = count.* };
    }
};

/// This worker's last picks on each route, a window of `per_endpoint` picks per endpoint: how
/// many of them went to each endpoint is the load prefix affinity's bound holds (pick.affinity).
pub const Recent = struct {
    /// Enough picks that one replica's share is not noise (about 1/sqrt(32), 18%), few enough that
    /// the share follows where prompts are placed now.
    pub const per_endpoint = 32;
    const window_max = per_endpoint * config.endpoints_max;

    ring: [config.routes_max][window_max]u8 = undefined,
    next: [config.routes_max]u16 = std.mem.zeroes([config.routes_max]u16),
    filled: [config.routes_max]u16 = std.mem.zeroes([config.routes_max]u16),
    counts: [config.routes_max][config.endpoints_max]u32 = std.mem.zeroes([config.routes_max][config.endpoints_max]u32),

    pub fn window(endpoints: usize) u32 {
        assert(endpoints > 0 and endpoints <= config.endpoints_max);
        return @intCast(per_endpoint * endpoints);
    }

    pub fn count(self: *const Recent, route: usize, endpoint: usize) u32 {
        return self.counts[route][endpoint];
    }

    /// A pick of `endpoint` on a route of `endpoints`; the oldest in its window falls out.
    pub fn record(self: *Recent, route: usize, endpoints: usize, endpoint: usize) void {
        assert(endpoint < endpoints);
        const size = window(endpoints);
        const at = self.next[route];
        if (self.filled[route] == size) {
            self.counts[route][self.ring[route][at]] -= 1;
        } else {
            self.filled[route] += 1;
        }
        self.ring[route][at] = @intCast(endpoint);
        self.counts[route][endpoint] += 1;
        self.next[route] = @intCast((at + 1) % size);
    }
};

fn tag(route: usize, endpoint: usize, key: u64) u64 {
    assert(route < config.routes_max and endpoint < config.endpoints_max);
    const where: u64 = @as(u64, route) << 8 | endpoint;
    return std.hash.Wyhash.hash(where, std.mem.asBytes(&key)) | 1; // 0 marks an empty slot
}

const testing = std.testing;

test "a prefix is warm where it was sent until window others are sent there" {
    const memo = try testing.allocator.create(Memo);
    defer testing.allocator.destroy(memo);
    memo.* = .{};
    try testing.expect(!memo.warm(0, 1, 42, 3));
    memo.record(0, 1, 42, 3);
    try testing.expect(memo.warm(0, 1, 42, 3));
    try testing.expect(!memo.warm(0, 2, 42, 3)); // another endpoint
    try testing.expect(!memo.warm(1, 1, 42, 3)); // another route
    try testing.expectEqual(@as(u64, 0b10), memo.warmSet(0, 4, 42, 3));
    memo.record(0, 1, 7, 3);
    memo.record(0, 1, 8, 3);
    // Sent again while warm: a hit, it moves to the front and pushes nothing out.
    memo.record(0, 1, 42, 3);
    memo.record(0, 1, 7, 3);
    try testing.expect(memo.warm(0, 1, 8, 3) and memo.warm(0, 1, 42, 3));
    // Three other prefixes new to it since 8 and 42 were last sent: both out.
    memo.record(0, 1, 9, 3);
    memo.record(0, 1, 10, 3);
    try testing.expect(memo.warm(0, 1, 8, 3));
    memo.record(0, 1, 11, 3);
    try testing.expect(!memo.warm(0, 1, 8, 3) and !memo.warm(0, 1, 42, 3));
    try testing.expect(!memo.warm(0, 1, 7, 3) and memo.warm(0, 1, 9, 3) and memo.warm(0, 1, 11, 3));
    // Other endpoints' traffic does not age it.
    for (0..100) |k| memo.record(0, 2, 1000 + k, 3);
    try testing.expect(memo.warm(0, 1, 11, 3));
}

test "recent picks: counts over the last window per route" {
    const recent = try testing.allocator.create(Recent);
    defer testing.allocator.destroy(recent);
    recent.* = .{};
    const window = Recent.window(2);
    try testing.expectEqual(@as(u32, 64), window);
    for (0..window) |_| recent.record(0, 2, 0);
    try testing.expectEqual(@as(u32, 64), recent.count(0, 0));
    // Each new pick pushes the oldest out.
    for (0..16) |_| recent.record(0, 2, 1);
    try testing.expectEqual(@as(u32, 48), recent.count(0, 0));
    try testing.expectEqual(@as(u32, 16), recent.count(0, 1));
    for (0..window) |_| recent.record(0, 2, 1);
    try testing.expectEqual(@as(u32, 0), recent.count(0, 0));
    try testing.expectEqual(@as(u32, 64), recent.count(0, 1));
    // Routes apart.
    recent.record(3, 5, 4);
    try testing.expectEqual(@as(u32, 1), recent.count(3, 4));
    try testing.expectEqual(@as(u32, 0), recent.count(0, 4));
}
