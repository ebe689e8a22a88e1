from envoy.config.core.v3.config_source_pb2 import AggregatedConfigSource, ApiVersion, ConfigSource


def ads() -> ConfigSource:
    """Every dynamic resource comes over the one ADS stream the bootstrap opens."""
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)
