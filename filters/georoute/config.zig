//! The plugin configuration: one binary document written by the control plane
//! (controlplane/geotable/compact.py), validated here in full before anything of it is used.
//!
//! Little-endian throughout. Layout (offsets from the start of the configuration):
//!
//!   0   "SGEO"                      magic
//!   4   u16 version                 1
//!   6   u16 xff_trusted_hops        0..16
//!   8   u32 v4_count                0..v4_prefixes_max
//!   12  u32 v6_count                0..v6_prefixes_max
//!   16  u16 label_count             0..labels_max
//!   18  u8  country_header_len      1..64
//!   19  u8  region_header_len       1..64
//!   20  u8  default_region_len      1..63
//!   21  3 bytes zero
//!   24  u32 table_id                the control plane's name for the table (reported as a gauge)
//!   28  4 bytes zero
//!   32  country header name, region header name, default region (the lengths above)
//!       labels: label_count x (u8 country_len 0|2, u8 region_len 1..63, country, region)
//!       zeros up to a multiple of 16
//!       v4: v4_count x u32 address, v4_count x u8 length, zeros to even, v4_count x u16 label,
//!       zeros up to a multiple of 16
//!       v6: v6_count x u128 address, v6_count x u8 length, zeros to even, v6_count x u16 label
//!       end of the configuration (nothing after it)
//!
//! Prefixes of a family are sorted by (address, length), distinct, with zero host bits and a label
//! index below label_count. IPv4-mapped IPv6 prefixes (inside ::ffff:0:0/96) are refused: mapped
//! clients are looked up as IPv4, so such a prefix could never match; the control plane sends
//! them as IPv4. Header names are lowercase tokens, the country is two capital letters or empty,
//! regions are DNS labels (lowercase letters, digits, '-').
//!
//! The arrays are 16-byte aligned relative to the start, so a configuration delivered into
//! 16-byte-aligned memory is read in place (no copy).
const std = @import("std");
const assert = std.debug.assert;
const abi = @import("abi");
const BoundedString = abi.BoundedString;

pub const magic = "SGEO";
pub const version = 1;
pub const header_len = 32;
pub const v4_prefixes_max = 1 << 20;
pub const v6_prefixes_max = 1 << 19;
pub const labels_max = 1024;
pub const header_name_len_max = 64;
pub const region_len_max = 63;
pub const country_len = 2;
/// The bound abi/ip.zig enforces on the X-Forwarded-For hops it skips.
pub const trusted_hops_max = abi.ip.trusted_hops_max;
pub const alignment = 16;

/// Offsets of the prefix arrays, from the 16-aligned offset where they begin.
pub const Layout = struct {
    v4_addresses: usize,
    v4_lengths: usize,
    v4_labels: usize,
    v6_addresses: usize,
    v6_lengths: usize,
    v6_labels: usize,
    end: usize,

    pub fn of(arrays_start: usize, v4_count: usize, v6_count: usize) Layout {
        assert(arrays_start % alignment == 0);
        var out: Layout = undefined;
        out.v4_addresses = arrays_start;
        out.v4_lengths = out.v4_addresses + 4 * v4_count;
        out.v4_labels = std.mem.alignForward(usize, out.v4_lengths + v4_count, 2);
        out.v6_addresses = std.mem.alignForward(usize, out.v4_labels + 2 * v4_count, alignment);
        out.v6_lengths = out.v6_addresses + 16 * v6_count;
        out.v6_labels = std.mem.alignForward(usize, out.v6_lengths + v6_count, 2);
        out.end = out.v6_labels + 2 * v6_count;
        return out;
    }
};

/// The largest configuration: every bound at its maximum.
pub const bytes_max = Layout.of(
    std.mem.alignForward(usize, header_len + 2 * header_name_len_max + region_len_max +
        labels_max * (2 + country_len + region_len_max), alignment),
    v4_prefixes_max,
    v6_prefixes_max,
).end;

pub const Label = struct {
    /// Empty: the prefix names no country (the country header is removed).
    country: BoundedString(country_len) = .{},
    region: BoundedString(region_len_max) = .{},
};

