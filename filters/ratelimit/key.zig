//! The bucket identity of a request under a policy: a 64-bit keyed hash (SipHash-2-4) of the
//! policy name and of each descriptor value, every component tagged and length-prefixed so that
//! distinct tuples never produce the same byte stream. Never 0 (0 marks an empty way of the slot
//! table). The key is a secret of this Envoy (`secret.zig`): without it a client cannot compute
//! which set of the slot table a key lands in, so it cannot craft keys that evict another
//! client's bucket.
const std = @import("std");
const config = @import("config.zig");
const slots = @import("slots.zig");

pub const Secret = [std.crypto.auth.siphash.SipHash64(2, 4).key_length]u8;

pub const Hasher = struct {
    state: std.crypto.auth.siphash.SipHash64(2, 4),

    pub fn init(secret: *const Secret, policy_name: []const u8) Hasher {
        var h: Hasher = .{ .state = std.crypto.auth.siphash.SipHash64(2, 4).init(secret) };
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

    /// Consumes the state: call once.
    pub fn final(self: *Hasher) u64 {
        return slots.normalizeHash(self.state.finalInt());
    }
};

const test_secret: Secret = [_]u8{7} ** 16;

test "another secret, other hashes" {
    var a = Hasher.init(&test_secret, "p");
    a.descriptor(.header, "k");
    var b = Hasher.init(&([_]u8{8} ** 16), "p");
    b.descriptor(.header, "k");
    try std.testing.expect(a.final() != b.final());
}

test "distinct tuples, distinct hashes" {
    var a = Hasher.init(&test_secret, "p");
    a.descriptor(.header, "ab");
    a.descriptor(.header, "c");
    const ha = a.final(); // final() consumes the state: once per hasher
    var b = Hasher.init(&test_secret, "p");
    b.descriptor(.header, "a");
    b.descriptor(.header, "bc");
    try std.testing.expect(ha != b.final());
    var c = Hasher.init(&test_secret, "p");
    c.descriptor(.route, "ab");
    c.descriptor(.header, "c");
    try std.testing.expect(ha != c.final());
    var d = Hasher.init(&test_secret, "q");
    d.descriptor(.header, "ab");
    d.descriptor(.header, "c");
    try std.testing.expect(ha != d.final());
    var e = Hasher.init(&test_secret, "p");
    e.descriptor(.header, "ab");
    e.descriptor(.header, "c");
    try std.testing.expectEqual(ha, e.final());
}
