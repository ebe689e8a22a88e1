//! Check-and-spend against the shared slot table with compare-and-swap. Generic over the store so
//! the retry logic is unit-tested natively with a fake store; main.zig passes the proxy-wasm one.
//!
//! A store has:
//!   fn get(self, key: []const u8) StoreGet
//!   fn set(self, key: []const u8, value: []const u8, cas: u32) StoreSet
//!
//! Guarantees: a write only lands if the set did not change since it was read (cas), so two
//! workers can never both spend the same token: the limiter never over-admits. A rejection writes
//! nothing. After `cas_attempts_max` lost races the call reports `Contended` and the caller
//! rejects (fails closed).
const std = @import("std");
const assert = std.debug.assert;
const gcra = @import("gcra.zig");
const slots = @import("slots.zig");

pub const cas_attempts_max = 16;

pub const StoreGet = union(enum) {
    found: struct { value: []const u8, cas: u32 },
    not_found,
    failed,
};

pub const StoreSet = enum { ok, cas_mismatch, failed };

pub const Outcome = struct {
    decision: gcra.Decision,
    /// The descriptor took a way whose bucket was not full (another client's state was lost).
    evicted_live: bool,
    /// The stored set had an unexpected length and was reset.
    repaired: bool,
    /// Reads of the set (1 without contention).
    attempts: u32,
};

pub const Error = error{ StoreFailed, Contended };

pub fn acquire(store: anytype, hash: u64, now: u64, cost: u32, limit: gcra.Limit) Error!Outcome {
    assert(hash != 0);
    var key_buffer: [slots.key_len_max]u8 = undefined;
    const key = slots.keyName(slots.setIndex(hash), &key_buffer);
    var attempt: u32 = 0;
    while (attempt < cas_attempts_max) {
        attempt += 1;
        switch (store.get(key)) {
            .failed => return error.StoreFailed,
            .not_found => {
                // Sets are created at VM start (createSets), before traffic; this only runs if
                // the store lost them. There is no atomic create: write an empty set, then go
                // through the cas path like any other read.
                const empty = slots.encodedEmpty();
                if (store.set(key, &empty, 0) != .ok) return error.StoreFailed;
            },
            .found => |found| {
                const decoded = slots.Set.decode(found.value);
                var set = decoded orelse slots.Set.empty;
                const placement = set.place(hash, now);
                const tat = if (placement.found) set.ways[placement.index].tat else 0;
                const decision = gcra.decide(tat, now, cost, limit);
                const outcome: Outcome = .{
                    .decision = decision,
                    .evicted_live = false,
                    .repaired = decoded == null,
                    .attempts = attempt,
                };
                if (!decision.admit) return outcome;
                set.ways[placement.index] = .{ .hash = hash, .tat = decision.tat };
                var encoded: [slots.encoded_len]u8 = undefined;
                set.encode(&encoded);
                switch (store.set(key, &encoded, found.cas)) {
                    .ok => {
                        var result = outcome;
                        result.evicted_live = placement.evicts_live;
                        return result;
                    },
                    .cas_mismatch => continue,
                    .failed => return error.StoreFailed,
                }
            },
        }
    }
    return error.Contended;
}

/// Gives back `cost` tokens taken by `acquire` for a request that a later policy rejected.
/// Best effort, bounded: if the descriptor's way is gone or the store stays contended, the tokens
/// stay spent (errs towards admitting less, never more).
pub fn refund(store: anytype, hash: u64, cost: u32, limit: gcra.Limit) void {
    assert(hash != 0);
    var key_buffer: [slots.key_len_max]u8 = undefined;
    const key = slots.keyName(slots.setIndex(hash), &key_buffer);
    var attempt: u32 = 0;
    while (attempt < cas_attempts_max) : (attempt += 1) {
        switch (store.get(key)) {
            .failed, .not_found => return,
            .found => |found| {
                var set = slots.Set.decode(found.value) orelse return;
                const index = for (set.ways, 0..) |way, i| {
                    if (way.hash == hash) break i;
                } else return;
                set.ways[index].tat = gcra.refund(set.ways[index].tat, cost, limit);
                var encoded: [slots.encoded_len]u8 = undefined;
                set.encode(&encoded);
                switch (store.set(key, &encoded, found.cas)) {
                    .ok, .failed => return,
                    .cas_mismatch => continue,
                }
            },
        }
    }
}