/// Everything but the prefixes, copied out of the configuration (which the next delivery
/// overwrites).
pub const Settings = struct {
    xff_trusted_hops: u8 = 0,
    table_id: u32 = 0,
    country_header: BoundedString(header_name_len_max) = .{},
    region_header: BoundedString(header_name_len_max) = .{},
    default_region: BoundedString(region_len_max) = .{},
    labels: [labels_max]Label = undefined,
    label_count: u16 = 0,

    pub fn labelSlice(self: *const Settings) []const Label {
        return self.labels[0..self.label_count];
    }
};

/// The prefix arrays, in place in the configuration.
pub fn Prefixes(comptime Int: type) type {
    return struct {
        addresses: []const Int,
        lengths: []const u8,
        labels: []const u16,
    };
}

pub const Tables = struct {
    v4: Prefixes(u32),
    v6: Prefixes(u128),
};

/// Why a configuration was refused, formatted into a fixed buffer.
pub const Message = abi.Message;

/// Bounds-checked sequential reads.
const Reader = struct {
    bytes: []const u8,
    offset: usize = 0,

    fn take(self: *Reader, n: usize) ?[]const u8 {
        if (n > self.bytes.len - self.offset) return null;
        const out = self.bytes[self.offset .. self.offset + n];
        self.offset += n;
        return out;
    }

    fn int(self: *Reader, comptime T: type) ?T {
        const raw = self.take(@sizeOf(T)) orelse return null;
        return std.mem.readInt(T, raw[0..@sizeOf(T)], .little);
    }
};

