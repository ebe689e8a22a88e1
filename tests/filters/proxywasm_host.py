"""A minimal proxy-wasm ABI 0.2.1 host on wasmtime, for testing sluice's compiled filters.

It runs the real .wasm module and emulates the parts of the host (Envoy / proxy-wasm-cpp-host)
that HTTP filters use, with the same semantics where they matter:

- memory: every value returned to the module is copied into memory obtained from the module's
  ``malloc`` export, else ``proxy_on_memory_allocate`` (as proxy-wasm-cpp-host does); an empty value
  comes back as ptr=0, len=0.
- header maps (request/response headers and trailers), lowercase names, wire format for pairs.
- properties (path segments joined by NUL), e.g. ``source\\0address``, ``xds\\0route_name``.
- shared data: one :class:`SharedData` per "Envoy process" that several hosts (= worker VMs) may
  share; cas bumped on every write, non-zero cas must match, writes to missing keys always
  succeed, no delete. Hooks let a test interleave another worker between a get and a set.
- metrics (counter/gauge/histogram) in a :class:`Metrics` shared like shared data: counters
  are per name, ids per VM (as in Envoy; Envoy additionally prefixes names with "wasmcustom.").
- ``proxy_send_local_response`` captured, a clock the test controls, logs captured.

Usage::

    host = ProxyWasmHost(WASM_PATH)          # instantiates; proxy_on_vm_start runs in start()
    assert host.start()
    assert host.configure(json.dumps({...}))
    result = host.http_request({"x-api-key": "k"}, route="r1")
    result.local_response, result.response_headers
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import wasmtime

try:
    # The C API bindings shipped with the pinned wasmtime (50.0.1). The high-level wasmtime-py
    # call path costs ~20 us per crossing in type conversions; the "unchecked" raw-value API used
    # below makes a request through a filter ~5x cheaper, which keeps 100k-request tests short.
    from wasmtime import _bindings as _ffi

    _ffi.wasmtime_func_new_unchecked, _ffi.wasmtime_func_call_unchecked, _ffi.wasmtime_memory_data  # noqa: B018 - fail here if absent
except (ImportError, AttributeError) as e:  # pragma: no cover
    raise ImportError(f"proxywasm_host needs the C bindings of wasmtime==50.0.1: {e}") from e

# Status codes (proxy-wasm spec).
OK = 0
NOT_FOUND = 1
BAD_ARGUMENT = 2
INVALID_MEMORY_ACCESS = 6
CAS_MISMATCH = 8

# Header map types and buffer types.
REQUEST_HEADERS = 0
REQUEST_TRAILERS = 1
RESPONSE_HEADERS = 2
RESPONSE_TRAILERS = 3
VM_CONFIGURATION = 6
PLUGIN_CONFIGURATION = 7

# Actions.
CONTINUE = 0
PAUSE = 1

LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "critical")
METRIC_TYPES = ("counter", "gauge", "histogram")

REPO_ROOT = Path(__file__).resolve().parents[2]

PEER = "127.0.0.1:40000"  # the filter tests' connection peer: the trusted load balancer in front of Envoy


def wasm_path(name: str) -> Path:
    """Path of a compiled filter; fails with a clear message when it has not been built."""
    path = REPO_ROOT / "build" / "filters" / "bin" / f"{name}.wasm"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: build the filters first with `make filters` "
            "(cd filters && ../.venv/bin/python -m ziglang build -Doptimize=ReleaseSafe --prefix ../build/filters)"
        )
    return path


def make_host(wasm: Path, configuration: str | bytes, **kwargs) -> ProxyWasmHost:
    """A started host (kwargs: ProxyWasmHost's) that accepted `configuration`."""
    host = ProxyWasmHost(wasm, **kwargs)
    assert host.start()
    assert host.configure(configuration), host.logs
    return host


def forwarded_for(forwarded: str | None, peer: str = PEER) -> str:
    """X-Forwarded-For as a filter behind use_remote_address sees it: what the request came with
    (`forwarded`; None or empty: nothing), then the address of the peer, which Envoy appended."""
    peer_ip = peer.rsplit(":", 1)[0].strip("[]")
    return f"{forwarded}, {peer_ip}" if forwarded else peer_ip


def encode_pairs(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> bytes:
    """The proxy-wasm map wire format."""
    items = [(_b(k), _b(v)) for k, v in pairs]
    out = [struct.pack("<I", len(items))]
    out += [struct.pack("<II", len(k), len(v)) for k, v in items]
    out += [k + b"\0" + v + b"\0" for k, v in items]
    return b"".join(out)


def decode_pairs(data: bytes) -> list[tuple[str, str]]:
    if not data:
        return []
    (count,) = struct.unpack_from("<I", data, 0)
    sizes = [struct.unpack_from("<II", data, 4 + 8 * i) for i in range(count)]
    offset = 4 + 8 * count
    pairs = []
    for key_len, value_len in sizes:
        key = data[offset : offset + key_len]
        offset += key_len + 1
        value = data[offset : offset + value_len]
        offset += value_len + 1
        pairs.append((key.decode(), value.decode()))
    return pairs


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class Clock:
    """Wall clock in nanoseconds, advanced only by the test."""

    def __init__(self, now_ns: int = 1_700_000_000 * 10**9):
        self.now_ns = now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(round(seconds * 1e9))


class SharedData:
    """proxy-wasm shared data of one vm_id, shared by the VMs of all workers."""

    def __init__(self) -> None:
        self.entries: dict[bytes, tuple[bytes, int]] = {}
        self._cas = 0
        self.gets = 0
        self.sets = 0
        self.cas_mismatches = 0
        # Called after a successful get, before the value is returned: (key) -> None.
        # Lets a test run "another worker" between a filter's get and its set.
        self.after_get: Callable[[bytes], None] | None = None
        self._in_hook = False

    def _next_cas(self) -> int:
        self._cas = (self._cas + 1) & 0xFFFFFFFF or 1
        return self._cas

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        self.gets += 1
        entry = self.entries.get(key)
        if entry is not None and self.after_get is not None and not self._in_hook:
            self._in_hook = True  # the hook may run requests on other hosts: no recursion
            try:
                self.after_get(key)
            finally:
                self._in_hook = False
        return entry

    def set(self, key: bytes, value: bytes, cas: int) -> int:
        self.sets += 1
        entry = self.entries.get(key)
        if entry is not None and cas and cas != entry[1]:
            self.cas_mismatches += 1
            return CAS_MISMATCH
        self.entries[key] = (bytes(value), self._next_cas())
        return OK


class Metrics:
    """Metric values by name (Envoy: one stat per name in the wasm scope)."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.types: dict[str, str] = {}

    def define(self, name: str, metric_type: str) -> None:
        self.values.setdefault(name, 0)
        self.types.setdefault(name, metric_type)

    def get(self, name: str) -> int:
        return self.values.get(name, 0)


@dataclasses.dataclass
class LocalResponse:
    status: int
    details: str
    body: bytes
    headers: list[tuple[str, str]]
    grpc_status: int

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)


@dataclasses.dataclass
class HttpResult:
    context_id: int
    request_action: int
    local_response: LocalResponse | None
    request_headers: list[tuple[str, str]]
    response_action: int | None
    response_headers: list[tuple[str, str]] | None

    def response_header(self, name: str) -> str | None:
        return _first(self.response_headers or [], name)


def _first(pairs: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    for key, value in pairs:
        if key == name:
            return value
    return None


def _kinds(types) -> list[str]:
    kinds = []
    for t in types:
        if t == wasmtime.ValType.i32():
            kinds.append("i32")
        elif t == wasmtime.ValType.i64():
            kinds.append("i64")
        else:
            raise NotImplementedError(f"unsupported value type {t}")
    return kinds


_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: None)


@functools.lru_cache(maxsize=8)
def _compiled(path: str, mtime_ns: int) -> tuple[wasmtime.Engine, wasmtime.Module]:
    engine = wasmtime.Engine()
    return engine, wasmtime.Module.from_file(engine, path)


class ProxyWasmHost:
    """One VM (as one Envoy worker thread has) running one filter module."""

    def __init__(
        self,
        path: str | Path,
        *,
        shared_data: SharedData | None = None,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        vm_configuration: bytes = b"",
        properties: Mapping[str, bytes | str] | None = None,
    ) -> None:
        path = Path(path)
        self.engine, self.module = _compiled(str(path), path.stat().st_mtime_ns)
        self.shared_data = shared_data if shared_data is not None else SharedData()
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = clock if clock is not None else Clock()
        self.vm_configuration = vm_configuration
        self.plugin_configuration = b""
        # Properties as "a\0b" -> bytes; per-request overrides go to http_request().
        self.properties: dict[bytes, bytes] = {b"source\0address": b"127.0.0.1:40000"}
        for k, v in (properties or {}).items():
            self.properties[_b(k)] = _b(v)
        self.logs: list[tuple[str, str]] = []
        self.metric_ids: dict[int, str] = {}
        self.tick_period_ms = 0
        self.calls: dict[str, int] = {}
        self._maps: dict[int, list[tuple[str, str]]] = {}
        self._request_properties: dict[bytes, bytes] = {}
        self._local_response: LocalResponse | None = None
        self._next_context_id = 1
        self.root_context_id = 0

        self.store = wasmtime.Store(self.engine)
        self._callbacks = []  # keeps the ctypes trampolines alive
        self._memory_address = 0
        self._memory_size = -1
        self._pending_exception: BaseException | None = None
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        self.store.set_wasi(wasmtime.WasiConfig())
        for imp in self.module.imports:
            if imp.module != "env":
                continue
            impl = getattr(self, "_h_" + imp.name, None)
            if impl is None:
                raise NotImplementedError(f"the test host does not implement import env.{imp.name}")
            linker.define(self.store, "env", imp.name, self._host_func(imp.name, imp.type, impl))
        self.instance = linker.instantiate(self.store, self.module)
        exports = self.instance.exports(self.store)
        self.memory: wasmtime.Memory = exports["memory"]
        self.exports = {}
        for e in self.module.exports:
            if isinstance(e.type, wasmtime.FuncType):
                self.exports[e.name] = (exports[e.name], _kinds(e.type.params), len(e.type.results))
        self._malloc = self.exports.get("malloc") or self.exports.get("proxy_on_memory_allocate")
        if self._malloc is None:
            raise RuntimeError("module exports neither malloc nor proxy_on_memory_allocate")
        if "proxy_abi_version_0_2_1" not in self.exports:
            raise RuntimeError("module does not declare proxy-wasm ABI 0.2.1")
        if "_initialize" in self.exports:
            self._invoke(self.store._context(), self.exports["_initialize"])

    # -- raw crossings -----------------------------------------------------------------------

    def _host_func(self, name: str, functype: wasmtime.FuncType, impl: Callable[..., int]) -> wasmtime.Func:
        kinds = _kinds(functype.params)
        nresults = len(functype.results)
        calls = self.calls

        def trampoline(_env, caller, raw, _n):
            try:
                calls[name] = calls.get(name, 0) + 1
                ctx = _ffi.wasmtime_caller_context(caller)
                args = [raw[i].i32 if k == "i32" else raw[i].i64 for i, k in enumerate(kinds)]
                result = impl(ctx, *args)
                if nresults:
                    raw[0].i32 = result
                return 0
            except BaseException as e:  # surfaced by _invoke after the trap unwinds
                self._pending_exception = e
                message = ctypes.create_string_buffer(b"exception in the test host")
                trap = _ffi.wasmtime_trap_new(ctypes.cast(message, ctypes.POINTER(ctypes.c_char)), len(message.value))
                return ctypes.cast(trap, ctypes.c_void_p).value

        callback = _ffi.wasmtime_func_unchecked_callback_t(trampoline)
        self._callbacks.append(callback)
        func = _ffi.wasmtime_func_t()
        _ffi.wasmtime_func_new_unchecked(self.store._context(), functype.ptr(), callback, None,
                                         _NO_FINALIZER, ctypes.byref(func))
        return wasmtime.Func._from_raw(func)

    def _invoke(self, ctx, export, *args: int) -> int | None:
        func, kinds, nresults = export
        assert len(args) == len(kinds)
        size = max(len(args), nresults, 1)
        raw = (_ffi.wasmtime_val_raw_t * size)()
        for i, (k, a) in enumerate(zip(kinds, args, strict=False)):
            if k == "i32":
                raw[i].i32 = ctypes.c_int32(a).value
            else:
                raw[i].i64 = ctypes.c_int64(a).value
        trap = ctypes.POINTER(_ffi.wasm_trap_t)()
        error = _ffi.wasmtime_func_call_unchecked(ctx, ctypes.byref(func._func), raw, size, ctypes.byref(trap))
        pending, self._pending_exception = self._pending_exception, None
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        if trap:
            if pending is not None:
                raise pending
            raise wasmtime.Trap._from_ptr(trap)
        return raw[0].i32 if nresults else None

    def _memory_base(self, ctx) -> tuple[int, int]:
        """Base address and size of the module's memory. The base is re-read whenever the size
        changed (a grown memory may have moved)."""
        size = _ffi.wasmtime_memory_data_size(ctx, ctypes.byref(self.memory._memory))
        if size != self._memory_size:
            base = _ffi.wasmtime_memory_data(ctx, ctypes.byref(self.memory._memory))
            self._memory_address = ctypes.cast(base, ctypes.c_void_p).value
            self._memory_size = size
        return self._memory_address, size

    # -- lifecycle ---------------------------------------------------------------------------

    def _new_context_id(self) -> int:
        context_id = self._next_context_id
        self._next_context_id += 1
        return context_id

    def _call(self, name: str, *args: int) -> int | None:
        export = self.exports.get(name)
        if export is None:
            return None
        self.calls[name] = self.calls.get(name, 0) + 1
        return self._invoke(self.store._context(), export, *args)

    def start(self) -> bool:
        """Creates the root context and runs proxy_on_vm_start."""
        self.root_context_id = self._new_context_id()
        self._call("proxy_on_context_create", self.root_context_id, 0)
        result = self._call("proxy_on_vm_start", self.root_context_id, len(self.vm_configuration))
        return result is None or result != 0

    def configure(self, configuration: str | bytes) -> bool:
        """A plugin configuration (as Envoy delivers a new one: a new root context, same VM)."""
        self.plugin_configuration = _b(configuration)
        root = self._new_context_id()
        self._call("proxy_on_context_create", root, 0)
        result = self._call("proxy_on_configure", root, len(self.plugin_configuration))
        if result is None or result != 0:
            self.root_context_id = root
            return True
        return False

    def http_request(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        *,
        route: str | None = None,
        peer: str | None = None,
        properties: Mapping[str, bytes | str] | None = None,
        response_headers: Iterable[tuple[str, str]] | None = ((":status", "200"),),
    ) -> HttpResult:
        """One HTTP stream: request headers, then (if not answered locally) response headers."""
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        self._maps = {REQUEST_HEADERS: [(k.lower(), v) for k, v in pairs]}
        self._request_properties = {}
        if route is not None:
            self._request_properties[b"xds\0route_name"] = route.encode()
        if peer is not None:
            self._request_properties[b"source\0address"] = peer.encode()
        for k, v in (properties or {}).items():
            self._request_properties[_b(k)] = _b(v)
        self._local_response = None

        context_id = self._new_context_id()
        self._call("proxy_on_context_create", context_id, self.root_context_id)
        action = self._call("proxy_on_request_headers", context_id, len(self._maps[REQUEST_HEADERS]), 1)
        action = CONTINUE if action is None else action
        local = self._local_response
        response_action = None
        final_response_headers = None
        if local is None and response_headers is not None:
            self._maps[RESPONSE_HEADERS] = [(k.lower(), v) for k, v in response_headers]
            response_action = self._call(
                "proxy_on_response_headers", context_id, len(self._maps[RESPONSE_HEADERS]), 1
            )
            response_action = CONTINUE if response_action is None else response_action
            final_response_headers = list(self._maps[RESPONSE_HEADERS])
        self._call("proxy_on_done", context_id)
        self._call("proxy_on_log", context_id)
        self._call("proxy_on_delete", context_id)
        return HttpResult(
            context_id=context_id,
            request_action=action,
            local_response=local,
            request_headers=list(self._maps[REQUEST_HEADERS]),
            response_action=response_action,
            response_headers=final_response_headers,
        )

    def log_messages(self, level: str | None = None) -> list[str]:
        return [m for lvl, m in self.logs if level is None or lvl == level]

    def metric(self, name: str) -> int:
        return self.metrics.get(name)

    # -- memory (ctx: the wasmtime context of the call in progress) ---------------------------

    def _read(self, ctx, ptr: int, length: int) -> bytes:
        ptr &= 0xFFFFFFFF
        length &= 0xFFFFFFFF
        if length == 0:
            return b""
        base, size = self._memory_base(ctx)
        if ptr + length > size:
            raise IndexError(f"read of {length} bytes at {ptr} beyond memory ({size})")
        return ctypes.string_at(base + ptr, length)

    def _write(self, ctx, ptr: int, data: bytes) -> None:
        ptr &= 0xFFFFFFFF
        base, size = self._memory_base(ctx)
        if ptr + len(data) > size:
            raise IndexError(f"write of {len(data)} bytes at {ptr} beyond memory ({size})")
        ctypes.memmove(base + ptr, data, len(data))

    def _write_u32(self, ctx, ptr: int, value: int) -> None:
        self._write(ctx, ptr, struct.pack("<I", value & 0xFFFFFFFF))

    def _write_u64(self, ctx, ptr: int, value: int) -> None:
        self._write(ctx, ptr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def _return_bytes(self, ctx, data: bytes, ptr_ptr: int, len_ptr: int) -> int:
        """Copies `data` into module memory (module's allocator) and returns ptr/len."""
        if not data:
            self._write_u32(ctx, ptr_ptr, 0)
            self._write_u32(ctx, len_ptr, 0)
            return OK
        ptr = self._invoke(ctx, self._malloc, len(data)) & 0xFFFFFFFF
        if ptr == 0:
            return INVALID_MEMORY_ACCESS
        self._write(ctx, ptr, data)
        if len_ptr == ptr_ptr + 4:
            self._write(ctx, ptr_ptr, struct.pack("<II", ptr, len(data)))
        else:
            self._write_u32(ctx, ptr_ptr, ptr)
            self._write_u32(ctx, len_ptr, len(data))
        return OK

    # -- host functions (env.proxy_*) ----------------------------------------------------------

    def _h_proxy_log(self, ctx, level, ptr, length):
        self.logs.append((LOG_LEVELS[level] if 0 <= level < len(LOG_LEVELS) else str(level),
                          self._read(ctx, ptr, length).decode(errors="replace")))
        return OK

    def _h_proxy_get_log_level(self, ctx, ret_ptr):
        self._write_u32(ctx, ret_ptr, 0)
        return OK

    def _h_proxy_get_current_time_nanoseconds(self, ctx, ret_ptr):
        self._write_u64(ctx, ret_ptr, self.clock.now_ns)
        return OK

    def _h_proxy_set_tick_period_milliseconds(self, ctx, period):
        self.tick_period_ms = period
        return OK

    def _h_proxy_get_property(self, ctx, path_ptr, path_len, ret_ptr, ret_len):
        path = self._read(ctx, path_ptr, path_len)
        if path in self._request_properties:
            value = self._request_properties[path]
        elif path in self.properties:
            value = self.properties[path]
        else:
            return NOT_FOUND
        return self._return_bytes(ctx, value, ret_ptr, ret_len)

    def _map(self, map_type: int) -> list[tuple[str, str]] | None:
        return self._maps.get(map_type)

    def _h_proxy_get_header_map_value(self, ctx, map_type, key_ptr, key_len, ret_ptr, ret_len):
        headers = self._map(map_type)
        if headers is None:
            return BAD_ARGUMENT
        key = self._read(ctx, key_ptr, key_len).decode().lower()
        value = _first(headers, key)
        if value is None:
            return NOT_FOUND
        return self._return_bytes(ctx, value.encode(), ret_ptr, ret_len)

    def _h_proxy_add_header_map_value(self, ctx, map_type, key_ptr, key_len, value_ptr, value_len):
        headers = self._map(map_type)
        if headers is None:
            return BAD_ARGUMENT
        key = self._read(ctx, key_ptr, key_len).decode().lower()
        headers.append((key, self._read(ctx, value_ptr, value_len).decode()))
        return OK

    def _h_proxy_replace_header_map_value(self, ctx, map_type, key_ptr, key_len, value_ptr, value_len):
        headers = self._map(map_type)
        if headers is None:
            return BAD_ARGUMENT
        key = self._read(ctx, key_ptr, key_len).decode().lower()
        value = self._read(ctx, value_ptr, value_len).decode()
        headers[:] = [(k, v) for k, v in headers if k != key]
        headers.append((key, value))
        return OK

    def _h_proxy_remove_header_map_value(self, ctx, map_type, key_ptr, key_len):
        headers = self._map(map_type)
        if headers is None:
            return BAD_ARGUMENT
        key = self._read(ctx, key_ptr, key_len).decode().lower()
        headers[:] = [(k, v) for k, v in headers if k != key]
        return OK

    def _h_proxy_get_header_map_pairs(self, ctx, map_type, ret_ptr, ret_len):
        headers = self._map(map_type)
        if headers is None:
            return BAD_ARGUMENT
        return self._return_bytes(ctx, encode_pairs(headers), ret_ptr, ret_len)

    def _h_proxy_set_header_map_pairs(self, ctx, map_type, ptr, length):
        if map_type not in self._maps:
            return BAD_ARGUMENT
        self._maps[map_type] = decode_pairs(self._read(ctx, ptr, length))
        return OK

    def _h_proxy_get_header_map_size(self, ctx, map_type, ret_ptr):
        headers = self._map(map_type)
        if headers is None:
            return BAD_ARGUMENT
        self._write_u32(ctx, ret_ptr, len(encode_pairs(headers)))
        return OK

    def _h_proxy_get_buffer_bytes(self, ctx, buffer_type, start, max_size, ret_ptr, ret_len):
        if buffer_type == PLUGIN_CONFIGURATION:
            data = self.plugin_configuration
        elif buffer_type == VM_CONFIGURATION:
            data = self.vm_configuration
        else:
            return NOT_FOUND
        start &= 0xFFFFFFFF
        max_size &= 0xFFFFFFFF
        return self._return_bytes(ctx, data[start : start + max_size], ret_ptr, ret_len)

    def _h_proxy_get_shared_data(self, ctx, key_ptr, key_len, ret_ptr, ret_len, ret_cas):
        key = self._read(ctx, key_ptr, key_len)
        entry = self.shared_data.get(key)
        if entry is None:
            return NOT_FOUND
        value, cas = entry
        status = self._return_bytes(ctx, value, ret_ptr, ret_len)
        if status == OK:
            self._write_u32(ctx, ret_cas, cas)
        return status

    def _h_proxy_set_shared_data(self, ctx, key_ptr, key_len, value_ptr, value_len, cas):
        key = self._read(ctx, key_ptr, key_len)
        return self.shared_data.set(key, self._read(ctx, value_ptr, value_len), cas & 0xFFFFFFFF)

    def _h_proxy_define_metric(self, ctx, metric_type, name_ptr, name_len, ret_id):
        if not 0 <= metric_type < len(METRIC_TYPES):
            return BAD_ARGUMENT
        name = self._read(ctx, name_ptr, name_len).decode()
        self.metrics.define(name, METRIC_TYPES[metric_type])
        metric_id = len(self.metric_ids) + 1
        self.metric_ids[metric_id] = name
        self._write_u32(ctx, ret_id, metric_id)
        return OK

    def _h_proxy_increment_metric(self, ctx, metric_id, offset):
        name = self.metric_ids.get(metric_id & 0xFFFFFFFF)
        if name is None:
            return NOT_FOUND
        self.metrics.values[name] += offset
        return OK

    def _h_proxy_record_metric(self, ctx, metric_id, value):
        name = self.metric_ids.get(metric_id & 0xFFFFFFFF)
        if name is None:
            return NOT_FOUND
        self.metrics.values[name] = value
        return OK

    def _h_proxy_get_metric(self, ctx, metric_id, ret_ptr):
        name = self.metric_ids.get(metric_id & 0xFFFFFFFF)
        if name is None:
            return NOT_FOUND
        self._write_u64(ctx, ret_ptr, self.metrics.values[name])
        return OK

    def _h_proxy_send_local_response(self, ctx, status, details_ptr, details_len, body_ptr, body_len,
                                     headers_ptr, headers_len, grpc_status):
        self._local_response = LocalResponse(
            status=status,
            details=self._read(ctx, details_ptr, details_len).decode(),
            body=self._read(ctx, body_ptr, body_len),
            headers=decode_pairs(self._read(ctx, headers_ptr, headers_len)),
            grpc_status=grpc_status,
        )
        return OK

    def _h_proxy_continue_stream(self, ctx, stream_type):
        return OK

    def _h_proxy_close_stream(self, ctx, stream_type):
        return OK
