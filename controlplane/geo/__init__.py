"""Geo routing: client prefix tables (CSV or MaxMind DB imports), kept as blobs, and the admin
endpoints that upload them. Their compact form for the georoute filter is controlplane.geotable."""
