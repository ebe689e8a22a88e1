//! A fixed-capacity bump allocator with no backing allocator.
//!
//! The proxy-wasm host returns every value (header, property, shared data, buffer) in memory it
//! obtains from the module through `proxy_on_memory_allocate`. Filters reset the arena at the
//! entry of each exported callback, so such values live exactly as long as the callback that asked
//! for them and memory stays bounded by `capacity` whatever the traffic.
const std = @import("std");
const assert = std.debug.assert;

pub const alignment = 8;

pub fn Arena(comptime capacity: usize) type {
    comptime assert(capacity > 0);
    comptime assert(capacity % alignment == 0);
    return struct {
        const Self = @This();

        buffer: [capacity]u8 align(alignment) = undefined,
        used: usize = 0,

        pub fn reset(self: *Self) void {
            self.used = 0;
        }

        /// Returns `size` bytes aligned to `alignment`, or null once the arena is exhausted
        /// (the host then reports the value as unavailable; the filter treats it as absent).
        pub fn alloc(self: *Self, size: usize) ?[*]u8 {
            assert(self.used <= capacity);
            assert(self.used % alignment == 0);
            if (size > capacity - self.used) return null;
            const start = self.used;
            const end = start + size;
            // Round up while keeping `used` within the capacity (capacity is a multiple of 8).
            self.used = std.mem.alignForward(usize, end, alignment);
            assert(self.used <= capacity);
            return self.buffer[start..].ptr;
        }

        pub fn remaining(self: *const Self) usize {
            return capacity - self.used;
        }
    };
}

test "arena allocates aligned, bounded, and resets" {
    var arena: Arena(64) = .{};
    const a = arena.alloc(3).?;
    const b = arena.alloc(8).?;
    try std.testing.expect(@intFromPtr(b) - @intFromPtr(a) == 8);
    try std.testing.expect(@intFromPtr(b) % alignment == 0);
    try std.testing.expectEqual(@as(usize, 48), arena.remaining());
    try std.testing.expect(arena.alloc(49) == null);
    try std.testing.expect(arena.alloc(48) != null);
    try std.testing.expect(arena.alloc(1) == null);
    try std.testing.expect(arena.alloc(0) != null);
    arena.reset();
    try std.testing.expectEqual(@as(usize, 64), arena.remaining());
}
