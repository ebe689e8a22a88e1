//! The proxy-wasm header map wire format (little-endian): u32 count, then (u32 key_len,
//! u32 value_len) per pair, then each pair as `key\0value\0`. Pure, unit-tested natively.
const std = @import("std");
const assert = std.debug.assert;

pub const Pair = struct { name: []const u8, value: []const u8 };

/// Bytes `encode` writes for these pairs.
pub fn encodedLen(pairs: []const Pair) usize {
    var len: usize = 4;
    for (pairs) |p| len += 8 + p.name.len + 1 + p.value.len + 1;
    return len;
}

/// Serializes `pairs` into `buffer`; null when it does not fit.
pub fn encode(buffer: []u8, pairs: []const Pair) ?[]const u8 {
    const len = encodedLen(pairs);
    if (len > buffer.len) return null;
    std.mem.writeInt(u32, buffer[0..4], @intCast(pairs.len), .little);
    var offset: usize = 4;
    for (pairs) |p| {
        std.mem.writeInt(u32, buffer[offset..][0..4], @intCast(p.name.len), .little);
        std.mem.writeInt(u32, buffer[offset + 4 ..][0..4], @intCast(p.value.len), .little);
        offset += 8;
    }
    for (pairs) |p| {
        @memcpy(buffer[offset..][0..p.name.len], p.name);
        offset += p.name.len;
        buffer[offset] = 0;
        offset += 1;
        @memcpy(buffer[offset..][0..p.value.len], p.value);
        offset += p.value.len;
        buffer[offset] = 0;
        offset += 1;
    }
    assert(offset == len);
    return buffer[0..len];
}

/// Iterates over serialized pairs; stops (returns null) at the end or at the first malformed
/// length, so a corrupt buffer cannot make it read out of bounds.
pub const Iterator = struct {
    data: []const u8,
    count: u32,
    index: u32 = 0,
    /// Offset of the next (key_len, value_len) entry.
    sizes_offset: usize = 4,
    /// Offset of the next `key\0value\0` bytes.
    data_offset: usize,

    pub fn init(data: []const u8) Iterator {
        if (data.len < 4) return .{ .data = data, .count = 0, .data_offset = 0 };
        const count = std.mem.readInt(u32, data[0..4], .little);
        const sizes_end = 4 + @as(u64, count) * 8;
        if (sizes_end > data.len) return .{ .data = data, .count = 0, .data_offset = 0 };
        return .{ .data = data, .count = count, .data_offset = @intCast(sizes_end) };
    }

    pub fn next(self: *Iterator) ?Pair {
        if (self.index >= self.count) return null;
        const name_len = std.mem.readInt(u32, self.data[self.sizes_offset..][0..4], .little);
        const value_len = std.mem.readInt(u32, self.data[self.sizes_offset + 4 ..][0..4], .little);
        const need = @as(u64, name_len) + 1 + @as(u64, value_len) + 1;
        if (self.data_offset + need > self.data.len) {
            self.index = self.count;
            return null;
        }
        const name = self.data[self.data_offset..][0..name_len];
        const value = self.data[self.data_offset + name_len + 1 ..][0..value_len];
        self.sizes_offset += 8;
        self.data_offset += @intCast(need);
        self.index += 1;
        return .{ .name = name, .value = value };
    }
};

test "pairs round trip" {
    var buffer: [128]u8 = undefined;
    const pairs = [_]Pair{ .{ .name = "retry-after", .value = "3" }, .{ .name = "x", .value = "" } };
    const wire = encode(&buffer, &pairs).?;
    try std.testing.expectEqual(encodedLen(&pairs), wire.len);
    var it = Iterator.init(wire);
    const a = it.next().?;
    try std.testing.expectEqualStrings("retry-after", a.name);
    try std.testing.expectEqualStrings("3", a.value);
    const b = it.next().?;
    try std.testing.expectEqualStrings("x", b.name);
    try std.testing.expectEqualStrings("", b.value);
    try std.testing.expect(it.next() == null);
    try std.testing.expect(encode(buffer[0..10], &pairs) == null);
}

test "pairs iterator survives corrupt input" {
    var it = Iterator.init(&[_]u8{ 5, 0, 0, 0, 1, 0 });
    try std.testing.expect(it.next() == null);
    var wire = [_]u8{ 1, 0, 0, 0, 200, 0, 0, 0, 1, 0, 0, 0, 'a', 0, 'b', 0 };
    it = Iterator.init(&wire);
    try std.testing.expect(it.next() == null);
}