/// Validates `bytes` (16-byte aligned) into `settings` and `tables` (views into `bytes`).
/// On failure returns false with `message` set; `settings` is then garbage and must not be used.
pub fn parse(bytes: []align(alignment) const u8, settings: *Settings, tables: *Tables, message: *Message) bool {
    message.len = 0;
    if (bytes.len > bytes_max) {
        message.print("the configuration is {d} bytes, more than {d}", .{ bytes.len, bytes_max });
        return false;
    }
    if (bytes.len < header_len) {
        message.print("the configuration is {d} bytes, shorter than its {d}-byte header", .{ bytes.len, header_len });
        return false;
    }
    var reader: Reader = .{ .bytes = bytes };
    if (!std.mem.eql(u8, reader.take(4).?, magic)) {
        message.print("not a georoute configuration (magic is not \"{s}\")", .{magic});
        return false;
    }
    const format_version = reader.int(u16).?;
    if (format_version != version) {
        message.print("format version {d}, this filter reads version {d}", .{ format_version, version });
        return false;
    }
    const hops = reader.int(u16).?;
    const v4_count = reader.int(u32).?;
    const v6_count = reader.int(u32).?;
    const label_count = reader.int(u16).?;
    const country_header_len = reader.int(u8).?;
    const region_header_len = reader.int(u8).?;
    const default_region_len = reader.int(u8).?;
    const reserved_a = reader.take(3).?;
    settings.table_id = reader.int(u32).?;
    const reserved_b = reader.take(4).?;
    assert(reader.offset == header_len);
    if (!allZero(reserved_a) or !allZero(reserved_b)) {
        message.print("reserved header bytes are not zero", .{});
        return false;
    }
    if (hops > trusted_hops_max) {
        message.print("xff_trusted_hops is {d}, more than {d}", .{ hops, trusted_hops_max });
        return false;
    }
    settings.xff_trusted_hops = @intCast(hops);
    if (v4_count > v4_prefixes_max or v6_count > v6_prefixes_max) {
        message.print("{d} IPv4 and {d} IPv6 prefixes: at most {d} and {d}", .{ v4_count, v6_count, v4_prefixes_max, v6_prefixes_max });
        return false;
    }
    if (label_count > labels_max) {
        message.print("{d} labels, more than {d}", .{ label_count, labels_max });
        return false;
    }

    if (!readHeaderName(&reader, country_header_len, &settings.country_header, "country", message)) return false;
    if (!readHeaderName(&reader, region_header_len, &settings.region_header, "region", message)) return false;
    if (std.mem.eql(u8, settings.country_header.slice(), settings.region_header.slice())) {
        message.print("the country and region headers are both \"{s}\"", .{settings.region_header.slice()});
        return false;
    }
    const default_region = reader.take(default_region_len) orelse return truncated(message, "default region");
    if (!validRegion(default_region)) {
        message.print("default region \"{s}\" is not a DNS label of 1..{d} characters", .{ printable(default_region), region_len_max });
        return false;
    }
    settings.default_region.set(default_region);

    settings.label_count = label_count;
    for (settings.labels[0..label_count], 0..) |*label, i| {
        const lengths = reader.take(2) orelse return truncated(message, "labels");
        const country = reader.take(lengths[0]) orelse return truncated(message, "labels");
        const region = reader.take(lengths[1]) orelse return truncated(message, "labels");
        if (!validCountry(country)) {
            message.print("label {d}: country \"{s}\" is neither empty nor two capital letters", .{ i, printable(country) });
            return false;
        }
        if (!validRegion(region)) {
            message.print("label {d}: region \"{s}\" is not a DNS label of 1..{d} characters", .{ i, printable(region), region_len_max });
            return false;
        }
        label.country.set(country);
        label.region.set(region);
    }

    const arrays_start = std.mem.alignForward(usize, reader.offset, alignment);
    if (arrays_start > bytes.len or !allZero(bytes[reader.offset..arrays_start])) {
        return truncated(message, "padding before the prefixes");
    }
    const layout = Layout.of(arrays_start, v4_count, v6_count);
    if (layout.end != bytes.len) {
        message.print("{d} IPv4 and {d} IPv6 prefixes need {d} bytes in all, the configuration has {d}", .{ v4_count, v6_count, layout.end, bytes.len });
        return false;
    }
    tables.v4 = .{
        .addresses = @alignCast(std.mem.bytesAsSlice(u32, bytes[layout.v4_addresses..layout.v4_lengths])),
        .lengths = bytes[layout.v4_lengths .. layout.v4_lengths + v4_count],
        .labels = @alignCast(std.mem.bytesAsSlice(u16, bytes[layout.v4_labels .. layout.v4_labels + 2 * v4_count])),
    };
    tables.v6 = .{
        .addresses = @alignCast(std.mem.bytesAsSlice(u128, bytes[layout.v6_addresses..layout.v6_lengths])),
        .lengths = bytes[layout.v6_lengths .. layout.v6_lengths + v6_count],
        .labels = @alignCast(std.mem.bytesAsSlice(u16, bytes[layout.v6_labels..layout.end])),
    };
    if (!validPrefixes(u32, tables.v4, label_count, "IPv4", message)) return false;
    if (!validPrefixes(u128, tables.v6, label_count, "IPv6", message)) return false;
    return true;
}

fn readHeaderName(reader: *Reader, len: u8, out: *BoundedString(header_name_len_max), what: []const u8, message: *Message) bool {
    const name = reader.take(len) orelse return truncated(message, what);
    if (!validHeaderName(name)) {
        message.print("{s} header \"{s}\" is not a lowercase header name of 1..{d} characters", .{ what, printable(name), header_name_len_max });
        return false;
    }
    out.set(name);
    return true;
}

fn truncated(message: *Message, what: []const u8) bool {
    message.print("the configuration ends inside the {s}", .{what});
    return false;
}

