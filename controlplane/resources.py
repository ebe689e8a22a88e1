"""xDS resources as the translator makes them and the cache holds them: the type URLs, in the
order a push sends them (clusters and their endpoints before the listeners and routes that use
them: make-before-break), and the mapping that carries one proxy group's resources."""

from google.protobuf.message import Message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"

PUSH_ORDER = (CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, SCOPED_ROUTE, ROUTE)
SHORT = {CLUSTER: "cds", ENDPOINT: "eds", EXTENSION_CONFIG: "ecds", LISTENER: "lds", SCOPED_ROUTE: "srds", ROUTE: "rds"}
# Types a proxy asks for only once another type names them (a cluster its endpoints, a listener
# its route configuration or its scoped routes, a scope its route configuration).
DEPENDENT = (ENDPOINT, SCOPED_ROUTE, ROUTE)

# type URL -> resource name -> resource
Resources = dict[str, dict[str, Message]]
