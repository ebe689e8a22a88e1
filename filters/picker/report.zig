//! Pure parts of the picker: the load in an ORCA `endpoint-load-metrics` report (TEXT form), a
//! replica's state as kept in shared data, a 429's Retry-After, and the request's priority.
const std = @import("std");
const assert = std.debug.assert;

/// The named metrics both sluice backends report (the generative one with vLLM's meaning).
pub const Load = struct { waiting: u32, running: u32 };

/// `named_metrics.waiting` and `named_metrics.running` of a TEXT report (`TEXT a=1,
/// named_metrics.waiting=3, ...`); null unless `waiting` is there and a non-negative number
/// (`running` absent counts 0; fractions are truncated).
pub fn load(report: []const u8) ?Load {
    const text = std.mem.trim(u8, report, " \t");
    if (!std.mem.startsWith(u8, text, "TEXT ")) return null;
    var waiting: ?u32 = null;
    var running: u32 = 0;
    var fields = std.mem.splitScalar(u8, text["TEXT ".len..], ',');
    while (fields.next()) |field| {
        const pair = std.mem.trim(u8, field, " \t");
        const eq = std.mem.indexOfScalar(u8, pair, '=') orelse continue;
        const key = pair[0..eq];
        if (std.mem.eql(u8, key, "named_metrics.waiting")) {
            waiting = count(pair[eq + 1 ..]) orelse return null;
        } else if (std.mem.eql(u8, key, "named_metrics.running")) {
            running = count(pair[eq + 1 ..]) orelse return null;
        }
    }
    return .{ .waiting = waiting orelse return null, .running = running };
}

fn count(text: []const u8) ?u32 {
    const value = std.fmt.parseFloat(f64, text) catch return null;
    if (!(value >= 0) or value > std.math.maxInt(u32)) return null;
    return @intFromFloat(value);
}

/// Seconds of a `Retry-After` in its delta-seconds form, capped; null for a date or garbage.
pub fn retryAfterSeconds(text: []const u8, cap_s: u32) ?u32 {
    const digits = std.mem.trim(u8, text, " \t");
    if (digits.len == 0 or digits.len > 10) return null;
    const value = std.fmt.parseInt(u64, digits, 10) catch return null;
    return @intCast(@min(value, cap_s));
}

/// A replica as the picker last saw it: its load, when it was reported, and until when it asked
/// (429 with Retry-After) not to be sent anything.
pub const Seen = struct {
    load: Load = .{ .waiting = 0, .running = 0 },
    at_ms: u64 = 0,
    cooldown_until_ms: u64 = 0,

    pub const encoded_len = 24;

    pub fn encode(self: Seen, buffer: *[encoded_len]u8) []const u8 {
        std.mem.writeInt(u32, buffer[0..4], self.load.waiting, .little);
        std.mem.writeInt(u32, buffer[4..8], self.load.running, .little);
        std.mem.writeInt(u64, buffer[8..16], self.at_ms, .little);
        std.mem.writeInt(u64, buffer[16..24], self.cooldown_until_ms, .little);
        return buffer;
    }

    pub fn decode(bytes: []const u8) ?Seen {
        if (bytes.len != encoded_len) return null;
        return .{
            .load = .{ .waiting = std.mem.readInt(u32, bytes[0..4], .little), .running = std.mem.readInt(u32, bytes[4..8], .little) },
            .at_ms = std.mem.readInt(u64, bytes[8..16], .little),
            .cooldown_until_ms = std.mem.readInt(u64, bytes[16..24], .little),
        };
    }

    pub fn fresh(self: Seen, now_ms: u64, max_age_ms: u32) bool {
        return self.at_ms != 0 and now_ms -| self.at_ms <= max_age_ms;
    }

    /// Full: a fresh report at or over the threshold. A stale or missing report is not full, so
    /// shedding fails open.
    pub fn full(self: Seen, threshold: u32, now_ms: u64, max_age_ms: u32) bool {
        assert(threshold >= 1);
        return self.fresh(now_ms, max_age_ms) and self.load.waiting >= threshold;
    }

    pub fn cooling(self: Seen, now_ms: u64) bool {
        return now_ms < self.cooldown_until_ms;
    }

    /// The load a pick compares: requests queued and running; unknown (stale) is null.
    pub fn score(self: Seen, now_ms: u64, max_age_ms: u32) ?u32 {
        if (!self.fresh(now_ms, max_age_ms)) return null;
        return self.load.waiting +| self.load.running;
    }
};

/// The request's priority: an integer header, 0 when absent or unreadable (so a malformed value
/// is never a reason to shed).
pub fn priority(header: ?[]const u8) i64 {
    const text = std.mem.trim(u8, header orelse return 0, " \t");
    return std.fmt.parseInt(i64, text, 10) catch 0;
}

const testing = std.testing;

test "load from a report" {
    const both = load("TEXT application_utilization=0.5, rps_fractional=2.0, named_metrics.waiting=3, named_metrics.running=1").?;
    try testing.expectEqual(@as(u32, 3), both.waiting);
    try testing.expectEqual(@as(u32, 1), both.running);
    try testing.expectEqual(@as(u32, 0), load("TEXT named_metrics.waiting=0").?.running);
    try testing.expectEqual(@as(u32, 7), load(" TEXT named_metrics.waiting=7.9 ").?.waiting);
    try testing.expect(load("TEXT named_metrics.running=3") == null);
    try testing.expect(load("JSON {\"named_metrics\": {\"waiting\": 3}}") == null);
    try testing.expect(load("TEXT named_metrics.waiting=-1") == null);
    try testing.expect(load("TEXT named_metrics.waiting=nan") == null);
    try testing.expect(load("TEXT named_metrics.waiting=1, named_metrics.running=x") == null);
}

test "retry-after" {
    try testing.expectEqual(@as(?u32, 5), retryAfterSeconds("5", 3600));
    try testing.expectEqual(@as(?u32, 3600), retryAfterSeconds(" 99999 ", 3600));
    try testing.expectEqual(@as(?u32, null), retryAfterSeconds("Wed, 21 Oct 2015 07:28:00 GMT", 3600));
    try testing.expectEqual(@as(?u32, null), retryAfterSeconds("", 3600));
}

test "seen: round trip, fresh, stale, cooling" {
    var buffer: [Seen.encoded_len]u8 = undefined;
    const seen = Seen.decode((Seen{ .load = .{ .waiting = 9, .running = 2 }, .at_ms = 1_000, .cooldown_until_ms = 6_000 }).encode(&buffer)).?;
    try testing.expectEqual(@as(u32, 9), seen.load.waiting);
    try testing.expect(seen.full(8, 2_000, 1_000));
    try testing.expect(!seen.full(10, 2_000, 1_000));
    try testing.expect(!seen.full(8, 2_001, 1_000));
    try testing.expect(seen.full(8, 500, 1_000)); // a clock step back is not staleness
    try testing.expectEqual(@as(?u32, 11), seen.score(1_500, 1_000));
    try testing.expectEqual(@as(?u32, null), seen.score(2_500, 1_000));
    try testing.expect(seen.cooling(5_999) and !seen.cooling(6_000));
    try testing.expect((Seen{}).score(10, 1_000) == null);
    try testing.expect(Seen.decode("short") == null);
}

test "priority header" {
    try testing.expectEqual(@as(i64, 0), priority(null));
    try testing.expectEqual(@as(i64, -1), priority("-1"));
    try testing.expectEqual(@as(i64, 5), priority(" 5 "));
    try testing.expectEqual(@as(i64, 0), priority("low"));
}