fn validPrefixes(comptime Int: type, prefixes: Prefixes(Int), label_count: u16, family: []const u8, message: *Message) bool {
    const bits = @bitSizeOf(Int);
    const mapped_network: u128 = 0xffff << 32; // ::ffff:0:0/96
    var previous: ?struct { address: Int, length: u8 } = null;
    for (prefixes.addresses, prefixes.lengths, prefixes.labels, 0..) |address, length, label, i| {
        if (length > bits) {
            message.print("{s} prefix {d}: length {d}, more than {d}", .{ family, i, length, bits });
            return false;
        }
        const host_mask: Int = if (length == 0) std.math.maxInt(Int) else (@as(Int, 1) << @intCast(bits - @as(u32, length))) -% 1;
        if (length < bits and address & host_mask != 0) {
            message.print("{s} prefix {d}: host bits set below /{d}", .{ family, i, length });
            return false;
        }
        if (label >= label_count) {
            message.print("{s} prefix {d}: label {d}, there are {d}", .{ family, i, label, label_count });
            return false;
        }
        if (Int == u128) {
            if (length >= 96 and address >> 32 == mapped_network >> 32) {
                message.print("IPv6 prefix {d} is IPv4-mapped: send it as IPv4", .{i});
                return false;
            }
        }
        if (previous) |p| {
            if (address < p.address or (address == p.address and length <= p.length)) {
                message.print("{s} prefix {d} is not after prefix {d} in (address, length) order, or repeats it", .{ family, i, i - 1 });
                return false;
            }
        }
        previous = .{ .address = address, .length = length };
    }
    return true;
}

fn allZero(bytes: []const u8) bool {
    for (bytes) |b| if (b != 0) return false;
    return true;
}

pub fn validHeaderName(name: []const u8) bool {
    if (name.len == 0 or name.len > header_name_len_max) return false;
    for (name) |c| switch (c) {
        'a'...'z', '0'...'9', '-', '_', '.' => {},
        else => return false,
    };
    return true;
}

pub fn validRegion(region: []const u8) bool {
    if (region.len == 0 or region.len > region_len_max) return false;
    if (region[0] == '-' or region[region.len - 1] == '-') return false;
    for (region) |c| switch (c) {
        'a'...'z', '0'...'9', '-' => {},
        else => return false,
    };
    return true;
}

pub fn validCountry(country: []const u8) bool {
    if (country.len == 0) return true;
    return country.len == country_len and std.ascii.isUpper(country[0]) and std.ascii.isUpper(country[1]);
}

/// At most the first 64 bytes, non-printable bytes as '?': for messages quoting the input.
fn printable(text: []const u8) []const u8 {
    const Static = struct {
        var buffer: [64]u8 = undefined;
    };
    const n = @min(text.len, Static.buffer.len);
    for (text[0..n], 0..) |c, i| Static.buffer[i] = if (std.ascii.isPrint(c)) c else '?';
    return Static.buffer[0..n];
}

comptime {
    assert(bytes_max < 24 * 1024 * 1024);
    assert(labels_max < @import("prefixes.zig").unmatched);
}

// ---------------------------------------------------------------------------------------------
// Tests. `encode` writes the format from values, the way controlplane/geotable/compact.py does.

const testing = std.testing;

pub const TestPrefix = struct { address: u128, length: u8, label: u16 };

pub const TestConfig = struct {
    hops: u16 = 1,
    country_header: []const u8 = "x-sluice-country",
    region_header: []const u8 = "x-sluice-region",
    default_region: []const u8 = "us",
    table_id: u32 = 7,
    labels: []const [2][]const u8 = &.{ .{ "DE", "eu" }, .{ "US", "us" } },
    v4: []const TestPrefix = &.{},
    v6: []const TestPrefix = &.{},
};

var test_buffer: [4096]u8 align(alignment) = undefined;

