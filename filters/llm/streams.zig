//! Per-stream state of a request that reserved tokens, from its body to the end of its answer:
//! which budgets, how much, and what the answer has shown so far. A direct-mapped table keyed by
//! context id: bounded memory. An entry overwritten by a later stream (more than `capacity` in
//! flight on one worker with colliding ids) loses its reconciliation: its reservation stays
//! counted, so the budget errs towards refusing, never towards overrunning.
const std = @import("std");
const assert = std.debug.assert;
const budget = @import("budget.zig");
const Ending = @import("ending.zig").Ending;

pub const capacity = 1024;
pub const budgets_per_request_max = 4;

pub const Reservation = struct { budget: u8, window: u64, tokens: u64 };

pub const Entry = struct {
    context_id: u32 = 0,
    /// Configuration generation the budget indexes refer to.
    generation: u32 = 0,
    reservations: [budgets_per_request_max]Reservation = undefined,
    reservations_len: u8 = 0,
    /// The budget past its soft limit, told in a response header.
    soft: ?u8 = null,
    stream: bool = false,
    /// The edge asked for usage in the stream; the client did not, so it is removed again.
    injected: bool = false,
    prompt_estimate: u64 = 0,
    /// SSE events seen: a token each, the estimate of a stream that ends without usage.
    events: u64 = 0,
    usage: budget.UsageScanner = .{},
    /// The telemetry series (telemetry.zig), when measured.
    series: ?u16 = null,
    start_ns: u64 = 0,
    /// Streams: when the first event passed, and the latest.
    first_event_ns: ?u64 = null,
    last_event_ns: u64 = 0,
    /// A stream of an API whose streams end with `data: [DONE]` (chat completions, completions;
    /// not the Responses API, whose streams end otherwise).
    ends_with_done: bool = false,
    /// ... and its answer is an event stream (its content type): how it ends is followed.
    events_answer: bool = false,
    ending: Ending = .{},

    pub fn reservationSlice(self: *const Entry) []const Reservation {
        return self.reservations[0..self.reservations_len];
    }
};

pub const Table = struct {
    entries: [capacity]Entry = [_]Entry{.{}} ** capacity,

    /// Stores `entry`; returns the live entry of another stream it displaced, if any.
    pub fn put(self: *Table, entry: Entry) ?Entry {
        assert(entry.context_id != 0);
        const slot = &self.entries[entry.context_id % capacity];
        const displaced = slot.*;
        slot.* = entry;
        return if (displaced.context_id != 0 and displaced.context_id != entry.context_id) displaced else null;
    }

    pub fn get(self: *Table, context_id: u32) ?*Entry {
        assert(context_id != 0);
        const slot = &self.entries[context_id % capacity];
        return if (slot.context_id == context_id) slot else null;
    }

    /// Removes and returns the entry of `context_id`, if it is still there.
    pub fn take(self: *Table, context_id: u32) ?Entry {
        const slot = self.get(context_id) orelse return null;
        const entry = slot.*;
        slot.* = .{};
        return entry;
    }
};

test "put, get, take; a colliding stream takes the slot" {
    var table: Table = .{};
    try std.testing.expect(table.put(.{ .context_id = 2, .events = 4 }) == null);
    table.get(2).?.events += 1;
    try std.testing.expectEqual(@as(u64, 5), table.take(2).?.events);
    try std.testing.expect(table.take(2) == null);
    try std.testing.expect(table.put(.{ .context_id = 3 }) == null);
    try std.testing.expectEqual(@as(u32, 3), table.put(.{ .context_id = 3 + capacity, .events = 2 }).?.context_id);
    try std.testing.expect(table.get(3) == null);
    try std.testing.expectEqual(@as(u64, 2), table.take(3 + capacity).?.events);
}
