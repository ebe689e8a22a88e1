"""The geo table format: the compact prefix arrays the georoute filter reads, and its plugin
configuration. A leaf: both the translator (which sends it) and controlplane.geo (which imports
and stores tables) build on it."""