/// Written after the last set: once present, VM starts (one per worker and per configuration
/// update) skip the table with a single read instead of `set_count` reads.
pub const ready_key = slots.key_prefix ++ "ready";

/// Creates every missing set (empty). Called at VM start so that sets exist before traffic and
/// the non-atomic create of `acquire` never races in practice. Existing sets are kept (another
/// worker's VM, or an earlier VM of this Envoy, created them and may be using them).
/// Returns the number of sets created.
pub fn createSets(store: anytype) error{StoreFailed}!u32 {
    switch (store.get(ready_key)) {
        .found => return 0,
        .failed => return error.StoreFailed,
        .not_found => {},
    }
    var created: u32 = 0;
    var key_buffer: [slots.key_len_max]u8 = undefined;
    const empty = slots.encodedEmpty();
    for (0..slots.set_count) |set| {
        const key = slots.keyName(@intCast(set), &key_buffer);
        switch (store.get(key)) {
            .found => {},
            .failed => return error.StoreFailed,
            .not_found => {
                if (store.set(key, &empty, 0) != .ok) return error.StoreFailed;
                created += 1;
            },
        }
    }
    if (store.set(ready_key, "1", 0) != .ok) return error.StoreFailed;
    return created;
}

// ---------------------------------------------------------------------------------------------
// Tests with an in-memory store mirroring proxy-wasm semantics (cas bumps on every write; a
// non-zero cas must match; writes to missing keys always succeed).

const testing = std.testing;

const FakeStore = struct {
    const Entry = struct { value: [slots.encoded_len]u8, len: usize, cas: u32 };
    map: std.StringHashMap(Entry),
    next_cas: u32 = 1,
    /// Called after each get, before the caller's set: simulates another worker.
    interfere: ?*const fn (*FakeStore, []const u8) void = null,
    interfere_budget: u32 = 0,
    gets: u32 = 0,
    last: [slots.encoded_len]u8 = undefined,
    last_len: usize = 0,

    fn init() FakeStore {
        return .{ .map = std.StringHashMap(Entry).init(testing.allocator) };
    }
    fn deinit(self: *FakeStore) void {
        var it = self.map.keyIterator();
        while (it.next()) |k| testing.allocator.free(k.*);
        self.map.deinit();
    }
    pub fn get(self: *FakeStore, key: []const u8) StoreGet {
        self.gets += 1;
        const entry = self.map.getPtr(key) orelse return .not_found;
        // Like the host, hand out a copy: the caller's view must not change under it.
        self.last = entry.value;
        self.last_len = entry.len;
        const cas = entry.cas;
        if (self.interfere) |interfere| {
            if (self.interfere_budget > 0) {
                self.interfere_budget -= 1;
                interfere(self, key);
            }
        }
        return .{ .found = .{ .value = self.last[0..self.last_len], .cas = cas } };
    }
    pub fn set(self: *FakeStore, key: []const u8, value: []const u8, cas: u32) StoreSet {
        assert(value.len <= slots.encoded_len);
        self.next_cas += 1;
        if (self.map.getPtr(key)) |entry| {
            if (cas != 0 and cas != entry.cas) return .cas_mismatch;
            @memcpy(entry.value[0..value.len], value);
            entry.len = value.len;
            entry.cas = self.next_cas;
            return .ok;
        }
        const owned = testing.allocator.dupe(u8, key) catch return .failed;
        var entry: Entry = .{ .value = undefined, .len = value.len, .cas = self.next_cas };
        @memcpy(entry.value[0..value.len], value);
        self.map.put(owned, entry) catch return .failed;
        return .ok;
    }
};

const t0: u64 = 1_700_000_000 * gcra.ns_per_s;

test "acquire admits exactly burst, creating the set on first use" {
    var store = FakeStore.init();
    defer store.deinit();
    const limit = gcra.Limit.init(1.0, 3).?;
    var admitted: u32 = 0;
    for (0..10) |_| {
        const outcome = try acquire(&store, 0xdead_beef_0000_0001, t0, 1, limit);
        if (outcome.decision.admit) admitted += 1;
    }
    try testing.expectEqual(@as(u32, 3), admitted);
    try testing.expectEqual(@as(u32, 1), store.map.count());
}

