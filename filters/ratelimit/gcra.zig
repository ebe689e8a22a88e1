//! Token bucket arithmetic, as GCRA (generic cell rate algorithm): the whole bucket state is one
//! u64, the theoretical arrival time `tat` in nanoseconds. A bucket of `burst` tokens refilled at
//! `rate` tokens/s holds `burst - (tat - now) / interval` tokens, where interval = 1e9 / rate ns
//! per token; `tat <= now` is a full bucket. Refill is implicit in the clock (lazy), so an idle
//! key costs nothing, and a full bucket carries no information (it may be forgotten at no loss).
//! Integer arithmetic only: from a full bucket exactly `burst` unit-cost requests are admitted.
const std = @import("std");
const assert = std.debug.assert;

pub const ns_per_s: u64 = 1_000_000_000;

/// Bounds accepted by the configuration, chosen so that no sum below can overflow a u64:
/// tolerance = burst * interval <= tolerance_ns_max, and now (< 2^63 until year 2262) plus two
/// tolerances stays below 2^64.
pub const rate_min: f64 = 1e-6;
pub const rate_max: f64 = 1e9;
pub const burst_max: u32 = 1_000_000_000;
pub const tolerance_ns_max: u64 = 1_000_000_000_000_000_000; // 1e18 ns, ~31.7 years

pub const Limit = struct {
    /// Nanoseconds per token (1e9 / rate, rounded), >= 1.
    interval_ns: u64,
    /// Bucket size in tokens, >= 1.
    burst: u32,
    /// burst * interval_ns: how far `tat` may run ahead of `now`.
    tolerance_ns: u64,

    /// Null when out of bounds.
    pub fn init(rate: f64, burst: u32) ?Limit {
        if (!(rate >= rate_min and rate <= rate_max)) return null;
        if (burst < 1 or burst > burst_max) return null;
        const interval_f = @round(@as(f64, @floatFromInt(ns_per_s)) / rate);
        assert(interval_f >= 1.0 and interval_f <= 1e15 + 1);
        const interval: u64 = @intFromFloat(interval_f);
        const tolerance = std.math.mul(u64, interval, burst) catch return null;
        if (tolerance > tolerance_ns_max) return null;
        return .{ .interval_ns = interval, .burst = burst, .tolerance_ns = tolerance };
    }

    /// Seconds to refill an empty bucket (the `w` of RateLimit-Policy), at least 1.
    pub fn windowSeconds(self: Limit) u64 {
        return @max(1, ceilSeconds(self.tolerance_ns));
    }
};

pub const Decision = struct {
    admit: bool,
    /// New theoretical arrival time to store when admitted (unchanged state when rejected).
    tat: u64,
    /// Whole tokens left after this request (0 when rejected).
    remaining: u32,
    /// Admitted: seconds until the bucket is full again. Rejected: seconds until the request
    /// would be admitted (Retry-After), at least 1.
    reset_s: u64,
};

/// Decides a request of `cost` tokens against a bucket whose stored state is `tat` (0 for a new
/// bucket). Rejection leaves the bucket untouched.
pub fn decide(tat_stored: u64, now: u64, cost: u32, limit: Limit) Decision {
    assert(limit.interval_ns >= 1);
    assert(limit.burst >= 1);
    assert(limit.tolerance_ns == limit.interval_ns * limit.burst);
    assert(cost >= 1 and cost <= limit.burst);
    assert(now < std.math.maxInt(u64) - 2 * tolerance_ns_max);
    // A stored state further ahead than one tolerance (the clock stepped back, or the rate was
    // lowered by a configuration change) is read as an empty bucket.
    const tat = @min(tat_stored, now + limit.tolerance_ns);
    const base = @max(tat, now);
    const tat_new = base + @as(u64, cost) * limit.interval_ns;
    const debt = tat_new - now;
    if (debt > limit.tolerance_ns) {
        return .{
            .admit = false,
            .tat = tat_stored,
            .remaining = 0,
            .reset_s = @max(1, ceilSeconds(debt - limit.tolerance_ns)),
        };
    }
    const remaining = (limit.tolerance_ns - debt) / limit.interval_ns;
    assert(remaining < limit.burst);
    return .{
        .admit = true,
        .tat = tat_new,
        .remaining = @intCast(remaining),
        .reset_s = ceilSeconds(debt),
    };
}

/// Gives back `cost` tokens previously taken (a later policy rejected the request).
pub fn refund(tat: u64, cost: u32, limit: Limit) u64 {
    return tat -| @as(u64, cost) * limit.interval_ns;
}

