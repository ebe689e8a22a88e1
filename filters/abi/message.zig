//! Why a plugin configuration was refused: what a filter's configuration parser reports and its
//! proxy_on_configure logs at error level. Bounded (see bounded.zig): a longer message is cut and
//! ends with "...".
const std = @import("std");
const BoundedString = @import("bounded.zig").BoundedString;

pub const message_len_max = 256;

pub const Message = BoundedString(message_len_max);

/// For the parsers' tests: fails, printing both, unless `message` contains `fragment`.
pub fn expectContains(message: *const Message, fragment: []const u8) !void {
    if (std.mem.indexOf(u8, message.slice(), fragment) == null) {
        std.debug.print("message \"{s}\" lacks \"{s}\"\n", .{ message.slice(), fragment });
        return error.TestUnexpectedMessage;
    }
}

test "a message longer than the bound is cut and marked" {
    var message: Message = .{};
    message.print("{s}: {d}", .{ "short", 1 });
    try expectContains(&message, "short: 1");
    message.print("{s}", .{[_]u8{'x'} ** (message_len_max + 1)});
    try std.testing.expectEqual(@as(usize, message_len_max), message.slice().len);
    try std.testing.expect(std.mem.endsWith(u8, message.slice(), "x..."));
}
