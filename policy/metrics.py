"""The catalog of metric names phasegate knows: what the real systems export (the lab runs the
real redis, postgres and node exporters; its simulators export the rest under the same
names). The plan validator refuses PromQL that names a metric not listed here, so a typo fails
at `plan check`, not as "no data" two weeks later.

Names follow the real exporters: vLLM (vllm/v1/metrics/loggers.py), NVIDIA dcgm-exporter,
oliver006/redis_exporter, prometheus-community/postgres_exporter, node_exporter, and the API's
own instrumentation (prometheus_client conventions).
"""

from __future__ import annotations

__all__ = ["HISTOGRAM_BASES", "KNOWN_METRICS", "is_known_metric"]

# Histograms: the base name; _bucket, _sum and _count series exist.
HISTOGRAM_BASES: frozenset[str] = frozenset({
    # API (Cloud Run service) instrumentation, labels: handler, method
    "http_request_duration_seconds",
    # vLLM, labels: model_name, engine
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
})

_PLAIN: frozenset[str] = frozenset({
    "up",
    # API: counters and gauges. http_requests_total labels: handler, method, status
    "http_requests_total",
    "api_cache_hits_total",           # Redis-backed response cache, hits
    "api_cache_misses_total",         # ... and misses; miss rate = misses / (hits + misses)
    "api_active_connections",         # concurrent in-flight requests (gauge)
    # Business gauges exported by the API from the app database
    "dreamseed_registered_users",     # the seed's total_users
    "dreamseed_daily_active_users",
    # vLLM gauges and counters (counters exposed with _total)
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    # dcgm-exporter, labels: gpu, UUID, device, modelName, Hostname
    "DCGM_FI_DEV_GPU_UTIL",           # percent 0-100
    "DCGM_FI_DEV_FB_USED",            # MiB
    "DCGM_FI_DEV_FB_FREE",            # MiB
    "DCGM_FI_DEV_POWER_USAGE",        # W
    "DCGM_FI_DEV_GPU_TEMP",           # C
    # redis_exporter
    "redis_up",
    "redis_memory_used_bytes",
    "redis_memory_max_bytes",
    "redis_connected_clients",
    "redis_keyspace_hits_total",
    "redis_keyspace_misses_total",
    "redis_commands_processed_total",
    "redis_evicted_keys_total",       # keys evicted by maxmemory-policy
    # postgres_exporter, labels: datname
    "pg_up",
    "pg_stat_database_xact_commit",
    "pg_stat_database_xact_rollback",
    "pg_stat_database_tup_returned",
    "pg_stat_database_numbackends",
    "pg_database_size_bytes",
    "pg_stat_replication_pg_wal_lsn_diff",  # on a primary: each replica's lag in bytes
    # node_exporter, labels: mountpoint / device
    "node_filesystem_size_bytes",
    "node_filesystem_avail_bytes",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_cpu_seconds_total",         # labels cpu, mode
    "node_memory_MemAvailable_bytes",
    "node_memory_MemTotal_bytes",
})

KNOWN_METRICS: frozenset[str] = _PLAIN | HISTOGRAM_BASES | frozenset(
    f"{base}{suffix}" for base in HISTOGRAM_BASES for suffix in ("_bucket", "_sum", "_count")
)


def is_known_metric(name: str) -> bool:
    """True if `name` is a series name phasegate knows (histogram bases count too)."""
    return name in KNOWN_METRICS