pub fn encode(c: TestConfig) []align(alignment) u8 {
    var out = &test_buffer;
    @memset(out, 0);
    @memcpy(out[0..4], magic);
    std.mem.writeInt(u16, out[4..6], version, .little);
    std.mem.writeInt(u16, out[6..8], c.hops, .little);
    std.mem.writeInt(u32, out[8..12], @intCast(c.v4.len), .little);
    std.mem.writeInt(u32, out[12..16], @intCast(c.v6.len), .little);
    std.mem.writeInt(u16, out[16..18], @intCast(c.labels.len), .little);
    out[18] = @intCast(c.country_header.len);
    out[19] = @intCast(c.region_header.len);
    out[20] = @intCast(c.default_region.len);
    std.mem.writeInt(u32, out[24..28], c.table_id, .little);
    var at: usize = header_len;
    for ([_][]const u8{ c.country_header, c.region_header, c.default_region }) |s| {
        @memcpy(out[at .. at + s.len], s);
        at += s.len;
    }
    for (c.labels) |label| {
        out[at] = @intCast(label[0].len);
        out[at + 1] = @intCast(label[1].len);
        at += 2;
        for (label) |s| {
            @memcpy(out[at .. at + s.len], s);
            at += s.len;
        }
    }
    const layout = Layout.of(std.mem.alignForward(usize, at, alignment), c.v4.len, c.v6.len);
    for (c.v4, 0..) |p, i| {
        std.mem.writeInt(u32, out[layout.v4_addresses + 4 * i ..][0..4], @intCast(p.address), .little);
        out[layout.v4_lengths + i] = p.length;
        std.mem.writeInt(u16, out[layout.v4_labels + 2 * i ..][0..2], p.label, .little);
    }
    for (c.v6, 0..) |p, i| {
        std.mem.writeInt(u128, out[layout.v6_addresses + 16 * i ..][0..16], p.address, .little);
        out[layout.v6_lengths + i] = p.length;
        std.mem.writeInt(u16, out[layout.v6_labels + 2 * i ..][0..2], p.label, .little);
    }
    return out[0..layout.end];
}

const v4 = @import("prefixes.zig").testV4;
const v6 = @import("prefixes.zig").testV6;

var test_settings: Settings = .{};

fn expectInvalid(bytes: []align(alignment) const u8, fragment: []const u8) !void {
    var tables: Tables = undefined;
    var message: Message = .{};
    try testing.expect(!parse(bytes, &test_settings, &tables, &message));
    try abi.message.expectContains(&message, fragment);
}

test "a configuration parses into settings and in-place prefix arrays" {
    const bytes = encode(.{
        .v4 = &.{
            .{ .address = v4("198.51.100.0"), .length = 24, .label = 0 },
            .{ .address = v4("203.0.113.0"), .length = 24, .label = 1 },
        },
        .v6 = &.{.{ .address = v6("2001:db8::"), .length = 32, .label = 0 }},
        .labels = &.{ .{ "DE", "eu" }, .{ "", "us" } },
    });
    var tables: Tables = undefined;
    var message: Message = .{};
    try testing.expect(parse(bytes, &test_settings, &tables, &message));
    try testing.expectEqual(@as(u8, 1), test_settings.xff_trusted_hops);
    try testing.expectEqual(@as(u32, 7), test_settings.table_id);
    try testing.expectEqualStrings("x-sluice-country", test_settings.country_header.slice());
    try testing.expectEqualStrings("x-sluice-region", test_settings.region_header.slice());
    try testing.expectEqualStrings("us", test_settings.default_region.slice());
    try testing.expectEqual(@as(u16, 2), test_settings.label_count);
    try testing.expectEqualStrings("DE", test_settings.labels[0].country.slice());
    try testing.expectEqualStrings("", test_settings.labels[1].country.slice());
    try testing.expectEqualStrings("us", test_settings.labels[1].region.slice());
    try testing.expectEqual(@as(usize, 2), tables.v4.addresses.len);
    try testing.expectEqual(v4("203.0.113.0"), tables.v4.addresses[1]);
    try testing.expectEqual(@as(u16, 1), tables.v4.labels[1]);
    try testing.expectEqual(v6("2001:db8::"), tables.v6.addresses[0]);
    try testing.expectEqual(@as(u8, 32), tables.v6.lengths[0]);
}

test "an empty table is valid: everyone gets the default region" {
    var tables: Tables = undefined;
    var message: Message = .{};
    try testing.expect(parse(encode(.{ .labels = &.{} }), &test_settings, &tables, &message));
    try testing.expectEqual(@as(usize, 0), tables.v4.addresses.len + tables.v6.addresses.len);
}

