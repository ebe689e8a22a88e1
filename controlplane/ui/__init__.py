"""The web console (controlplane.ui.console); imports nothing here, so the admin API's auth can
ask controlplane.ui.paths which paths are public without a cycle."""