fn spendOneToken(store: *FakeStore, key: []const u8) void {
    // Another worker admits a request of the same descriptor between our read and our write.
    const entry = store.map.getPtr(key).?;
    var set = slots.Set.decode(entry.value[0..entry.len]).?;
    const limit = gcra.Limit.init(1.0, 3).?;
    const p = set.place(0xdead_beef_0000_0001, t0);
    const d = gcra.decide(if (p.found) set.ways[p.index].tat else 0, t0, 1, limit);
    assert(d.admit);
    set.ways[p.index] = .{ .hash = 0xdead_beef_0000_0001, .tat = d.tat };
    var encoded: [slots.encoded_len]u8 = undefined;
    set.encode(&encoded);
    assert(store.set(key, &encoded, 0) == .ok);
}

test "cas mismatch is retried against fresh state and never over-admits" {
    var store = FakeStore.init();
    defer store.deinit();
    _ = try createSets(&store);
    const limit = gcra.Limit.init(1.0, 3).?;
    store.interfere = spendOneToken;
    store.interfere_budget = 2; // two competing admissions
    const first = try acquire(&store, 0xdead_beef_0000_0001, t0, 1, limit);
    try testing.expect(first.decision.admit);
    try testing.expectEqual(@as(u32, 3), first.attempts);
    try testing.expectEqual(@as(u32, 0), first.decision.remaining);
    // 2 spent by the "other worker" + 1 by us = burst: the next one is rejected.
    const second = try acquire(&store, 0xdead_beef_0000_0001, t0, 1, limit);
    try testing.expect(!second.decision.admit);
}

test "endless contention fails closed after cas_attempts_max reads" {
    var store = FakeStore.init();
    defer store.deinit();
    _ = try createSets(&store);
    const limit = gcra.Limit.init(1e6, 1_000_000).?;
    store.interfere = struct {
        fn bump(s: *FakeStore, key: []const u8) void {
            const entry = s.map.getPtr(key).?;
            var copy: [slots.encoded_len]u8 = entry.value;
            assert(s.set(key, copy[0..entry.len], 0) == .ok);
        }
    }.bump;
    store.interfere_budget = 1000;
    store.gets = 0;
    try testing.expectError(error.Contended, acquire(&store, 0x1234_0000_0000_0001, t0, 1, limit));
    try testing.expectEqual(@as(u32, cas_attempts_max), store.gets);
}

test "refund gives the tokens back" {
    var store = FakeStore.init();
    defer store.deinit();
    const limit = gcra.Limit.init(1.0, 2).?;
    const hash: u64 = 0x4242_0000_0000_0001;
    _ = try acquire(&store, hash, t0, 2, limit);
    try testing.expect(!(try acquire(&store, hash, t0, 1, limit)).decision.admit);
    refund(&store, hash, 2, limit);
    try testing.expect((try acquire(&store, hash, t0, 2, limit)).decision.admit);
}

test "distinct descriptors beyond the ways of a set evict the closest-to-full bucket" {
    var store = FakeStore.init();
    defer store.deinit();
    const limit = gcra.Limit.init(1.0, 10).?;
    // Same top bits (same set), distinct hashes.
    var evictions: u32 = 0;
    for (0..slots.ways + 1) |i| {
        const hash: u64 = 0x0010_0000_0000_0000 + i + 1;
        const outcome = try acquire(&store, hash, t0 + i, 1, limit);
        try testing.expect(outcome.decision.admit);
        if (outcome.evicted_live) evictions += 1;
    }
    try testing.expectEqual(@as(u32, 1), evictions);
    try testing.expectEqual(@as(u32, 1), store.map.count());
}

test "createSets creates each set once and bounds the key count" {
    var store = FakeStore.init();
    defer store.deinit();
    try testing.expectEqual(@as(u32, slots.set_count), try createSets(&store));
    store.gets = 0;
    try testing.expectEqual(@as(u32, 0), try createSets(&store));
    try testing.expectEqual(@as(u32, 1), store.gets);
    try testing.expectEqual(@as(u32, slots.set_count + 1), store.map.count());
}

test "a corrupt set is reset" {
    var store = FakeStore.init();
    defer store.deinit();
    var key_buffer: [slots.key_len_max]u8 = undefined;
    const hash: u64 = 0x7777_0000_0000_0001;
    const key = slots.keyName(slots.setIndex(hash), &key_buffer);
    try testing.expectEqual(StoreSet.ok, store.set(key, "garbage", 0));
    const outcome = try acquire(&store, hash, t0, 1, gcra.Limit.init(1.0, 1).?);
    try testing.expect(outcome.repaired and outcome.decision.admit);
}
