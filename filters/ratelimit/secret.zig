//! The secret the rate limiter keys its bucket hashes with (key.zig): 16 random bytes in shared
//! data under "rl/secret", written by the first VM to start (the main thread's, before any
//! worker's, as with the slot table) and read by every later one, so all workers hash a client
//! alike. It never leaves the Envoy process (a value in the plugin configuration would show in
//! config_dump), and it outlives configuration updates, which therefore keep every bucket.
//! Generic over the store, as limiter.zig is.
const std = @import("std");
const key = @import("key.zig");
const limiter = @import("limiter.zig");
const slots = @import("slots.zig");

pub const secret_key = slots.key_prefix ++ "secret";

/// The stored secret, or `fresh` once it is stored (when none was, or what was is not a secret).
pub fn loadOrCreate(store: anytype, fresh: *const key.Secret) error{StoreFailed}!key.Secret {
    switch (store.get(secret_key)) {
        .found => |f| if (f.value.len == fresh.len) return f.value[0..fresh.len].*,
        .failed => return error.StoreFailed,
        .not_found => {},
    }
    if (store.set(secret_key, fresh, 0) != .ok) return error.StoreFailed;
    // Another VM may have written its own between our read and our write: what is stored now wins.
    return switch (store.get(secret_key)) {
        .found => |f| if (f.value.len == fresh.len) f.value[0..fresh.len].* else error.StoreFailed,
        else => error.StoreFailed,
    };
}

const testing = std.testing;

const OneKeyStore = struct {
    value: [32]u8 = undefined,
    len: usize = 0,
    present: bool = false,

    pub fn get(self: *OneKeyStore, k: []const u8) limiter.StoreGet {
        std.debug.assert(std.mem.eql(u8, k, secret_key));
        if (!self.present) return .not_found;
        return .{ .found = .{ .value = self.value[0..self.len], .cas = 1 } };
    }
    pub fn set(self: *OneKeyStore, k: []const u8, value: []const u8, cas: u32) limiter.StoreSet {
        std.debug.assert(std.mem.eql(u8, k, secret_key) and cas == 0);
        @memcpy(self.value[0..value.len], value);
        self.len = value.len;
        self.present = true;
        return .ok;
    }
};

test "the first VM's secret is every later VM's" {
    var store: OneKeyStore = .{};
    const first = try loadOrCreate(&store, &([_]u8{1} ** 16));
    const second = try loadOrCreate(&store, &([_]u8{2} ** 16));
    try testing.expectEqualSlices(u8, &first, &second);
    try testing.expectEqualSlices(u8, &([_]u8{1} ** 16), &second);
}

test "a stored value of the wrong length is replaced" {
    var store: OneKeyStore = .{ .present = true, .len = 3 };
    const got = try loadOrCreate(&store, &([_]u8{5} ** 16));
    try testing.expectEqualSlices(u8, &([_]u8{5} ** 16), &got);
}
