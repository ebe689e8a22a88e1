//! The bucket identity of a request under a policy: a 64-bit hash of the policy name and of each
//! descriptor value, every component tagged and length-prefixed so that distinct tuples never
//! produce the same byte stream. Never 0 (0 marks an empty way of the slot table).
const std = @import("std");
const config = @import("config.zig");
const slots = @import("slots.zig");

const seed: u64 = 0x736c_7569_6365_726c; // "sluicerl"

pub const Hasher = struct {
    state: std.hash.Wyhash,

    pub fn init(policy_name: []const u8) Hasher {
        var h: Hasher = .{ .state = std.hash.Wyhash.init(seed) };
        h.component(0, policy_name);
        return h;
    }

    pub fn component(self: *Hasher, tag: u8, value: []const u8) void {
        var prefix: [5]u8 = undefined;
        prefix[0] = tag;
        std.mem.writeInt(u32, prefix[1..5], @intCast(value.len), .little);
        self.state.update(&prefix);
        self.state.update(value);
    }

    pub fn descriptor(self: *Hasher, kind: config.DescriptorKind, value: []const u8) void {
        self.component(@intFromEnum(kind), value);
    }

    pub fn final(self: *Hasher) u64 {
        return slots.normalizeHash(self.state.final());
    }
};

test "distinct tuples, distinct hashes" {
    var a = Hasher.init("p");
    a.descriptor(.header, "ab");
    a.descriptor(.header, "c");
    var b = Hasher.init("p");
    b.descriptor(.header, "a");
    b.descriptor(.header, "bc");
    try std.testing.expect(a.final() != b.final());
    var c = Hasher.init("p");
    c.descriptor(.route, "ab");
    c.descriptor(.header, "c");
    try std.testing.expect(a.final() != c.final());
    var d = Hasher.init("q");
    d.descriptor(.header, "ab");
    d.descriptor(.header, "c");
    try std.testing.expect(a.final() != d.final());
    var e = Hasher.init("p");
    e.descriptor(.header, "ab");
    e.descriptor(.header, "c");
    try std.testing.expectEqual(a.final(), e.final());
}
