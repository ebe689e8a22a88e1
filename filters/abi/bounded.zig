//! Strings of at most `capacity` bytes held inline, without allocation: names copied out of a
//! plugin configuration, and messages formatted into a fixed buffer (cut and marked "..." when
//! longer than the buffer). Pure, unit-tested natively.
const std = @import("std");
const assert = std.debug.assert;

/// Marks the end of a formatted message that did not fit.
pub const truncation_mark = "...";

pub fn BoundedString(comptime capacity: usize) type {
    comptime assert(capacity > 0);
    return struct {
        const Self = @This();

        bytes: [capacity]u8 = undefined,
        len: std.math.IntFittingRange(0, capacity) = 0,

        /// `value` must fit: callers check lengths against their bounds first.
        pub fn set(self: *Self, value: []const u8) void {
            assert(value.len <= capacity);
            @memcpy(self.bytes[0..value.len], value);
            self.len = @intCast(value.len);
        }

        /// Formats into the string, replacing what it held. Output beyond the capacity is cut:
        /// the string is then full and ends with `truncation_mark`.
        pub fn print(self: *Self, comptime fmt: []const u8, args: anytype) void {
            comptime assert(capacity >= truncation_mark.len);
            const written = std.fmt.bufPrint(&self.bytes, fmt, args) catch blk: {
                @memcpy(self.bytes[capacity - truncation_mark.len ..], truncation_mark);
                break :blk self.bytes[0..];
            };
            assert(written.len <= capacity);
            self.len = @intCast(written.len);
        }

        pub fn slice(self: *const Self) []const u8 {
            assert(self.len <= capacity);
            return self.bytes[0..self.len];
        }
    };
}

const testing = std.testing;

test "set and slice within the capacity" {
    var s: BoundedString(4) = .{};
    try testing.expectEqualStrings("", s.slice());
    s.set("abcd");
    try testing.expectEqualStrings("abcd", s.slice());
    s.set("x");
    try testing.expectEqualStrings("x", s.slice());
    try testing.expectEqual(u3, @TypeOf(s.len));
}

test "print formats, and marks what it cuts" {
    var s: BoundedString(8) = .{};
    s.print("{d} of {d}", .{ 3, 4 });
    try testing.expectEqualStrings("3 of 4", s.slice());
    s.print("{s}", .{"12345678"});
    try testing.expectEqualStrings("12345678", s.slice());
    s.print("{s}", .{"123456789"});
    try testing.expectEqualStrings("12345...", s.slice());
    s.print("", .{});
    try testing.expectEqualStrings("", s.slice());
}
