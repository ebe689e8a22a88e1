//! Token budgets, reserve then reconcile: a counter of tokens per budget and fixed window, in
//! proxy-wasm shared data (one store for every worker's VM), changed only by compare-and-swap,
//! so concurrent requests on every worker reserve against the same count and none overruns it.
//!
//! At admission a request reserves its estimate (`reserve`); when its answer ends the difference
//! to the real usage is applied (`adjust`: a refund when negative). Generic over the store, like
//! the ratelimit filter's limiter, so the retry logic is unit-tested with a fake store.
//!
//! Also here, pure: finding `usage.total_tokens` in a response as it passes (`UsageScanner`),
//! and the SSE event that carries it (`usageEvent`), which the edge removes when it asked for
//! usage on the client's behalf.
const std = @import("std");
const assert = std.debug.assert;

pub const cas_attempts_max = 64;
pub const encoded_len = 16;

pub const StoreGet = union(enum) {
    found: struct { value: []const u8, cas: u32 },
    not_found,
    failed,
};

pub const StoreSet = enum { ok, cas_mismatch, failed };

/// The stored value: the window it counts (its index since the epoch) and the tokens in it.
pub const Counter = struct {
    window: u64,
    used: u64,

    pub fn encode(self: Counter) [encoded_len]u8 {
        var out: [encoded_len]u8 = undefined;
        std.mem.writeInt(u64, out[0..8], self.window, .little);
        std.mem.writeInt(u64, out[8..16], self.used, .little);
        return out;
    }

    /// A value of another length reads as an empty window 0 (a fresh counter).
    pub fn decode(bytes: []const u8) Counter {
        if (bytes.len != encoded_len) return .{ .window = 0, .used = 0 };
        return .{ .window = std.mem.readInt(u64, bytes[0..8], .little), .used = std.mem.readInt(u64, bytes[8..16], .little) };
    }

    /// The tokens used in `window`: none if the stored one is older.
    pub fn usedIn(self: Counter, window: u64) u64 {
        return if (self.window == window) self.used else 0;
    }
};

pub const Decision = struct {
    admit: bool,
    /// Tokens counted in the window after this decision.
    used: u64,
    window: u64,
};

pub const Error = error{ StoreFailed, Contended };

/// Reserves `amount` in the window holding `now_s`, if it fits under `limit` (or always, in
/// shadow mode: counted, never refused).
pub fn reserve(store: anytype, key: []const u8, now_s: u64, window_s: u64, limit: u64, amount: u64, shadow: bool) Error!Decision {
    assert(window_s > 0 and limit > 0);
    return reserveIn(store, key, now_s / window_s, limit, amount, shadow);
}

/// Reserves `amount` in `window` (any id: a global budget's comes from the control plane), if
/// it fits under `limit`, which may be 0 (a proxy given nothing of a global budget yet).
pub fn reserveIn(store: anytype, key: []const u8, window: u64, limit: u64, amount: u64, shadow: bool) Error!Decision {
    var attempt: u32 = 0;
    while (attempt < cas_attempts_max) : (attempt += 1) {
        const read = try load(store, key);
        const used = read.counter.usedIn(window);
        const fits = used + amount <= limit;
        if (!fits and !shadow) return .{ .admit = false, .used = used, .window = window };
        const next: Counter = .{ .window = window, .used = used + amount };
        switch (store.set(key, &next.encode(), read.cas)) {
            .ok => return .{ .admit = fits, .used = next.used, .window = window },
            .cas_mismatch => continue,
            .failed => return error.StoreFailed,
        }
    }
    return error.Contended;
}

/// Applies `delta` tokens to `window`'s count (a reconciliation: the real usage minus the
/// reservation). Nothing once that window has passed: the next one starts from zero anyway.
pub fn adjust(store: anytype, key: []const u8, window: u64, delta: i64) Error!void {
    var attempt: u32 = 0;
    while (attempt < cas_attempts_max) : (attempt += 1) {
        const read = try load(store, key);
        if (read.counter.window != window) return;
        const used: i64 = @intCast(read.counter.used);
        const next: Counter = .{ .window = window, .used = @intCast(@max(0, used + delta)) };
        switch (store.set(key, &next.encode(), read.cas)) {
            .ok => return,
            .cas_mismatch => continue,
            .failed => return error.StoreFailed,
        }
    }
    return error.Contended;
}

const Read = struct { counter: Counter, cas: u32 };

