//! Per-stream state carried from on_request_headers to on_response_headers (the RateLimit header
//! of an admitted response), without exporting the context create/delete callbacks (each export
//! is a VM crossing per stream). A direct-mapped table keyed by context id: bounded memory; an
//! entry overwritten by a later stream (more than `capacity` streams in flight on one worker with
//! colliding ids) only costs the older stream its RateLimit header.
const std = @import("std");
const assert = std.debug.assert;

pub const capacity = 1024;

pub const Entry = struct {
    context_id: u32 = 0,
    /// Configuration generation the policy index refers to.
    generation: u32 = 0,
    policy: u8 = 0,
    remaining: u32 = 0,
    reset_s: u32 = 0,
};

pub const Table = struct {
    entries: [capacity]Entry = [_]Entry{.{}} ** capacity,

    pub fn put(self: *Table, entry: Entry) void {
        assert(entry.context_id != 0);
        self.entries[entry.context_id % capacity] = entry;
    }

    /// Removes and returns the entry of `context_id`, if it is still there.
    pub fn take(self: *Table, context_id: u32) ?Entry {
        assert(context_id != 0);
        const slot = &self.entries[context_id % capacity];
        if (slot.context_id != context_id) return null;
        const entry = slot.*;
        slot.* = .{};
        return entry;
    }
};

test "put/take, overwrite on collision" {
    var table: Table = .{};
    table.put(.{ .context_id = 2, .remaining = 4 });
    try std.testing.expectEqual(@as(u32, 4), table.take(2).?.remaining);
    try std.testing.expect(table.take(2) == null);
    table.put(.{ .context_id = 3, .remaining = 1 });
    table.put(.{ .context_id = 3 + capacity, .remaining = 2 });
    try std.testing.expect(table.take(3) == null);
    try std.testing.expectEqual(@as(u32, 2), table.take(3 + capacity).?.remaining);
}
