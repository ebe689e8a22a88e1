//! A filter's plugin configuration as JSON: parsed by std.json into the filter's schema struct,
//! unknown and duplicate fields refused, every allocation from the caller's fixed work buffer
//! (the parsed value lives in it). Pure, unit-tested natively.
const std = @import("std");
const Message = @import("message.zig").Message;

/// The parsed value, or null with `message` saying why.
pub fn parse(comptime T: type, json: []const u8, bytes_max: usize, work: []u8, message: *Message) ?T {
    message.len = 0;
    if (json.len > bytes_max) {
        message.print("the plugin configuration is {d} bytes, more than {d}", .{ json.len, bytes_max });
        return null;
    }
    var fba = std.heap.FixedBufferAllocator.init(work);
    return std.json.parseFromSliceLeaky(T, fba.allocator(), json, .{
        .duplicate_field_behavior = .@"error",
        .ignore_unknown_fields = false,
    }) catch |err| {
        message.print("invalid JSON or schema: {s}", .{@errorName(err)});
        return null;
    };
}

test "parsed, or refused with the reason" {
    const Schema = struct { name: []const u8, weight: u32 = 1 };
    var work: [1024]u8 = undefined;
    var message: Message = .{};
    const parsed = parse(Schema, "{\"name\": \"a\"}", 64, &work, &message).?;
    try std.testing.expectEqualStrings("a", parsed.name);
    try std.testing.expect(parse(Schema, "{\"name\": \"a\", \"other\": 1}", 64, &work, &message) == null);
    try std.testing.expect(std.mem.indexOf(u8, message.slice(), "UnknownField") != null);
    try std.testing.expect(parse(Schema, "{\"name\": \"a\", \"name\": \"b\"}", 64, &work, &message) == null);
    try std.testing.expect(parse(Schema, "{\"name\": \"" ++ "x" ** 64 ++ "\"}", 64, &work, &message) == null);
}
