//! Pure parts of shedding: the queue length in an ORCA `endpoint-load-metrics` report (TEXT form),
//! the report as kept in shared data, the request's priority, and the decision itself.
const std = @import("std");
const assert = std.debug.assert;

/// The named metric both sluice backends report their queue under.
const waiting_key = "named_metrics.waiting";

/// `named_metrics.waiting` of a TEXT report (`TEXT a=1, named_metrics.waiting=3, ...`); null
/// when absent or not a non-negative number (a fractional value is truncated).
pub fn waiting(report: []const u8) ?u32 {
    const text = std.mem.trim(u8, report, " \t");
    if (!std.mem.startsWith(u8, text, "TEXT ")) return null;
    var fields = std.mem.splitScalar(u8, text["TEXT ".len..], ',');
    while (fields.next()) |field| {
        const pair = std.mem.trim(u8, field, " \t");
        const eq = std.mem.indexOfScalar(u8, pair, '=') orelse continue;
        if (!std.mem.eql(u8, pair[0..eq], waiting_key)) continue;
        const value = std.fmt.parseFloat(f64, pair[eq + 1 ..]) catch return null;
        if (!(value >= 0) or value > std.math.maxInt(u32)) return null;
        return @intFromFloat(value);
    }
    return null;
}

/// A replica's last report as kept in shared data: waiting requests and when it was seen.
pub const Seen = struct {
    waiting: u32,
    at_ms: u64,

    pub const encoded_len = 12;

    pub fn encode(self: Seen, buffer: *[encoded_len]u8) []const u8 {
        std.mem.writeInt(u32, buffer[0..4], self.waiting, .little);
        std.mem.writeInt(u64, buffer[4..12], self.at_ms, .little);
        return buffer;
    }

    pub fn decode(bytes: []const u8) ?Seen {
        if (bytes.len != encoded_len) return null;
        return .{ .waiting = std.mem.readInt(u32, bytes[0..4], .little), .at_ms = std.mem.readInt(u64, bytes[4..12], .little) };
    }

    /// Full: a fresh report at or over the threshold. A stale or missing report is not full, so
    /// shedding fails open.
    pub fn full(self: Seen, threshold: u32, now_ms: u64, max_age_ms: u32) bool {
        assert(threshold >= 1);
        return self.waiting >= threshold and now_ms -| self.at_ms <= max_age_ms;
    }
};

/// The request's priority: an integer header, 0 when absent or unreadable (so a malformed value
/// is never a reason to shed).
pub fn priority(header: ?[]const u8) i64 {
    const text = std.mem.trim(u8, header orelse return 0, " \t");
    return std.fmt.parseInt(i64, text, 10) catch 0;
}

const testing = std.testing;

test "waiting from a report" {
    try testing.expectEqual(@as(?u32, 3), waiting("TEXT application_utilization=0.5, rps_fractional=2.0, named_metrics.waiting=3, named_metrics.running=1"));
    try testing.expectEqual(@as(?u32, 0), waiting("TEXT named_metrics.waiting=0"));
    try testing.expectEqual(@as(?u32, 7), waiting(" TEXT named_metrics.waiting=7.9 "));
    try testing.expectEqual(@as(?u32, null), waiting("TEXT named_metrics.running=3"));
    try testing.expectEqual(@as(?u32, null), waiting("JSON {\"named_metrics\": {\"waiting\": 3}}"));
    try testing.expectEqual(@as(?u32, null), waiting("TEXT named_metrics.waiting=-1"));
    try testing.expectEqual(@as(?u32, null), waiting("TEXT named_metrics.waiting=nan"));
    try testing.expectEqual(@as(?u32, null), waiting("TEXT named_metrics.waiting=x"));
}

test "seen: round trip, fresh and stale" {
    var buffer: [Seen.encoded_len]u8 = undefined;
    const seen = Seen.decode((Seen{ .waiting = 9, .at_ms = 1_000 }).encode(&buffer)).?;
    try testing.expectEqual(@as(u32, 9), seen.waiting);
    try testing.expect(seen.full(8, 2_000, 1_000));
    try testing.expect(!seen.full(10, 2_000, 1_000));
    try testing.expect(!seen.full(8, 2_001, 1_000));
    try testing.expect(seen.full(8, 500, 1_000)); // a clock step back is not staleness
    try testing.expect(Seen.decode("short") == null);
}

test "priority header" {
    try testing.expectEqual(@as(i64, 0), priority(null));
    try testing.expectEqual(@as(i64, -1), priority("-1"));
    try testing.expectEqual(@as(i64, 5), priority(" 5 "));
    try testing.expectEqual(@as(i64, 0), priority("low"));
}
