"""Whether a Redis keeps what it acknowledged: checked once at start-up with CONFIG GET."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from controlplane.store.redis_client import bounded


async def durability_warnings(client: Redis) -> list[str]:
    """What, in this Redis's settings, can lose a revision the admin API acknowledged."""
    try:
        config = {**await bounded(client.config_get("appendonly")), **await bounded(client.config_get("appendfsync")),
                  **await bounded(client.config_get("maxmemory-policy"))}
    except ResponseError as exc:  # managed Redis services often disable CONFIG
        return [f"cannot read the Redis settings ({exc}); make sure it runs with appendonly yes, "
                "appendfsync always and maxmemory-policy noeviction"]
    values = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
              for k, v in config.items()}
    warnings = []
    if values.get("appendonly") != "yes":
        warnings.append("Redis runs with appendonly no: every policy revision is lost when Redis restarts; "
                        "set appendonly yes")
    elif values.get("appendfsync") == "everysec":
        warnings.append("Redis runs with appendfsync everysec: a crash of the machine (not of Redis) can lose "
                        "the last second of acknowledged policy writes; appendfsync always closes that window")
    elif values.get("appendfsync") != "always":
        warnings.append(f"Redis runs with appendfsync {values.get('appendfsync')}: a crash of the machine can "
                        "lose acknowledged policy writes; set appendfsync always")
    if values.get("maxmemory-policy", "noeviction") != "noeviction":
        warnings.append(f"Redis runs with maxmemory-policy {values['maxmemory-policy']}: it may evict policy "
                        "revisions under memory pressure; set maxmemory-policy noeviction")
    return warnings
