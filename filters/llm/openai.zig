//! OpenAI's error object, as the edge answers bad requests itself:
//! `{"error":{"message":...,"type":...,"param":...,"code":...}}`. Pure, unit-tested.
const std = @import("std");
const assert = std.debug.assert;
const body = @import("body.zig");

/// Fits the longest message: an unknown model's name of `body.model_len_max` bytes, each byte
/// escaped to at most 6.
pub const error_len_max = 2048;

pub const Error = struct {
    status: u32,
    message: []const u8,
    /// The message's `%s` part, JSON-escaped on the way (a model name as the client sent it).
    quoted: []const u8 = "",
    param: ?[]const u8 = null,
    code: ?[]const u8 = null,
    type: []const u8 = "invalid_request_error",
};

pub fn write(buffer: *[error_len_max]u8, e: Error) []const u8 {
    var w: std.Io.Writer = .fixed(buffer);
    writeTo(&w, e) catch unreachable; // bounded by error_len_max (see above)
    return w.buffered();
}

fn writeTo(w: *std.Io.Writer, e: Error) std.Io.Writer.Error!void {
    assert(e.quoted.len <= body.model_len_max);
    try w.writeAll("{\"error\":{\"message\":\"");
    const split = std.mem.indexOf(u8, e.message, "%s");
    try w.writeAll(e.message[0 .. split orelse e.message.len]);
    if (split) |at| {
        try escape(w, e.quoted);
        try w.writeAll(e.message[at + 2 ..]);
    }
    try w.print("\",\"type\":\"{s}\",\"param\":", .{e.type});
    try optional(w, e.param);
    try w.writeAll(",\"code\":");
    try optional(w, e.code);
    try w.writeAll("}}");
}

fn optional(w: *std.Io.Writer, value: ?[]const u8) std.Io.Writer.Error!void {
    if (value) |v| try w.print("\"{s}\"", .{v}) else try w.writeAll("null");
}

/// JSON string escaping of valid UTF-8 (the body reader validated it).
fn escape(w: *std.Io.Writer, text: []const u8) std.Io.Writer.Error!void {
    for (text) |c| switch (c) {
        '"' => try w.writeAll("\\\""),
        '\\' => try w.writeAll("\\\\"),
        0...0x1f => try w.print("\\u{x:0>4}", .{c}),
        else => try w.writeByte(c),
    };
}

const testing = std.testing;

test "error object, with the model name escaped" {
    var buffer: [error_len_max]u8 = undefined;
    const text = write(&buffer, .{
        .status = 404,
        .message = "The model `%s` does not exist or you do not have access to it.",
        .quoted = "a\"b\n",
        .code = "model_not_found",
    });
    try testing.expectEqualStrings(
        \\{"error":{"message":"The model `a\"b\u000a` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}
    , text);
    const longest = write(&buffer, .{ .status = 404, .message = "The model `%s` does not exist or you do not have access to it.", .quoted = "\x01" ** body.model_len_max, .param = "model", .code = "model_not_found" });
    try testing.expect(longest.len < error_len_max);
}