fn load(store: anytype, key: []const u8) Error!Read {
    var attempt: u32 = 0;
    while (attempt < 2) : (attempt += 1) {
        switch (store.get(key)) {
            .found => |found| return .{ .counter = Counter.decode(found.value), .cas = found.cas },
            .failed => return error.StoreFailed,
            // Created when the configuration arrives; only a lost store gets here. There is no
            // atomic create: write an empty counter, then go through cas like any other read.
            .not_found => if (store.set(key, &(Counter{ .window = 0, .used = 0 }).encode(), 0) != .ok) return error.StoreFailed,
        }
    }
    return error.StoreFailed;
}

/// The last `usage` counts of a response fed in pieces: `"prompt_tokens":N`,
/// `"completion_tokens":N`, `"total_tokens":N`. A needle cannot occur inside a JSON string (its
/// quotes would be escaped there), so a match is the usage object's field.
pub const UsageScanner = struct {
    const needles = [_][]const u8{ "\"prompt_tokens\":", "\"completion_tokens\":", "\"total_tokens\":" };
    const carry_capacity = needles[1].len + 24;

    /// The end of the previous piece, for a needle or number cut between pieces.
    carry: [carry_capacity]u8 = undefined,
    carry_len: u8 = 0,
    counts: [needles.len]?u64 = .{ null, null, null },

    pub fn prompt(self: *const UsageScanner) ?u64 {
        return self.counts[0];
    }
    pub fn completion(self: *const UsageScanner) ?u64 {
        return self.counts[1];
    }
    pub fn total(self: *const UsageScanner) ?u64 {
        return self.counts[2];
    }

    pub fn feed(self: *UsageScanner, piece: []const u8) void {
        var joined: [carry_capacity + 4096]u8 = undefined;
        var rest = piece;
        while (rest.len > 0) {
            const take = @min(rest.len, joined.len - self.carry_len);
            @memcpy(joined[0..self.carry_len], self.carry[0..self.carry_len]);
            @memcpy(joined[self.carry_len..][0..take], rest[0..take]);
            const text = joined[0 .. self.carry_len + take];
            for (needles, 0..) |needle, i| scan(text, needle, &self.counts[i]);
            const keep = @min(text.len, carry_capacity);
            std.mem.copyForwards(u8, &self.carry, text[text.len - keep ..]);
            self.carry_len = @intCast(keep);
            rest = rest[take..];
        }
    }

    fn scan(text: []const u8, needle: []const u8, count: *?u64) void {
        var from: usize = 0;
        while (std.mem.indexOfPos(u8, text, from, needle)) |at| {
            var end = at + needle.len;
            while (end < text.len and text[end] == ' ') end += 1;
            const digits_start = end;
            while (end < text.len and std.ascii.isDigit(text[end])) end += 1;
            if (end == text.len) break; // the number may go on in the next piece
            if (end > digits_start) count.* = std.fmt.parseInt(u64, text[digits_start..end], 10) catch null;
            from = end;
        }
    }
};

/// The SSE event in `chunk` that carries usage and no choices (`data: {..."choices":[],
/// "usage":{...}}` and its blank line), as [start, end); null when the chunk holds none whole.
pub fn usageEvent(chunk: []const u8) ?struct { start: usize, end: usize } {
    const at = std.mem.indexOf(u8, chunk, "\"total_tokens\":") orelse return null;
    const start = if (std.mem.lastIndexOf(u8, chunk[0..at], "data:")) |s| s else return null;
    if (start > 0 and chunk[start - 1] != '\n') return null;
    const end = (std.mem.indexOfPos(u8, chunk, at, "\n\n") orelse return null) + 2;
    if (std.mem.indexOf(u8, chunk[start..end], "\"choices\":[]") == null) return null;
    return .{ .start = start, .end = end };
}

/// The reservation of a request: its prompt estimated at 4 bytes of body per token, plus the
/// tokens it may generate.
pub fn estimate(body_bytes: u64, max_tokens: u64) u64 {
    return (body_bytes + 3) / 4 + max_tokens;
}

// ---------------------------------------------------------------------------------------------

const testing = std.testing;