/// True when the bucket is full at `now` (forgetting it loses nothing).
pub fn isFull(tat: u64, now: u64) bool {
    return tat <= now;
}

fn ceilSeconds(ns: u64) u64 {
    return ns / ns_per_s + @intFromBool(ns % ns_per_s != 0);
}

const testing = std.testing;
const t0: u64 = 1_700_000_000 * ns_per_s;

test "burst B of B+N immediate requests admits exactly B" {
    for ([_]u32{ 1, 5, 100 }) |burst| {
        for ([_]f64{ 0.001, 1.0, 3.0, 1000.0 }) |rate| {
            const limit = Limit.init(rate, burst).?;
            var tat: u64 = 0;
            var admitted: u32 = 0;
            for (0..burst + 10) |_| {
                const d = decide(tat, t0, 1, limit);
                if (d.admit) {
                    admitted += 1;
                    tat = d.tat;
                } else try testing.expectEqual(tat, d.tat);
            }
            try testing.expectEqual(burst, admitted);
        }
    }
}

test "refill after t seconds admits rate*t more, capped at burst" {
    const limit = Limit.init(2.0, 10).?;
    var tat: u64 = 0;
    for (0..10) |_| tat = decide(tat, t0, 1, limit).tat;
    try testing.expect(!decide(tat, t0, 1, limit).admit);
    const later = t0 + 3 * ns_per_s; // 6 tokens refilled
    var admitted: u32 = 0;
    for (0..20) |_| {
        const d = decide(tat, later, 1, limit);
        if (!d.admit) break;
        tat = d.tat;
        admitted += 1;
    }
    try testing.expectEqual(@as(u32, 6), admitted);
    // Idle for an hour: full again, but never more than burst.
    const much_later = t0 + 3600 * ns_per_s;
    admitted = 0;
    for (0..20) |_| {
        const d = decide(tat, much_later, 1, limit);
        if (!d.admit) break;
        tat = d.tat;
        admitted += 1;
    }
    try testing.expectEqual(@as(u32, 10), admitted);
}

test "remaining, reset and retry-after" {
    const limit = Limit.init(1.0, 5).?;
    try testing.expectEqual(@as(u64, 5), limit.windowSeconds());
    var d = decide(0, t0, 1, limit);
    try testing.expect(d.admit);
    try testing.expectEqual(@as(u32, 4), d.remaining);
    try testing.expectEqual(@as(u64, 1), d.reset_s);
    d = decide(d.tat, t0, 4, limit);
    try testing.expect(d.admit);
    try testing.expectEqual(@as(u32, 0), d.remaining);
    try testing.expectEqual(@as(u64, 5), d.reset_s);
    const r = decide(d.tat, t0, 2, limit);
    try testing.expect(!r.admit);
    try testing.expectEqual(@as(u64, 2), r.reset_s);
    // Half a second later a unit request still waits, rounded up to one second.
    const r2 = decide(d.tat, t0 + ns_per_s / 2, 1, limit);
    try testing.expect(!r2.admit);
    try testing.expectEqual(@as(u64, 1), r2.reset_s);
}

test "cost equal to burst drains a full bucket; refund restores" {
    const limit = Limit.init(1.0, 5).?;
    const d = decide(0, t0, 5, limit);
    try testing.expect(d.admit);
    try testing.expect(!decide(d.tat, t0, 1, limit).admit);
    const tat = refund(d.tat, 5, limit);
    try testing.expect(isFull(tat, t0));
    try testing.expect(decide(tat, t0, 5, limit).admit);
}

test "state far in the future (clock step back, lowered rate) reads as an empty bucket" {
    const limit = Limit.init(1.0, 5).?;
    const d = decide(t0 + 1000 * ns_per_s, t0, 1, limit);
    try testing.expect(!d.admit);
    try testing.expectEqual(@as(u64, 1), d.reset_s);
}

test "limit bounds" {
    try testing.expect(Limit.init(0, 1) == null);
    try testing.expect(Limit.init(-1, 1) == null);
    try testing.expect(Limit.init(std.math.nan(f64), 1) == null);
    try testing.expect(Limit.init(std.math.inf(f64), 1) == null);
    try testing.expect(Limit.init(1, 0) == null);
    try testing.expect(Limit.init(1, burst_max + 1) == null);
    try testing.expect(Limit.init(rate_min, 1_000_000_000) == null); // 1e15 s window
    try testing.expect(Limit.init(rate_max, burst_max) != null);
    try testing.expect(Limit.init(rate_min, 1000) != null);
    try testing.expectEqual(@as(u64, 333_333_333), Limit.init(3.0, 1).?.interval_ns);
}
