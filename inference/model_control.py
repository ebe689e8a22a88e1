"""Who may use the repository API (index, load, unload): nobody unless the process was started
with --model-control-mode explicit, and then only a caller presenting the model-control token.

Both transports ask the same gate; HTTP passes its Authorization header, gRPC its `authorization`
metadata, each as `Bearer <token>`.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from inference.errors import Forbidden, Unauthenticated

OFF_MESSAGE = "model control is off: start the backend with --model-control-mode explicit and --model-control-token"
_SCHEME = "bearer "


class ModelControl:
    def __init__(self, mode: str = "none", token: SecretStr | None = None) -> None:
        self.enabled = mode == "explicit"
        self._token = token.get_secret_value().encode() if token is not None else b""

    def check(self, authorization: str | None) -> None:
        """Raise unless the caller may control models; `authorization` is the header's value, if any."""
        if not self.enabled:
            raise Forbidden(OFF_MESSAGE)
        presented = b""
        if authorization is not None and authorization[: len(_SCHEME)].lower() == _SCHEME:
            presented = authorization[len(_SCHEME):].strip().encode()
        # Constant time: how long a refusal takes must not say how much of a guess was right.
        if not self._token or not hmac.compare_digest(presented, self._token):
            raise Unauthenticated("model control needs the header Authorization: Bearer <model-control token>")
