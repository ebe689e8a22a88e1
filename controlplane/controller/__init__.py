"""What joins the parts: the publisher follows the store, translates each revision for every
proxy group the cache is asked for, and sets the snapshots. The only module that knows both
where policy comes from (the store) and where it goes (the cache)."""
