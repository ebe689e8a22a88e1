"""Which paths are the console's static pages: public (they hold no data), unlike its /ui/api/."""

API_PREFIX = "/ui/api/"


def is_console_page(path: str) -> bool:
    return path in ("/ui", "/ui/") or (path.startswith("/ui/assets/") and not path.startswith(API_PREFIX))