test "header and framing errors" {
    try expectInvalid(encode(.{})[0..20], "shorter than its 32-byte header");
    var bytes = encode(.{});
    bytes[0] = 'X';
    try expectInvalid(bytes, "magic");
    bytes = encode(.{});
    bytes[4] = 2;
    try expectInvalid(bytes, "format version 2");
    bytes = encode(.{});
    bytes[22] = 1;
    try expectInvalid(bytes, "reserved");
    try expectInvalid(encode(.{ .hops = 17 }), "xff_trusted_hops is 17");
    bytes = encode(.{});
    std.mem.writeInt(u32, bytes[8..12], v4_prefixes_max + 1, .little);
    try expectInvalid(bytes, "at most");
    bytes = encode(.{});
    std.mem.writeInt(u16, bytes[16..18], labels_max + 1, .little);
    try expectInvalid(bytes, "labels, more than");
    bytes = encode(.{ .v4 = &.{.{ .address = v4("10.0.0.0"), .length = 8, .label = 0 }} });
    try expectInvalid(bytes[0 .. bytes.len - 1], "need");
    try expectInvalid(test_buffer[0 .. bytes.len + 16], "need");
    bytes = encode(.{});
    bytes[18] = 200; // the country header runs past the end
    try expectInvalid(bytes, "ends inside the country");
}

test "names and labels are validated" {
    try expectInvalid(encode(.{ .country_header = "X-Country" }), "country header \"X-Country\"");
    try expectInvalid(encode(.{ .region_header = "x region" }), "region header");
    try expectInvalid(encode(.{ .region_header = "x-sluice-country" }), "both");
    try expectInvalid(encode(.{ .default_region = "EU" }), "default region \"EU\"");
    try expectInvalid(encode(.{ .default_region = "-eu" }), "default region");
    try expectInvalid(encode(.{ .labels = &.{.{ "de", "eu" }} }), "label 0: country \"de\"");
    try expectInvalid(encode(.{ .labels = &.{.{ "DEU", "eu" }} }), "label 0: country");
    try expectInvalid(encode(.{ .labels = &.{ .{ "DE", "eu" }, .{ "FR", "" } } }), "label 1: region \"\"");
}

test "prefix errors name the prefix" {
    try expectInvalid(encode(.{ .v4 = &.{.{ .address = v4("10.0.0.1"), .length = 8, .label = 0 }} }), "IPv4 prefix 0: host bits");
    try expectInvalid(encode(.{ .v4 = &.{.{ .address = 0, .length = 33, .label = 0 }} }), "length 33");
    try expectInvalid(encode(.{ .v4 = &.{.{ .address = 0, .length = 8, .label = 2 }} }), "label 2, there are 2");
    try expectInvalid(encode(.{ .v4 = &.{
        .{ .address = v4("10.0.0.0"), .length = 8, .label = 0 },
        .{ .address = v4("9.0.0.0"), .length = 8, .label = 0 },
    } }), "IPv4 prefix 1 is not after prefix 0");
    try expectInvalid(encode(.{ .v4 = &.{
        .{ .address = v4("10.0.0.0"), .length = 16, .label = 0 },
        .{ .address = v4("10.0.0.0"), .length = 8, .label = 0 },
    } }), "not after");
    try expectInvalid(encode(.{ .v4 = &.{
        .{ .address = v4("10.0.0.0"), .length = 8, .label = 0 },
        .{ .address = v4("10.0.0.0"), .length = 8, .label = 1 },
    } }), "repeats");
    try expectInvalid(encode(.{ .v6 = &.{.{ .address = v6("::ffff:10.0.0.0"), .length = 104, .label = 0 }} }), "IPv4-mapped");
    try expectInvalid(encode(.{ .v6 = &.{.{ .address = v6("2001:db8::1"), .length = 64, .label = 0 }} }), "IPv6 prefix 0: host bits");
    // /0, /32 and /128 are fine; so is an IPv6 prefix that merely contains the mapped range.
    var tables: Tables = undefined;
    var message: Message = .{};
    try testing.expect(parse(encode(.{
        .v4 = &.{
            .{ .address = 0, .length = 0, .label = 0 },
            .{ .address = v4("10.0.0.1"), .length = 32, .label = 1 },
        },
        .v6 = &.{
            .{ .address = 0, .length = 0, .label = 0 },
            .{ .address = v6("2001:db8::1"), .length = 128, .label = 1 },
        },
    }), &test_settings, &tables, &message));
}