const FakeStore = struct {
    value: [encoded_len]u8 = undefined,
    present: bool = false,
    cas: u32 = 0,
    /// Writes to refuse with cas_mismatch, as if another worker had written first.
    races: u32 = 0,

    pub fn get(self: *FakeStore, _: []const u8) StoreGet {
        if (!self.present) return .not_found;
        return .{ .found = .{ .value = &self.value, .cas = self.cas } };
    }

    pub fn set(self: *FakeStore, _: []const u8, value: []const u8, cas: u32) StoreSet {
        if (self.races > 0) {
            self.races -= 1;
            self.cas += 1;
            return .cas_mismatch;
        }
        if (self.present and cas != 0 and cas != self.cas) return .cas_mismatch;
        @memcpy(&self.value, value);
        self.present = true;
        self.cas += 1;
        return .ok;
    }
};

test "reserve up to the limit, refuse beyond, reconcile exactly" {
    var store: FakeStore = .{};
    var decisions: [25]Decision = undefined;
    for (&decisions) |*d| d.* = try reserve(&store, "k", 120, 60, 1000, 50, false);
    for (decisions[0..20]) |d| try testing.expect(d.admit);
    for (decisions[20..]) |d| try testing.expect(!d.admit and d.used == 1000);
    // Each really cost 45: 5 refunded each, and room for two more.
    for (0..20) |_| try adjust(&store, "k", 2, -5);
    try testing.expectEqual(@as(u64, 900), Counter.decode(&store.value).used);
    try testing.expect((try reserve(&store, "k", 150, 60, 1000, 50, false)).admit);
    try testing.expect((try reserve(&store, "k", 150, 60, 1000, 50, false)).admit);
    try testing.expect(!(try reserve(&store, "k", 150, 60, 1000, 50, false)).admit);
}

test "a new window starts from zero; a late reconciliation of an old window changes nothing" {
    var store: FakeStore = .{};
    _ = try reserve(&store, "k", 59, 60, 100, 100, false);
    try testing.expect(!(try reserve(&store, "k", 59, 60, 100, 1, false)).admit);
    const next = try reserve(&store, "k", 60, 60, 100, 10, false);
    try testing.expect(next.admit and next.used == 10 and next.window == 1);
    try adjust(&store, "k", 0, -100);
    try testing.expectEqual(@as(u64, 10), Counter.decode(&store.value).used);
}

test "a window id from outside: a new id counts from zero, a limit of 0 refuses" {
    var store: FakeStore = .{};
    try testing.expect(!(try reserveIn(&store, "k", 9, 0, 1, false)).admit);
    try testing.expect((try reserveIn(&store, "k", 9, 100, 100, false)).admit);
    try testing.expect(!(try reserveIn(&store, "k", 9, 100, 1, false)).admit);
    const next = try reserveIn(&store, "k", 10, 100, 30, false);
    try testing.expect(next.admit and next.used == 30);
}

test "shadow counts what it would refuse; races retried; contention bounded" {
    var store: FakeStore = .{};
    const over = try reserve(&store, "k", 0, 60, 10, 50, true);
    try testing.expect(!over.admit and over.used == 50);
    store.races = 3;
    try testing.expect((try reserve(&store, "k", 0, 60, 1000, 1, false)).used == 51);
    store.races = cas_attempts_max;
    try testing.expectError(error.Contended, reserve(&store, "k", 0, 60, 1000, 1, false));
}

test "usage from JSON or SSE, cut anywhere between pieces" {
    const sse = "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"total_tokens\\\": 7\"}}]}\n\n" ++
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":16,\"total_tokens\":24}}\n\ndata: [DONE]\n\n";
    for (1..sse.len) |cut| {
        var scanner: UsageScanner = .{};
        scanner.feed(sse[0..cut]);
        scanner.feed(sse[cut..]);
        try testing.expectEqual(@as(?u64, 24), scanner.total());
        try testing.expectEqual(@as(?u64, 8), scanner.prompt());
        try testing.expectEqual(@as(?u64, 16), scanner.completion());
    }
    var none: UsageScanner = .{};
    none.feed(sse[0..60]);
    try testing.expectEqual(@as(?u64, null), none.total());
    const event = usageEvent(sse).?;
    try testing.expect(std.mem.startsWith(u8, sse[event.start..], "data: {\"choices\":[],\"usage\""));
    try testing.expectEqualStrings("data: [DONE]\n\n", sse[event.end..]);
    try testing.expect(usageEvent(sse[0..60]) == null);
}

test "estimate" {
    try testing.expectEqual(@as(u64, 50), estimate(100, 25));
    try testing.expectEqual(@as(u64, 26), estimate(1, 25));
}
