"""Geo routing: client prefix tables (CSV or MaxMind DB imports), their compact form for the
georoute WASM filter, and the admin endpoints that upload them."""
